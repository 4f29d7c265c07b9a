"""Replay speed on a large trace: events per second per policy, beside a plain column scan.

Makes (once, cached) a trace of --events events from a bundled sample with `chargeplay
synth`, then measures on one core:

1. baseline: a polars scan of the columns the replay reads, with a trivial aggregate;
2. input: turning the trace's events into replay operations, segment by segment;
3. each built-in policy alone on the fast engine, fed the prepared operations;
4. all built-in policies in one pass, end to end (`chargeplay replay`, result files included);
and the peak memory (max RSS) of the process. Target: >= 30 million trace events/s per
policy for the engine. It prints figures; it asserts nothing.

    .venv/bin/python benchmarks/replay_speed.py [--events N] [--like SAMPLE] [--cache DIR]
"""
from __future__ import annotations

import argparse
from functools import partial
import resource
import tempfile
import time
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from replay import policy
from replay.input import InputStream
from replay.ops import GfpBits
from replay.run import ENGINES, limits_for, replay, resolution_for
from traces.reader import Trace
from traces.samples import sample_path
from traces.synth import synthesize

COLUMNS = ["ts_ns", "cpu", "pid", "ctx", "kind", "accounted", "failed", "bytes_alloc", "cache", "obj", "order", "gfp",
           "item", "val", "memcg_id"]
TARGET = 30e6


def timed(work) -> tuple[float, object]:
    start = time.perf_counter()
    value = work()
    return time.perf_counter() - start, value


def feed_all(session, batches: list) -> None:
    for batch in batches:
        session.feed(batch)
    session.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000_000)
    parser.add_argument("--like", default="file-storm")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "chargeplay-bench")
    parser.add_argument("--engine", default="fast", choices=sorted(ENGINES))
    args = parser.parse_args()
    console = Console()

    path = args.cache / f"{args.like}-{args.events}"
    if not (path / "manifest.json").exists():
        console.print(f"synthesizing {args.events:,} events like {args.like} into {path} (once)")
        synthesize(Trace.open(sample_path(args.like)), path, args.events)
    trace = Trace.open(path)
    events = trace.events().select(pl.len()).collect().item()
    limits = limits_for(trace, None, 20 << 20, False)
    engine = ENGINES[args.engine]

    rows = []
    scan_s, _ = timed(lambda: trace.events().select(COLUMNS).select(pl.all().null_count()).collect())
    rows.append(("baseline: scan the replay's columns", scan_s, events / scan_s))
    stream = InputStream(trace)
    input_s, batches = timed(lambda: list(stream.batches()))
    operations = sum(len(b) for b in batches)
    rows.append((f"input: events to {operations:,} operations", input_s, events / input_s))
    gfp = GfpBits.from_table(trace.gfp_flags)
    for p in policy.BUILTIN.values():
        session = engine(stream.empty(), p, limits, gfp, resolution_for(stream))
        seconds, _ = timed(partial(feed_all, session, batches))
        rows.append((f"engine {args.engine}: {p.name}", seconds, events / seconds))
    batches.clear()
    with tempfile.TemporaryDirectory() as scratch:
        all_s, _ = timed(lambda: replay(trace, Path(scratch) / "r", list(policy.BUILTIN.values()), limits, engine))
    rows.append(("end to end: all 6 policies in one pass", all_s, events / all_s))

    table = Table(title=f"replay of {events:,} events ({path})")
    for column in ("step", "seconds", "trace events/s", "target"):
        table.add_column(column)
    for step, seconds, rate in rows:
        target = ("met" if rate >= TARGET else "NOT met") if step.startswith("engine") else ""
        table.add_row(step, f"{seconds:.2f}", f"{rate / 1e6:,.1f} M", target)
    console.print(table)
    console.print(f"peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB; "
                  f"limits: high 20 MiB, max {limits.max_pages * 4096 >> 20} MiB; engine target {TARGET / 1e6:.0f} M events/s per policy")


if __name__ == "__main__":
    main()
