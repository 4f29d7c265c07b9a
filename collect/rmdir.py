"""Removing kernel directories (tracefs instances, cgroups) that stay busy for a moment."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


def rmdir_patiently(path: Path, timeout: float, before_each_try: Callable[[], None] = lambda: None) -> None:
    """rmdir `path`, retrying while the kernel says it is busy (a dying reader still holds an
    instance open; a killed task has not left its cgroup yet); the last OSError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        before_each_try()
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
