"""What `chargeplay info` says about a trace, computed with lazy scans of a few columns."""
from __future__ import annotations

from typing import Any

import polars as pl

from traces.gfp_columns import gfp_class_expr
from traces.manifest import losses
from traces.reader import Trace
from traces.schema import ALLOC_KINDS

TOP = 10  # rows of each "top" table: the caches and call sites that charged the most


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
            pl.col("bytes_alloc").filter(pl.col("accounted") & ~pl.col("failed")).sum().alias("kmem_bytes"),
        )
        .sort("allocations", descending=True)
        .collect()
    )
    charged = events.filter(pl.col("kind").is_in(ALLOC_KINDS) & pl.col("accounted") & ~pl.col("failed"))
    symbols = trace.side_table("symbols")
    call_sites = top_charged(charged.filter(pl.col("call_site").is_not_null()), "call_site")
    if symbols is not None:
        call_sites = call_sites.join(symbols.rename({"id": "call_site"}), on="call_site", how="left", maintain_order="left")
    span = trace.facts.last_ns
    start, end = manifest.get("start", {}), manifest.get("end", {})
    duration_ns = (end["trace_ns"] - start["trace_ns"]) if end.get("trace_ns") and start.get("trace_ns") else span
    events_by_kind = dict(zip(by_kind["kind"].to_list(), by_kind["events"].to_list()))
    total = sum(events_by_kind.values())
    disk = sum(path.stat().st_size for path in trace.segment_paths)
    cpu_nodes = manifest.get("kernel", {}).get("cpu_nodes")
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
        "events_by_kind": events_by_kind,
        "kinds_from": kinds_from(manifest.get("kinds", {})),
        "kmem_bytes": int(allocs["kmem_bytes"].sum()) if allocs.height else 0,
        "gfp_classes": allocs.to_dicts(),
        "memcg": memcg_counters(trace, events_by_kind.get("reclaim_begin", 0)),
        "top_caches": top_charged(charged.filter(pl.col("cache").is_not_null()), "cache").collect().to_dicts(),
        "top_call_sites": call_sites.collect().to_dicts(),
        "page_orders": events.filter(pl.col("kind") == "page_alloc").group_by("order").agg(
            pl.len().alias("allocations"), pl.col("accounted").sum().alias("kmem_charged")).sort("order").collect().to_dicts(),
        "contexts": dict(events.filter(pl.col("kind").is_in(ALLOC_KINDS)).group_by("ctx").agg(pl.len()).sort("ctx")
                         .collect().iter_rows()),
        "lost_events": manifest.get("lost", {}).get("total", 0),
        "skipped_calls": manifest.get("ebpf", {}).get("skipped", {}).get("total", 0),  # eBPF: calls the kernel skipped
        "losses": losses(manifest),  # when and what, if the capture missed events
        "segments": len(trace.segment_paths),
        "bytes_on_disk": disk,
        "bytes_per_event": round(disk / total, 2) if total else None,
        "dropped": manifest.get("dropped"),  # a flight recorder's oldest segments, removed
        "cpu_nodes": cpu_nodes,
        "objects_by_node": objects_by_node(charged, cpu_nodes),
    }


def objects_by_node(charged: pl.LazyFrame, cpu_nodes: list[int] | None) -> dict[int, int]:
    """Charged slab objects by the NUMA node each prefers: its kmalloc_node's, else its CPU's
    (replay.input's rule, but for a node without CPUs, which replay takes for the CPU's); empty
    for a trace without a CPU-to-node map."""
    if not cpu_nodes:
        return {}
    cpu_node = pl.col("cpu").replace_strict(list(range(len(cpu_nodes))), cpu_nodes, default=0, return_dtype=pl.Int16)
    preferred = pl.when(pl.col("node") >= 0).then(pl.col("node")).otherwise(cpu_node).alias("preferred")
    return dict(charged.filter(pl.col("kind").is_in(["kmalloc", "kmem_cache_alloc"])).group_by(preferred).agg(pl.len())
                .sort("preferred").collect().iter_rows())


def top_charged(charged: pl.LazyFrame, key: str) -> pl.LazyFrame:
    """The TOP values of `key` by the kmem bytes their charged allocations add up to."""
    return (charged.group_by(key).agg(pl.len().alias("allocations"), pl.col("bytes_alloc").sum().alias("kmem_bytes"))
            .sort("kmem_bytes", key, descending=[True, False]).head(TOP))


def memcg_counters(trace: Trace, reclaims: int) -> dict[str, Any] | None:
    """The target memcg's own counters at the capture's end and the memcg reclaims its tasks
    made (reclaim_begin events); None without counter samples."""
    row = trace.last_memcg_sample()
    if row is None:
        return None
    return {"usage": row["usage"], "peak": row["max_usage"], "max_events": row["failcnt"], "high_events": row["events_high"],
            "oom_kills": row["events_oom_kill"], "reclaims": reclaims}
