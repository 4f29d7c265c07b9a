"""The report's charts (Altair), each from data small enough to draw: series are
downsampled keeping their peaks, the rest is aggregated before it reaches a chart."""
from __future__ import annotations

from itertools import cycle

import altair as alt
import polars as pl

from analyze.results import Result
from replay.ops import RECLAIM_TRIGGERS
from replay.policy import BUILTIN

MAX_POINTS = 4800  # per chart, over all its series: Vega-Lite data stays under Altair's 5,000-row limit
MIB = 1 << 20
# Vega's tableau10 and tableau20's light halves: each built-in policy keeps its colour in every
# report and sweep; policies of a TOML file take the rest, in their order.
PALETTE = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac",
           "#9ecae9", "#ffbf79", "#88d27a", "#83bcb6", "#ff9d98", "#d6a5c9", "#d8b5a5", "#79706e")
BUILTIN_COLOURS = dict(zip(BUILTIN, PALETTE))
COUNT_AXIS = alt.Axis(tickMinStep=1, format="d")  # no 0.5 of a charge
DECADES = 100  # values whose largest is this many times the smallest non-zero one get a log scale


def policy_colour(policies: list[str], legend: bool = True) -> alt.Color:
    """Colour by policy, each built-in one in its own colour whatever else was replayed."""
    spare = cycle([colour for colour in PALETTE if colour not in BUILTIN_COLOURS.values()])
    colours = [BUILTIN_COLOURS.get(name) or next(spare) for name in policies]
    return alt.Color("policy:N", scale=alt.Scale(domain=policies, range=colours), sort=policies,
                     legend=alt.Legend() if legend else None)


def value_scale(values: pl.Series) -> tuple[alt.Scale, str]:
    """A log scale (symlog: logarithmic away from zero, linear near it, so zero stays on the
    axis) where the values span decades, else linear; and what to add to the axis title."""
    nonzero = values.filter(values > 0)
    if nonzero.len() and nonzero.max() >= DECADES * nonzero.min():
        return alt.Scale(type="symlog"), " (log scale)"
    return alt.Scale(), ""
WIDTH = 720


def downsample(series: pl.DataFrame, max_points: int = MAX_POINTS) -> pl.DataFrame:
    """At most max_points rows in all: buckets merged, keeping each merged bucket's peak and
    its last usage, so no spike disappears."""
    per_series = max(max_points // max(series["policy"].n_unique(), 1), 1)
    span = int(series["t_ns"].max() or 0) + 1
    step = max(-(-span // per_series), 1)
    return (
        series.with_columns((pl.col("t_ns") // step * step).alias("t_ns"))
        .group_by("policy", "t_ns", maintain_order=True)
        .agg(pl.col("usage_bytes").last(), pl.col("peak_bytes").max(), pl.col("high_bytes").first(), pl.col("max_bytes").first())
        .sort("policy", "t_ns")
    )


def usage_over_time(result: Result) -> alt.Chart:
    data = downsample(result.timeseries).with_columns(
        (pl.col("t_ns") / 1e9).alias("seconds"), (pl.col("peak_bytes") / MIB).alias("peak MiB"),
    )
    lines = alt.Chart(data).mark_line(interpolate="step-after").encode(
        x=alt.X("seconds:Q", title="seconds since the trace's first event"),
        y=alt.Y("peak MiB:Q", title="memcg usage, MiB (peak per interval)"),
        color=policy_colour(result.policies),
        tooltip=["policy:N", alt.Tooltip("seconds:Q", format=".3f"), alt.Tooltip("peak MiB:Q", format=".2f")],
    )
    limits = result.summary["limits"]
    drawn = [(name, limits[key] / MIB) for name, key in (("memory.high", "high_bytes"), ("memory.max", "max_bytes")) if limits.get(key)]
    if not drawn:
        return lines.properties(width=WIDTH, height=300, title="Usage over time")
    # The limits in black, told apart by their dashes, in a legend of their own (not policy colours).
    rules = alt.Chart(pl.DataFrame({"limit": [name for name, _ in drawn], "MiB": [mib for _, mib in drawn]})).mark_rule(color="black").encode(
        y="MiB:Q", tooltip=["limit:N", "MiB:Q"],
        strokeDash=alt.StrokeDash("limit:N", scale=alt.Scale(domain=["memory.high", "memory.max"], range=[[6, 3], [1, 2]]),
                                  legend=alt.Legend(title="limit")),
    )
    return alt.layer(lines, rules).properties(width=WIDTH, height=300, title="Usage over time, with memory.high and memory.max")


def _per_policy(result: Result, field: str) -> pl.DataFrame:
    return pl.DataFrame({"policy": result.policies, "value": [result.summary["policies"][p][field] for p in result.policies]})


def bar(result: Result, field: str, title: str, axis: str, count: bool = False) -> alt.Chart:
    data = _per_policy(result, field)
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("value:Q", title=axis, axis=COUNT_AXIS if count else alt.Axis()), y=alt.Y("policy:N", sort=result.policies, title=None),
        color=policy_colour(result.policies, legend=False), tooltip=["policy:N", "value:Q"],
    ).properties(width=WIDTH, height=22 * len(result.policies), title=title)


def over_stock_phases(result: Result) -> alt.HConcatChart:
    """A tick per stock phase of `replay --spread` and policy: page-seconds above memory.high and run time."""
    spread = result.summary["spread"]
    data = pl.DataFrame([{"policy": p, "stock phase": phase, "page-seconds above high": figures["page_seconds_above_high"][n],
                          "run seconds": figures["run_seconds"][n]}
                         for p, figures in spread["policies"].items() for n, phase in enumerate(spread["stock_phases"])])
    ticks = alt.Chart(data).mark_tick(thickness=2).encode(
        y=alt.Y("policy:N", sort=result.policies, title=None), color=policy_colour(result.policies, legend=False),
        tooltip=["policy:N", "stock phase:Q", alt.Tooltip("page-seconds above high:Q", format=",.1f"),
                 alt.Tooltip("run seconds:Q", format=".3f")])
    size = {"width": WIDTH // 2 - 60, "height": 22 * len(result.policies)}
    return alt.hconcat(
        ticks.encode(x=alt.X("page-seconds above high:Q")).properties(**size),
        ticks.encode(x=alt.X("run seconds:Q", scale=alt.Scale(zero=False))).properties(**size),  # run times near each other
    ).properties(title=f"Each policy at the page stocks' {len(spread['stock_phases'])} states when the trace began")


def failures_by_gfp_class(result: Result) -> alt.Chart:
    rows = [{"policy": p, "gfp class": cls, "failed": n}
            for p in result.policies for cls, n in result.summary["policies"][p]["failed_by_gfp_class"].items()]
    rows = rows or [{"policy": p, "gfp class": "(none failed)", "failed": 0} for p in result.policies]  # an empty chart warns
    data = pl.DataFrame(rows, schema={"policy": pl.String, "gfp class": pl.String, "failed": pl.Int64})
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("failed:Q", title="failed charges", axis=COUNT_AXIS), y=alt.Y("policy:N", sort=result.policies, title=None),
        color="gfp class:N", tooltip=["policy:N", "gfp class:N", "failed:Q"],
    ).properties(width=WIDTH, height=22 * len(result.policies), title="Failed charges by gfp class")


def reclaim_by_trigger(result: Result) -> alt.Chart:
    rows = [{"policy": p, "trigger": t, "calls": result.summary["policies"][p]["reclaim_calls"][t]}
            for p in result.policies for t in RECLAIM_TRIGGERS]
    return alt.Chart(pl.DataFrame(rows)).mark_bar().encode(
        x=alt.X("calls:Q", title="reclaim invocations", axis=COUNT_AXIS), y=alt.Y("policy:N", sort=result.policies, title=None),
        color=alt.Color("trigger:N", sort=list(RECLAIM_TRIGGERS)), tooltip=["policy:N", "trigger:N", "calls:Q"],
    ).properties(width=WIDTH, height=22 * len(result.policies), title="Reclaim invocations by trigger")


def stall_by_task(result: Result, top: int = 10) -> alt.Chart:
    rows = [{"policy": p, "pid": int(pid), "stall ms": ns / 1e6}
            for p in result.policies for pid, ns in result.summary["policies"][p]["stall_ns_by_pid"].items()]
    data = pl.DataFrame(rows, schema={"policy": pl.String, "pid": pl.Int64, "stall ms": pl.Float64})
    tasks = data.group_by("pid").agg(pl.col("stall ms").sum()).sort("stall ms", descending=True).head(top)["pid"]
    names = _task_names(result)
    data = data.filter(pl.col("pid").is_in(tasks.implode())).with_columns(
        pl.format("{} ({})", pl.col("pid").replace_strict(names, default="?", return_dtype=pl.String), pl.col("pid")).alias("task"))
    scale, scaled = value_scale(data["stall ms"])
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("stall ms:Q", title="stall, ms (reclaim and throttling)" + scaled, scale=scale), y=alt.Y("task:N", title=None),
        color=policy_colour(result.policies), yOffset=alt.YOffset("policy:N", sort=result.policies),
        tooltip=["task:N", "policy:N", alt.Tooltip("stall ms:Q", format=".2f")],
    ).properties(width=WIDTH, title=f"Stall time per task (top {top})")


def _task_names(result: Result) -> dict[int, str]:
    """Each task's last name in its charges (a task that stalled charged)."""
    return dict(result.outcomes().filter(pl.col("comm").is_not_null()).group_by("pid").agg(pl.col("comm").last())
                .collect().iter_rows())


def divergence_heatmap(ranking: pl.DataFrame, charges: pl.DataFrame, baseline: str, policies: list[str], top: int = 25) -> alt.Chart:
    """Call site x policy: charges whose outcome differs from the baseline policy's."""
    sites = ranking.head(top)["symbol"]
    rows = (
        charges.filter(pl.col("symbol").is_in(sites.implode()))
        .group_by("symbol").agg([(pl.col(p) != pl.col(baseline)).sum().alias(p) for p in policies if p != baseline])
        .unpivot(index="symbol", variable_name="policy", value_name="differing")
    )
    return alt.Chart(rows).mark_rect().encode(
        x=alt.X("policy:N", title=f"policy (compared with {baseline})"),
        y=alt.Y("symbol:N", sort=sites.to_list(), title="call site"),
        color=alt.Color("differing:Q", title="charges with another outcome", scale=alt.Scale(scheme="orangered")),
        tooltip=["symbol:N", "policy:N", "differing:Q"],
    ).properties(width=WIDTH // 2, title="Where the policies part ways: call site by policy")
