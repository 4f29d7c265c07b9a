"""`chargeplay report`: one self-contained HTML file (analyze.html), with the trace's facts,
a summary table and every chart with a sentence on what it shows. Every string that came
from a trace is escaped: task names, cache names and symbols are data, never markup."""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Callable

import altair as alt
import polars as pl

from analyze import charts
from analyze.divergence import divergence
from analyze.drill_down import drill_down
from analyze.fidelity import format_error, format_target, format_value
from analyze.html import Figure, facts_table, page, write_page
from analyze.results import Result
from analyze.verdict import verdict
from replay import policy
from replay.result_format import loop_description, page_cache_reclaimed, reclaim_cost_description, reclaim_cost_guessed
from common.units import format_bytes
from common.version import __version__
from traces.errors import UserError
from traces.manifest import losses

def report_figures(result: Result, metrics: dict, baseline: str) -> list[Figure]:
    """Every figure, in the page's order; one with nothing to show is its sentence alone."""
    divergent = result.divergent_charges
    ranking = pl.DataFrame(metrics["call_sites"], schema={"symbol": pl.String, "changed": pl.UInt32, "charges": pl.UInt32})
    figures = result.summary["policies"].values()

    def none_of(field: str) -> bool:
        return not any(f[field] for f in figures)

    def section(title: str, sentence: str, chart: Callable[[], alt.TopLevelMixin], empty: str | None) -> Figure:
        return (title, empty, None) if empty else (title, sentence, chart())

    return [
        ("Usage over time", "Each policy's memcg usage, at its peak in each interval, against memory.high and memory.max "
         "(black, dashed and dotted), on the policy's own timeline: in closed loop a task's stall delays its later events, so a "
         "policy that throttles runs longer. Where the lines part, the policies charged, reclaimed or failed differently.",
         charts.usage_over_time(result)),
        section("Above memory.high", "Page-seconds above memory.high: how far and how long usage stayed over the high limit.",
                lambda: charts.bar(result, "page_seconds_above_high", "Page-seconds above memory.high", "page-seconds"),
                "No policy's usage went above memory.high." if none_of("page_seconds_above_high") else None),
        section("Over the page stocks' state", "The trace cannot show how many pages each CPU's page stock held when it "
                "began; which charge crosses memory.high, and so which task is throttled, moves with it. Each tick is a "
                "replay with the stocks that full: where a policy's ticks spread wide, one replay's figure "
                "is one draw of several.", lambda: charts.over_stock_phases(result),
                None if "spread" in result.summary else "Replayed at one state of the page stocks: chargeplay replay "
                "--spread replays every policy at 8 and shows how far each figure moves with it."),
        section("Failed charges", "Charges each policy refused, by the gfp class of the allocation: these allocations return NULL.",
                lambda: charts.failures_by_gfp_class(result), "No policy failed a charge." if none_of("failed") else None),
        section("Reclaim", "How often each policy reclaimed, and why: at memory.max, synchronously over memory.high, on return "
                "to user space, or asynchronously.", lambda: charts.reclaim_by_trigger(result),
                "No policy reclaimed." if not any(sum(f["reclaim_calls"].values()) for f in figures) else None),
        section("Stall", "Time tasks spent in reclaim or throttled by the memory.high penalty, per task.",
                lambda: charts.stall_by_task(result), "No task stalled under any policy." if none_of("stall_ns_total") else None),
        section("Min-order fallbacks", "High-order slab charges that failed and fell back to the cache's minimum order.",
                lambda: charts.bar(result, "fallbacks", "High-order slab charges that fell back", "fallbacks", count=True),
                "No high-order slab charge fell back to the minimum order." if none_of("fallbacks") else None),
        section("Objects from another NUMA node", "Slab objects placed on another node than the one they were allocated for: "
                "the new slab's charge on their own node was made without reclaim (4.2 SLAB) and failed, and another "
                "node's slab had a free slot.",
                lambda: charts.bar(result, "other_node", "Objects from another node's slab", "objects", count=True),
                "No object went to another NUMA node than its own." if none_of("other_node") else None),
        section("Divergence by call site", f"For the call sites whose charges fare differently most often, how many charges each "
                f"policy treats differently from {baseline}: one gets its memory without trouble, the other leaves usage above "
                "memory.high, reclaims or sleeps for it, must reclaim at max, falls back to a smaller slab, is forced over the "
                "limit, OOM-kills or fails.",
                lambda: charts.divergence_heatmap(ranking, divergent, baseline, result.policies),
                "Every charge fared the same under every policy: no call site sets them apart." if divergent.is_empty() else None),
    ]


def baseline_of(result: Result, requested: str | None = None) -> str:
    """The policy the others are compared with: `requested`, else the model of the trace's
    kernel (policy.for_kernel) if it was replayed, else the first policy replayed."""
    if requested is not None:
        if requested not in result.policies:
            raise UserError(f"--baseline {requested!r}: {result.path} replayed {', '.join(result.policies)}; choose one of them")
        return requested
    return policy.kernel_model_among(result.trace.manifest.get("kernel", {}).get("release"), result.policies)


def build_report(result: Result, figures: list[Figure], metrics: dict, baseline: str, fidelity: dict | None = None) -> str:
    """The HTML page: facts, the verdict, tables (fidelity first, when validating), and every
    figure with its sentence."""
    drill, script = drill_down(result.divergent_charges, [tuple(pair["policies"]) for pair in metrics["pairs"]])
    body = [_header(result), _verdict(result, baseline), *([_fidelity_table(fidelity)] if fidelity else []), _summary_table(result),
            _pairs_table(metrics), drill]
    return page(f"chargeplay report: {result.trace.path.name}", body, figures, script)


def _header(result: Result) -> str:
    m = result.trace.manifest
    target = m.get("target", {})
    limits = result.summary["limits"]
    facts = [
        ("trace", str(result.trace.path)),
        ("kernel", f"{m.get('kernel', {}).get('release')} ({m.get('kernel', {}).get('cpus')} CPUs), backend {m.get('backend')}"),
        ("captured", f"{m.get('start', {}).get('wall')}, status {result.trace.status}, {m.get('events', 0):,} events, "
                     f"{m.get('lost', {}).get('total', 0):,} lost"),
        ("workload", " ".join(target.get("command") or []) or str(target.get("cgroup_path"))),
        ("replayed by", f"chargeplay {result.summary['chargeplay_version']}, {result.summary['engine']} engine"),
        ("replayed with", f"memory.max {format_bytes(limits['max_bytes'])}, memory.high {format_bytes(limits['high_bytes'])}, "
                          f"swap {'on' if limits['swap'] else 'off'}, {reclaim_cost_description(limits)}, "
                          f"{loop_description(limits)} loop"),
    ]
    return (f"<h1>chargeplay: how the memcg charge policies part ways</h1>\n"
            f"{facts_table(facts)}\n<p class=\"what\">chargeplay {escape(__version__)}</p>")


SUMMARY_COLUMNS = (
    ("peak", lambda s: format_bytes(s["peak_bytes"])),
    ("s above high", lambda s: f"{s['seconds_above_high']:.3f}"),
    ("page-s above high", lambda s: f"{s['page_seconds_above_high']:.1f}"),
    ("failed", lambda s: f"{s['failed']:,}"),
    ("forced", lambda s: f"{s['forced']:,}"),
    ("reclaims", lambda s: f"{sum(s['reclaim_calls'].values()):,}"),
    ("pages reclaimed", lambda s: f"{sum(s['reclaimed_pages'].values()):,}"),
    ("of them page cache", lambda s: f"{s['reclaimed_file_pages']:,}" if "reclaimed_file_pages" in s else "-"),
    ("stall ms", lambda s: f"{s['stall_ns_total'] / 1e6:.1f}"),
    ("run s", lambda s: f"{s['run_seconds']:.3f}"),
    ("stretch", lambda s: f"{s['stretch']:+.1%}"),
    ("OOM kills", lambda s: f"{s['oom_kills']:,}"),
    ("fallbacks", lambda s: f"{s['fallbacks']:,}"),
    ("other node", lambda s: f"{s['other_node']:,}"),
)


def _verdict(result: Result, baseline: str) -> str:
    lost = losses(result.trace.manifest)
    careful = [said for said in (lost, page_cache_reclaimed(result.summary), reclaim_cost_guessed(result.summary)) if said]
    sentences = [f"Careful: {said}." for said in careful] + verdict(result.summary, baseline)
    items = "".join(f"<li>{escape(sentence)}</li>" for sentence in sentences)
    return f'<h2>Verdict</h2>\n<ul class="verdict">{items}</ul>'


def _summary_table(result: Result) -> str:
    head = "".join(f"<th>{escape(name)}</th>" for name, _ in SUMMARY_COLUMNS)
    rows = "".join(
        f"<tr><td>{escape(p)}</td>" + "".join(f"<td>{escape(cell(result.summary['policies'][p]))}</td>" for _, cell in SUMMARY_COLUMNS) + "</tr>"
        for p in result.policies
    )
    return f"<h2>Summary</h2>\n<table><tr><th>policy</th>{head}</tr>{rows}</table>"


def _fidelity_table(fidelity: dict) -> str:
    rows = "".join(
        f"<tr><td>{escape(row['metric'])}</td><td>{escape(format_value(row['predicted'], row['unit']))}</td>"
        f"<td>{escape(format_value(row['observed'], row['unit']))}</td><td>{escape(format_error(row))}</td>"
        f"<td>{escape(format_target(row))}</td></tr>"
        for row in fidelity["rows"]
    )
    warning = "" if fidelity["measured"] else f"<p class=\"warning\">Not measured: {escape(fidelity['reason'])}.</p>\n"
    return (f"<h2>Fidelity</h2>\n<p class=\"what\">The kernel that ran the workload ({escape(str(fidelity['kernel']))}) is the "
            f"referee: the model {escape(fidelity['model'])} predicted, the kernel observed.</p>\n{warning}"
            "<table><tr><th>metric</th><th>predicted</th><th>observed</th><th>relative error</th><th>target</th></tr>"
            f"{rows}</table>")


def _pairs_table(metrics: dict) -> str:
    rows = []
    for pair in metrics["pairs"]:
        a, b = pair["policies"]
        first = pair["first_usage_difference_ns"]
        top_site = pair["by"]["symbol"][0]["symbol"] if pair["by"]["symbol"] else "-"
        rows.append(
            f"<tr><td>{escape(a)} / {escape(b)}</td><td>{'-' if first is None else f'{first / 1e9:.3f} s'}</td>"
            f"<td>{pair['differing_charges']:,}</td><td>{pair['delta']['seconds_above_high']:+.3f}</td>"
            f"<td>{pair['delta']['failed']:+,}</td><td>{pair['delta']['stall_ns_total'] / 1e6:+.1f}</td>"
            f"<td>{pair['delta']['fallbacks']:+,}</td><td>{escape(str(top_site))}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("policies A / B", "usage first differs", "charges with another outcome",
                                             "Δ s above high", "Δ failed", "Δ stall ms", "Δ fallbacks", "call site most affected"))
    which = "every two policies" if metrics["baseline"] is None else f"each policy B against the baseline A, {metrics['baseline']}"
    return (f"<h2>Pairs</h2>\n<p class=\"what\">For {escape(which)}: when their usage first differs, how many "
            f"charges change outcome, and B minus A for the main figures.</p>\n<table><tr>{head}</tr>{''.join(rows)}</table>")


def write_report(result: Result, output: Path, png_dir: Path | None = None, metrics_json: Path | None = None,
                 fidelity: dict | None = None, baseline: str | None = None, all_pairs: bool = False) -> dict:
    """Write the HTML report (and, if asked, each chart as PNG and the metrics as JSON): pairs
    of the baseline (baseline_of) and each other policy, or every two policies."""
    base = baseline_of(result, baseline)
    metrics = divergence(result, None if all_pairs else base)
    figures = report_figures(result, metrics, base)
    write_page(output, build_report(result, figures, metrics, base, fidelity), figures, png_dir, metrics, metrics_json)
    return metrics
