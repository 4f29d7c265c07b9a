"""The floors under any eBPF capture, on the workload of benchmarks/capture_overhead.py:

1. programs that do nothing attached to the tracepoints collect/kmem_bpf.c uses (raw
   tracepoints for the slab events, classic ones for the rest, as there): whatever a
   capture records, the kernel first pays for running a BPF program at every hit;
2. a busy loop (pure Python arithmetic: no system calls, little memory) on the other CPU,
   nothing attached: what any collector draining its buffers while the workload runs
   costs where the CPUs slow each other down (on the development VMs they do).

Each is interleaved with runs of the workload alone, pinned to CPU 0.

Run it as root with Debian's python3 (it imports bcc; the project's venv does not see it):

    /usr/bin/python3 benchmarks/bpf_floor.py [--files N] [--runs N]

It prints the medians and their ratio; it asserts nothing.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bcc import BPF  # Debian's python3-bpfcc

SOURCE = Path(__file__).resolve().parent.parent / "collect" / "kmem_bpf.c"
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


def empty_programs() -> str:
    """A program with kmem_bpf.c's attach points (read from it) and empty bodies."""
    text = SOURCE.read_text()
    raw = re.findall(r"^RAW_TRACEPOINT_PROBE\((\w+)\)", text, re.M)
    classic = re.findall(r"^TRACEPOINT_PROBE\((\w+), (\w+)\) {$", text, re.M)  # not the macro's
    classic += [("memcg", event) for event in re.findall(r"^MEMCG_PROBE\((\w+),", text, re.M)]
    return "\n".join([f"RAW_TRACEPOINT_PROBE({event}) {{ return 0; }}" for event in raw]
                     + [f"TRACEPOINT_PROBE({system}, {event}) {{ return 0; }}" for system, event in classic])


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
    program = empty_programs()
    alone, attached, busy = [], [], []
    run_workload(args.files)  # warm-up
    for _ in range(args.runs):
        alone.append(run_workload(args.files))
        bpf = BPF(text=program)
        try:
            attached.append(run_workload(args.files))
        finally:
            bpf.cleanup()
        busy.append(with_busy_cpu(args.files))
    a, b, c = (statistics.median(times) for times in (alone, attached, busy))
    print(f"{args.files:,} files, {args.runs} interleaved runs, medians; workload on CPU 0")
    print(f"workload alone                                  {a:.3f} s")
    print(f"{program.count('PROBE('):2} empty programs attached ({program.count('RAW_TRACEPOINT')} raw tracepoints)   {b:.3f} s  {b / a:.2f}x")
    print(f"a busy loop on CPU 1, nothing attached          {c:.3f} s  {c / a:.2f}x")


if __name__ == "__main__":
    main()
