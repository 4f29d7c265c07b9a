"""Crash-safe file writes: nothing ever sits under its final name half-written.

Every file is written under a hidden temporary name in the same directory, fsynced,
then renamed over the final name, and the directory is fsynced so the rename survives
a power cut. Trace files are readable by their owner only: traces come from production.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from traces.errors import UserError

FILE_MODE = 0o600
DIR_MODE = 0o700


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is complete; readers ignore dot files."""
    return path.with_name(f".{path.name}.tmp")


def make_private_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def check_new_output(path: Path) -> None:
    """Refuse an output directory that holds anything: nothing already recorded is overwritten;
    and a symlink: what is written under -o stays there."""
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; give the output directory itself")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} exists and is not an empty directory; choose a new -o path")


def check_new_file(path: Path) -> None:
    """Refuse an output file that exists (or a directory, or a link, at its name): the same
    rule as for output directories, nothing already written is overwritten."""
    if path.is_symlink() or path.exists():
        raise UserError(f"{path} exists; choose a new -o path (nothing is overwritten)")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Open a private temporary file that becomes `path` only if the block completes. The
    temporary file is created afresh, never opened through a link someone left under its
    name (in a shared directory that would write wherever the link points); the rename
    replaces a link at `path` itself, not its target."""
    tmp = temporary_name(path)
    tmp.unlink(missing_ok=True)  # an earlier run's leftover, or a planted link (unlinking removes the link only)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, value: object) -> None:
    with atomic_file(path) as out:
        out.write(json.dumps(value, indent=2).encode() + b"\n")


def write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_file(path) as out:
        pq.write_table(table, out, compression="zstd")
