"""Rolling event segments: each closed after N events or T seconds, each readable alone.

A segment is written under a temporary name and renamed to events/part-NNNNNN.parquet
when closed, so a collector killed at any point leaves only whole, readable segments.
Rows are buffered and written as row groups of ROW_GROUP_ROWS to keep files compact
while bounding memory.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from traces.atomic import atomic_file, make_private_dir
from traces.schema import EVENT_SCHEMA

ROW_GROUP_ROWS = 64 * 1024

# Dictionary pages for the low-cardinality columns; delta encoding for the monotone
# ones (timestamps, sequential object pseudonyms). Measured: about 2x smaller than
# the defaults on kmem traces. zstd level 3, not 9: 5% larger files, written 40% faster
# (measured on a 1.9 M-event storm trace), and writing is the collector's largest cost.
DELTA_COLUMNS = ("ts_ns", "obj")
WRITER_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=[name for name in EVENT_SCHEMA.names if name not in DELTA_COLUMNS],
    column_encoding={name: "DELTA_BINARY_PACKED" for name in DELTA_COLUMNS},
    write_statistics=["ts_ns"],
)


@dataclass(frozen=True)
class Segment:
    file: str  # relative to the trace directory
    events: int
    first_ts_ns: int
    last_ts_ns: int
    bytes: int


def segment_name(index: int) -> str:
    return f"events/part-{index:06d}.parquet"


class SegmentWriter:
    """Appends event batches (EVENT_SCHEMA tables, time-ordered) to rolling segments."""

    def __init__(
        self,
        trace_dir: Path,
        on_close: Callable[[Segment], None],
        max_events: int = 2_000_000,
        max_seconds: float = 30.0,
    ) -> None:
        self.trace_dir = trace_dir
        self.on_close = on_close
        self.max_events = max_events
        self.max_seconds = max_seconds
        make_private_dir(trace_dir / "events")
        self.index = 0
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self._reset_segment()

    def _reset_segment(self) -> None:
        self.stack: ExitStack | None = None
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.first_ts = self.last_ts = 0
        self.opened_at = time.monotonic()

    def write(self, batch: pa.Table) -> None:
        """Queue a batch; rows reach disk in whole row groups, segments roll by size or age."""
        while batch.num_rows:
            room = self.max_events - self.rows - self.pending_rows
            head, batch = batch.slice(0, room), batch.slice(room)
            self.pending.append(head)
            self.pending_rows += head.num_rows
            if self.pending_rows >= ROW_GROUP_ROWS or self.rows + self.pending_rows >= self.max_events:
                self._flush_pending()
            if self.rows >= self.max_events:
                self.close_segment()
        if self.rows + self.pending_rows and time.monotonic() - self.opened_at >= self.max_seconds:
            self.close_segment()

    def _flush_pending(self) -> None:
        if not self.pending_rows:
            return
        table = pa.concat_tables(self.pending)
        self.pending, self.pending_rows = [], 0
        if self.writer is None:
            self.stack = ExitStack()
            out = self.stack.enter_context(atomic_file(self.trace_dir / segment_name(self.index)))
            self.writer = pq.ParquetWriter(out, EVENT_SCHEMA, **WRITER_OPTIONS)
            self.first_ts = table["ts_ns"][0].as_py()
        self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows
        self.last_ts = table["ts_ns"][-1].as_py()

    def close_segment(self) -> None:
        """Close the open segment under its final name and report it; no-op when empty."""
        self._flush_pending()
        if self.writer is None:
            self.opened_at = time.monotonic()
            return
        self.writer.close()
        self.stack.close()  # fsync + rename to the final name
        name = segment_name(self.index)
        self.on_close(
            Segment(name, self.rows, self.first_ts, self.last_ts, (self.trace_dir / name).stat().st_size)
        )
        self.index += 1
        self._reset_segment()

    def abort(self) -> None:
        """Drop the open segment and its temporary file: after an error only closed segments count."""
        try:
            if self.writer is not None:
                self.writer.close()
        except OSError:
            pass  # a full disk, say: the file goes anyway
        try:
            if self.stack is not None:  # leaves the block with an error: the temporary file is removed
                self.stack.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except OSError:
            pass  # flushing the file's last buffer failed the same way
        self.pending, self.pending_rows = [], 0
        self._reset_segment()
