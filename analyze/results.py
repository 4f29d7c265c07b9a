"""Reading a replay result directory (what `chargeplay replay -o` wrote) and its trace."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from replay.ops import OUTCOMES, RECLAIM_TRIGGERS
from replay.policy import RESERVED_NAMES
from traces.checks import Int, MapOf, TraceError, check_shape, one_line, parquet_schema, read_json, show
from traces.gfp_columns import gfp_class_expr
from traces.manifest import MAX_BYTES
from traces.reader import Trace

FILES = ("summary.json", "timeseries.parquet", "outcomes.parquet")
COUNT = Int(0, 2**63 - 1)
LIMIT = (None, Int(0, MAX_BYTES))
POLICY_SHAPE = {
    **{name: COUNT for name in ("peak_bytes", "failed", "forced", "stall_ns_total", "oom_kills", "fallbacks")},
    **{name: float for name in ("seconds_above_high", "page_seconds_above_high")},
    **{name: {trigger: COUNT for trigger in RECLAIM_TRIGGERS} for name in ("reclaim_calls", "reclaimed_pages")},
    "failed_by_gfp_class": MapOf(COUNT),
    "stall_ns_by_pid": MapOf(COUNT, integer_keys=True),
}
# What the report reads of summary.json (other keys are free).
SUMMARY_SHAPE = {
    "trace": str,
    "limits": {"max_bytes": LIMIT, "high_bytes": LIMIT, "swap": bool, "reclaim_ns_per_page": COUNT},
    "policies": MapOf(POLICY_SHAPE),
}
TIMESERIES_COLUMNS = (("policy", pa.string(), ""), ("t_ns", pa.int64(), ""), ("usage_bytes", pa.int64(), ""),
                      ("peak_bytes", pa.int64(), ""), ("high_bytes", pa.int64(), ""), ("max_bytes", pa.int64(), ""))
# Outcomes that differ only by bookkeeping (which stock or slab paid) are the same
# experience for the allocating task: it got its memory without trouble ("charged").
EXPERIENCE = {"stock": "charged", "no_charge": "charged"}


def _codes(column: pa.DictionaryArray) -> np.ndarray:
    """Outcome codes (indices into OUTCOMES) of a dictionary-encoded outcome column; Parquet
    keeps only the values a row group uses, so its own dictionary is translated."""
    names = column.dictionary.to_pylist()
    unknown = [name for name in names if name not in OUTCOMES]
    if unknown or column.null_count:
        raise TraceError(f"outcomes.parquet: outcome {show(unknown[0] if unknown else None)} is not one of {', '.join(OUTCOMES)}")
    translate = np.array([OUTCOMES.index(name) for name in names], dtype=np.int64)
    return translate[column.indices.to_numpy(zero_copy_only=False)]


@dataclass(frozen=True)
class Result:
    path: Path
    summary: dict
    trace: Trace

    @classmethod
    def open(cls, path: Path | str) -> "Result":
        """A result directory, refused (TraceError) unless its files are all there, inside it,
        of the shape and columns `chargeplay replay` writes, and its trace is readable."""
        path = Path(path)
        if not path.is_dir():
            raise TraceError(f"{path}: no such result directory; give a directory `chargeplay replay -o` wrote")
        missing = [name for name in FILES if not (path / name).exists() and not (path / name).is_symlink()]
        if missing:
            raise TraceError(f"{path}: no {', '.join(missing)}; give a directory `chargeplay replay -o` wrote")
        summary = read_json(path, path / "summary.json")
        check_shape(summary, SUMMARY_SHAPE, str(path / "summary.json"))
        policies = list(summary["policies"])
        if not policies:
            raise TraceError(f"{path / 'summary.json'}: no policies in it; re-run chargeplay replay")
        reserved = [name for name in policies if name in RESERVED_NAMES]
        if reserved:
            raise TraceError(f"{path / 'summary.json'}: {show(reserved[0])} cannot name a policy; not a summary chargeplay wrote")
        parquet_schema(path, path / "timeseries.parquet", TIMESERIES_COLUMNS, versioned=False)
        outcome = pa.dictionary(pa.int8(), pa.string())
        parquet_schema(path, path / "outcomes.parquet", pa.schema([("row", pa.int64()), *((p, outcome) for p in policies)]), versioned=False)
        trace = Trace.open(summary["trace"])
        result = cls(path, summary, trace)
        result.check_rows()
        return result

    def check_rows(self) -> None:
        """Every outcome's row is a row of the trace, each once, in order: the rows the report joins
        with the trace's events (a result whose trace has changed since is refused here)."""
        events = self.trace.facts.events
        try:
            found = self.outcomes().select(
                pl.col("row").null_count().alias("nulls"), pl.col("row").min().alias("low"), pl.col("row").max().alias("high"),
                (pl.col("row").diff() <= 0).any().alias("disorder"),
            ).collect().row(0, named=True)
        except pl.exceptions.PolarsError as err:
            raise TraceError(f"{self.path / 'outcomes.parquet'}: unreadable Parquet ({one_line(err)}); re-run chargeplay replay") from None
        if found["nulls"] or found["disorder"] or (found["high"] is not None and (found["low"] < 0 or found["high"] >= events)):
            raise TraceError(f"{self.path / 'outcomes.parquet'}: its rows are not rows of {self.trace.path} ({events} events) "
                             "in order; re-run chargeplay replay")

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
