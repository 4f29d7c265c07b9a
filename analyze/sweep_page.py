"""The page of a sweep (`chargeplay sweep`): what each policy costs at each limit, as curves
against the limit, and the smallest limit that meets the criterion, per policy."""
from __future__ import annotations

from html import escape
from pathlib import Path

import altair as alt
import polars as pl

from analyze.charts import COUNT_AXIS, MIB, WIDTH, policy_colour, value_scale
from analyze.criterion import METRICS, Condition
from analyze.html import Figure, facts_table, page, write_page
from common.units import format_bytes
from replay.ops import PAGE_SIZE
from traces.atomic import atomic_file, make_private_dir

LIMIT_NAMES = {"memory_high": "memory.high", "memory_max": "memory.max"}
# Each curve: the sweep's column, the figure's title, its axis, the scale from the column's unit.
CURVES = (
    ("stretch", "Stretch", "stretch, % (how much longer the workload runs)", 100),
    ("seconds_above_high", "Time above memory.high", "seconds above memory.high", 1),
    ("page_seconds_above_high", "Above memory.high", "page-seconds above memory.high", 1),
    ("stall_ns_total", "Stall", "stall, ms (reclaim and throttling, all tasks)", 1e-6),
    ("failed", "Failed charges", "failed charges", 1),
    ("oom_kills", "OOM kills", "OOM kills", 1),
    ("peak_bytes", "Peak usage", "peak usage, MiB", 1 / MIB),
)
COUNTS = ("failed", "oom_kills")  # integer ticks


def curve(table: pl.DataFrame, column: str, axis: str, scale: float, limit_name: str, policies: list[str]) -> alt.Chart:
    data = table.select("policy", (pl.col("limit_bytes") / MIB).alias("limit MiB"), (pl.col(column) * scale).alias("value"))
    scale, scaled = value_scale(data["value"])
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("limit MiB:Q", title=f"{limit_name}, MiB"),
        y=alt.Y("value:Q", title=axis + scaled, scale=scale, axis=COUNT_AXIS if column in COUNTS else alt.Axis()),
        color=policy_colour(policies),
        tooltip=["policy:N", "limit MiB:Q", alt.Tooltip("value:Q", title=axis, format=",.3~f")],
    ).properties(width=WIDTH, height=220, title=f"{axis} against {limit_name}")


def sweep_figures(table: pl.DataFrame, swept: str) -> list[Figure]:
    policies = table["policy"].unique(maintain_order=True).to_list()
    limit_name = LIMIT_NAMES[swept]
    return [(title, f"Each policy's {axis} at each {limit_name} swept.", curve(table, column, axis, scale, limit_name, policies))
            for column, title, axis, scale in CURVES]


def sweep_facts(document: dict) -> list[tuple[str, str]]:
    """What a sweep's page says of how it ran: the range, the other limit, the replay, the criterion."""
    swept = document["swept"]
    return [
        ("swept", f"{LIMIT_NAMES[swept['limit']]} from {format_bytes(swept['values'][0])} to {format_bytes(swept['values'][-1])}, "
                  f"{len(swept['values'])} limits"),
        ("the other limit", document["fixed"]), ("replayed with", document["replayed_with"]), ("criterion", document["criterion"]),
    ]


def build_sweep_page(table: pl.DataFrame, document: dict) -> str:
    """The page: what was swept, the recommendations, then a curve per figure."""
    swept = document["swept"]
    limit_name = LIMIT_NAMES[swept["limit"]]
    careful = [f'<p class="warning">Careful: {escape(document["lost"])}.</p>'] if document["lost"] else []
    facts = facts_table([("trace", document["trace"]), *sweep_facts(document)])
    body = [f"<h1>chargeplay sweep: which {escape(limit_name)} to set</h1>\n{facts}", *careful,
            _recommendations(table, document, limit_name)]
    return page(f"chargeplay sweep: {document['trace']}", body, sweep_figures(table, swept["limit"]))


def at_recommended(table: pl.DataFrame, recommended: dict[str, int | None]) -> dict[str, list[str]]:
    """Per policy, its recommended limit and its figures there, as text (dashes where none)."""
    at = {(row["policy"], row["limit_bytes"]): row for row in table.to_dicts()}
    shown = {}
    for policy, limit in recommended.items():
        row = at.get((policy, limit))
        shown[policy] = [format_bytes(limit), f"{row['stretch']:+.1%}", f"{row['seconds_above_high']:.3f}",
                         f"{row['oom_kills']:,}", f"{row['failed']:,}",
                         format_bytes(row["reclaimed_file_pages"] * PAGE_SIZE)] if row else ["none in the range", *["-"] * 5]
    return shown


AT_RECOMMENDED = ("stretch", "s above high", "OOM kills", "failed", "page cache reclaimed")  # at_recommended's figures


def _recommendations(table: pl.DataFrame, document: dict, limit_name: str) -> str:
    rows = "".join(f"<tr><td>{escape(policy)}</td>" + "".join(f"<td>{escape(cell)}</td>" for cell in cells) + "</tr>"
                   for policy, cells in at_recommended(table, document["recommended"]).items())
    head = "".join(f"<th>{escape(name)}</th>" for name in (limit_name, *AT_RECOMMENDED))
    return (f"<h2>Recommended {escape(limit_name)}</h2>\n<p class=\"what\">Per policy, the smallest {escape(limit_name)} swept "
            f"at which {escape(document['criterion'])} holds, and keeps holding at every larger one swept, with the "
            "policy's figures there. A policy that does not act on memory.high costs nothing at any limit: its time above "
            "high says how little the limit holds. Page cache reclaimed is page cache the workload may read again, which "
            "the kernel charges again (a refault) and no trace shows: where the workload reads it again, the kernel "
            "reclaims and throttles more at that limit than these figures say.</p>\n"
            f"<table class=\"recommended\"><tr><th>policy</th>{head}</tr>{rows}</table>")


def describe(conditions: list[Condition]) -> str:
    """The criterion in words: each condition and what its metric is."""
    return "; ".join(f"{c.text} ({METRICS[c.metric][2]})" for c in conditions)


def write_sweep(output: Path, table: pl.DataFrame, document: dict, html: str) -> None:
    """sweep.parquet (a row per trace, limit and policy), sweep.json (what was swept, the
    recommendations) and sweep.html (`html`: this module's page, or analyze.fleet_page's), in a
    new directory."""
    make_private_dir(output)
    with atomic_file(output / "sweep.parquet") as out:
        table.write_parquet(out)
    write_page(output / "sweep.html", html, [], None, document, output / "sweep.json")
