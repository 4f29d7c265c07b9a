"""numba's compiled-function cache, placed wherever this process may write.

numba caches next to the source by default; a read-only install (or a user other than
the one who installed it) would make every cached function fail to compile. Import
`njit` from here, never numba's directly.
"""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path


def _writable_cache_dir() -> str | None:
    if "NUMBA_CACHE_DIR" in os.environ or os.access(Path(__file__).resolve().parent.parent, os.W_OK):
        return None
    candidates = [
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chargeplay" / "numba",
        Path(tempfile.gettempdir()) / f"chargeplay-numba-{os.getuid()}",
    ]
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return str(candidate)
    return None


_cache_dir = _writable_cache_dir()
if _cache_dir:
    os.environ["NUMBA_CACHE_DIR"] = _cache_dir

import numba  # noqa: E402  (reads NUMBA_CACHE_DIR when imported)

njit = functools.partial(numba.njit, cache=True, nogil=True)
