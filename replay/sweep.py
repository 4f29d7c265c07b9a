"""`chargeplay sweep`: a trace replayed under each limit of a range, every policy at each,
so that what each limit costs can be charted and the smallest one that meets a criterion
named (analyze.criterion). One pass over the trace per limit, all policies in it; nothing
per operation is kept. `sweep_path` is the whole sweep of one trace as a task a worker
process runs (chargeplay.fleet): plain arguments in, a table out."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import polars as pl

from replay.input import InputStream
from replay.ops import Limits, PAGE_SIZE
from replay.policy import Policy
from replay.run import ENGINES, Engine, PolicyRuns, limits_document, limits_for
from traces.reader import Trace

OTHER_LIMIT = {"memory_high": "memory_max", "memory_max": "memory_high"}  # the one a sweep keeps, by the one it varies
# Each policy's figures at each limit (summary.json's names), and the reclaim calls summed.
FIGURES = ("peak_bytes", "seconds_above_high", "page_seconds_above_high", "stretch", "run_seconds", "stall_ns_total",
           "throttle_ns", "failed", "forced", "oom_kills", "fallbacks", "other_node", "failcnt", "high_events", "max_events",
           "reclaimed_file_pages")


def limits_at(base: Limits, swept: str, value_bytes: int) -> Limits:
    """`base` with the swept limit at value_bytes."""
    pages = value_bytes // PAGE_SIZE
    return replace(base, high_pages=pages) if swept == "memory_high" else replace(base, max_pages=pages)


def sweep(trace: Trace, policies: list[Policy], base: Limits, swept: str, values: list[int], engine: type[Engine],
          progress: Callable[[int], None] = lambda done: None) -> pl.DataFrame:
    """A row per limit and policy: the limits replayed with and the policy's figures.
    `progress` is told how many (limit, policy) replays have begun."""
    stream = InputStream(trace)
    rows, begun = [], 0
    for value in values:
        progress(begun)
        limits = limits_at(base, swept, value)
        begun += len(policies)
        document = limits_document(limits)
        for name, figures in _figures(trace, stream, policies, limits, engine).items():
            rows.append({"policy": name, "limit_bytes": value, "max_bytes": document["max_bytes"], "high_bytes": document["high_bytes"],
                         **{figure: figures[figure] for figure in FIGURES},
                         "reclaim_calls": sum(figures["reclaim_calls"].values())})
    progress(begun)
    return pl.DataFrame(rows, schema_overrides={"max_bytes": pl.Int64, "high_bytes": pl.Int64})


def _figures(trace: Trace, stream: InputStream, policies: list[Policy], limits: Limits, engine: type[Engine]) -> dict[str, dict]:
    """Every policy's figures under one set of limits (its engines gone when it returns)."""
    runs = PolicyRuns(trace, stream, policies, limits, engine)
    for batch in stream.batches():
        runs.feed(batch)
    return runs.figures(runs.finish())


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep, the same for every trace of a fleet."""
    policies: list[Policy]
    swept: str  # "memory_high" or "memory_max"
    values: list[int]  # bytes
    fixed: int | None  # the other limit, bytes (None: each trace's own)
    swap: bool = False
    closed_loop: bool = True
    clock: str = "task"
    engine: str = "fast"
    cost: dict | None = None  # the reclaim cost of another trace (replay.run.cost_from), else each trace's own

    def base(self, trace: Trace) -> Limits:
        """The trace's limits with the swept one at its first value and the other as given."""
        sizes = {self.swept: self.values[0], OTHER_LIMIT[self.swept]: self.fixed}
        return limits_for(trace, sizes["memory_max"], sizes["memory_high"], self.swap, self.closed_loop, self.clock, self.cost)


def sweep_path(path: str, spec: SweepSpec, progress: Callable[[int], None] = lambda done: None) -> pl.DataFrame:
    """The sweep of the trace at `path`, with a `trace` column naming it."""
    trace = Trace.open(path)
    table = sweep(trace, spec.policies, spec.base(trace), spec.swept, spec.values, ENGINES[spec.engine], progress)
    return table.select(pl.lit(str(path)).alias("trace"), pl.all())
