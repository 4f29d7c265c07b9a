"""Divergence metrics worked out by hand on a tiny trace, and the report in a real browser."""
from __future__ import annotations

import html
import json
import re
from collections import Counter
import shutil
import subprocess
from html.parser import HTMLParser

import polars as pl
import polars.selectors as cs
import pyarrow as pa
import pytest

from analyze.divergence import divergence
from analyze.results import Result
from conftest import assert_user_error, chargeplay
from traces.atomic import write_json, write_parquet
from traces.manifest import MANIFEST, new_manifest
from traces.schema import EVENT_SCHEMA, MEMCG_COLUMNS, SYMBOL_COLUMNS, table_schema
from traces.samples import sample_path
from traces.segments import SegmentWriter

HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_SYMBOL = "</script><script>alert(2)</script>"  # symbols land in the charts' JSON, inside <script>
# In the kernel's table order (gfp_class takes the first composite wholly set).
GFP = {"GFP_HIGHUSER_MOVABLE": 0x100CCA, "GFP_KERNEL_ACCOUNT": 0x400CC0, "GFP_KERNEL": 0xCC0, "GFP_ATOMIC": 0x820,
       "GFP_NOWAIT": 0x2800, "__GFP_HIGH": 0x20, "__GFP_DIRECT_RECLAIM": 0x400, "__GFP_RETRY_MAYFAIL": 0x4000,
       "__GFP_NOFAIL": 0x8000, "__GFP_NORETRY": 0x10000, "__GFP_FS": 0x80, "__GFP_ACCOUNT": 1 << 22}
NODE_STAT_ITEMS = {"NR_FILE_PAGES": 1, "NR_ANON_MAPPED": 2, "NR_SHMEM": 3, "NR_KERNEL_STACK_KB": 4}
BROWSER = shutil.which("chromium")


def write_trace(path, rows: list[dict], target: dict, memcg: dict, symbol: str) -> None:
    """A complete one-segment trace of `rows`, the memcg's first counters and call site 0's symbol."""
    manifest = new_manifest(backend="test", clock="mono", target={"memcg_id": 1, **target}, gfp_flags=GFP,
                            enums={"node_stat_item": NODE_STAT_ITEMS})
    manifest["status"] = "complete"
    writer = SegmentWriter(path, lambda segment: manifest["segments"].append(segment.__dict__))
    writer.write(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
    writer.close_segment()
    write_parquet(path / "memcg.parquet", pa.Table.from_pylist([{"ts_ns": 0, **memcg}], schema=table_schema(MEMCG_COLUMNS)))
    write_parquet(path / "symbols.parquet", pa.Table.from_pylist([{"id": 0, "symbol": symbol}], schema=table_schema(SYMBOL_COLUMNS)))
    write_json(path / MANIFEST, manifest)


def tiny_trace(path, comm: str = "worker", symbol: str = "nowait_site+0x1/0x10") -> None:
    """200 pages charged at the start, memory.high 150 pages: one GFP_NOWAIT page allocation.

    By hand: fail-nowait-above-high refuses it (non-blocking, usage above high); the 4.x
    policies charge a batch of 32 pages, mainline 64; none of them may reclaim for it."""
    rows = [{"ts_ns": 1_000_000, "cpu": 0, "pid": 7, "comm": comm, "ctx": "task", "kind": "page_alloc", "call_site": 0,
             "obj": 0, "order": 0, "gfp": GFP["GFP_NOWAIT"] | GFP["__GFP_ACCOUNT"], "bytes_alloc": 4096,
             "accounted": True, "failed": False},
            {"ts_ns": 2_000_000, "cpu": 0, "pid": 7, "comm": comm, "ctx": "task", "kind": "user_return"}]
    write_trace(path, rows, {"max": 1000 * 4096, "high": 150 * 4096, "command": [comm]}, {"usage": 200 * 4096}, symbol)


@pytest.fixture
def result(tmp_path):
    tiny_trace(tmp_path / "trace")
    replayed = chargeplay("replay", str(tmp_path / "trace"), "-o", str(tmp_path / "result"))
    assert replayed.returncode == 0, replayed.stderr
    return Result.open(tmp_path / "result")


def test_divergence_of_a_tiny_trace_by_hand(result):
    metrics = divergence(result)
    pairs = {tuple(p["policies"]): p for p in metrics["pairs"]}
    refused = pairs[("nowait-slab-charge", "fail-nowait-above-high")]
    assert refused["differing_charges"] == 1
    assert refused["by"]["symbol"] == [{"symbol": "nowait_site+0x1/0x10", "charges": 1}]
    assert refused["by"]["gfp_class"] == [{"gfp_class": "GFP_NOWAIT", "charges": 1}]
    assert refused["by"]["task"] == [{"task": "worker (7)", "charges": 1}]
    assert refused["delta"]["failed"] == 1
    # Usage 200 -> 232 pages under 4.2, stays 200 when refused: they differ from the first bucket on.
    assert refused["first_usage_difference_ns"] == 0
    # 4.2 and mainline both charge it (32 and 64 pages): no outcome differs, but usage does.
    same = pairs[("nowait-slab-charge", "mainline-6.18")]
    assert same["differing_charges"] == 0 and same["first_usage_difference_ns"] == 0
    assert metrics["call_sites"] == [{"symbol": "nowait_site+0x1/0x10", "changed": 1, "charges": 1}]


def test_pairs_are_each_policy_against_the_baseline_unless_all_are_asked_for(result, tmp_path):
    """The tiny trace was recorded here, so its kernel's model is the default baseline (6.16 and
    later: mainline-6.18); --baseline picks another; --all-pairs compares every two."""
    names = result.policies

    def pairs(*options: str) -> tuple[str | None, list[tuple[str, str]]]:
        out = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        made = chargeplay("report", str(result.path), "-o", str(out.with_suffix(".html")), "--json", str(out.with_suffix(".json")), *options)
        assert made.returncode == 0, made.stderr
        metrics = json.loads(out.with_suffix(".json").read_text())
        return metrics["baseline"], [tuple(pair["policies"]) for pair in metrics["pairs"]]

    release = result.trace.manifest["kernel"]["release"]
    assert tuple(int(n) for n in release.split(".")[:2]) >= (6, 16)
    assert pairs() == ("mainline-6.18", [("mainline-6.18", p) for p in names if p != "mainline-6.18"])
    assert pairs("--baseline", "caller-gfp") == ("caller-gfp", [("caller-gfp", p) for p in names if p != "caller-gfp"])
    assert pairs("--all-pairs") == (None, [(a, b) for i, a in enumerate(names) for b in names[i + 1:]])
    assert_user_error(chargeplay("report", str(result.path), "-o", str(tmp_path / "x.html"), "--baseline", "mainline-9"),
                      "--baseline 'mainline-9'", "choose one of them")
    assert not (tmp_path / "x.html").exists()


def test_the_default_baseline_is_the_model_of_the_traces_kernel(tmp_path):
    """file-storm-6.1 was captured on 6.1: its model, mainline-6.1, is the baseline (the first
    policy replayed is another)."""
    replayed = chargeplay("replay", str(sample_path("file-storm-6.1")), "-o", str(tmp_path / "r"), "--memory-high", "8M",
                          "--policy", "caller-gfp", "--policy", "mainline-6.18", "--policy", "mainline-6.1")
    assert replayed.returncode == 0, replayed.stderr
    made = chargeplay("report", str(tmp_path / "r"), "-o", str(tmp_path / "r.html"), "--json", str(tmp_path / "m.json"))
    assert made.returncode == 0, made.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert [pair["policies"] for pair in metrics["pairs"]] == [["mainline-6.1", "caller-gfp"], ["mainline-6.1", "mainline-6.18"]]


def test_the_seed_pair_parts_at_real_call_sites_over_memory_high(tmp_path):
    """The 2015 thread's pair on the bundled file-storm under memory.high 15 MiB: 4.3 charges a
    high-order slab without direct reclaim, so where usage is over high such a charge cannot
    reclaim for it and leaves the memcg above high, while charging with the caller's gfp
    reclaims. The charges that part them are named by their kernel call sites."""
    replayed = chargeplay("replay", str(sample_path("file-storm")), "-o", str(tmp_path / "r"), "--memory-max", "16M",
                          "--memory-high", "15M", "--policy", "nowait-slab-charge", "--policy", "caller-gfp")
    assert replayed.returncode == 0, replayed.stderr
    divergent = Result.open(tmp_path / "r").divergent_charges
    parted = divergent.filter((pl.col("nowait-slab-charge") == "above_high") & (pl.col("caller-gfp") == "reclaimed_for_high"))
    sites = set(parted["symbol"])
    assert any(re.fullmatch(r"\w+\+0x[0-9a-f]+/0x[0-9a-f]+", site) for site in sites), sites
    assert set(parted["kind"]) >= {"slab object"}


def stack_trace(path) -> None:
    """A memcg 32 pages below memory.max (1000 pages), 100 of its pages file cache. Task 7
    allocates a GFP_KERNEL_ACCOUNT page (call site 0) on CPU 0; then, on CPU 1, task 8's
    kernel stack grows by a page (NR_KERNEL_STACK_KB: memcg_charge_kernel_stack charges it
    with GFP_KERNEL) and it maps an anon page (charged GFP_HIGHUSER_MOVABLE).

    By hand: the 4.x policies charge a 32-page batch for the page, filling the memcg (the
    31 left over sit in CPU 0's stock), so the stack's page, on CPU 1, must reclaim; mainline
    cannot fit its 64-page batch, charges the one page and charges the stack's page without
    reclaim. The anon page then fits under both."""
    forker, child = {"cpu": 0, "pid": 7, "comm": "forker", "ctx": "task"}, {"cpu": 1, "pid": 8, "comm": "child", "ctx": "task"}
    rows = [{**forker, "ts_ns": 1_000_000, "kind": "page_alloc", "call_site": 0, "obj": 0, "order": 0,
             "gfp": GFP["GFP_KERNEL_ACCOUNT"], "bytes_alloc": 4096, "accounted": True, "failed": False},
            {**child, "ts_ns": 1_100_000, "kind": "memcg_lruvec_state", "memcg_id": 1, "item": NODE_STAT_ITEMS["NR_KERNEL_STACK_KB"], "val": 1},
            {**child, "ts_ns": 1_200_000, "kind": "memcg_lruvec_state", "memcg_id": 1, "item": NODE_STAT_ITEMS["NR_ANON_MAPPED"], "val": 1},
            {**child, "ts_ns": 2_000_000, "kind": "user_return"}]
    write_trace(path, rows, {"max": 1000 * 4096, "high": None, "command": ["forker"]},
                {"usage": 968 * 4096, "file": 100 * 4096}, "pte_alloc_one+0x1/0x10")


def test_each_charge_is_labelled_by_what_the_replay_charged(tmp_path):
    """A kernel stack's page is a GFP_KERNEL charge without a call site: it must not be shown
    as a file or anon page charged GFP_HIGHUSER_MOVABLE (as the report once did)."""
    stack_trace(tmp_path / "trace")
    replayed = chargeplay("replay", str(tmp_path / "trace"), "-o", str(tmp_path / "result"))
    assert replayed.returncode == 0, replayed.stderr
    outcomes = pl.read_parquet(tmp_path / "result" / "outcomes.parquet").with_columns(cs.categorical().cast(pl.String))
    described = outcomes.select("row", "kind", "gfp_class", "call_site", "cache", "pid", "comm").rows()
    assert described == [(0, "kmem page", "GFP_KERNEL_ACCOUNT", 0, None, 7, "forker"),
                         (1, "kernel stack", "GFP_KERNEL", None, None, 8, "child"),
                         (2, "anon or shmem page", "GFP_HIGHUSER_MOVABLE", None, None, 8, "child")]
    assert outcomes["nowait-slab-charge"].to_list() == ["charged", "reclaimed", "charged"]
    assert outcomes["mainline-6.18"].to_list() == ["charged", "charged", "charged"]
    pair = next(p for p in divergence(Result.open(tmp_path / "result"))["pairs"] if p["policies"] == ["nowait-slab-charge", "mainline-6.18"])
    assert pair["differing_charges"] == 1
    assert pair["by"]["kind"] == [{"kind": "kernel stack", "charges": 1}]
    assert pair["by"]["gfp_class"] == [{"gfp_class": "GFP_KERNEL", "charges": 1}]
    assert pair["by"]["symbol"] == [{"symbol": "[kernel stack]", "charges": 1}]
    assert pair["by"]["cache"] == [{"cache": "-", "charges": 1}]
    assert pair["by"]["task"] == [{"task": "child (8)", "charges": 1}]


def test_a_trace_that_lost_events_opens_the_verdict_with_where(tmp_path):
    tiny_trace(tmp_path / "trace")
    manifest = json.loads((tmp_path / "trace" / MANIFEST).read_text())
    manifest["lost"] = {"total": 40, "per_cpu": {"0": 40}, "spans": [{"from_ns": 0, "to_ns": 2_500_000_000, "events": 40}]}
    write_json(tmp_path / "trace" / MANIFEST, manifest)
    replayed = chargeplay("replay", str(tmp_path / "trace"), "-o", str(tmp_path / "result"))
    assert replayed.returncode == 0, replayed.stderr
    assert "warning: the trace lost 40 events in 1 span of 2.5 s (0.0-2.5 s into the capture)" in replayed.stderr
    reported = chargeplay("report", str(tmp_path / "result"), "-o", str(tmp_path / "r.html"))
    assert reported.returncode == 0, reported.stderr
    verdict = (tmp_path / "r.html").read_text().split('<ul class="verdict"><li>', 1)[1]
    assert verdict.startswith("Careful: the trace lost 40 events in 1 span of 2.5 s (0.0-2.5 s into the capture): "
                              "figures from it under-count there.</li>")


def test_a_replay_whose_reclaim_took_page_cache_says_in_the_verdict_that_refaults_are_not_counted(tmp_path):
    replayed = chargeplay("replay", str(sample_path("file-storm")), "-o", str(tmp_path / "result"),
                          "--memory-max", "16M", "--memory-high", "15M", "--policy", "mainline-6.18")
    assert replayed.returncode == 0, replayed.stderr
    taken = json.loads((tmp_path / "result" / "summary.json").read_text())["policies"]["mainline-6.18"]["reclaimed_file_pages"]
    assert taken > 0
    reported = chargeplay("report", str(tmp_path / "result"), "-o", str(tmp_path / "r.html"))
    assert reported.returncode == 0, reported.stderr
    page = (tmp_path / "r.html").read_text()
    verdict = page.split('<ul class="verdict"><li>', 1)[1]
    assert verdict.startswith("Careful: reclaim took page cache (up to ") and "in mainline-6.18): " in verdict.split("</li>")[0]
    assert f"<td>{taken:,}</td>" in page.split("<h2>Summary</h2>", 1)[1].split("</table>")[0]


def test_a_report_says_where_its_reclaim_cost_came_from_and_when_a_page_was_a_guess(tmp_path):
    # file-storm-6.12 reclaims no batch of its own (its cost a page is the default); file-storm does.
    def report_of(name: str, *args: str) -> tuple[str, dict]:
        replayed = chargeplay("replay", str(sample_path("file-storm-6.12")), "-o", str(tmp_path / name),
                              "--memory-max", "16M", "--policy", "mainline-6.12", *args)
        assert replayed.returncode == 0, replayed.stderr
        assert chargeplay("report", str(tmp_path / name), "-o", str(tmp_path / f"{name}.html")).returncode == 0
        return (tmp_path / f"{name}.html").read_text(), json.loads((tmp_path / name / "summary.json").read_text())["limits"]

    page, limits = report_of("guessed")
    assert (f"reclaim {limits['reclaim_ns_per_call']:,} ns/call + 1,000 ns/page (a page at the default: the trace reclaims "
            "no batch to measure it by)") in page
    verdict = page.split('<ul class="verdict">', 1)[1].split("</ul>")[0]
    assert "<li>Careful: reclaim took pages, each at the default cost of 1 us: " in verdict
    donor = tmp_path / "a &lt;donor&gt;"  # a path that HTML would misread unless escaped
    shutil.copytree(sample_path("file-storm"), donor)
    page, limits = report_of("measured", "--reclaim-cost-from", str(donor))
    assert f"ns/page (measured in {str(donor).replace('&', '&amp;')})" in page and "default cost" not in page


def test_report_errors_are_one_line(tmp_path):
    assert_user_error(chargeplay("report", str(tmp_path), "-o", str(tmp_path / "r.html")), "summary.json")


def elements(html: str) -> Counter[str]:
    """The element names in a page, counted (script bodies are text to the parser, as to a browser)."""
    names: Counter[str] = Counter()

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            names[tag] += 1

    Collect().feed(html)
    return names


def render(page, tmp_path, fragment: str = "") -> tuple[str, str]:
    """The DOM after scripts ran (vega-embed draws each chart as SVG), and the browser's log;
    `fragment`: the URL's, e.g. "#drill=TEXT"."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--log-level=0", "--virtual-time-budget=15000", "--window-size=1100,4200"]
    shown = subprocess.run([BROWSER, *flags, "--dump-dom", page.as_uri() + fragment], capture_output=True, text=True, timeout=120)
    return shown.stdout, shown.stderr


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class DrawnCharts(HTMLParser):
    """What Vega drew in each `<div id="chartN">`: its mark items (the mark type, the fields
    Vega names in the item's aria-label, the SVG path) and the texts of its legend labels.
    Nothing here exists unless the chart was rendered: the page itself holds only the specs."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.charts: dict[int, dict[str, list]] = {}
        self.stack: list[tuple[str, str, int | None]] = []  # tag, class, chart it is in
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        chart = self.stack[-1][2] if self.stack else None
        if tag == "div" and re.fullmatch(r"chart\d+", attrs.get("id") or ""):
            chart = int(attrs["id"][len("chart"):])
            self.charts[chart] = {"marks": [], "legend": []}
        mark = re.match(r"mark-(\w+) role-mark\b", self.stack[-1][1]) if self.stack else None
        if chart is not None and mark and attrs.get("role") == "graphics-symbol":
            fields = dict(item.split(": ", 1) for item in attrs.get("aria-label", "").split("; ") if ": " in item)
            self.charts[chart]["marks"].append((mark.group(1), fields, attrs.get("d", ""), attrs.get("stroke") or attrs.get("fill")))
        if tag not in VOID:
            self.stack.append((tag, attrs.get("class") or "", chart))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if len(self.stack) > 1 and self.stack[-1][0] == "text" and "role-legend-label" in self.stack[-2][1]:
            self.charts[self.stack[-1][2]]["legend"].append(data)

    def marks(self, chart: int, kind: str) -> list[tuple[dict[str, str], str]]:
        return [(fields, path) for mark, fields, path, _ in self.charts[chart]["marks"] if mark == kind]

    def colours(self, chart: int, kind: str) -> dict[str, str]:
        """Each policy's colour in a chart's marks of one kind (stroke or fill)."""
        return {fields["policy"]: colour for mark, fields, _, colour in self.charts[chart]["marks"] if mark == kind}


def bar_width(path: str) -> float:
    """A horizontal bar's length in pixels, from Vega's rect path `M x,y h W v H h -W Z`."""
    return float(re.match(r"M[-\d.e]+,[-\d.e]+h([-\d.e]+)v", path).group(1))


def assert_bars_show(drawn: DrawnCharts, chart: int, expected: dict[str, float]) -> None:
    """One bar per policy, in the summary's policy order, labelled with the summary's value,
    its length in proportion to it (to half a pixel)."""
    bars = drawn.marks(chart, "rect")
    assert [fields["policy"] for fields, _ in bars] == list(expected), chart
    longest = max(expected.values())
    widest = max(bar_width(path) for _, path in bars)
    assert widest > 0 or longest == 0, (chart, bars)
    for fields, path in bars:
        value = expected[fields["policy"]]
        assert float(fields["value"]) == pytest.approx(value, rel=1e-9), (chart, fields)
        assert bar_width(path) == pytest.approx(widest * value / longest if longest else 0, abs=0.5), (chart, fields, path)


@pytest.mark.skipif(BROWSER is None, reason="needs Chromium (Debian package chromium) to open the report")
def test_the_report_draws_every_chart_offline_without_console_messages(tmp_path):
    page = tmp_path / "demo" / "report.html"
    made = chargeplay("demo", "-o", str(tmp_path / "demo"))
    assert made.returncode == 0, made.stderr
    assert f"report: {page}" in made.stdout
    html = page.read_text()
    assert "http://" not in html.split("<script>")[0] and 'src="http' not in html  # nothing to fetch
    dom, log = render(page, tmp_path)
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    result = Result.open(tmp_path / "demo" / "result")
    summary = json.loads((tmp_path / "demo" / "result" / "summary.json").read_text())
    policies, limits = summary["policies"], summary["limits"]
    names = list(policies)
    drawn = DrawnCharts(dom)
    # Nothing failed in the demo: that section is one sentence, no chart; the other seven draw.
    assert not any(policies[p]["failed"] for p in names)
    assert "<h2>Failed charges</h2>\n<p class=\"what\">No policy failed a charge.</p>\n<h2>" in dom
    assert sorted(drawn.charts) == list(range(7))

    # The verdict opens the page, before the summary table: the best at keeping memory.high is
    # the policy with the fewest page-seconds above it (then seconds above it, then peak).
    verdict = dom.split('<ul class="verdict">')[1].split("</ul>")[0]
    assert dom.index('<ul class="verdict">') < dom.index("<h2>Summary</h2>")
    keeping = {p: (policies[p]["page_seconds_above_high"], policies[p]["seconds_above_high"], policies[p]["peak_bytes"])
               for p in names}
    best = min(names, key=keeping.get)
    assert len(set(keeping.values())) > 1 and [p for p in names if keeping[p] == keeping[best]] == [best]
    careful, first = (re.sub("<[^>]+>", "", item) for item in verdict.split("</li>")[:2])
    # the demo's reclaim takes page cache, whose re-reads (refaults) no trace shows: said first
    assert any(policies[p]["reclaimed_file_pages"] for p in names)
    assert careful.startswith("Careful: reclaim took page cache (up to ")
    assert first.startswith(f"Best at keeping memory.high (15.0 MiB): {best}, ")
    assert verdict.count("<li>") >= 2 * len(names) - 1  # a cost per policy, what sets each apart from the baseline

    # 0, usage over time: a line per policy, the memory.high and memory.max rules at the
    # summary's limits (the demo replays with 15 and 16 MiB), a legend entry per policy in the
    # summary's order, and one per limit.
    lines = drawn.marks(0, "line")
    assert sorted(fields["policy"] for fields, _ in lines) == sorted(names)
    assert all(path.count("L") > 10 for _, path in lines)  # a drawn series, not a dot
    rules = {fields["limit"]: float(fields["MiB"]) for fields, _ in drawn.marks(0, "rule")}
    assert rules == {"memory.high": limits["high_bytes"] / (1 << 20), "memory.max": limits["max_bytes"] / (1 << 20)} == {
        "memory.high": 15, "memory.max": 16}
    assert drawn.charts[0]["legend"] == [*names, "memory.high", "memory.max"]

    # 1 and 5: page-seconds above memory.high and min-order fallbacks, a bar per policy.
    assert_bars_show(drawn, 1, {p: policies[p]["page_seconds_above_high"] for p in names})
    assert_bars_show(drawn, 5, {p: policies[p]["fallbacks"] for p in names})
    assert drawn.charts[1]["legend"] == drawn.charts[5]["legend"] == []

    # 2, the demo's spread: a tick per policy and stock phase in each of two panels (page-seconds
    # above high, run seconds) at the summary's figures; in the first, placed in proportion.
    spread = summary["spread"]
    ticks = [(f["policy"], int(f["stock phase"]), float(f["page-seconds above high"]), float(f["run seconds"]), path)
             for f, path in drawn.marks(2, "rect")]
    expected = [(p, phase, spread["policies"][p]["page_seconds_above_high"][n], spread["policies"][p]["run_seconds"][n])
                for p in names for n, phase in enumerate(spread["stock_phases"])]
    assert [tick[:2] for tick in ticks] == [row[:2] for row in expected + expected]
    half = len(expected)  # each panel's own figure in full (the other's rounded, as its tooltip shows it)
    assert [tick[2] for tick in ticks[:half]] == pytest.approx([row[2] for row in expected], rel=1e-6)
    assert [tick[3] for tick in ticks[half:]] == pytest.approx([row[3] for row in expected], rel=1e-6)
    first = [(value, float(re.match(r"M([-\d.e]+),", path).group(1))) for _, _, value, _, path in ticks[:half]]
    (v0, x0), (v1, x1) = min(first), max(first)
    assert v1 > v0 and all(x == pytest.approx(x0 + (x1 - x0) * (v - v0) / (v1 - v0), abs=0.5) for v, x in first)

    # 3, reclaim: a bar per policy and trigger, with the summary's calls; triggers in the
    # legend in the summary's order.
    triggers = list(policies[names[0]]["reclaim_calls"])
    assert {(f["policy"], f["trigger"]): int(f["calls"]) for f, _ in drawn.marks(3, "rect")} == {
        (p, t): policies[p]["reclaim_calls"][t] for p in names for t in triggers}
    assert drawn.charts[3]["legend"] == triggers == ["max", "high_sync", "user_return", "async"]

    # 4, stall: a bar per policy and task (the demo's one stalled task), in milliseconds (the
    # axis field's value; the tooltip's is rounded).
    stalls = {(f["policy"], int(re.search(r"\((\d+)\)$", f["task"]).group(1))): float(f["stall, ms (reclaim and throttling)"])
              for f, _ in drawn.marks(4, "rect")}
    assert stalls == pytest.approx({(p, int(pid)): ns / 1e6 for p in names for pid, ns in policies[p]["stall_ns_by_pid"].items()})
    assert drawn.charts[4]["legend"] == names

    # 6, divergence heat map: a cell per call site the metrics rank and policy but the
    # baseline, and a gradient legend (no entries).
    baseline = "mainline-6.18"
    sites = [row["symbol"] for row in divergence(result)["call_sites"][:25]]
    cells = [(f["symbol"], f["policy"]) for f, _ in drawn.marks(6, "rect")]
    assert sorted(cells) == sorted((s, p) for s in sites for p in names if p != baseline) and sites
    assert "role-legend-gradient" in dom.split('<div id="chart6"')[1]


@pytest.mark.skipif(BROWSER is None, reason="needs Chromium (Debian package chromium) to open the report")
def test_a_policy_has_the_same_colour_in_every_report(result, tmp_path):
    """All eight built-in policies in one report, two of them (in the other order) in another:
    each keeps its colour, and no two policies share one."""
    subset = tmp_path / "subset"
    replayed = chargeplay("replay", str(result.trace.path), "-o", str(subset), "--policy", "mainline-6.18", "--policy", "caller-gfp")
    assert replayed.returncode == 0, replayed.stderr
    colours = []
    for name, source in (("all", result.path), ("two", subset)):
        made = chargeplay("report", str(source), "-o", str(tmp_path / f"{name}.html"))
        assert made.returncode == 0, made.stderr
        dom, _ = render(tmp_path / f"{name}.html", tmp_path)
        colours.append(DrawnCharts(dom).colours(0, "line"))
    every, two = colours
    assert sorted(every) == sorted(result.policies) and len(set(every.values())) == len(every)
    assert two == {"mainline-6.18": every["mainline-6.18"], "caller-gfp": every["caller-gfp"]}


def drill_rows(dom: str, table: int) -> list[tuple[bool, list[str]]]:
    """A drill-down table's body rows as the browser left them: (hidden, cell texts)."""
    body = dom.split(f'id="drill{table}"')[1].split("<tbody>")[1].split("</tbody>")[0]
    return [("hidden" in attrs, [html.unescape(re.sub("<[^>]+>", "", cell)) for cell in re.findall(r"<td[^>]*>(.*?)</td>", cells)])
            for attrs, cells in re.findall(r"<tr([^>]*)>(.*?)</tr>", body)]


@pytest.mark.skipif(BROWSER is None, reason="needs Chromium (Debian package chromium) to open the report")
def test_the_drill_down_lists_every_place_the_pair_parts_and_filters_and_sorts(tmp_path):
    """The seed pair on file-storm: each row's charges counted afresh from outcomes.parquet
    (stock and already charged slabs as charged); the page opened with #drill= hides the rows
    without the text, and #sort= orders the rows by that column, largest first."""
    replayed = chargeplay("replay", str(sample_path("file-storm")), "-o", str(tmp_path / "r"), "--memory-max", "16M",
                          "--memory-high", "15M", "--policy", "nowait-slab-charge", "--policy", "caller-gfp")
    assert replayed.returncode == 0, replayed.stderr
    made = chargeplay("report", str(tmp_path / "r"), "-o", str(tmp_path / "r.html"))
    assert made.returncode == 0, made.stderr
    same = {"stock": "charged", "no_charge": "charged"}
    outcomes = pl.read_parquet(tmp_path / "r" / "outcomes.parquet").with_columns(
        cs.categorical().cast(pl.String)).with_columns(pl.col("nowait-slab-charge", "caller-gfp").replace(same))
    symbols = pl.read_parquet(sample_path("file-storm") / "symbols.parquet").rename({"id": "call_site"})
    parted = outcomes.filter(pl.col("nowait-slab-charge") != pl.col("caller-gfp")).join(symbols, on="call_site", how="left")
    expected = {(symbol or f"[{kind}]", cache or "-", kind, gfp, a, b): n for symbol, cache, kind, gfp, a, b, n in parted.group_by(
        "symbol", "cache", "kind", "gfp_class", "nowait-slab-charge", "caller-gfp").len().iter_rows()}

    dom, _ = render(tmp_path / "r.html", tmp_path, "#drill=ext4_alloc_inode")
    rows = drill_rows(dom, 0)
    assert {tuple(cells[:6]): int(cells[6].replace(",", "")) for _, cells in rows} == expected
    assert {hidden for hidden, cells in rows if "ext4_alloc_inode" in cells[0]} == {False}
    assert {hidden for hidden, cells in rows if "ext4_alloc_inode" not in cells[0]} == {True}
    dom, _ = render(tmp_path / "r.html", tmp_path, "#sort=call%20site")
    sites = [cells[0] for hidden, cells in drill_rows(dom, 0)]
    assert sites == sorted(sites, reverse=True) and len(set(sites)) > 1


@pytest.mark.skipif(BROWSER is None, reason="needs Chromium (Debian package chromium) to open the report")
def test_trace_strings_are_inert_in_the_report(tmp_path):
    """Task names (in the stall chart, the tables and the workload's command) and call-site
    symbols (in the pairs table and the heat map) are shown as text. Cache names are not in
    the page, only in --json."""
    tiny_trace(tmp_path / "trace", comm=HOSTILE, symbol=HOSTILE_SYMBOL)
    assert chargeplay("replay", str(tmp_path / "trace"), "-o", str(tmp_path / "result")).returncode == 0
    page = tmp_path / "report.html"
    assert chargeplay("report", str(tmp_path / "result"), "-o", str(page)).returncode == 0
    html = page.read_text()
    assert HOSTILE not in html and HOSTILE_SYMBOL not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # shown, as text
    assert "&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in html  # the pairs table's call site
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(2)" in html  # the heat map's data
    dom, log = render(page, tmp_path)
    assert "img" not in elements(dom) and "alert" not in log
    assert elements(dom)["script"] == elements(html)["script"]  # no script element added
    metrics = json.loads(json.dumps(divergence(Result.open(tmp_path / "result"))))
    assert any(HOSTILE in row["task"] for pair in metrics["pairs"] for row in pair["by"]["task"])


@pytest.fixture(scope="module")
def two_results(tmp_path_factory) -> list:
    """file-storm captured on 6.18 and on 6.1, replayed alike; the second with one policy more."""
    root = tmp_path_factory.mktemp("two")
    for name, extra in (("file-storm", []), ("file-storm-6.1", ["--policy", "watermark"])):
        replayed = chargeplay("replay", str(sample_path(name)), "-o", str(root / name), "--memory-max", "28M", "--memory-high", "12M",
                              "--policy", "mainline-6.1", "--policy", "caller-gfp", *extra)
        assert replayed.returncode == 0, replayed.stderr
    return [root / "file-storm", root / "file-storm-6.1"]


def test_several_results_are_compared_policy_by_policy(two_results, tmp_path):
    made = chargeplay("report", *map(str, two_results), "-o", str(tmp_path / "c.html"), "--json", str(tmp_path / "c.json"))
    assert made.returncode == 0, made.stderr
    compared = json.loads((tmp_path / "c.json").read_text())
    assert compared["policies"] == ["mainline-6.1", "caller-gfp"]  # watermark: in one result only
    assert [r["kernel"].split(".")[:2] for r in compared["results"]] == [["6", "18"], ["6", "1"]]
    for path in two_results:
        summary = json.loads((path / "summary.json").read_text())["policies"]
        for name in compared["policies"]:
            assert compared["figures"][path.name][name] == {key: summary[name][key] for key in compared["figures"][path.name][name]}
    page = (tmp_path / "c.html").read_text()
    table = page.split('<table class="side-by-side">')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 2 * 2  # the heading, then a row per policy and result


@pytest.mark.skipif(BROWSER is None, reason="needs Chromium (Debian package chromium) to open the report")
def test_the_comparison_draws_each_result(two_results, tmp_path):
    made = chargeplay("report", *map(str, two_results), "-o", str(tmp_path / "c.html"))
    assert made.returncode == 0, made.stderr
    dom, log = render(tmp_path / "c.html", tmp_path)
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    drawn = DrawnCharts(dom)
    assert sorted(drawn.charts) == [0, 1, 2]
    # usage: a line per policy in each result's panel
    assert sorted(f["policy"] for f, _ in drawn.marks(0, "line")) == sorted(["mainline-6.1", "caller-gfp"] * 2)
    bars = {(f["result"], f["policy"]): float(f["value"]) for f, _ in drawn.marks(1, "rect")}
    assert bars == pytest.approx({(path.name, name): json.loads((path / "summary.json").read_text())["policies"][name]["page_seconds_above_high"]
                                  for path in two_results for name in ("mainline-6.1", "caller-gfp")})


def test_results_without_a_policy_in_common_or_with_pair_options_are_one_line(two_results, tmp_path):
    other = tmp_path / "other"
    replayed = chargeplay("replay", str(sample_path("file-storm")), "-o", str(other), "--memory-high", "12M", "--policy", "watermark")
    assert replayed.returncode == 0, replayed.stderr
    assert_user_error(chargeplay("report", str(two_results[0]), str(other), "-o", str(tmp_path / "x.html")), "no policy was replayed in all")
    assert_user_error(chargeplay("report", *map(str, two_results), "-o", str(tmp_path / "x.html"), "--all-pairs"), "one result")
    assert not (tmp_path / "x.html").exists()
