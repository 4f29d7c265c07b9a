"""A replay result says what produced it and finds its trace from anywhere: summary.json's
identity fields, `report` from another directory, and the one-line refusals of a result whose
trace moved away or changed."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common.version import __version__
from conftest import assert_user_error, chargeplay
from replay.policy import BUILTIN, RESERVED_NAMES
from replay.result_format import CHARGE_COLUMNS, content_id
from traces.reader import Trace

TINY = Path(__file__).parent / "corpus" / "tiny-trace"


@pytest.fixture
def replayed(tmp_path) -> tuple[Path, Path]:
    """The tiny trace copied into tmp_path/work/trace and replayed, with the reference
    engine and two policies, into tmp_path/work/result: (trace, result)."""
    trace, result = tmp_path / "work" / "trace", tmp_path / "work" / "result"
    shutil.copytree(TINY, trace)
    done = chargeplay("replay", str(trace), "-o", str(result), "--engine", "reference",
                      "--policy", "caller-gfp", "--policy", "mainline-6.18")
    assert done.returncode == 0, done.stderr
    return trace, result


def test_the_summary_says_what_produced_the_result(replayed):
    trace, result = replayed
    summary = json.loads((result / "summary.json").read_text())
    assert summary["chargeplay_version"] == __version__ and summary["engine"] == "reference"
    assert summary["trace"] == {"content_id": content_id(Trace.open(trace)), "path": "../trace",
                                "absolute_path": str(trace.resolve()), "lost": {"events": 0, "spans": None}}
    assert {name: p["knobs"] for name, p in summary["policies"].items()} == {
        name: BUILTIN[name].knobs() for name in ("caller-gfp", "mainline-6.18")}
    assert summary["limits"]["max_bytes"] == Trace.open(trace).manifest["target"]["max"]


def test_the_content_id_reads_no_events_but_changes_with_them(tmp_path):
    """The id hashes the manifest and the Parquet footers: a segment whose events differ has
    other column statistics and sizes, so another id."""
    copy = tmp_path / "trace"
    shutil.copytree(TINY, copy)
    same = content_id(Trace.open(copy))
    assert same == content_id(Trace.open(TINY))  # where a trace lies is not what it is
    segment = sorted((copy / "events").glob("part-*.parquet"))[0]
    table = pq.read_table(segment)
    pq.write_table(table.slice(0, table.num_rows - 1), segment)
    assert content_id(Trace.open(copy)) != same


def test_report_runs_from_any_directory(replayed, tmp_path):
    _, result = replayed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    relative = os.path.relpath(result, elsewhere)
    reported = chargeplay("report", relative, "-o", "r.html", cwd=elsewhere)
    assert reported.returncode == 0, reported.stderr
    assert (elsewhere / "r.html").read_text().startswith("<!DOCTYPE html>")


def test_a_result_moved_with_its_trace_or_alone_still_finds_it(replayed, tmp_path):
    trace, result = replayed
    together = tmp_path / "moved"
    shutil.move(trace.parent, together)  # the relative path still holds
    assert chargeplay("report", str(together / "result"), "-o", str(tmp_path / "a.html")).returncode == 0
    shutil.move(together, trace.parent)
    alone = tmp_path / "result-alone"
    shutil.move(result, alone)  # the absolute path still holds
    assert chargeplay("report", str(alone), "-o", str(tmp_path / "b.html")).returncode == 0


def test_a_result_whose_trace_moved_away_is_one_error_line(replayed, tmp_path):
    trace, result = replayed
    shutil.move(trace, tmp_path / "gone")
    assert_user_error(chargeplay("report", str(result), "-o", str(tmp_path / "r.html")),
                      "its trace is gone from ../trace", "move the trace back or re-run chargeplay replay")
    assert not (tmp_path / "r.html").exists()


def test_a_result_whose_trace_changed_is_one_error_line(replayed, tmp_path):
    trace, result = replayed
    manifest = json.loads((trace / "manifest.json").read_text())
    manifest["stop_reason"] = "edited"
    (trace / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(chargeplay("report", str(result), "-o", str(tmp_path / "r.html")),
                      str(trace.resolve()), "not the trace this result replayed", "re-run chargeplay replay")


def test_a_result_of_the_old_format_is_one_error_line(replayed, tmp_path):
    _, result = replayed
    summary = json.loads((result / "summary.json").read_text())
    del summary["result_format"]
    (result / "summary.json").write_text(json.dumps(summary))
    assert_user_error(chargeplay("report", str(result), "-o", str(tmp_path / "r.html")), "result format", "re-run chargeplay replay")


def test_no_policy_can_shadow_a_column_describing_the_charges():
    assert set(CHARGE_COLUMNS.names) <= RESERVED_NAMES


def test_the_timeseries_says_its_bucket_width_and_keeps_each_buckets_last_usage_and_peak(tmp_path):
    """200 pages held. At 0.1 ms the task maps 10 anon pages (mainline-6.18 charges a batch of
    64: 264 pages, 54 stocked) and at 0.2 ms unmaps them (anon pages leave the counter, not for
    the stock: 254); its return to user space 20 s later ends the trace. 10,000 buckets at most
    over 20 s and a nanosecond: each ceil(20,000,000,001 / 10,000) = 2,000,001 ns wide. The
    first bucket's usage is its last, 254 pages; its peak 264."""
    from test_report import write_trace

    anon = {"cpu": 0, "pid": 7, "comm": "worker", "ctx": "task", "kind": "memcg_lruvec_state", "memcg_id": 1, "item": 2}
    rows = [{**anon, "ts_ns": 100_000, "val": 10}, {**anon, "ts_ns": 200_000, "val": -10},
            {"ts_ns": 20_000_100_000, "cpu": 0, "pid": 7, "comm": "worker", "ctx": "task", "kind": "user_return"}]
    write_trace(tmp_path / "trace", rows, {"max": 1000 * 4096, "high": None, "command": ["worker"]}, {"usage": 200 * 4096},
                "unused+0x1/0x10")
    assert chargeplay("replay", str(tmp_path / "trace"), "-o", str(tmp_path / "r"), "--policy", "mainline-6.18").returncode == 0
    series = pq.read_table(tmp_path / "r" / "timeseries.parquet").to_pylist()
    assert {row["bucket_ns"] for row in series} == {2_000_001}
    first = series[0]
    assert (first["t_ns"], first["usage_bytes"], first["peak_bytes"]) == (0, 254 * 4096, 264 * 4096)


def test_a_spread_missing_a_policy_or_a_phase_is_one_error_line(tmp_path):
    trace, result = tmp_path / "trace", tmp_path / "result"
    shutil.copytree(TINY, trace)
    done = chargeplay("replay", str(trace), "-o", str(result), "--policy", "caller-gfp", "--policy", "mainline-6.18", "--spread")
    assert done.returncode == 0, done.stderr
    good = json.loads((result / "summary.json").read_text())
    assert chargeplay("report", str(result), "-o", str(tmp_path / "good.html")).returncode == 0
    short = json.loads(json.dumps(good))
    short["spread"]["policies"]["caller-gfp"]["run_seconds"].pop()
    lacking = json.loads(json.dumps(good))
    del lacking["spread"]["policies"]["mainline-6.18"]
    for n, broken in enumerate((short, lacking)):
        (result / "summary.json").write_text(json.dumps(broken))
        assert_user_error(chargeplay("report", str(result), "-o", str(tmp_path / f"r{n}.html")),
                          "its spread does not give every policy's figures at each of its 8 stock phases", "re-run chargeplay replay --spread")
    del good["spread"]["policies"]["caller-gfp"]["run_seconds"]
    (result / "summary.json").write_text(json.dumps(good))
    assert_user_error(chargeplay("report", str(result), "-o", str(tmp_path / "r.html")), "spread.policies.caller-gfp.run_seconds")
