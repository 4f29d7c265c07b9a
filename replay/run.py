"""`chargeplay replay`: run one trace under several policies and write what each did, in
the result format of replay.result_format (summary.json, timeseries.parquet, outcomes.parquet)."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import polars as pl

from replay.input import InputStream, ReplayInput
from replay import result_format
from replay.ops import (
    DEFAULT_HZ, MEMCG_CHARGE_BATCH_6X, OUTCOME, OUTCOMES, PAGE_SIZE, RECLAIM_TRIGGERS, SWAP_CLUSTER_MAX, UNLIMITED, GfpBits, Limits,
)
from replay.policy import Policy
from replay.engine import Compiled, Interpreted
from replay.result import EngineResult
from traces.atomic import check_new_output, make_private_dir
from traces.gfp import gfp_class
from traces.manifest import TraceError
from traces.reader import Trace

# Without reclaim in the trace to measure: a memcg reclaim call that finds nothing took 45 to 65 us (median per
# trace) in the development VM's zoo traces, and each page reclaimed 0.4 to 0.9 us more.
DEFAULT_RECLAIM_NS_PER_CALL = 50_000
DEFAULT_RECLAIM_NS_PER_PAGE = 1000
MAX_BUCKETS = 10_000

# What the trace cannot show: how many pages of the target each CPU's stock held when it began
# (Limits.stock_phase). Which batch crosses memory.high moves with it, and with that whether a task
# takes one throttle more (up to a 2-s sleep each): the socket-storm sample's closed-loop run under
# 8M/4M takes 167 to 245 s over these phases. A spread replays every policy at each.
STOCK_PHASES = range(0, MEMCG_CHARGE_BATCH_6X, 8)


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


def limits_for(trace: Trace, memory_max: int | None, memory_high: int | None, swap: bool, closed_loop: bool = True,
               clock: str = "task", cost: dict | None = None) -> Limits:
    """The target's limits (the tightest along its ancestors), unless given; in pages. The reclaim
    cost is the trace's own (reclaim_cost) unless `cost` gives another's (cost_from)."""
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
        **(cost or reclaim_cost(trace)),
        hz=trace.manifest["kernel"].get("hz") or DEFAULT_HZ,
        closed_loop=closed_loop,
        clock=clock,
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


def reclaim_calls(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """The trace's memcg reclaim calls, its reclaim begin/end pairs (per task): the ns each took
    and the pages it reclaimed."""
    pairs = (
        trace.events().filter(pl.col("kind").is_in(["reclaim_begin", "reclaim_end"]))
        .select("pid", "kind", "ts_ns", "val").collect()
        .with_columns(pl.col("ts_ns").shift(1).over("pid").alias("began"), pl.col("kind").shift(1).over("pid").alias("before"))
        .filter((pl.col("kind") == "reclaim_end") & (pl.col("before") == "reclaim_begin"))
    )
    return (pairs["ts_ns"] - pairs["began"]).to_numpy(), pairs["val"].fill_null(0).to_numpy()


def reclaim_cost(trace: Trace) -> dict:
    """What a memcg reclaim costs the task that makes it, from the trace's own reclaim calls:
    ns per call, the median duration of the calls that reclaimed nothing, and ns per page, the
    time the calls that reclaimed a batch (SWAP_CLUSTER_MAX) or more took beyond that, over
    their pages. Most calls near an OOM kill reclaim nothing, so a cost per page alone (their
    time over the few pages some call got) came out at milliseconds a page. A call the
    scheduler preempted takes milliseconds: the median per call, and per page the calls slower
    a page than the 95th percentile are left out. Per page a total, not a median: on 6.12 a
    page takes either about 8 us or about 40 us (the lab), and the median, in the faster mode,
    halved the kernel's reclaim time. Without a batch reclaimed, a page costs the default
    (reclaim_cost_from "default")."""
    took, pages = reclaim_calls(trace)
    if (pages == 0).any():
        per_call = int(np.median(took[pages == 0]))
    else:  # every call reclaimed (or none was made): the default, but no more than the quickest took
        per_call = int(took.min(initial=DEFAULT_RECLAIM_NS_PER_CALL))
    busy = pages >= SWAP_CLUSTER_MAX  # a few pages cannot be told from a call's own cost
    if not busy.any():
        return {"reclaim_ns_per_call": per_call, "reclaim_ns_per_page": DEFAULT_RECLAIM_NS_PER_PAGE, "reclaim_cost_from": "default"}
    beyond, batch = np.maximum(took[busy] - per_call, 0), pages[busy]
    per_page = beyond / batch
    kept = per_page <= np.percentile(per_page, 95)
    return {"reclaim_ns_per_call": per_call, "reclaim_ns_per_page": int(beyond[kept].sum() / batch[kept].sum()),
            "reclaim_cost_from": "trace"}


def cost_from(path: Path | None) -> dict | None:
    """The reclaim cost of another trace (replay --reclaim-cost-from), None without one: a capture of
    the same workload on the same host under a limit that made it reclaim, for a trace that has no
    reclaim of its own (a page's cost measured so carried to another run of the workload within
    about a third in the lab; a call's did not)."""
    if path is None:
        return None
    cost = reclaim_cost(Trace.open(path))
    if cost["reclaim_cost_from"] == "default":
        raise TraceError(f"{path}: no memcg reclaim of {SWAP_CLUSTER_MAX} pages or more to take a reclaim cost from; "
                         "give a capture of the workload under a memory limit low enough to make it reclaim")
    return {**cost, "reclaim_cost_from": str(path)}


def resolution_for(stream: InputStream) -> int:
    return max(1_000_000, math.ceil((stream.t_last - stream.t_first + 1) / MAX_BUCKETS))


class PolicyRuns:
    """Every policy's engine over one trace under one set of limits, fed batch by batch, with
    what the summary counts besides the engines' own results."""

    def __init__(self, trace: Trace, stream: InputStream, policies: list[Policy], limits: Limits, engine: type[Engine]) -> None:
        self.trace, self.stream, self.limits = trace, stream, limits
        start = stream.empty()
        gfp = GfpBits.from_table(trace.gfp_flags)
        self.engines = {p.name: engine(start, p, limits, gfp, resolution_for(stream)) for p in policies}
        self.failed_gfp: dict[str, Counter[int]] = {name: Counter() for name in self.engines}  # failed charges per gfp value
        self.outcome_counts = {name: np.zeros(len(OUTCOMES), np.int64) for name in self.engines}
        self.spans = TaskSpans(start.tasks)

    def feed(self, batch: ReplayInput, before_each: Callable[[str], None] = lambda name: None) -> dict[str, np.ndarray]:
        """The next batch through every policy; each one's outcomes."""
        outcomes = {}
        for name, session in self.engines.items():
            before_each(name)
            outcomes[name] = session.feed(batch)
            self.outcome_counts[name] += np.bincount(outcomes[name], minlength=len(OUTCOMES))
            values, counts = np.unique(batch.gfp[outcomes[name] == OUTCOME["failed"]], return_counts=True)
            self.failed_gfp[name].update(dict(zip(values.tolist(), counts.tolist())))
        self.spans.add(batch)
        return outcomes

    def finish(self) -> dict[str, EngineResult]:
        return {name: session.finish() for name, session in self.engines.items()}

    def figures(self, results: dict[str, EngineResult]) -> dict[str, dict]:
        """Each policy's figures, as summary.json's `policies` holds them."""
        trace_ns = max(self.stream.t_last - self.stream.t_first, 1)
        task_pids = self.stream.task_pids
        figures = {}
        for name, r in results.items():
            classes = Counter()
            for bits, count in self.failed_gfp[name].items():
                classes[gfp_class(bits, self.trace.gfp_flags)] += count
            figures[name] = {
                **{k: v for k, v in r.counters().items() if k != "resolution_ns"},
                "failed": int(self.outcome_counts[name][OUTCOME["failed"]]),
                "failed_by_gfp_class": dict(sorted(classes.items())),
                "outcomes": {OUTCOMES[code]: int(n) for code, n in enumerate(self.outcome_counts[name]) if n},
                "reclaim_calls": dict(zip(RECLAIM_TRIGGERS, r.reclaim_calls.tolist())),
                "reclaimed_pages": dict(zip(RECLAIM_TRIGGERS, r.reclaimed_pages.tolist())),
                "peak_bytes": r.peak_pages * PAGE_SIZE,
                "seconds_above_high": r.ns_above_high / 1e9,
                "page_seconds_above_high": r.page_ns_above_high / 1e9,
                "stall_ns_total": int(r.stall_ns.sum()),
                "stall_ns_by_pid": {int(pid): int(ns) for pid, ns in zip(task_pids, r.stall_ns) if ns},
                "run_seconds": r.end_ns / 1e9,
                "stretch": max(r.end_ns, trace_ns) / trace_ns - 1,
                "delay_ns_by_pid": {int(pid): int(ns) for pid, ns in zip(task_pids, r.delay_ns) if ns},
                "stretch_by_pid": {int(pid): float(x) for pid, x in zip(task_pids, self.spans.stretch(r.delay_ns)) if x},
            }
        return figures


def replay(
    trace: Trace, output: Path, policies: list[Policy], limits: Limits, engine: type[Engine],
    progress: Callable[[str, int], None] = lambda step, done: None, spread: bool = False,
) -> dict:
    """Replay every policy in one pass over the trace's segments; write the result files. With
    `spread`, every policy is replayed at each of STOCK_PHASES as well, in the same pass, and
    summary.json's `spread` holds its result_format.SPREAD_FIGURES at each (outcomes and time
    series: at the limits' own phase)."""
    check_new_output(output)
    stream = InputStream(trace)
    phases = stock_phases(limits, spread)
    runs = [PolicyRuns(trace, stream, policies, replace(limits, stock_phase=phase), engine) for phase in phases]
    make_private_dir(output)
    done = 0
    with result_format.OutcomeWriter(output, list(runs[0].engines), trace.gfp_flags) as outcomes:
        for index, (batch, about) in enumerate(stream.described_batches()):
            for phase, policy_runs in zip(phases, runs):

                def before_each(name: str) -> None:
                    nonlocal done
                    progress(f"segment {index + 1}/{stream.segments}: {name}" + (f", stock phase {phase}" if spread else ""), done)
                    done += 1

                outcome = policy_runs.feed(batch, before_each)
                if policy_runs is runs[0]:
                    outcomes.write(batch, about, outcome)
    results = runs[0].finish()
    engine_name = next(name for name, known in ENGINES.items() if known is engine)
    summary = result_format.summary_document(trace, output, engine_name, policies, limits_document(limits), runs[0].figures(results))
    if spread:
        at_phase = [summary["policies"], *(r.figures(r.finish()) for r in runs[1:])]
        summary["spread"] = {"stock_phases": phases, "policies": {
            p.name: {name: [figures[p.name][name] for figures in at_phase] for name in result_format.SPREAD_FIGURES}
            for p in policies}}
    result_format.write_summary(output, summary)
    result_format.write_timeseries(output, timeseries(results, limits))
    return summary


def stock_phases(limits: Limits, spread: bool) -> list[int]:
    """The stock phases a replay runs at: the limits' own first, then (spread) the others of STOCK_PHASES."""
    return [limits.stock_phase, *(phase for phase in STOCK_PHASES if spread and phase != limits.stock_phase)]


def progress_steps(trace: Trace, policies: list[Policy], limits: Limits, spread: bool) -> int:
    """How many steps replay() reports: one per segment, policy and stock phase."""
    return len(trace.segment_paths) * len(policies) * len(stock_phases(limits, spread))


class TaskSpans:
    """When each task's first and last operations are in the trace: its run time, which the
    closed loop stretches."""

    def __init__(self, tasks: int) -> None:
        self.first = np.full(tasks, np.iinfo(np.int64).max, np.int64)
        self.last = np.full(tasks, np.iinfo(np.int64).min, np.int64)

    def add(self, batch: ReplayInput) -> None:
        np.minimum.at(self.first, batch.task, batch.ts)
        np.maximum.at(self.last, batch.task, batch.ts)

    def stretch(self, delay_ns: np.ndarray) -> np.ndarray:
        """Each task's delay over its run time in the trace (a task of one operation: over 1 ns)."""
        return delay_ns / np.maximum(self.last - self.first, 1)


def limits_document(limits: Limits) -> dict:
    """The limits as summary.json says them: bytes (None: unlimited) and the reclaim and loop settings."""
    return {"max_bytes": _bytes(limits.max_pages), "high_bytes": _bytes(limits.high_pages),
            "swap": limits.swap, "reclaim_ns_per_call": limits.reclaim_ns_per_call,
            "reclaim_ns_per_page": limits.reclaim_ns_per_page, "reclaim_cost_from": limits.reclaim_cost_from,
            "rcu_grace_ns": limits.rcu_grace_ns,
            "hz": limits.hz, "loop": "closed" if limits.closed_loop else "open", "clock": limits.clock, "stock_phase": limits.stock_phase}


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
                pl.lit(r.resolution_ns, pl.Int64).alias("bucket_ns"),
                (pl.col("last") * PAGE_SIZE).alias("usage_bytes"),
                (pl.col("peak") * PAGE_SIZE).alias("peak_bytes"),
                pl.lit(_bytes(limits.high_pages), pl.Int64).alias("high_bytes"),
                pl.lit(_bytes(limits.max_pages), pl.Int64).alias("max_bytes"),
            )
        )
    return pl.concat(frames)
