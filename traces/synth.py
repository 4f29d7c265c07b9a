"""`chargeplay synth`: a large trace made from a real one, for benchmarks and stress tests.

The sample's events are laid end to end as many times as needed: each copy is shifted
in time (by the sample's span plus one millisecond) and in object pseudonyms (by the
sample's largest one plus one), so allocations still pair with their own frees and the
copy reads as the same workload running again. Side tables are the sample's. Copies are
written one at a time: memory stays that of one copy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import polars as pl

from traces.atomic import atomic_file, check_new_output, make_private_dir, write_json
from traces.errors import UserError
from traces.manifest import MANIFEST
from traces.reader import Trace
from traces.schema import EVENT_SCHEMA
from traces.segments import Segment, SegmentWriter

GAP_NS = 1_000_000
SIDE_TABLES = ("memcg.parquet", "slabs.parquet", "symbols.parquet")


def synthesize(like: Trace, output: Path, events: int, progress: Callable[[int], None] = lambda written: None) -> int:
    """Write a trace of about `events` events (whole copies of `like`); returns the count."""
    check_new_output(output)
    tile = like.events().collect()
    if tile.height == 0:
        raise UserError(f"{like.path} has no events to copy")
    span = int(tile["ts_ns"].max()) + GAP_NS
    obj_step = int(tile["obj"].max() or 0) + 1
    make_private_dir(output)
    manifest = dict(like.manifest, segments=[], events=0, status="complete", stop_reason=f"synthesized from {like.path}")
    writer = SegmentWriter(output, lambda segment: _closed(manifest, segment), max_seconds=float("inf"))  # the collector's segment size
    written = copy = 0
    while written < events:
        shifted = tile.with_columns(pl.col("ts_ns") + copy * span, pl.col("obj") + copy * obj_step)
        writer.write(shifted.to_arrow().cast(EVENT_SCHEMA))
        written += tile.height
        copy += 1
        progress(written)
    writer.close_segment()
    for name in SIDE_TABLES:
        if (like.path / name).exists():
            with atomic_file(output / name) as out:
                out.write((like.path / name).read_bytes())
    start_ns = (manifest.get("start") or {}).get("trace_ns") or 0
    manifest["end"] = dict(manifest.get("end") or {}, trace_ns=start_ns + copy * span)
    write_json(output / MANIFEST, manifest)
    return written


def _closed(manifest: dict, segment: Segment) -> None:
    manifest["segments"].append(segment.__dict__)
    manifest["events"] += segment.events
