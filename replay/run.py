"""`chargeplay replay`: run one trace under several policies and write what each did, in
the result format of replay.result_format (summary.json, timeseries.parquet, outcomes.parquet)."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import polars as pl

from replay.input import InputStream, ReplayInput
from replay import result_format
from replay.ops import OUTCOME, OUTCOMES, PAGE_SIZE, RECLAIM_TRIGGERS, UNLIMITED, GfpBits, Limits
from replay.policy import Policy
from replay.engine import Compiled, Interpreted
from replay.result import EngineResult
from traces.atomic import check_new_output, make_private_dir
from traces.gfp import gfp_class
from traces.manifest import TraceError
from traces.reader import Trace

DEFAULT_RECLAIM_NS_PER_PAGE = 1000
MAX_BUCKETS = 10_000

class Engine(Protocol):
    """One policy's replay, fed the trace's operations batch by batch."""

    def __init__(self, start: ReplayInput, policy: Policy, limits: Limits, gfp: GfpBits, resolution_ns: int) -> None: ...
    def feed(self, batch: ReplayInput) -> np.ndarray: ...
    def finish(self) -> EngineResult: ...


ENGINES: dict[str, type[Engine]] = {"fast": Compiled, "reference": Interpreted}


def replay_whole(engine: type[Engine], data: ReplayInput, policy: Policy, limits: Limits, gfp: GfpBits,
                 resolution_ns: int) -> EngineResult:
    """One policy over operations held at once (tests, small inputs): outcomes included."""
    session = engine(data, policy, limits, gfp, resolution_ns)
    outcome = session.feed(data)
    result = session.finish()
    result.outcome = outcome
    return result


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


# The memcg's stat events are where the model sees page cache and anon memory charged.
STAT_KINDS = ("memcg_state", "memcg_lruvec_state")


def unseen_charges(trace: Trace) -> str | None:
    """Why the replay of this trace misses charges (its kernel gave no memcg stat events to the
    capture), or None."""
    kinds = trace.manifest.get("kinds", {})
    missing = {kinds[kind]["unavailable"] for kind in STAT_KINDS if "unavailable" in kinds.get(kind, {})}
    if not missing:
        return None
    return (f"{trace.path}: no memcg stat events ({'; '.join(sorted(missing))}): page cache and anon memory are not "
            "replayed, so usage, reclaim and OOM kills are under-counted (capture with --backend tracefs, "
            "which records them through kprobes)")


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


def resolution_for(stream: InputStream) -> int:
    return max(1_000_000, math.ceil((stream.t_last - stream.t_first + 1) / MAX_BUCKETS))


def replay(
    trace: Trace, output: Path, policies: list[Policy], limits: Limits, engine: type[Engine],
    progress: Callable[[str, int], None] = lambda step, done: None,
) -> dict:
    """Replay every policy in one pass over the trace's segments; write the result files."""
    check_new_output(output)
    stream = InputStream(trace)
    gfp = GfpBits.from_table(trace.gfp_flags)
    start = stream.empty()
    engines = {p.name: engine(start, p, limits, gfp, resolution_for(stream)) for p in policies}
    make_private_dir(output)
    failed_gfp: dict[str, Counter[int]] = {name: Counter() for name in engines}  # failed charges per gfp value
    outcome_counts = {name: np.zeros(len(OUTCOMES), np.int64) for name in engines}
    done = 0
    with result_format.OutcomeWriter(output, list(engines), trace.gfp_flags) as outcomes:
        for index, (batch, about) in enumerate(stream.described_batches()):
            batch_outcomes = {}
            for name, session in engines.items():
                progress(f"segment {index + 1}/{stream.segments}: {name}", done)
                batch_outcomes[name] = session.feed(batch)
                outcome_counts[name] += np.bincount(batch_outcomes[name], minlength=len(OUTCOMES))
                values, counts = np.unique(batch.gfp[batch_outcomes[name] == OUTCOME["failed"]], return_counts=True)
                failed_gfp[name].update(dict(zip(values.tolist(), counts.tolist())))
                done += 1
            outcomes.write(batch, about, batch_outcomes)
    results = {name: session.finish() for name, session in engines.items()}
    engine_name = next(name for name, known in ENGINES.items() if known is engine)
    summary = summarize(trace, output, engine_name, policies, stream, results, outcome_counts, failed_gfp, limits)
    result_format.write_summary(output, summary)
    result_format.write_timeseries(output, timeseries(results, limits))
    return summary


def summarize(
    trace: Trace, output: Path, engine: str, policies: list[Policy], stream: InputStream, results: dict[str, EngineResult],
    outcome_counts: dict[str, np.ndarray], failed_gfp: dict[str, Counter[int]], limits: Limits,
) -> dict:
    figures = {}
    for name, r in results.items():
        classes = Counter()
        for bits, count in failed_gfp[name].items():
            classes[gfp_class(bits, trace.gfp_flags)] += count
        figures[name] = {
            **{k: v for k, v in r.counters().items() if k != "resolution_ns"},
            "failed": int(outcome_counts[name][OUTCOME["failed"]]),
            "failed_by_gfp_class": dict(sorted(classes.items())),
            "outcomes": {OUTCOMES[code]: int(n) for code, n in enumerate(outcome_counts[name]) if n},
            "reclaim_calls": dict(zip(RECLAIM_TRIGGERS, r.reclaim_calls.tolist())),
            "reclaimed_pages": dict(zip(RECLAIM_TRIGGERS, r.reclaimed_pages.tolist())),
            "peak_bytes": r.peak_pages * PAGE_SIZE,
            "seconds_above_high": r.ns_above_high / 1e9,
            "page_seconds_above_high": r.page_ns_above_high / 1e9,
            "stall_ns_total": int(r.stall_ns.sum()),
            "stall_ns_by_pid": {int(pid): int(ns) for pid, ns in zip(stream.task_pids, r.stall_ns) if ns},
        }
    limits_bytes = {"max_bytes": _bytes(limits.max_pages), "high_bytes": _bytes(limits.high_pages),
                    "swap": limits.swap, "reclaim_ns_per_page": limits.reclaim_ns_per_page, "rcu_grace_ns": limits.rcu_grace_ns}
    return result_format.summary_document(trace, output, engine, policies, limits_bytes, figures)


def _bytes(pages: int) -> int | None:
    return None if pages >= UNLIMITED else pages * PAGE_SIZE


def timeseries(results: dict[str, EngineResult], limits: Limits) -> pl.DataFrame:
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
