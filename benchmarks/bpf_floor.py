"""The floor under any eBPF capture: the overhead workload with programs that do nothing
attached to the tracepoints collect/kmem_bpf.c uses (raw tracepoints for the slab events,
classic ones for the rest, as there).

Whatever a capture program records, the kernel first pays for running a BPF program at
every hit of these tracepoints; this measures that cost alone, on the workload of
benchmarks/capture_overhead.py, interleaved with runs of the workload with nothing attached.

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
        done = subprocess.run([sys.executable, "-c", WORKLOAD, str(files), directory], capture_output=True, text=True, check=True)
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    program = empty_programs()
    alone, attached = [], []
    run_workload(args.files)  # warm-up
    for _ in range(args.runs):
        alone.append(run_workload(args.files))
        bpf = BPF(text=program)
        try:
            attached.append(run_workload(args.files))
        finally:
            bpf.cleanup()
    a, b = statistics.median(alone), statistics.median(attached)
    print(f"{program.count('PROBE(')} empty programs ({program.count('RAW_TRACEPOINT')} raw tracepoints), {args.files:,} files, {args.runs} runs")
    print(f"workload alone   {a:.3f} s (median)")
    print(f"programs attached {b:.3f} s (median)")
    print(f"ratio            {b / a:.2f}x: no eBPF capture of these events can do better here")


if __name__ == "__main__":
    main()
