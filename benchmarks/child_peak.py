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

# Runs argv[2:] (its stdout discarded if argv[1] is "quiet"), then prints the child's peak RSS
# (KiB) and exit code as the last line of stderr.
_BETWEEN = ("import resource, subprocess, sys; "
            "code = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL if sys.argv[1] == 'quiet' else None); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code, file=sys.stderr)")


@dataclass
class Measured:
    seconds: float
    peak_bytes: int
    returncode: int
    stderr: str


def run(command: list[str]) -> Measured:
    start = time.perf_counter()
    done = subprocess.run(between(command, keep_stdout=False), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    stderr, peak_bytes, code = peak_of(done.stderr)
    return Measured(seconds, peak_bytes, code, stderr)


def between(command: list[str], keep_stdout: bool) -> list[str]:
    """`command` run through the small Python that measures it (its stderr ends with the figures)."""
    return [sys.executable, "-c", _BETWEEN, "keep" if keep_stdout else "quiet", *command]


def peak_of(stderr: str) -> tuple[str, int, int]:
    """The command's own stderr, its peak RSS in bytes and its exit code, from `between`'s stderr."""
    *rest, last = stderr.rstrip("\n").split("\n")
    peak_kib, code = last.split()
    return "\n".join(rest).strip(), int(peak_kib) * 1024, int(code)
