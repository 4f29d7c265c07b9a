"""validate's targets, worked by hand: reclaim calls within 10% or one call, peak within 5%,
failcnt and memory.events max within 25%, memory.events high within 10%, OOM kills exact."""
from __future__ import annotations

import pytest

from analyze.fidelity import fidelity_table, format_target

KERNEL = {"reclaim invocations": 20, "pages reclaimed": 640, "peak usage": 100 << 20, "charge failures (failcnt)": 100,
          "memory.events max": 100, "memory.events high": 50, "OOM kills": 1, "final usage": 10 << 20}


def status(metric: str, predicted: int, observed: int, version: int = 1) -> str:
    rows = fidelity_table({**KERNEL, metric: predicted}, {**KERNEL, metric: observed}, version, {})
    return {row["metric"]: row for row in rows}[metric]["status"]


@pytest.mark.parametrize("metric, predicted, observed, expected", [
    ("reclaim invocations", 22, 20, "met"),  # 10% of 20 is 2 calls
    ("reclaim invocations", 23, 20, "not met"),
    ("reclaim invocations", 9, 8, "met"),  # 10% of 8 is less than a call: one call is allowed
    ("reclaim invocations", 10, 8, "not met"),
    ("reclaim invocations", 1, 0, "met"),
    ("peak usage", 105 << 20, 100 << 20, "met"),
    ("peak usage", (105 << 20) + 1, 100 << 20, "not met"),
    ("charge failures (failcnt)", 125, 100, "met"),
    ("charge failures (failcnt)", 74, 100, "not met"),
    ("charge failures (failcnt)", 1, 0, "not met"),  # no slack: a failure the kernel never had
    ("OOM kills", 0, 1, "not met"),
    ("OOM kills", 1, 1, "met"),
    ("pages reclaimed", 0, 640, "no target"),
])
def test_targets_on_cgroup_v1(metric, predicted, observed, expected):
    assert status(metric, predicted, observed) == expected


def test_each_cgroup_version_is_judged_on_its_own_counters():
    v1 = {row["metric"] for row in fidelity_table(KERNEL, KERNEL, 1, {})}
    v2 = {row["metric"] for row in fidelity_table(KERNEL, KERNEL, 2, {})}
    assert "charge failures (failcnt)" in v1 - v2
    assert {"memory.events max", "memory.events high"} <= v2 - v1
    assert status("memory.events max", 126, 100, version=2) == "not met"
    assert status("memory.events high", 55, 50, version=2) == "met"


def test_a_metric_not_measured_is_neither_met_nor_missed():
    rows = fidelity_table(KERNEL, {**KERNEL, "reclaim invocations": None}, 1, {"reclaim invocations": "observer lost events"})
    row = {row["metric"]: row for row in rows}["reclaim invocations"]
    assert (row["status"], row["met"], row["reason"]) == ("not measured", None, "observer lost events")


def test_the_target_reads_as_the_rule():
    rows = {row["metric"]: row for row in fidelity_table(KERNEL, KERNEL, 1, {})}
    assert format_target(rows["reclaim invocations"]) == "within 10% or 1 call: met"
    assert format_target(rows["charge failures (failcnt)"]) == "within 25%: met"
    assert format_target(rows["OOM kills"]) == "exact: met"
