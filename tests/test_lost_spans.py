"""Where a capture lost events: spans between drains, kept in the manifest, and said by replay
and its report."""
from __future__ import annotations

import json

from collect.lost_spans import add_lost
from conftest import chargeplay
from traces.manifest import losses
from traces.reader import Trace

MS = 1_000_000


def test_losses_at_consecutive_drains_make_one_span_and_a_pause_a_new_one():
    spans: list[dict] = []
    add_lost(spans, 0, 100 * MS, 5)
    add_lost(spans, 100 * MS, 200 * MS, 7)  # the next drain lost more: the same span goes on
    add_lost(spans, 500 * MS, 600 * MS, 1)  # drains at 300 and 400 ms lost nothing
    assert spans == [{"from_ns": 0, "to_ns": 200 * MS, "events": 12}, {"from_ns": 500 * MS, "to_ns": 600 * MS, "events": 1}]


def test_what_a_trace_that_lost_events_says():
    spans = [{"from_ns": 0, "to_ns": 200 * MS, "events": 12}, {"from_ns": 500 * MS, "to_ns": 600 * MS, "events": 1}]
    assert losses({"lost": {"total": 13, "spans": spans}}) == (
        "the trace lost 13 events in 2 spans of 0.3 s (0.0-0.2 s, 0.5-0.6 s into the capture): figures from it under-count there")
    assert losses({"lost": {"total": 13}}).startswith("the trace lost 13 events, when is not recorded")
    assert losses({"lost": {"total": 0, "spans": []}}) is None
    # The eBPF backend's programs, skipped by the kernel (an interrupt while one ran), besides.
    skipped = {"total": 40, "per_program": {"cp_page_free": 40}, "spans": spans[1:]}
    assert losses({"lost": {"total": 0, "spans": []}, "ebpf": {"skipped": skipped}}) == (
        "the kernel skipped its BPF programs 40 times in 1 span of 0.1 s (0.5-0.6 s into the capture), each when an "
        "interrupt came while one ran: up to as many events are missing there")
    assert losses({"lost": {"total": 13, "spans": spans}, "ebpf": {"skipped": skipped}}).count("; the kernel skipped") == 1


def test_a_storm_into_a_small_buffer_loses_events_and_replay_says_where(tracefs, tmp_path):
    """A shell making and removing files (each touch and rm a process: thousands of events each)
    into a 64 KiB buffer per CPU loses events; the spans account for every one."""
    script = f"i=0; while [ $i -lt 300 ]; do touch {tmp_path}/x; rm {tmp_path}/x; i=$((i+1)); done"
    result = chargeplay("collect", "-o", str(tmp_path / "t"), "--buffer-kb", "64", "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    trace = Trace.open(tmp_path / "t")
    lost, end = trace.manifest["lost"], trace.manifest["end"]["trace_ns"] - trace.manifest["start"]["trace_ns"]
    assert lost["total"] > 0 and sum(span["events"] for span in lost["spans"]) == lost["total"]
    edges = [t for span in lost["spans"] for t in (span["from_ns"], span["to_ns"])]
    assert edges == sorted(edges) and edges[-1] <= end
    replayed = chargeplay("replay", str(tmp_path / "t"), "-o", str(tmp_path / "r"), "--memory-max", "64M", "--policy", "mainline-6.18")
    assert replayed.returncode == 0 and f"warning: the trace lost {lost['total']:,} events in" in replayed.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["trace"]["lost"] == {"events": lost["total"], "spans": lost["spans"]}
    swept = chargeplay("sweep", str(tmp_path / "t"), "-o", str(tmp_path / "s"), "--memory-high", "32M:64M:32M", "--memory-max", "64M",
                       "--policy", "mainline-6.18")
    assert swept.returncode == 0 and f"warning: the trace lost {lost['total']:,} events in" in swept.stderr
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["lost"] == losses(trace.manifest)
