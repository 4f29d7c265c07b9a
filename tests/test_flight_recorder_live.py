"""The flight recorder, live: `collect --max-size` keeps the newest segments within its budget,
and `--stop-on` ends a capture when the target memcg's own counter rises, the lead-up kept."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest

from collect import cgroup
from conftest import assert_user_error, chargeplay
from traces.reader import Trace

SEGMENT_EVENTS = 20_000
BUDGET = 400 << 10
# Outlives any test's timeout: a capture that ends did so because a trigger fired.
FOREVER = "sleep 3600"
# Prints its pid, then touches 64 MiB of anonymous memory a page at a time (no swap: under a
# 32 MiB memory.max the memcg OOM-kills it), then the shell sleeps.
HOG = f"{sys.executable} -c 'import os; print(os.getpid(), flush=True); b = [bytearray(1 << 20) for _ in range(64)]'; {FOREVER}"


def cgroup_version() -> int:
    return cgroup.memory_hierarchy()[0]


def test_max_size_keeps_the_newest_segments_within_the_budget(tracefs, tmp_path):
    """Segments close every 20,000 events; the oldest closed ones go once the closed ones pass
    400 KiB. So on disk: at most 400 KiB of segments, numbered on from the first dropped
    count, the newest last; the manifest says 20,000 events went with each dropped one."""
    script = f"i=0; while [ $i -lt 2000 ]; do touch {tmp_path}/x; rm {tmp_path}/x; i=$((i+1)); done"
    result = chargeplay("collect", "-o", str(tmp_path / "t"), "--segment-events", str(SEGMENT_EVENTS),
                        "--max-size", "400K", "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "t" / "events").glob("part-*.parquet"))
    numbers = [int(f.stem.split("-")[1]) for f in files]
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    dropped = manifest["dropped"]
    assert dropped["segments"] > 0 and numbers == list(range(dropped["segments"], dropped["segments"] + len(files)))
    assert sum(f.stat().st_size for f in files) <= BUDGET
    assert dropped["events"] == SEGMENT_EVENTS * dropped["segments"]
    assert dropped["through"] == f"events/part-{dropped['segments'] - 1:06d}.parquet"
    trace = Trace.open(tmp_path / "t")
    assert trace.facts.events == manifest["events"] and trace.facts.first_ns > dropped["last_ts_ns"]
    # The memcg's samples from the last one before the kept events on: what replay starts from.
    samples = trace.side_table("memcg").collect()["ts_ns"]
    assert (samples <= trace.facts.first_ns).sum() == 1
    replayed = chargeplay("replay", str(tmp_path / "t"), "-o", str(tmp_path / "r"), "--memory-max", "64M",
                          "--policy", "mainline-6.18")
    assert replayed.returncode == 0, replayed.stderr


def test_an_oom_kill_ends_the_capture_with_the_lead_up_kept(tracefs, tmp_path):
    result = chargeplay("collect", "-o", str(tmp_path / "t"), "--memory-max", "32M", "--stop-on", "oom-kill",
                        "--", "sh", "-c", HOG)
    assert result.returncode == 0, result.stderr
    trace = Trace.open(tmp_path / "t")
    counter = {1: "memory.oom_control oom_kill", 2: "memory.events oom_kill"}[cgroup_version()]
    assert trace.manifest["stop_reason"] == f"--stop-on oom-kill: {counter} rose from 0 to 1"
    pid = int(result.stdout.split()[0])
    events = trace.events()
    assert events.filter((pl.col("kind") == "oom") & (pl.col("val") == pid)).collect().height == 1
    # The hog's pages up to the kill: at least 24 of the 32 MiB the limit let it charge.
    faulted = events.filter((pl.col("kind") == "page_alloc") & (pl.col("pid") == pid)).collect().height
    assert faulted >= (24 << 20) // trace.page_size


@pytest.mark.parametrize("trigger", ["max:5", "high:5"])
def test_a_count_of_memory_events_rising_ends_the_capture(tracefs, tmp_path, trigger):
    """64 MiB of page cache written under a 16 MiB limit: each charge past it counts a max event
    (v1: failcnt) and reclaims; past memory.high (cgroup v2) a high event."""
    version = cgroup_version()
    if trigger.startswith("high") and version == 1:
        pytest.skip("needs a cgroup v2 memory hierarchy (this host has v1, which has no memory.high)")
    limit = "--memory-max" if trigger.startswith("max") else "--memory-high"
    script = f"dd if=/dev/zero of={tmp_path}/file bs=1M count=64 2>/dev/null; {FOREVER}"
    result = chargeplay("collect", "-o", str(tmp_path / "t"), limit, "16M", "--stop-on", trigger, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    trace = Trace.open(tmp_path / "t")
    counter = {"max": {1: "memory.failcnt", 2: "memory.events max"}, "high": {2: "memory.events high"}}[trigger.split(":")[0]]
    assert trace.manifest["stop_reason"].startswith(f"--stop-on {trigger}: {counter[version]} rose from 0 to ")
    column = "failcnt" if trigger.startswith("max") else "events_high"
    samples = trace.side_table("memcg").collect()[column]
    assert samples[-1] - samples[0] >= 5


def test_a_trigger_the_cgroup_version_cannot_count_is_one_line(tracefs, tmp_path):
    if cgroup_version() != 1:
        pytest.skip("needs a cgroup v1 memory hierarchy (this host has v2, which counts high events)")
    result = chargeplay("collect", "-o", str(tmp_path / "t"), "--stop-on", "high:3", "--", "true")
    assert_user_error(result, "--stop-on high:3", "cgroup v1")
    assert not Path(tmp_path / "t").exists()
