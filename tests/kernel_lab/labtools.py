"""Helpers for the lab tests, which boot real kernels under qemu: they skip where qemu or
virtme-ng is missing, and fail where a lab kernel is missing or does not boot (make
lab-packages installs them)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import kernels

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def vng() -> Path:
    try:
        return kernels.vng()
    except kernels.LabError as why:
        pytest.skip(str(why))


def lab(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """The lab's own command line, as `make lab` runs it."""
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=CHECKOUT, capture_output=True, text=True,
                          timeout=timeout)
