"""A command's wall time and its own peak memory.

The peak is read through a small Python in between: Linux counts, in a child's max RSS, the
memory of the process that forked it (its high-water mark carries across fork and exec), so a
benchmark that grew first would see its own size in every child it measured.
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

# Runs argv[1:] with stdout discarded, then prints the child's peak RSS (KiB) and exit code.
_BETWEEN = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")


@dataclass
class Measured:
    seconds: float
    peak_bytes: int
    returncode: int
    stderr: str


def run(command: list[str]) -> Measured:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _BETWEEN, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_kib, code = done.stdout.split()[-2:]
    return Measured(seconds, int(peak_kib) * 1024, int(code), done.stderr.strip())
