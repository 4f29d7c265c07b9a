"""The result directory `chargeplay replay -o` writes, defined once: replay writes it with
this module, `report` and `validate` read it with this module.

RESULT/summary.json        what produced the result (chargeplay version, engine, each policy's
                           knobs, the limits, the trace's content id and where it lies) and, per
                           policy, charges, stock hits, failures by gfp class, reclaim by trigger,
                           peak usage, time above high, stall...
RESULT/timeseries.parquet  per policy and time bucket (t_ns its start, bucket_ns its width): the usage
                           after its last operation and its peak, high and max
RESULT/outcomes.parquet    every charge operation: what it charged, with which gfp class, where
                           (call site, cache), for whom (pid, comm), and its outcome under each
                           policy, side by side; analysis needs nothing else of the trace's events

A result names its trace by a content id and by its path relative to the result (and,
should the result move alone, its absolute path): `report` finds it from any directory and
refuses a trace that moved away or changed since.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from common.units import format_bytes
from common.version import __version__
from replay.input import ReplayInput
from replay.ops import FAILED_CHARGE, LRU_CHARGE, OBJ_ALLOC, OOM_CHARGE, OUTCOMES, PAGE_ALLOC, PAGE_SIZE, POOL_ANON, POOL_FILE, POOL_KMEM_PAGES, RECLAIM_TRIGGERS, SWAP_CLUSTER_MAX
from replay.policy import RESERVED_NAMES, Policy
from traces.atomic import atomic_file, write_json, write_parquet
from traces.checks import Int, MapOf, Optional, TraceError, check_shape, one_line, parquet_schema, read_json, show
from traces.gfp import gfp_class
from traces.manifest import MANIFEST, MAX_BYTES
from traces.reader import SIDE_TABLES, Trace

SUMMARY, TIMESERIES, OUTCOMES_FILE = "summary.json", "timeseries.parquet", "outcomes.parquet"
FILES = (SUMMARY, TIMESERIES, OUTCOMES_FILE)
# 1: outcomes held only the trace row, and summary.json the trace's path as typed; 2: open loop only (no
# limits.loop, run_seconds, stretch, delay_ns_by_pid); 3: timeseries without bucket_ns; 4: no other_node
RESULT_FORMAT = 5

# What a charge operation charged (outcomes.parquet's `kind`): its operation and, for the
# memcg stat changes replayed as LRU charges, the pool (replay.input says which is which).
CHARGE_KINDS: dict[str, tuple[int, int | None]] = {
    "slab object": (OBJ_ALLOC, None),  # kmalloc, kmem_cache_alloc
    "kmem page": (PAGE_ALLOC, None),  # __GFP_ACCOUNT pages: kmalloc_large, page tables...
    "kernel stack": (LRU_CHARGE, POOL_KMEM_PAGES),  # NR_KERNEL_STACK_KB, charged with GFP_KERNEL
    "file page": (LRU_CHARGE, POOL_FILE),
    "anon or shmem page": (LRU_CHARGE, POOL_ANON),  # shmem sits on the anon LRU
    "OOM charge": (OOM_CHARGE, None),  # the charge the capturing kernel OOM-killed for
    "failed charge": (FAILED_CHARGE, None),  # one the capturing kernel failed without a kill (THP, dying task)
}
CHARGE_OPS = sorted({op for op, _ in CHARGE_KINDS.values()})

# outcomes.parquet: these columns describe each charge, then one outcome column per policy
# (replay.ops.OUTCOMES). Their names are replay.policy.RESERVED_NAMES, which no policy may take.
CHARGE_COLUMNS = pa.schema([
    ("row", pa.int64()),  # the event's row in the trace
    ("kind", pa.dictionary(pa.int8(), pa.string())),  # what was charged: a CHARGE_KINDS name
    ("gfp_class", pa.dictionary(pa.int8(), pa.string())),  # of the gfp the replay charged with
    ("call_site", pa.int32()),  # id into the trace's symbols.parquet; null: none (LRU pages, stacks, OOM charges)
    ("cache", pa.dictionary(pa.int32(), pa.string())),  # a slab object's cache, else null
    ("pid", pa.int32()),
    ("comm", pa.dictionary(pa.int32(), pa.string())),  # the task's name at the event; null: unknown
])
OUTCOME_TYPE = pa.dictionary(pa.int8(), pa.string())

# Per policy and time bucket: the bucket's start (from the trace's first event) and width, the usage after its last
# operation, the highest usage within it, and the limits replayed.
TIMESERIES_SCHEMA = pa.schema([("policy", pa.string()), ("t_ns", pa.int64()), ("bucket_ns", pa.int64()), ("usage_bytes", pa.int64()),
                               ("peak_bytes", pa.int64()), ("high_bytes", pa.int64()), ("max_bytes", pa.int64())])

COUNT = Int(0, 2**63 - 1)
LIMIT = (None, Int(0, MAX_BYTES))
POLICY_SHAPE = {
    "description": str,
    "knobs": MapOf((str, int, bool)),
    **{name: COUNT for name in ("peak_bytes", "failed", "forced", "stall_ns_total", "oom_kills", "fallbacks",
                                          "other_node")},
    **{name: float for name in ("seconds_above_high", "page_seconds_above_high", "run_seconds", "stretch")},
    **{name: {trigger: COUNT for trigger in RECLAIM_TRIGGERS} for name in ("reclaim_calls", "reclaimed_pages")},
    "failed_by_gfp_class": MapOf(COUNT),
    "stall_ns_by_pid": MapOf(COUNT, integer_keys=True),
    "delay_ns_by_pid": MapOf(COUNT, integer_keys=True),
}
# replay --spread: these figures of each policy at each stock phase (replay.run.STOCK_PHASES).
SPREAD_FIGURES = ("run_seconds", "stall_ns_total", "high_events", "seconds_above_high", "page_seconds_above_high",
                  "peak_bytes", "failed", "oom_kills")
# What readers rely on in summary.json (other keys are free).
SUMMARY_SHAPE = {
    "chargeplay_version": str,
    "engine": str,
    "trace": {"content_id": str, "path": str, "absolute_path": str},
    "limits": {"max_bytes": LIMIT, "high_bytes": LIMIT, "swap": bool, "reclaim_ns_per_call": COUNT, "reclaim_ns_per_page": COUNT,
               "loop": str},
    "policies": MapOf(POLICY_SHAPE),
    "spread": Optional({"stock_phases": [Int(0, 63)], "policies": MapOf({name: [float] for name in SPREAD_FIGURES})}),
}


def loop_description(limits: dict) -> str:
    """summary.json's loop: open, or closed with which tasks share a clock (`clock`, which
    results from before the knob lack: each task had its own)."""
    return "open" if limits["loop"] == "open" else f"closed ({limits.get('clock', 'task')} clocks)"


def page_cache_reclaimed(summary: dict) -> str | None:
    """Why the replay may under-count (its reclaim took page cache, which the workload may read
    again: no trace shows those refaults), or None. Said whatever the amount: how much of it the
    workload reads again, which decides the miss, is what the trace cannot tell. Results from
    before the figure say nothing."""
    taken = {name: figures.get("reclaimed_file_pages", 0) for name, figures in summary["policies"].items()}
    most = max(taken, key=taken.get, default=None)
    if most is None or not taken[most]:
        return None
    return (f"reclaim took page cache (up to {format_bytes(taken[most] * PAGE_SIZE)}, in {most}): a workload that "
            "reads it again is charged for it again (a refault), which no trace shows, so where page cache is the "
            "working set reclaim, high events and stall are under-counted (summary.json: reclaimed_file_pages)")


def reclaim_cost_guessed(summary: dict) -> str | None:
    """Why the replay's stall may be far off (its reclaim took pages at the default cost a page: the
    trace has no reclaim to measure one by), or None. Results from before the figure say nothing."""
    limits = summary["limits"]
    reclaimed = any(sum(figures["reclaimed_pages"].values()) for figures in summary["policies"].values())
    if limits.get("reclaim_cost_from") != "default" or not reclaimed:
        return None
    return (f"reclaim took pages, each at the default cost of {limits['reclaim_ns_per_page'] / 1000:g} us: the trace has no "
            f"memcg reclaim of a batch ({SWAP_CLUSTER_MAX} pages) to measure its host's by (the emulated lab kernels took "
            "25 to 55 us a page), so stall and stretch are only as right as that guess; replay with --reclaim-cost-from "
            "a capture of the workload under a limit that makes it reclaim")


def reclaim_cost_description(limits: dict) -> str:
    """The reclaim cost the replay charged, and where it came from (results from before it say nothing)."""
    source = limits.get("reclaim_cost_from")
    said = {"trace": "measured in the trace", "default": "a page at the default: the trace reclaims no batch to measure it by"}
    cost = f"reclaim {limits['reclaim_ns_per_call']:,} ns/call + {limits['reclaim_ns_per_page']:,} ns/page"
    return f"{cost} ({said.get(source, f'measured in {source}')})" if source else cost


# -- writing -----------------------------------------------------------------------------------

def summary_document(trace: Trace, output: Path, engine: str, policies: list[Policy], limits: dict,
                     figures: dict[str, dict]) -> dict:
    """summary.json: what produced the result, then each policy's knobs and figures."""
    return {
        "result_format": RESULT_FORMAT,
        "chargeplay_version": __version__,
        "engine": engine,
        "trace": {"content_id": content_id(trace), "path": os.path.relpath(trace.path.resolve(), output.resolve()),
                  "absolute_path": str(trace.path.resolve()),
                  "lost": {"events": trace.manifest["lost"]["total"], "spans": trace.manifest["lost"].get("spans")}},
        "limits": limits,
        "policies": {p.name: {"description": p.description, "knobs": p.knobs(), **figures[p.name]} for p in policies},
    }


def write_summary(output: Path, summary: dict) -> None:
    write_json(output / SUMMARY, summary)


def write_timeseries(output: Path, series: pl.DataFrame) -> None:
    write_parquet(output / TIMESERIES, series.to_arrow().cast(TIMESERIES_SCHEMA))


class OutcomeWriter:
    """outcomes.parquet, written batch by batch as the replay produces outcomes."""

    def __init__(self, output: Path, policies: list[str], gfp_flags: dict[str, int]) -> None:
        self.policies, self.gfp_flags = policies, gfp_flags
        self.schema = pa.schema([*CHARGE_COLUMNS, *((name, OUTCOME_TYPE) for name in policies)])
        self.stack = ExitStack()
        self.writer = pq.ParquetWriter(self.stack.enter_context(atomic_file(output / OUTCOMES_FILE)), self.schema,
                                       compression="zstd")

    def __enter__(self) -> "OutcomeWriter":
        return self

    def write(self, batch: ReplayInput, about: pa.Table, outcomes: dict[str, np.ndarray]) -> None:
        """The charges of one batch: `about` holds the call_site and comm of every operation."""
        charges = np.isin(batch.op, CHARGE_OPS)
        about = about.filter(pa.array(charges))
        gfp = pa.array(batch.gfp[charges]).dictionary_encode()  # few distinct values: each is classified once
        gfp_classes = pa.array([gfp_class(bits, self.gfp_flags) for bits in gfp.dictionary.to_pylist()], pa.string()).dictionary_encode()
        cache = batch.cache[charges]
        columns = [
            pa.array(batch.row[charges]),
            _labels(charge_kinds(batch.op[charges], batch.pool[charges]), list(CHARGE_KINDS), pa.int8()),
            gfp_classes.take(gfp.indices).cast(CHARGE_COLUMNS.field("gfp_class").type),
            about.column("call_site").cast(pa.int32()),
            pa.DictionaryArray.from_arrays(pa.array(cache, mask=cache < 0), pa.array(batch.cache_names, pa.string())),
            pa.array(batch.task_pids[batch.task[charges]], pa.int32()),
            about.column("comm").cast(CHARGE_COLUMNS.field("comm").type),
            *(_labels(outcomes[name][charges], OUTCOMES, pa.int8()) for name in self.policies),
        ]
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))

    def __exit__(self, *exc: object) -> None:
        self.writer.close()
        self.stack.__exit__(*exc)


def charge_kinds(op: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """What each charge operation charged: its index in CHARGE_KINDS."""
    matches = [(op == kind_op) & (True if kind_pool is None else pool == kind_pool) for kind_op, kind_pool in CHARGE_KINDS.values()]
    return np.select(matches, np.arange(len(CHARGE_KINDS)), -1)


def _labels(codes: np.ndarray, names: list[str] | tuple[str, ...], index: pa.DataType) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, index), pa.array(names, pa.string()))


def content_id(trace: Trace) -> str:
    """A trace's identity, cheap to compute: a hash over its manifest and the footer (row
    groups, sizes, column statistics) of each of its Parquet files, never their events."""
    digest = hashlib.sha256((trace.path / MANIFEST).read_bytes())
    tables = [trace.path / f"{name}.parquet" for name in SIDE_TABLES]
    for path in [*trace.segment_paths, *(table for table in tables if table.exists())]:
        digest.update(f"\0{path.relative_to(trace.path)}\0{path.stat().st_size}\0".encode())
        digest.update(_parquet_footer(path))
    return digest.hexdigest()


def _parquet_footer(path: Path) -> bytes:
    """A Parquet file's metadata as stored: its last 8 bytes are the footer's length and PAR1."""
    with open(path, "rb") as file:
        file.seek(-8, os.SEEK_END)
        length = int.from_bytes(file.read(4), "little")
        file.seek(-8 - length, os.SEEK_END)
        return file.read(length)


# -- reading -----------------------------------------------------------------------------------

def read_summary(result: Path) -> dict:
    """summary.json, refused (TraceError) unless the result is all there, of this format and shape."""
    if not result.is_dir():
        raise TraceError(f"{result}: no such result directory; give a directory `chargeplay replay -o` wrote")
    missing = [name for name in FILES if not (result / name).exists() and not (result / name).is_symlink()]
    if missing:
        raise TraceError(f"{result}: no {', '.join(missing)}; give a directory `chargeplay replay -o` wrote")
    path = result / SUMMARY
    summary = read_json(result, path)
    if type(summary) is dict and summary.get("result_format") != RESULT_FORMAT:
        raise TraceError(f"{path}: result format {show(summary.get('result_format'))}, this chargeplay reads {RESULT_FORMAT}; "
                         "re-run chargeplay replay")
    check_shape(summary, SUMMARY_SHAPE, str(path))
    if not summary["policies"]:
        raise TraceError(f"{path}: no policies in it; re-run chargeplay replay")
    if "spread" in summary:
        check_spread(summary, path)
    reserved = [name for name in summary["policies"] if name in RESERVED_NAMES]
    if reserved:
        raise TraceError(f"{path}: {show(reserved[0])} cannot name a policy; not a summary chargeplay wrote")
    return summary


def check_spread(summary: dict, path: Path) -> None:
    """A spread has every policy of the summary, each figure once per stock phase."""
    spread = summary["spread"]
    phases = len(spread["stock_phases"])
    if not phases or set(spread["policies"]) != set(summary["policies"]) or any(
            len(values) != phases for figures in spread["policies"].values() for values in figures.values()):
        raise TraceError(f"{path}: its spread does not give every policy's figures at each of its {phases} stock phases; "
                         "re-run chargeplay replay --spread")


def read_timeseries(result: Path) -> pl.DataFrame:
    return pl.read_parquet(result / TIMESERIES)


def open_result(result: Path) -> tuple[dict, Trace]:
    """A result's summary and trace, refused (TraceError) unless its files are all there,
    inside it, of the shape and columns replay writes, and its trace is found, unchanged,
    with every outcome's row a row of it."""
    summary = read_summary(result)
    parquet_schema(result, result / TIMESERIES, TIMESERIES_SCHEMA, versioned=False)
    outcomes = pa.schema([*CHARGE_COLUMNS, *((name, OUTCOME_TYPE) for name in summary["policies"])])
    parquet_schema(result, result / OUTCOMES_FILE, outcomes, versioned=False)
    trace = find_trace(result, summary["trace"])
    check_rows(result, trace)
    return summary, trace


def find_trace(result: Path, recorded: dict) -> Trace:
    """The trace a result replayed: at its path relative to the result, else at its absolute
    path (the result moved alone), as long as its content id is the one recorded."""
    places = dict.fromkeys(p.resolve() for p in (result / recorded["path"], Path(recorded["absolute_path"])) if p.is_dir())
    if not places:
        raise TraceError(f"{result / SUMMARY}: its trace is gone from {recorded['path']} (relative to the result) and "
                         f"{recorded['absolute_path']}; move the trace back or re-run chargeplay replay")
    for place in places:
        trace = Trace.open(place)
        if content_id(trace) == recorded["content_id"]:
            return trace
    raise TraceError(f"{' and '.join(map(str, places))}: not the trace this result replayed (its content changed since); "
                     "re-run chargeplay replay on it")


def check_rows(result: Path, trace: Trace) -> None:
    """Every outcome's row is a row of the trace, each once, in order."""
    events = trace.facts.events
    try:
        found = pl.scan_parquet(result / OUTCOMES_FILE).select(
            pl.col("row").null_count().alias("nulls"), pl.col("row").min().alias("low"), pl.col("row").max().alias("high"),
            (pl.col("row").diff() <= 0).any().alias("disorder"),
        ).collect().row(0, named=True)
    except pl.exceptions.PolarsError as err:
        raise TraceError(f"{result / OUTCOMES_FILE}: unreadable Parquet ({one_line(err)}); re-run chargeplay replay") from None
    if found["nulls"] or found["disorder"] or (found["high"] is not None and (found["low"] < 0 or found["high"] >= events)):
        raise TraceError(f"{result / OUTCOMES_FILE}: its rows are not rows of {trace.path} ({events} events) "
                         "in order; re-run chargeplay replay")


def outcome_codes(column: pa.DictionaryArray) -> np.ndarray:
    """Outcome codes (indices into OUTCOMES) of a policy's outcome column; Parquet keeps only
    the values a row group uses, so its own dictionary is translated."""
    names = column.dictionary.to_pylist()
    unknown = [name for name in names if name not in OUTCOMES]
    if unknown or column.null_count:
        raise TraceError(f"{OUTCOMES_FILE}: outcome {show(unknown[0] if unknown else None)} is not one of {', '.join(OUTCOMES)}")
    translate = np.array([OUTCOMES.index(name) for name in names], dtype=np.int64)
    return translate[column.indices.to_numpy(zero_copy_only=False)]
