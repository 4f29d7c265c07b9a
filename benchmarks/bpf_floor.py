"""The floors under any eBPF capture, on the workload of benchmarks/capture_overhead.py:

1. programs that do nothing attached to the tracepoints collect/kmem.bpf.c uses (raw
   tracepoints where it uses raw ones, classic ones for the rest; not its charge kprobes):
   whatever a capture records, the kernel first pays for running a BPF program at every hit;
2. a busy loop (pure Python arithmetic: no system calls, little memory) on the other CPU,
   nothing attached: what any collector draining its buffers while the workload runs
   costs where the CPUs slow each other down (on the development VMs they do).

Each is interleaved with runs of the workload alone, pinned to CPU 0.

Run it as root from the project directory, where `make bpf` builds (clang compiles the
empty programs; collect/libbpf.py loads them as the collector loads kmem.bpf.o):

    .venv/bin/python benchmarks/bpf_floor.py [--files N] [--runs N]

It prints the medians and their ratio; it asserts nothing.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from collect.bpf_loader import BPF_OBJECT, KPROBE_PROGRAMS, OPTIONAL_TRACEPOINTS, Unavailable, check_available, kernel_facts
from collect.libbpf import BpfObject

BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    sum(range(10000))"
WORKLOAD = r"""
import os, sys, time
n, d = int(sys.argv[1]), sys.argv[2]
names = [f"{d}/f{i}" for i in range(n)]
flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
t0 = time.monotonic_ns()
for p in names:
    os.close(os.open(p, flags, 0o600))
for p in names:
    os.unlink(p)
print((time.monotonic_ns() - t0) / 1e9)
"""


def attach_points() -> list[str]:
    """The sections (raw_tp/EVENT, tracepoint/SYSTEM/EVENT) of kmem.bpf.o's tracepoint
    programs, less the optional ones the loader leaves out on this kernel."""
    kmem = BpfObject(BPF_OBJECT)
    try:
        sections = kmem.program_sections()
    finally:
        kmem.close()
    absent = set(kernel_facts().absent)
    return [section for program, section in sections.items()
            if program not in KPROBE_PROGRAMS and OPTIONAL_TRACEPOINTS.get(program) not in absent]


def build_empty_programs(points: list[str], directory: Path) -> Path:
    """A BPF object with a program that does nothing at each attach point."""
    source = directory / "empty.bpf.c"
    source.write_text("\n".join(
        [f'__attribute__((section("{point}"), used)) int floor_{i}(void *ctx) {{ return 0; }}' for i, point in enumerate(points)]
        + ['char LICENSE[] __attribute__((section("license"), used)) = "GPL";']))
    built = directory / "empty.bpf.o"
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", str(source), "-o", str(built)], check=True)
    return built


def attached(built: Path) -> BpfObject:
    """The empty programs loaded and attached (until closed)."""
    bpf = BpfObject(built)
    try:
        bpf.load()
        for program in bpf.program_names():
            bpf.attach(program)
    except BaseException:
        bpf.close()
        raise
    return bpf


def run_workload(files: int) -> float:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        done = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", WORKLOAD, str(files), directory],
                              capture_output=True, text=True, check=True)
    return float(done.stdout)


def with_busy_cpu(files: int) -> float:
    busy = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", BUSY_LOOP, "60"])
    try:
        return run_workload(files)
    finally:
        busy.kill()
        busy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    try:
        check_available()
    except Unavailable as why:
        sys.exit(f"eBPF unavailable: {why}")
    points = attach_points()
    alone, traced, busy = [], [], []
    with tempfile.TemporaryDirectory() as directory:
        built = build_empty_programs(points, Path(directory))
        run_workload(args.files)  # warm-up
        for _ in range(args.runs):
            alone.append(run_workload(args.files))
            bpf = attached(built)
            try:
                traced.append(run_workload(args.files))
            finally:
                bpf.close()
            busy.append(with_busy_cpu(args.files))
    a, b, c = (statistics.median(times) for times in (alone, traced, busy))
    raw = sum(point.startswith("raw_tp/") for point in points)
    print(f"{args.files:,} files, {args.runs} interleaved runs, medians; workload on CPU 0")
    print(f"workload alone                                  {a:.3f} s")
    print(f"{len(points):2} empty programs attached ({raw} raw tracepoints)   {b:.3f} s  {b / a:.2f}x")
    print(f"a busy loop on CPU 1, nothing attached          {c:.3f} s  {c / a:.2f}x")


if __name__ == "__main__":
    main()
