"""Reading a trace: lazy polars scans over its closed segments and side tables.

Nothing here loads a whole trace: `events()` is a LazyFrame, so a caller that wants
counts by kind reads two columns, not the trace.

Traces come from elsewhere, so nothing is trusted. `Trace.open` checks the manifest, that
every file is a regular file inside the trace directory, that every Parquet file has
exactly its table's columns and types and decodes, and every value readers rely on (one
pass over the events, which also measures them: `facts`). A trace that fails is
refused with a TraceError naming the file, the column and the row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from traces.checks import TraceError, inside, one_line, parquet_schema, show
from traces.manifest import MAX_BYTES, Manifest, effective_status, read_manifest
from traces.schema import CONTEXTS, EVENT_SCHEMA, KINDS, MEMCG_COLUMNS, SLAB_COLUMNS, SYMBOL_COLUMNS

SIDE_TABLES = {"memcg": MEMCG_COLUMNS, "slabs": SLAB_COLUMNS, "symbols": SYMBOL_COLUMNS}
EVENT_POLARS_SCHEMA = pl.from_arrow(EVENT_SCHEMA.empty_table()).schema
MAX_ORDER = 20  # no kernel has page orders above this (MAX_PAGE_ORDER is at most 15)
MAX_VALUE = 1 << 32  # bytes of one allocation; pages or events of one counter change
MAX_NS = 1 << 62  # 146 years

Check = tuple[str, pl.Expr, str]  # column, true where a row is wrong, what is wrong with it


def _out_of(column: str, low: int, high: int) -> pl.Expr:
    return (pl.col(column) < low) | (pl.col(column) > high)


def event_checks(recorded: int) -> list[Check]:
    """What replay and info rely on, beyond types: a row breaking any of these is refused.
    `recorded`: the events the capture recorded (with those a flight recorder dropped)."""
    ts, kind = pl.col("ts_ns"), pl.col("kind")
    return [
        ("ts_ns", ts.is_null() | _out_of("ts_ns", 0, MAX_NS), f"is null or outside 0..{MAX_NS}"),
        ("cpu", pl.col("cpu").is_null(), "is null"),
        ("pid", pl.col("pid").is_null(), "is null"),
        ("kind", kind.is_null() | ~kind.is_in(KINDS), f"is not one of {', '.join(KINDS)}"),
        ("ctx", ~pl.col("ctx").is_in(CONTEXTS), f"is not one of {', '.join(CONTEXTS)}"),
        ("obj", _out_of("obj", 0, recorded - 1), f"is not a pseudonym (0..{recorded - 1}: one per event recorded at most)"),
        ("bytes_req", _out_of("bytes_req", 0, MAX_VALUE), f"is outside 0..{MAX_VALUE}"),
        ("bytes_alloc", _out_of("bytes_alloc", 0, MAX_VALUE), f"is outside 0..{MAX_VALUE}"),
        ("order", _out_of("order", 0, MAX_ORDER), f"is not a page order (0..{MAX_ORDER})"),
        ("val", _out_of("val", -MAX_VALUE, MAX_VALUE), f"is outside -{MAX_VALUE}..{MAX_VALUE}"),
    ]


SIDE_TABLE_CHECKS: dict[str, list[Check]] = {
    "memcg": [("ts_ns", pl.col("ts_ns").is_null() | _out_of("ts_ns", 0, MAX_NS), f"is null or outside 0..{MAX_NS}")]
    + [(name, _out_of(name, 0, MAX_BYTES), f"is outside 0..{MAX_BYTES}") for name, _, _ in MEMCG_COLUMNS if name != "ts_ns"],
    "slabs": [
        ("name", pl.col("name").is_null() | pl.col("name").is_duplicated(), "is null or names two caches"),
        ("size", pl.col("size").is_null() | _out_of("size", 1, MAX_VALUE), f"is null or outside 1..{MAX_VALUE}"),
        ("order", pl.col("order").is_null() | _out_of("order", 0, MAX_ORDER), f"is not a page order (0..{MAX_ORDER})"),
        ("min_order", pl.col("min_order").is_null() | _out_of("min_order", 0, MAX_ORDER), f"is not a page order (0..{MAX_ORDER})"),
    ],
    "symbols": [("id", pl.col("id").is_null() | pl.col("id").is_duplicated(), "is null or names two symbols")],
}


@dataclass(frozen=True)
class Facts:
    """What the check pass measures on the way: the whole trace's span and CPU range."""

    events: int
    first_ns: int
    last_ns: int
    max_cpu: int


@dataclass(frozen=True)
class Trace:
    path: Path
    manifest: Manifest
    segment_paths: list[Path]  # every closed segment, in order
    segment_rows: list[int]
    facts: Facts

    @classmethod
    def open(cls, path: Path | str) -> "Trace":
        path = Path(path)
        if not path.is_dir():
            raise TraceError(f"{path}: no such trace directory; give the directory `chargeplay collect -o` wrote")
        manifest = read_manifest(path)
        segments = _segments(path, manifest)
        rows = [pq.read_metadata(segment).num_rows for segment in segments]
        for name in SIDE_TABLES:
            table = path / f"{name}.parquet"
            if table.exists() or table.is_symlink():
                _check_table(path, table, SIDE_TABLES[name], pl.scan_parquet(table), SIDE_TABLE_CHECKS[name], [(table, None)])
        dropped = (manifest.get("dropped") or {}).get("events", 0)
        return cls(path, manifest, segments, rows, _event_facts(path, segments, rows, sum(rows) + dropped))

    @property
    def status(self) -> str:
        return effective_status(self.manifest)

    def events(self) -> pl.LazyFrame:
        return _scan(self.segment_paths)

    def side_table(self, name: str) -> pl.LazyFrame | None:
        """memcg, slabs or symbols; None when the capture did not get to write it."""
        path = self.path / f"{name}.parquet"
        return pl.scan_parquet(path) if path.exists() else None

    def last_memcg_sample(self) -> dict | None:
        """The target memcg's counters at the capture's end (memcg.parquet's last sample); None
        without samples."""
        samples = self.side_table("memcg")
        last = samples.sort("ts_ns").last().collect() if samples is not None else None
        return last.row(0, named=True) if last is not None and last.height else None

    @property
    def page_size(self) -> int:
        return self.manifest["kernel"]["page_size"]

    @property
    def gfp_flags(self) -> dict[str, int]:
        return self.manifest["gfp_flags"]


def _scan(segments: list[Path]) -> pl.LazyFrame:
    return pl.scan_parquet(segments) if segments else pl.LazyFrame(schema=EVENT_POLARS_SCHEMA)


def _event_facts(root: Path, segments: list[Path], rows: list[int], recorded: int) -> Facts:
    """One streaming pass over the events: every column decoded, the checks' columns checked
    (a TraceError at the first wrong row), the CPU range measured; then the time order."""
    files = list(zip(segments, rows))
    measured = _check_table(root, None, EVENT_SCHEMA, _scan(segments), event_checks(recorded), files,
                            measure=[pl.col("cpu").max().alias("max_cpu")])
    first, last = _check_time_order(files)
    return Facts(sum(rows), first, last, measured["max_cpu"] or 0)


def _check_time_order(files: list[tuple[Path, int]]) -> tuple[int, int]:
    """Events in time order, checked segment by segment (the order across a whole trace is
    not a streaming query: checked at once, it held every timestamp); the trace's first and
    last event times."""
    ts = pl.col("ts_ns")
    first = last = None
    offset = 0  # rows in the segments before
    for path, rows in files:
        times = pl.scan_parquet(path).select("ts_ns")
        before = ts.shift(1) if last is None else ts.shift(1, fill_value=last)  # the previous segment's last
        early, head, tail = times.select((ts < before).any().alias("early"), ts.first().alias("head"),
                                         ts.last().alias("tail")).collect().row(0)
        if early:
            row, value = times.with_row_index("row").filter(ts < before).head(1).collect().row(0)
            raise TraceError(f"{_locate(files, offset + row)}: ts_ns {show(value)} "
                             "is earlier than the event before it: events are not in time order")
        offset += rows
        if head is not None:
            first = head if first is None else first
            last = tail
    return first or 0, last or 0


def _segments(root: Path, manifest: Manifest) -> list[Path]:
    """The segments on disk, each inside the trace; segments closed after the manifest was last
    written (a collector killed in between) are found too, but one it lists must be there.
    Segments a flight recorder dropped (up to `dropped.through`) are not, though one may remain
    on disk when the collector was killed before removing it."""
    dropped = (manifest.get("dropped") or {}).get("through")
    paths = sorted(p for p in (root / "events").glob("part-*.parquet") if not dropped or p.name > Path(dropped).name)
    for listed in manifest["segments"]:
        path = root / listed["file"]
        inside(root, path)
        if path not in paths:
            raise TraceError(f"{root / 'manifest.json'}: lists segment {listed['file']}, which is not an events/part-*.parquet file")
    for path in paths:
        parquet_schema(root, path, EVENT_SCHEMA)
    return paths


def _check_table(root: Path, path: Path | None, columns: pa.Schema | tuple, frame: pl.LazyFrame, checks: list[Check],
                 files: list[tuple[Path, int | None]], measure: list[pl.Expr] = ()) -> dict:
    """Check a table's columns (`path`: one file; events were checked per segment) and its
    values, in one pass that also computes `measure`; its results by name."""
    if path is not None:
        parquet_schema(root, path, columns)
    flags = [bad.any().alias(f"check{n}") for n, (_, bad, _) in enumerate(checks)]
    decoded = pl.all().null_count().name.prefix("nulls in ")  # every column decodes: damage shows here, not mid-replay
    try:
        found = frame.select(*flags, *measure, decoded).collect(engine="streaming").row(0, named=True)
    except pl.exceptions.PolarsError as err:  # a page that decodes to garbage passes the footer checks
        raise TraceError(f"{files[0][0] if len(files) == 1 else root}: unreadable Parquet ({one_line(err)}); "
                         "remove the file or re-record it") from None
    for n, (column, bad, why) in enumerate(checks):
        if found[f"check{n}"]:
            # without pushdown: damaged row-group statistics could skip the very row the pass found
            row, value = (frame.with_row_index("row").filter(bad).select("row", column).head(1)
                          .collect(optimizations=pl.QueryOptFlags(predicate_pushdown=False)).row(0))
            raise TraceError(f"{_locate(files, row)}: {column} {show(value)} {why}")
    return found


def _locate(files: list[tuple[Path, int | None]], row: int) -> str:
    """'FILE row N' for a row of the concatenation of `files` (rows per file; None: the last)."""
    for path, rows in files:
        if rows is None or row < rows:
            return f"{path} row {row}"
        row -= rows
    raise AssertionError("row beyond the files' rows")
