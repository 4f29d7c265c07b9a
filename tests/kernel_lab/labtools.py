"""Helpers for the lab tests, which boot real kernels under qemu: they skip where qemu or
virtme-ng is missing (the `vng` fixture, tests/conftest.py), and fail where a lab kernel is
missing or does not boot (make lab-packages installs them)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def lab(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """The lab's own command line, as `make lab` runs it."""
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=CHECKOUT, capture_output=True, text=True,
                          timeout=timeout)
