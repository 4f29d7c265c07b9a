"""Reading a replay result directory (what `chargeplay replay -o` wrote) and its trace."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl

from traces.kernel_tables import gfp_class_expr
from traces.manifest import TraceError
from traces.reader import Trace

FILES = ("summary.json", "timeseries.parquet", "outcomes.parquet")
# Outcomes that differ only by bookkeeping (which stock or slab paid) are the same
# experience for the allocating task: it got its memory without trouble.
EXPERIENCE = {"stock": "ok", "no_charge": "ok", "charged": "ok"}


@dataclass(frozen=True)
class Result:
    path: Path
    summary: dict
    trace: Trace

    @classmethod
    def open(cls, path: Path | str) -> "Result":
        path = Path(path)
        missing = [name for name in FILES if not (path / name).exists()]
        if missing:
            raise TraceError(f"{path}: no {', '.join(missing)}; give a directory `chargeplay replay -o` wrote")
        try:
            summary = json.loads((path / "summary.json").read_text())
            policies = list(summary["policies"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise TraceError(f"{path / 'summary.json'}: not a replay summary ({err}); re-run chargeplay replay") from None
        if not policies:
            raise TraceError(f"{path / 'summary.json'}: no policies in it; re-run chargeplay replay")
        return cls(path, summary, Trace.open(summary["trace"]))

    @property
    def policies(self) -> list[str]:
        return list(self.summary["policies"])

    @cached_property
    def timeseries(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "timeseries.parquet")

    def outcomes(self) -> pl.LazyFrame:
        return pl.scan_parquet(self.path / "outcomes.parquet").with_columns(pl.col(self.policies).cast(pl.String))

    def charge_events(self) -> pl.LazyFrame:
        """Every replayed charge with what the trace says of it (call site, cache, gfp class,
        task) and, per policy, what the task experienced: ok, reclaimed, fallback, forced,
        oom or failed."""
        events = self.trace.events().with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
        symbols = self.trace.side_table("symbols")
        events = events.select(
            "row", "call_site", "cache", "pid", "comm", "kind",
            gfp_class_expr("gfp", self.trace.gfp_flags).alias("gfp_class"),
        )
        if symbols is not None:
            events = events.join(symbols.rename({"id": "call_site"}), on="call_site", how="left")
        else:
            events = events.with_columns(pl.lit(None, pl.String).alias("symbol"))
        experience = [pl.col(p).replace(EXPERIENCE) for p in self.policies]
        return self.outcomes().with_columns(experience).join(events, on="row", how="left").with_columns(
            pl.col("symbol").fill_null("[file and anon pages]"),  # LRU charges have no call site
            pl.col("cache").fill_null("-"),
            pl.col("gfp_class").fill_null("GFP_HIGHUSER_MOVABLE"),  # what the replay charges LRU pages with
            pl.format("{} ({})", pl.col("comm").fill_null("?"), pl.col("pid")).alias("task"),
        )
