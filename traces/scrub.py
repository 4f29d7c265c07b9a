"""A copy of a trace fit to share outside the team that captured it.

Task names (comm) can name customers, services or build hosts, and pids tie events to a
host's process table; the capture's command line and cgroup paths say what ran where. A
scrubbed copy keeps everything the replay and the report use and replaces those:

- comm: a keyed hash (`comm-` and 8 hex digits, the key random and forgotten: the same name
  gets the same hash within the copy, and nobody can test a guess against it), or null;
- pid, and the victim pid of oom events: renumbered 1, 2, ... in order of first appearance;
- manifest: the workload's command, cgroup paths and the collector's process identity go.

Raw addresses (addresses/, from `collect --keep-addresses`) are never copied.
"""
from __future__ import annotations

import hashlib
import math
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable

import polars as pl
from traces.atomic import atomic_file, check_new_output, make_private_dir, write_json
from traces.errors import UserError
from traces.manifest import MANIFEST, TraceError
from traces.reader import Trace
from traces.schema import EVENT_SCHEMA
from traces.segments import SegmentWriter

COMM_CHOICES = ("hash", "drop", "keep")
PID_CHOICES = ("renumber", "keep")
SIDE_TABLES = ("memcg.parquet", "slabs.parquet", "symbols.parquet")
SCRUBBED = "(scrubbed)"


def comm_hasher() -> Callable[[str], str]:
    """A keyed hash of task names with a key made here and never stored."""
    key = secrets.token_bytes(32)
    return lambda comm: "comm-" + hashlib.blake2b(comm.encode(), key=key, digest_size=4).hexdigest()


def pid_numbers(events: pl.LazyFrame) -> dict[int, int]:
    """1, 2, ... for every pid (event pids, then oom victims) in order of first appearance."""
    seen = pl.concat([
        events.select(pl.col("pid").cast(pl.Int64)),
        events.filter(pl.col("kind") == "oom").select(pl.col("val").alias("pid")),
    ]).unique(maintain_order=True).collect()["pid"]
    return {pid: number for number, pid in enumerate(seen.to_list(), start=1)}


def scrub_manifest(manifest: dict, status: str) -> dict:
    scrubbed = {**manifest, "status": status, "scrubbed": True}
    target = dict(manifest.get("target") or {})
    target["command"] = [SCRUBBED] if target.get("command") else None
    target["cgroup_path"] = SCRUBBED
    target["ancestors"] = [{**ancestor, "path": SCRUBBED} for ancestor in target.get("ancestors") or []]
    scrubbed["target"] = target
    scrubbed["collector"] = {}  # its pid, boot id and start time identify the host's process
    scrubbed.pop("addresses_kept", None)
    return scrubbed


def check_request(trace: Trace, output: Path, comm: str, pid: str) -> None:
    """UserError unless `trace` can be scrubbed into `output` this way."""
    if comm not in COMM_CHOICES:
        raise UserError(f"--comm {comm}: choose one of {', '.join(COMM_CHOICES)}")
    if pid not in PID_CHOICES:
        raise UserError(f"--pid {pid}: choose one of {', '.join(PID_CHOICES)}")
    if trace.status == "recording":
        raise TraceError(f"{trace.path}: its capture is still running; scrub it when the capture has ended")
    check_new_output(output)


def scrub(trace: Trace, output: Path, comm: str = "hash", pid: str = "renumber", progress: Callable[[int, int], None] | None = None) -> int:
    """Write a scrubbed copy of `trace` to `output` (new); returns the events copied."""
    check_request(trace, output, comm, pid)
    source = trace.path
    make_private_dir(output)
    segments: list[dict] = []
    writer = SegmentWriter(output, lambda segment: segments.append(segment.__dict__), max_events=sys.maxsize, max_seconds=math.inf)
    numbers = pid_numbers(trace.events()) if pid == "renumber" else None
    hashed, comm_hashes = comm_hasher(), {}
    total = 0
    for index, path in enumerate(trace.segment_paths):
        events = pl.read_parquet(path)
        if numbers is not None:
            victim = pl.col("val").replace_strict(numbers, default=pl.col("val"), return_dtype=pl.Int64)
            events = events.with_columns(
                pl.col("pid").replace_strict(numbers, return_dtype=pl.Int32),
                pl.when(pl.col("kind") == "oom").then(victim).otherwise(pl.col("val")).alias("val"),
            )
        if comm == "drop":
            events = events.with_columns(pl.lit(None, pl.String).alias("comm"))
        elif comm == "hash":
            comm_hashes.update({name: hashed(name) for name in events["comm"].unique().drop_nulls() if name not in comm_hashes})
            events = events.with_columns(pl.col("comm").replace_strict(comm_hashes, default=None, return_dtype=pl.String))
        writer.write(events.to_arrow().cast(EVENT_SCHEMA))
        writer.close_segment()  # a segment for each of the source's
        total += events.height
        if progress is not None:
            progress(index + 1, len(trace.segment_paths))
    for table in SIDE_TABLES:
        if (source / table).exists():
            with atomic_file(output / table) as out, open(source / table, "rb") as original:
                shutil.copyfileobj(original, out)
    write_json(output / MANIFEST, {**scrub_manifest(trace.manifest, trace.status), "segments": segments, "events": total})
    return total
