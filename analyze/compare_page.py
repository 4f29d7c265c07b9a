"""`chargeplay report RESULT RESULT...`: several results side by side (the same workload
captured on two kernels, or replayed before and after a change): each one's facts and
verdict, then every policy they share with each result's figures next to each other, and
usage and cost charts by result."""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Callable

import altair as alt
import polars as pl

from analyze.charts import MIB, WIDTH, downsample, policy_colour, value_scale
from analyze.html import Figure, page, write_page
from analyze.report import baseline_of
from analyze.results import Result
from analyze.verdict import verdict
from common.units import format_bytes
from replay.result_format import loop_description
from traces.errors import UserError

# The figures compared: summary key, heading, how it is shown.
COMPARED: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("peak_bytes", "peak", format_bytes),
    ("seconds_above_high", "s above high", lambda v: f"{v:.3f}"),
    ("page_seconds_above_high", "page-s above high", lambda v: f"{v:.1f}"),
    ("stall_ns_total", "stall ms", lambda v: f"{v / 1e6:.1f}"),
    ("stretch", "stretch", lambda v: f"{v:+.1%}"),
    ("failed", "failed", lambda v: f"{v:,}"),
    ("oom_kills", "OOM kills", lambda v: f"{v:,}"),
    ("fallbacks", "fallbacks", lambda v: f"{v:,}"),
    ("other_node", "other node", lambda v: f"{v:,}"),
)


def labels(results: list[Result]) -> list[str]:
    """A short name per result: its directory's, numbered where two share one."""
    names = [result.path.name for result in results]
    return [f"{n + 1}: {name}" if names.count(name) > 1 else name for n, name in enumerate(names)]


def shared_policies(results: list[Result]) -> list[str]:
    """The policies every result replayed, in the first one's order."""
    return [name for name in results[0].policies if all(name in result.policies for result in results)]


def comparison(results: list[Result]) -> dict:
    """What the page shows, as data (`--json`): each result's figures for the shared policies."""
    shared = shared_policies(results)
    if not shared:
        raise UserError(f"{', '.join(str(r.path) for r in results)}: no policy was replayed in all of them; replay them with a "
                        "--policy in common")
    return {
        "results": [{"label": label, "path": str(result.path), "trace": str(result.trace.path),
                     "kernel": result.trace.manifest.get("kernel", {}).get("release")} for label, result in zip(labels(results), results)],
        "policies": shared,
        "figures": {label: {name: {key: result.summary["policies"][name][key] for key, _, _ in COMPARED} for name in shared}
                    for label, result in zip(labels(results), results)},
    }


def compare_figures(results: list[Result], shared: list[str]) -> list[Figure]:
    names = labels(results)
    usage = pl.concat([downsample(result.timeseries.filter(pl.col("policy").is_in(shared))).with_columns(pl.lit(label).alias("result"))
                       for label, result in zip(names, results)]).with_columns(
        (pl.col("t_ns") / 1e9).alias("seconds"), (pl.col("peak_bytes") / MIB).alias("peak MiB"))
    lines = alt.Chart(usage).mark_line(interpolate="step-after").encode(
        x=alt.X("seconds:Q", title="seconds since the trace's first event"), y=alt.Y("peak MiB:Q", title="memcg usage, MiB"),
        color=policy_colour(shared), tooltip=["result:N", "policy:N", alt.Tooltip("seconds:Q", format=".3f"), "peak MiB:Q"],
    ).properties(width=WIDTH, height=180).facet(row=alt.Row("result:N", sort=names, title=None))
    return [
        ("Usage over time", "Each policy's usage in each result, on the policy's own timeline.", lines),
        *((title, f"{title} per policy, a bar per result.", _bars(results, names, shared, key, axis))
          for key, title, axis in (("page_seconds_above_high", "Above memory.high", "page-seconds above memory.high"),
                                   ("stall_ns_total", "Stall", "stall, ms (reclaim and throttling)"))),
    ]


def _bars(results: list[Result], names: list[str], shared: list[str], key: str, axis: str) -> alt.Chart:
    scale = 1e-6 if key.endswith("_ns_total") else 1
    data = pl.DataFrame([{"result": label, "policy": name, "value": result.summary["policies"][name][key] * scale}
                         for label, result in zip(names, results) for name in shared])
    log, scaled = value_scale(data["value"])
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("value:Q", title=axis + scaled, scale=log), y=alt.Y("policy:N", sort=shared, title=None),
        yOffset=alt.YOffset("result:N", sort=names), color=alt.Color("result:N", sort=names, title="result"),
        tooltip=["result:N", "policy:N", "value:Q"],
    ).properties(width=WIDTH, title=axis)


def build_comparison(results: list[Result], data: dict, figures: list[Figure]) -> str:
    names = labels(results)
    facts = "".join(
        f"<tr><td>{escape(label)}</td><td>{escape(str(result.trace.path))}</td>"
        f"<td>{escape(str(result.trace.manifest.get('kernel', {}).get('release')))}</td>"
        f"<td>{escape(format_bytes(result.summary['limits']['max_bytes']))}</td><td>{escape(format_bytes(result.summary['limits']['high_bytes']))}</td>"
        f"<td>{escape(loop_description(result.summary['limits']))}</td></tr>"
        for label, result in zip(names, results))
    verdicts = "".join(f"<li>{escape(label)}: {escape(verdict(result.summary, baseline_of(result))[0])}</li>"
                       for label, result in zip(names, results))
    head = "".join(f"<th>{escape(heading)}</th>" for _, heading, _ in COMPARED)
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(label)}</td>"
        + "".join(f"<td>{escape(show(data['figures'][label][name][key]))}</td>" for key, _, show in COMPARED) + "</tr>"
        for name in data["policies"] for label in names)
    body = [
        f"<h1>chargeplay: {len(results)} results side by side</h1>",
        "<table class=\"facts\"><tr><th>result</th><th>trace</th><th>kernel</th><th>memory.max</th><th>memory.high</th><th>loop</th></tr>"
        f"{facts}</table>",
        f'<h2>Verdicts</h2>\n<ul class="verdict">{verdicts}</ul>',
        "<h2>Side by side</h2>\n<p class=\"what\">Every policy all the results replayed, a row per result.</p>\n"
        f"<table class=\"side-by-side\"><tr><th>policy</th><th>result</th>{head}</tr>{rows}</table>",
    ]
    return page(f"chargeplay: {len(results)} results", body, figures)


def write_comparison(results: list[Result], output: Path, png_dir: Path | None = None, data_json: Path | None = None) -> dict:
    """Write the page (and, if asked, each chart as PNG and the compared figures as JSON)."""
    data = comparison(results)
    figures = compare_figures(results, data["policies"])
    write_page(output, build_comparison(results, data, figures), figures, png_dir, data, data_json)
    return data
