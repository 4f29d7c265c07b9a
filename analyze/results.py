"""A replay result directory (replay.result_format) as the report reads it: its summary, its
time series, and the charges that fare differently, described as the replay recorded them."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
import polars.selectors as cs
import pyarrow as pa
import pyarrow.parquet as pq

from replay.ops import OUTCOMES
from replay.result_format import CHARGE_COLUMNS, OUTCOMES_FILE, open_result, outcome_codes, read_timeseries
from traces.reader import Trace

# Outcomes that differ only by bookkeeping (which stock or slab paid) are the same
# experience for the allocating task: it got its memory without trouble ("charged").
EXPERIENCE = {"stock": "charged", "no_charge": "charged"}


@dataclass(frozen=True)
class Result:
    path: Path
    summary: dict
    trace: Trace

    @classmethod
    def open(cls, path: Path | str) -> "Result":
        """A result directory, refused (TraceError) unless it is whole, of the format replay
        writes, and its trace is found unchanged (replay.result_format.open_result)."""
        path = Path(path)
        return cls(path, *open_result(path))

    @property
    def policies(self) -> list[str]:
        return list(self.summary["policies"])

    @cached_property
    def timeseries(self) -> pl.DataFrame:
        return read_timeseries(self.path)

    def outcomes(self) -> pl.LazyFrame:
        """outcomes.parquet, its dictionary-encoded columns as strings."""
        return pl.scan_parquet(self.path / OUTCOMES_FILE).with_columns(cs.categorical().cast(pl.String))

    @cached_property
    def divergent_charges(self) -> pl.DataFrame:
        """The charges some two policies treat differently (by what the task experienced: ok,
        reclaimed, fallback, forced, oom or failed), with what the replay recorded of them:
        what was charged, call site, cache, gfp class, task. Read batch by batch on dictionary
        codes, so memory follows the divergent charges, usually few, not the trace."""
        experience = np.array([OUTCOMES.index(EXPERIENCE.get(name, name)) for name in OUTCOMES])
        parts = []
        for batch in pq.ParquetFile(self.path / OUTCOMES_FILE).iter_batches(batch_size=1 << 20):
            codes = np.stack([experience[outcome_codes(batch.column(p))] for p in self.policies])
            divergent = (codes != codes[0]).any(axis=0)
            if divergent.any():
                charges = pl.from_arrow(batch.select(CHARGE_COLUMNS.names).filter(pa.array(divergent)))
                parts.append(charges.with_columns(cs.categorical().cast(pl.String),
                                                  *(pl.Series(p, np.array(OUTCOMES)[codes[i, divergent]]) for i, p in enumerate(self.policies))))
        empty = pl.DataFrame(schema={**self.outcomes().select(CHARGE_COLUMNS.names).collect_schema(), **{p: pl.String for p in self.policies}})
        return self._named((pl.concat(parts) if parts else empty).lazy()).with_columns(
            pl.col("cache").fill_null("-"), pl.format("{} ({})", pl.col("comm").fill_null("?"), pl.col("pid")).alias("task"),
        ).collect()

    def charges_per_call_site(self) -> pl.DataFrame:
        """How many charges each call site made (streamed: a result may be large)."""
        charges = self.outcomes().select("call_site", "kind")
        return self._named(charges).group_by("symbol").agg(pl.len().alias("charges")).collect(engine="streaming")

    def _named(self, charges: pl.LazyFrame) -> pl.LazyFrame:
        """Each charge's call site by symbol; a charge without one, by what it charged ("[kernel stack]")."""
        symbols = self.trace.side_table("symbols")
        if symbols is None:
            symbols = pl.LazyFrame(schema={"id": pl.Int32, "symbol": pl.String})
        return charges.join(symbols.rename({"id": "call_site"}), on="call_site", how="left").with_columns(
            pl.coalesce("symbol", pl.format("[{}]", "kind")).alias("symbol"))
