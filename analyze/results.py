"""Reading a replay result directory (what `chargeplay replay -o` wrote) and its trace."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from replay.ops import OUTCOMES
from traces.kernel_tables import gfp_class_expr
from traces.manifest import TraceError
from traces.reader import Trace

FILES = ("summary.json", "timeseries.parquet", "outcomes.parquet")
# Outcomes that differ only by bookkeeping (which stock or slab paid) are the same
# experience for the allocating task: it got its memory without trouble ("charged").
EXPERIENCE = {"stock": "charged", "no_charge": "charged"}


def _codes(column: pa.DictionaryArray) -> np.ndarray:
    """Outcome codes (indices into OUTCOMES) of a dictionary-encoded outcome column; Parquet
    keeps only the values a row group uses, so its own dictionary is translated."""
    translate = np.array([OUTCOMES.index(name) for name in column.dictionary.to_pylist()], dtype=np.int64)
    return translate[column.indices.to_numpy(zero_copy_only=False)]


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
        return pl.scan_parquet(self.path / "outcomes.parquet")

    @cached_property
    def divergent_charges(self) -> pl.DataFrame:
        """The charges some two policies treat differently (by what the task experienced: ok,
        reclaimed, fallback, forced, oom or failed), with what the trace says of them: call
        site, cache, gfp class, task. Read batch by batch on dictionary codes, so memory
        follows the divergent charges, usually few, not the trace."""
        experience = np.array([OUTCOMES.index(EXPERIENCE.get(name, name)) for name in OUTCOMES])
        parts = []
        for batch in pq.ParquetFile(self.path / "outcomes.parquet").iter_batches(batch_size=1 << 20):
            codes = np.stack([experience[_codes(batch.column(p))] for p in self.policies])
            divergent = (codes != codes[0]).any(axis=0)
            if divergent.any():
                rows = batch.column("row").to_numpy()[divergent]
                parts.append(pl.DataFrame({"row": rows, **{p: np.array(OUTCOMES)[codes[i, divergent]] for i, p in enumerate(self.policies)}}))
        charges = pl.concat(parts) if parts else pl.DataFrame(schema={"row": pl.Int64, **{p: pl.String for p in self.policies}})
        return self._describe(charges.lazy()).collect(engine="streaming")

    def charges_per_call_site(self) -> pl.DataFrame:
        """How many charges each call site made (streamed: the trace may be large)."""
        return self._describe(self.outcomes().select("row")).group_by("symbol").agg(pl.len().alias("charges")).collect(engine="streaming")

    def _describe(self, charges: pl.LazyFrame) -> pl.LazyFrame:
        events = self.trace.events().with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
        events = events.join(charges.select("row"), on="row", how="semi").select(
            "row", "call_site", "cache", "pid", "comm", "kind", "gfp",
        )
        symbols = self.trace.side_table("symbols")
        if symbols is not None:
            events = events.join(symbols.rename({"id": "call_site"}), on="call_site", how="left")
        else:
            events = events.with_columns(pl.lit(None, pl.String).alias("symbol"))
        return charges.join(events, on="row", how="left").with_columns(
            gfp_class_expr("gfp", self.trace.gfp_flags).fill_null("GFP_HIGHUSER_MOVABLE").alias("gfp_class"),  # LRU charges'
            pl.col("symbol").fill_null("[file and anon pages]"),  # LRU charges have no call site
            pl.col("cache").fill_null("-"),
            pl.format("{} ({})", pl.col("comm").fill_null("?"), pl.col("pid")).alias("task"),
        )
