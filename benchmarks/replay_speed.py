"""Replay speed on a large trace: events per second per policy, beside a plain column scan.

Makes (once, cached) a trace of --events events from a bundled sample with `chargeplay
synth`, then measures:

1. baseline: a polars scan of the columns the replay reads, with a trivial aggregate;
2. input: turning the trace's events into replay operations, segment by segment;
3. each built-in policy alone on the fast engine (one core), fed the prepared operations;
4. end to end: `chargeplay replay` as a command, from its start to its result files written,
   with one policy and with all built-in policies in one pass, each with its peak memory; and
   the same command on the small sample the trace was made from: about the fixed cost
   (imports, loading the compiled code, opening and writing files) every replay pays.
Targets: the engine >= 30 M trace events/s per policy; end to end >= 20 M events/s with one
policy and >= 6 M with all, in at most 1.5 GiB. It prints figures; it asserts nothing.

    .venv/bin/python benchmarks/replay_speed.py [--events N] [--like SAMPLE] [--cache DIR] [--end-to-end-only]

(--end-to-end-only skips steps 1-3, whose prepared operations are held at once: 2 GiB for 50 M events.)
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

import child_peak
from replay import policy
from replay.input import InputStream
from replay.ops import GfpBits
from replay.run import ENGINES, limits_for, resolution_for
from traces.reader import Trace
from traces.samples import sample_path
from traces.synth import synthesize

COLUMNS = ["ts_ns", "cpu", "pid", "ctx", "kind", "accounted", "failed", "bytes_alloc", "cache", "obj", "order", "gfp",
           "item", "val", "memcg_id"]
ENGINE_TARGET = 30e6
END_TO_END_TARGETS = {"one policy": 20e6, "all policies": 6e6}
MEMORY_TARGET = 1.5 * (1 << 30)
HIGH = "20M"


def timed(work) -> tuple[float, object]:
    start = time.perf_counter()
    value = work()
    return time.perf_counter() - start, value


def feed_all(session, batches: list) -> None:
    for batch in batches:
        session.feed(batch)
    session.finish()


def core_rows(trace: Trace, events: int, engine_name: str, closed_loop: bool) -> list[tuple[str, float, float, str]]:
    """Steps 1-3, in this process."""
    limits = limits_for(trace, None, 20 << 20, False, closed_loop)
    engine = ENGINES[engine_name]
    scan_s, _ = timed(lambda: trace.events().select(COLUMNS).select(pl.all().null_count()).collect())
    rows = [("baseline: scan the replay's columns", scan_s, events / scan_s, "")]
    stream = InputStream(trace)
    input_s, batches = timed(lambda: list(stream.batches()))
    rows.append((f"input: events to {sum(len(b) for b in batches):,} operations", input_s, events / input_s, ""))
    gfp = GfpBits.from_table(trace.gfp_flags)
    for p in policy.BUILTIN.values():
        session = engine(stream.empty(), p, limits, gfp, resolution_for(stream))
        session.feed(stream.empty())  # compiled (or loaded from numba's cache) before the clock starts
        seconds, _ = timed(partial(feed_all, session, batches))
        rows.append((f"engine {engine_name}: {p.name}", seconds, events / seconds,
                     "met" if events / seconds >= ENGINE_TARGET else "NOT met"))
    return rows


def end_to_end(trace_dir: Path, policies: list[str], engine_name: str, closed_loop: bool) -> child_peak.Measured:
    """`chargeplay replay` as a child process, from its start to its result files written."""
    with tempfile.TemporaryDirectory() as scratch:
        measured = child_peak.run(
            [sys.executable, "-m", "chargeplay.cli", "replay", str(trace_dir), "-o", str(Path(scratch) / "r"),
             "--memory-high", HIGH, "--engine", engine_name, *(arg for p in policies for arg in ("--policy", p)),
             *([] if closed_loop else ["--open-loop"])])
    if measured.returncode:
        print(measured.stderr, file=sys.stderr)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000_000)
    parser.add_argument("--like", default="file-storm")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "chargeplay-bench")
    parser.add_argument("--engine", default="fast", choices=sorted(ENGINES))
    parser.add_argument("--end-to-end-only", action="store_true", help="skip the steps that hold every operation")
    parser.add_argument("--open-loop", action="store_true", help="replay in open loop (default: closed, as replay does)")
    args = parser.parse_args()
    console = Console()

    path = args.cache / f"{args.like}-{args.events}"
    if not (path / "manifest.json").exists():
        console.print(f"synthesizing {args.events:,} events like {args.like} into {path} (once)")
        synthesize(Trace.open(sample_path(args.like)), path, args.events)
    trace = Trace.open(path)
    events = trace.facts.events
    closed_loop = not args.open_loop
    rows = [] if args.end_to_end_only else core_rows(trace, events, args.engine, closed_loop)
    fixed = end_to_end(sample_path(args.like), ["mainline-6.18"], args.engine, closed_loop)  # start-up and finish, next to no events
    rows.append((f"fixed cost: end to end on the {args.like} sample ({Trace.open(sample_path(args.like)).facts.events:,} "
                 f"events), one policy; {events / END_TO_END_TARGETS['one policy']:.2f} s is the one-policy target's "
                 f"budget", fixed.seconds, 0.0, ""))
    for label, policies in (("one policy", ["mainline-6.18"]), ("all policies", list(policy.BUILTIN))):
        run = end_to_end(path, policies, args.engine, closed_loop)
        rate = events / run.seconds
        met = rate >= END_TO_END_TARGETS[label] and run.peak_bytes <= MEMORY_TARGET and run.returncode == 0
        rows.append((f"end to end, {label} ({len(policies)}): {run.peak_bytes / (1 << 30):.2f} GiB peak, "
                     f"exit {run.returncode}", run.seconds, rate, "met" if met else "NOT met"))

    table = Table(title=f"{'closed' if closed_loop else 'open'}-loop replay of {events:,} events ({path})")
    for column in ("step", "seconds", "trace events/s", "target"):
        table.add_column(column)
    for step, seconds, rate, target in rows:
        table.add_row(step, f"{seconds:.2f}", f"{rate / 1e6:,.1f} M" if rate else "", target)
    console.print(table)
    if not args.end_to_end_only:
        console.print(f"this process's peak memory (every operation held at once): "
                      f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    console.print(f"memory.high {HIGH}; targets: engine {ENGINE_TARGET / 1e6:.0f} M events/s per policy; end to end "
                  + ", ".join(f"{label} {rate / 1e6:.0f} M events/s" for label, rate in END_TO_END_TARGETS.items())
                  + f", peak memory {MEMORY_TARGET / (1 << 30):.1f} GiB")


if __name__ == "__main__":
    main()
