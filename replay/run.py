"""`chargeplay replay`: run one trace under several policies and write what each did.

RESULT/summary.json       per policy: charges, stock hits, failures by gfp class, forced
                          charges, reclaim by trigger, peak usage, time above high, stall...
RESULT/timeseries.parquet usage (last and peak in each time bucket), high and max, per policy
RESULT/outcomes.parquet   the outcome of every charge (allocation) operation, per policy
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from replay.input import ReplayInput, build
from replay.ops import (
    LRU_CHARGE, OBJ_ALLOC, OUTCOME, OUTCOMES, PAGE_ALLOC, PAGE_SIZE, RECLAIM_TRIGGERS, UNLIMITED, GfpBits, Limits,
)
from replay.policy import Policy
from replay.reference import Reference
from replay.result import EngineResult
from traces.atomic import make_private_dir, write_json, write_parquet
from traces.kernel_tables import gfp_class_series
from traces.manifest import TraceError
from traces.reader import Trace

CHARGE_OPS = (OBJ_ALLOC, PAGE_ALLOC, LRU_CHARGE)
DEFAULT_RECLAIM_NS_PER_PAGE = 1000
MAX_BUCKETS = 10_000

Engine = Callable[[ReplayInput, Policy, Limits, GfpBits, int], EngineResult]


def reference_engine(data: ReplayInput, policy: Policy, limits: Limits, gfp: GfpBits, resolution_ns: int) -> EngineResult:
    return Reference(data, policy, limits, gfp, resolution_ns).run()


ENGINES: dict[str, Engine] = {"reference": reference_engine}


def limits_for(trace: Trace, memory_max: int | None, memory_high: int | None, swap: bool) -> Limits:
    """The target's limits (the tightest along its ancestors), unless given; in pages."""
    target = trace.manifest.get("target", {})
    chain = [target, *target.get("ancestors", [])]
    recorded_max = min((c["max"] for c in chain if c.get("max")), default=None)
    recorded_high = min((c["high"] for c in chain if c.get("high")), default=None) or target.get("high_requested")
    max_bytes = memory_max if memory_max is not None else recorded_max
    high_bytes = memory_high if memory_high is not None else recorded_high
    if max_bytes is None and high_bytes is None:
        raise TraceError(f"{trace.path}: no memory.max or memory.high was recorded; give --memory-max or --memory-high")
    return Limits(
        max_pages=max_bytes // PAGE_SIZE if max_bytes else UNLIMITED,
        high_pages=high_bytes // PAGE_SIZE if high_bytes else UNLIMITED,
        swap=swap,
        reclaim_ns_per_page=reclaim_cost(trace),
    )


def reclaim_cost(trace: Trace) -> int:
    """ns per reclaimed page, from the trace's own memcg reclaim begin/end pairs (per task)."""
    pairs = (
        trace.events().filter(pl.col("kind").is_in(["reclaim_begin", "reclaim_end"]))
        .select("pid", "kind", "ts_ns", "val").collect()
        .with_columns(pl.col("ts_ns").shift(1).over("pid").alias("began"), pl.col("kind").shift(1).over("pid").alias("before"))
        .filter((pl.col("kind") == "reclaim_end") & (pl.col("before") == "reclaim_begin"))
    )
    pages = int(pairs["val"].sum() or 0)
    if not pages:
        return DEFAULT_RECLAIM_NS_PER_PAGE
    return max(int((pairs["ts_ns"] - pairs["began"]).sum() // pages), 1)


def resolution_for(data: ReplayInput) -> int:
    span = int(data.ts[-1] - data.ts[0]) if len(data) else 0
    return max(1_000_000, math.ceil((span + 1) / MAX_BUCKETS))


def replay(
    trace: Trace, output: Path, policies: list[Policy], limits: Limits, engine: Engine,
    progress: Callable[[str, int], None] = lambda name, done: None,
) -> dict:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"{output} exists and is not an empty directory; choose a new -o path")
    data = build(trace)
    gfp = GfpBits.from_table(trace.gfp_flags)
    resolution = resolution_for(data)
    results = {}
    for done, policy in enumerate(policies):
        progress(policy.name, done)
        results[policy.name] = engine(data, policy, limits, gfp, resolution)
    make_private_dir(output)
    summary = summarize(trace, data, results, limits)
    write_json(output / "summary.json", summary)
    write_parquet(output / "timeseries.parquet", timeseries(data, results, limits).to_arrow())
    write_parquet(output / "outcomes.parquet", outcomes(data, results).to_arrow())
    return summary


def summarize(trace: Trace, data: ReplayInput, results: dict[str, EngineResult], limits: Limits) -> dict:
    classes = gfp_class_series(pl.Series(data.gfp, dtype=pl.UInt64), trace.gfp_flags)
    policies = {}
    for name, r in results.items():
        failed = r.outcome == OUTCOME["failed"]
        stall = {int(pid): int(ns) for pid, ns in zip(data.task_pids, r.stall_ns) if ns}
        policies[name] = {
            **{k: v for k, v in r.counters().items() if k != "resolution_ns"},
            "failed": int(failed.sum()),
            "failed_by_gfp_class": dict(sorted(pl.Series(classes.to_numpy()[failed]).value_counts().iter_rows())),
            "outcomes": {OUTCOMES[code]: int(n) for code, n in enumerate(np.bincount(r.outcome, minlength=len(OUTCOMES))) if n},
            "reclaim_calls": dict(zip(RECLAIM_TRIGGERS, r.reclaim_calls.tolist())),
            "reclaimed_pages": dict(zip(RECLAIM_TRIGGERS, r.reclaimed_pages.tolist())),
            "peak_bytes": r.peak_pages * PAGE_SIZE,
            "seconds_above_high": r.ns_above_high / 1e9,
            "page_seconds_above_high": r.page_ns_above_high / 1e9,
            "stall_ns_total": int(r.stall_ns.sum()),
            "stall_ns_by_pid": stall,
        }
    return {
        "trace": str(trace.path),
        "operations": len(data),
        "limits": {"max_bytes": _bytes(limits.max_pages), "high_bytes": _bytes(limits.high_pages),
                   "swap": limits.swap, "reclaim_ns_per_page": limits.reclaim_ns_per_page},
        "policies": policies,
    }


def _bytes(pages: int) -> int | None:
    return None if pages >= UNLIMITED else pages * PAGE_SIZE


def timeseries(data: ReplayInput, results: dict[str, EngineResult], limits: Limits) -> pl.DataFrame:
    frames = []
    for name, r in results.items():
        frame = pl.DataFrame({"bucket": np.arange(r.bucket_last.size), "last": r.bucket_last, "peak": r.bucket_peak})
        frames.append(
            frame.filter(pl.col("last") >= 0).select(
                pl.lit(name).alias("policy"),
                (pl.col("bucket") * r.resolution_ns).alias("t_ns"),
                (pl.col("last") * PAGE_SIZE).alias("usage_bytes"),
                (pl.col("peak") * PAGE_SIZE).alias("peak_bytes"),
                pl.lit(_bytes(limits.high_pages), pl.Int64).alias("high_bytes"),
                pl.lit(_bytes(limits.max_pages), pl.Int64).alias("max_bytes"),
            )
        )
    return pl.concat(frames)


def outcomes(data: ReplayInput, results: dict[str, EngineResult]) -> pl.DataFrame:
    charges = np.isin(data.op, CHARGE_OPS)
    outcome_type = pl.Enum(OUTCOMES)
    return pl.DataFrame(
        {"row": data.row[charges], **{name: pl.Series(np.array(OUTCOMES)[r.outcome[charges]], dtype=outcome_type)
                                     for name, r in results.items()}}
    )

