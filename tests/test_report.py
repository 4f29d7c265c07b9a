"""Divergence metrics worked out by hand on a tiny trace, and the report in a real browser."""
from __future__ import annotations

import json
import re
from collections import Counter
import shutil
import subprocess
from html.parser import HTMLParser

import pyarrow as pa
import pytest

from analyze.divergence import divergence
from analyze.results import Result
from conftest import assert_user_error, chargeplay
from traces.atomic import write_json, write_parquet
from traces.manifest import MANIFEST, new_manifest
from traces.schema import EVENT_SCHEMA, MEMCG_COLUMNS, SYMBOL_COLUMNS, table_schema
from traces.segments import SegmentWriter

HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_SYMBOL = "</script><script>alert(2)</script>"  # symbols land in the charts' JSON, inside <script>
GFP = {"GFP_KERNEL": 0xCC0, "GFP_NOWAIT": 0x2800, "GFP_ATOMIC": 0x820, "GFP_HIGHUSER_MOVABLE": 0x100CCA,
       "__GFP_HIGH": 0x20, "__GFP_DIRECT_RECLAIM": 0x400, "__GFP_RETRY_MAYFAIL": 0x4000, "__GFP_NOFAIL": 0x8000,
       "__GFP_NORETRY": 0x10000, "__GFP_ACCOUNT": 1 << 22}
BROWSER = shutil.which("chromium")


def tiny_trace(path, comm: str = "worker", symbol: str = "nowait_site+0x1/0x10") -> None:
    """200 pages charged at the start, memory.high 150 pages: one GFP_NOWAIT page allocation.

    By hand: fail-nowait-above-high refuses it (non-blocking, usage above high); the 4.x
    policies charge a batch of 32 pages, mainline 64; none of them may reclaim for it."""
    manifest = new_manifest(backend="test", clock="mono", target={"memcg_id": 1, "max": 1000 * 4096, "high": 150 * 4096,
                            "command": [comm]}, gfp_flags=GFP, enums={})
    manifest["status"] = "complete"
    writer = SegmentWriter(path, lambda segment: manifest["segments"].append(segment.__dict__))
    rows = [{"ts_ns": 1_000_000, "cpu": 0, "pid": 7, "comm": comm, "ctx": "task", "kind": "page_alloc", "call_site": 0,
             "obj": 0, "order": 0, "gfp": GFP["GFP_NOWAIT"] | GFP["__GFP_ACCOUNT"], "bytes_alloc": 4096,
             "accounted": True, "failed": False},
            {"ts_ns": 2_000_000, "cpu": 0, "pid": 7, "comm": comm, "ctx": "task", "kind": "user_return"}]
    writer.write(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
    writer.close_segment()
    write_parquet(path / "memcg.parquet", pa.Table.from_pylist([{"ts_ns": 0, "usage": 200 * 4096}], schema=table_schema(MEMCG_COLUMNS)))
    write_parquet(path / "symbols.parquet", pa.Table.from_pylist([{"id": 0, "symbol": symbol}], schema=table_schema(SYMBOL_COLUMNS)))
    write_json(path / MANIFEST, manifest)


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


def render(page, tmp_path) -> tuple[str, str]:
    """The DOM after scripts ran, and the browser's log; a screenshot is kept beside the page."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--log-level=0", "--virtual-time-budget=15000", "--window-size=1100,4200"]
    subprocess.run([BROWSER, *flags, f"--screenshot={page.with_suffix('.png')}", page.as_uri()], capture_output=True, timeout=120)
    shown = subprocess.run([BROWSER, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    return shown.stdout, shown.stderr


@pytest.mark.skipif(BROWSER is None, reason="needs Chromium (Debian package chromium) to open the report")
def test_the_report_draws_every_chart_offline_without_console_messages(tmp_path):
    page = tmp_path / "demo" / "report.html"
    made = chargeplay("demo", "-o", str(tmp_path / "demo"))
    assert made.returncode == 0, made.stderr
    assert f"report: {page}" in made.stdout
    html = page.read_text()
    assert "http://" not in html.split("<script>")[0] and 'src="http' not in html  # nothing to fetch
    dom, log = render(page, tmp_path)
    charts = re.findall(r'<div id="chart\d+"', html)
    assert len(charts) == 7
    for n in range(len(charts)):
        drawn = re.search(rf'<div id="chart{n}"[^>]*role="graphics-document"[^>]*>\s*<svg', dom)
        assert drawn, f"chart {n} was not drawn"
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    assert page.with_suffix(".png").stat().st_size > 50_000  # the screenshot, kept with the page


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
