"""The page of a sweep over many traces (`chargeplay sweep TRACE TRACE... `): the limit each
policy needs across the fleet, and the traces whose limit depends on the policy."""
from __future__ import annotations

import statistics
from html import escape

import altair as alt
import polars as pl

from analyze.charts import MIB, WIDTH, policy_colour
from analyze.criterion import Condition, recommend
from analyze.html import facts_table, page
from analyze.sweep_page import LIMIT_NAMES, sweep_facts
from common.units import format_bytes


def fleet_recommendations(table: pl.DataFrame, conditions: list[Condition]) -> dict[str, dict[str, int | None]]:
    """Per trace (in the table's order), each policy's recommended limit (analyze.criterion)."""
    return {trace: recommend(rows, conditions) for (trace,), rows in table.group_by("trace", maintain_order=True)}


def fleet_summary(recommended: dict[str, dict[str, int | None]], baselines: dict[str, str]) -> dict[str, dict]:
    """Per policy: across the traces, the recommended limits' spread, the traces none in the
    range meets, and the traces where it needs another limit than their baseline policy."""
    policies = list(next(iter(recommended.values())))
    summary = {}
    for name in policies:
        met = sorted(limits[name] for limits in recommended.values() if limits[name] is not None)
        summary[name] = {
            "traces": len(recommended), "none_in_range": len(recommended) - len(met),
            "smallest": met[0] if met else None, "median": statistics.median_low(met) if met else None, "largest": met[-1] if met else None,
            "differs_from_baseline": [trace for trace, limits in recommended.items() if limits[name] != limits[baselines[trace]]],
        }
    return summary


def _limit(value: int | None) -> str:
    return "none in the range" if value is None else format_bytes(value)


def build_fleet_page(document: dict) -> str:
    swept = document["swept"]
    limit_name = LIMIT_NAMES[swept["limit"]]
    recommended, summary = document["recommended"], document["fleet"]
    policies = list(summary)
    facts = facts_table([("traces", f"{len(recommended)}, swept with --executor {document['executor']}"), *sweep_facts(document)])
    careful = "".join(f'<p class="warning">Careful: {escape(trace)}: {escape(lost)}.</p>' for trace, lost in document["lost"].items())
    across = "".join(
        f"<tr><td>{escape(name)}</td><td>{s['traces'] - s['none_in_range']} of {s['traces']}</td><td>{escape(_limit(s['smallest']))}</td>"
        f"<td>{escape(_limit(s['median']))}</td><td>{escape(_limit(s['largest']))}</td><td>{len(s['differs_from_baseline'])}</td></tr>"
        for name, s in summary.items())
    per_trace = "".join(f"<tr><td>{escape(trace)}</td>" + "".join(f"<td>{escape(_limit(limits[p]))}</td>" for p in policies) + "</tr>"
                        for trace, limits in recommended.items())
    body = [
        f"<h1>chargeplay sweep of {len(recommended)} traces: which {escape(limit_name)} to set</h1>\n{facts}",
        careful,
        f"<h2>Across the fleet</h2>\n<p class=\"what\">Per policy, how many traces a limit in the range meets the criterion for, "
        f"and the recommended {escape(limit_name)} (the smallest from which it holds) across them; and in how many traces the "
        "policy needs another limit than the trace's baseline (the model of the kernel it was captured on, if swept).</p>\n"
        "<table class=\"fleet\"><tr><th>policy</th><th>traces met</th><th>smallest</th><th>median</th><th>largest</th>"
        f"<th>traces differing from their baseline</th></tr>{across}</table>",
        f"<h2>Per trace</h2>\n<table class=\"per-trace\"><tr><th>trace</th>{''.join(f'<th>{escape(p)}</th>' for p in policies)}</tr>"
        f"{per_trace}</table>",
    ]
    return page(f"chargeplay sweep: {len(recommended)} traces", body, [(
        f"Recommended {limit_name} per trace", f"Each trace's recommended {limit_name} under each policy (traces none in the "
        "range meets are left out).", _spread(recommended, policies, limit_name))])


def _spread(recommended: dict[str, dict[str, int | None]], policies: list[str], limit_name: str) -> alt.Chart:
    data = pl.DataFrame([{"trace": trace, "policy": name, "limit MiB": limit / MIB}
                         for trace, limits in recommended.items() for name, limit in limits.items() if limit is not None],
                        schema={"trace": pl.String, "policy": pl.String, "limit MiB": pl.Float64})
    return alt.Chart(data).mark_point(filled=True, size=60, opacity=0.7).encode(
        x=alt.X("limit MiB:Q", title=f"recommended {limit_name}, MiB"), y=alt.Y("policy:N", sort=policies, title=None),
        color=policy_colour(policies, legend=False), tooltip=["trace:N", "policy:N", "limit MiB:Q"],
    ).properties(width=WIDTH, height=26 * len(policies))

