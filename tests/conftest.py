"""Shared fixtures: live-kernel tests skip with a reason naming what is missing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from collect.tracefs import TracefsError, tracefs_root


def _live_kernel_missing() -> str | None:
    if os.geteuid() != 0:
        return "live capture needs root"
    try:
        tracefs_root()
    except TracefsError as err:
        return f"live capture needs tracefs: {err}"
    return None


@pytest.fixture
def tracefs() -> Path:
    """The mounted tracefs; skips the test when it or root is missing."""
    missing = _live_kernel_missing()
    if missing:
        pytest.skip(missing)
    return tracefs_root()
