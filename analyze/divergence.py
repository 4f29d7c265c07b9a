"""Where, when and for whom two policies part ways.

For each pair of policies (each against a baseline, or every two): the first time their
usage differs, the charges whose outcome differs (grouped by call site, what was charged,
cache, gfp class and task), and the differences in time above memory.high, failures, stall
and min-order fallbacks. Across all pairs: the call sites a policy change affects most.
"""
from __future__ import annotations

from itertools import combinations

import polars as pl

from analyze.results import Result

GROUPS = ("symbol", "kind", "cache", "gfp_class", "task")
SUMMARY_DELTAS = ("seconds_above_high", "page_seconds_above_high", "failed", "stall_ns_total", "fallbacks", "forced", "oom_kills")
TOP = 10


def first_usage_difference(series: pl.DataFrame, a: str, b: str) -> int | None:
    """The first time bucket (ns from the trace's first event) where the two usages differ."""
    usage = series.pivot(on="policy", index="t_ns", values="usage_bytes").sort("t_ns").fill_null(strategy="forward")
    differ = usage.filter(pl.col(a) != pl.col(b))
    return int(differ["t_ns"][0]) if differ.height else None


def pair_divergence(result: Result, divergent: pl.DataFrame, a: str, b: str) -> dict:
    differ = divergent.filter(pl.col(a) != pl.col(b))
    sa, sb = result.summary["policies"][a], result.summary["policies"][b]
    return {
        "policies": [a, b],
        "first_usage_difference_ns": first_usage_difference(result.timeseries, a, b),
        "differing_charges": differ.height,
        "by": {group: _top(differ, group) for group in GROUPS},
        "delta": {key: sb[key] - sa[key] for key in SUMMARY_DELTAS},
    }


def _top(frame: pl.DataFrame, group: str) -> list[dict]:
    return frame.group_by(group).agg(pl.len().alias("charges")).sort(["charges", group], descending=[True, False]).head(TOP).to_dicts()


def call_site_ranking(divergent: pl.DataFrame, per_site: pl.DataFrame) -> pl.DataFrame:
    """Call sites by how many of their charges fare differently under some two policies."""
    return (
        divergent.group_by("symbol").agg(pl.len().cast(pl.UInt32).alias("changed"))
        .join(per_site.with_columns(pl.col("charges").cast(pl.UInt32)), on="symbol", how="left")
        .sort(["changed", "symbol"], descending=[True, False])
    )


def pairs_of(policies: list[str], baseline: str | None) -> list[tuple[str, str]]:
    """The baseline against each other policy, or (None) every two policies."""
    if baseline is None:
        return list(combinations(policies, 2))
    return [(baseline, other) for other in policies if other != baseline]


def divergence(result: Result, baseline: str | None = None) -> dict:
    """The divergence of each pair (pairs_of) and the call-site ranking (charges that fare the
    same under all policies cannot tell any two apart, so only the divergent ones are looked at)."""
    divergent = result.divergent_charges
    return {
        "baseline": baseline,
        "pairs": [pair_divergence(result, divergent, a, b) for a, b in pairs_of(result.policies, baseline)],
        "call_sites": call_site_ranking(divergent, result.charges_per_call_site()).head(50).to_dicts(),
    }
