"""What `chargeplay info` says about a trace, computed with lazy scans of a few columns."""
from __future__ import annotations

from typing import Any

import polars as pl

from traces.gfp_columns import gfp_class_expr
from traces.reader import Trace
from traces.schema import ALLOC_KINDS

def kinds_from(kinds: dict[str, dict]) -> dict[str, str]:
    """Per kind, in a line, where its events came from on the capturing kernel: the tracepoint,
    and the columns it could not give as such (inferred, null), or why there are none."""
    lines = {}
    for kind, entry in kinds.items():
        if "unavailable" in entry:
            lines[kind] = f"unavailable: {entry['unavailable']}"
            continue
        caveats = [f"{column} inferred" for column in entry.get("inferred", {})] + [f"{column} null" for column in entry.get("null", {})]
        lines[kind] = entry["tracepoint"] + (f" ({', '.join(caveats)})" if caveats else "")
    return lines


def summarize(trace: Trace) -> dict[str, Any]:
    manifest = trace.manifest
    events = trace.events()
    by_kind = events.group_by("kind").agg(pl.len().alias("events")).sort("events", descending=True).collect()
    allocs = (
        events.filter(pl.col("kind").is_in(ALLOC_KINDS))
        .select("gfp", "accounted", "failed", "bytes_alloc")
        .with_columns(gfp_class_expr("gfp", trace.gfp_flags).alias("gfp_class"))
        .group_by("gfp_class")
        .agg(
            pl.len().alias("allocations"),
            pl.col("accounted").sum().alias("accounted"),
            pl.col("failed").sum().alias("failed"),
            pl.col("bytes_alloc").filter(pl.col("accounted") & ~pl.col("failed")).sum().alias("accounted_bytes"),
        )
        .sort("allocations", descending=True)
        .collect()
    )
    span = trace.facts.last_ns
    start, end = manifest.get("start", {}), manifest.get("end", {})
    duration_ns = (end["trace_ns"] - start["trace_ns"]) if end.get("trace_ns") and start.get("trace_ns") else span
    total = int(by_kind["events"].sum()) if by_kind.height else 0
    disk = sum(path.stat().st_size for path in trace.segment_paths)
    return {
        "path": str(trace.path),
        "status": trace.status,
        "stop_reason": manifest.get("stop_reason"),
        "kernel": manifest.get("kernel", {}).get("release"),
        "backend": manifest.get("backend"),
        "target": {k: manifest.get("target", {}).get(k) for k in ("cgroup_path", "cgroup_version", "max", "high", "command")},
        "start": start.get("wall"),
        "duration_s": round((duration_ns or 0) / 1e9, 3),
        "events": total,
        "events_by_kind": dict(zip(by_kind["kind"].to_list(), by_kind["events"].to_list())),
        "kinds_from": kinds_from(manifest.get("kinds", {})),
        "accounted_bytes": int(allocs["accounted_bytes"].sum()) if allocs.height else 0,
        "gfp_classes": allocs.to_dicts(),
        "lost_events": manifest.get("lost", {}).get("total", 0),
        "segments": len(trace.segment_paths),
        "bytes_on_disk": disk,
        "bytes_per_event": round(disk / total, 2) if total else None,
        "dropped": manifest.get("dropped"),  # a flight recorder's oldest segments, removed
    }
