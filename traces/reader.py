"""Reading a trace: lazy polars scans over its closed segments and side tables.

Nothing here loads a whole trace: `events()` is a LazyFrame, so a caller that wants
counts by kind reads two columns, not the trace.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from traces.manifest import Manifest, TraceError, effective_status, read_manifest
from traces.schema import EVENT_SCHEMA, SCHEMA_VERSION, SCHEMA_VERSION_KEY


@dataclass(frozen=True)
class Trace:
    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: Path | str) -> "Trace":
        path = Path(path)
        if not path.is_dir():
            raise TraceError(f"{path}: no such trace directory; give the directory `chargeplay collect -o` wrote")
        return cls(path, read_manifest(path))

    @property
    def status(self) -> str:
        return effective_status(self.manifest)

    @cached_property
    def segment_paths(self) -> list[Path]:
        """Every closed segment, in order. Segments closed after the manifest was last
        written (a collector killed in between) are found on disk too."""
        paths = sorted((self.path / "events").glob("part-*.parquet"))
        for path in paths:
            _check_segment(path)
        return paths

    def events(self) -> pl.LazyFrame:
        if not self.segment_paths:
            return pl.LazyFrame(schema=pl.from_arrow(EVENT_SCHEMA.empty_table()).schema)
        return pl.scan_parquet(self.segment_paths)

    def side_table(self, name: str) -> pl.LazyFrame | None:
        """memcg, slabs or symbols; None when the capture did not get to write it."""
        path = self.path / f"{name}.parquet"
        if not path.exists():
            return None
        _check_parquet_version(path)
        return pl.scan_parquet(path)

    @property
    def page_size(self) -> int:
        return int(self.manifest.get("kernel", {}).get("page_size") or 4096)

    @property
    def gfp_flags(self) -> dict[str, int]:
        return self.manifest.get("gfp_flags") or {}


def _check_segment(path: Path) -> None:
    _check_parquet_version(path)
    names = pq.read_schema(path).names
    missing = [name for name in EVENT_SCHEMA.names if name not in names]
    if missing:
        raise TraceError(f"{path}: missing columns {', '.join(missing)}; not a chargeplay event segment")


def _check_parquet_version(path: Path) -> None:
    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception as err:  # pyarrow raises several types for damaged files
        raise TraceError(f"{path}: unreadable Parquet ({err}); remove the file or re-record the trace") from None
    version = metadata.get(SCHEMA_VERSION_KEY, b"?").decode()
    if version != str(SCHEMA_VERSION):
        raise TraceError(
            f"{path}: written with trace schema version {version}, this chargeplay reads {SCHEMA_VERSION}"
        )
