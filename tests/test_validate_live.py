"""`chargeplay validate` on the running kernel: the kernel is the referee of the replay."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from collect import cgroup
from conftest import chargeplay

WORKLOADS = Path(__file__).parent.parent / "traces" / "samples" / "workloads.py"


@pytest.fixture
def memcg_controller(tracefs) -> None:
    try:
        cgroup.memory_hierarchy()
    except cgroup.CgroupError as err:
        pytest.skip(f"validation needs a memory cgroup controller (v1 or v2): {err}")


def validate(tmp_path: Path, storm: str) -> dict:
    out = tmp_path / storm
    result = chargeplay("validate", "-o", str(out), "--memory-max", "28M", "--", sys.executable, str(WORKLOADS), storm, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Fidelity" in (out / "report.html").read_text()
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert fidelity["model"].startswith("mainline-6.18")  # the model of the kernel these machines run
    return {row["metric"]: row for row in fidelity["rows"]}


@pytest.mark.parametrize("storm", ["files", "sockets", "forks", "oom"])
def test_the_model_predicts_the_kernels_reclaim_peak_and_oom_kills(memcg_controller, tmp_path, storm):
    rows = validate(tmp_path, storm)
    assert rows["reclaim invocations"]["observed"] > 0  # the limit is tight enough for the kernel to reclaim
    # The OOM storm's reclaim calls are not asserted: within 10% in 100 runs of 105; in the
    # others the kernel's victim got its page right after its kill (most likely the stock
    # drain landing then), without the 17 retries the model gives it (see README, Fidelity).
    for metric in ("peak usage", "OOM kills"):
        assert rows[metric]["met"], rows[metric]
    if storm != "oom":
        # Within 10%, or one call: these storms reclaim 7 to 13 times, and the kernel itself
        # varies by one call from run to run of the same workload (forks: 8 and 9 calls
        # observed in five runs in a row), so one call is what a single run can resolve.
        # fidelity.json's own "met" stays the strict 10% (the README's table reports it).
        reclaim = rows["reclaim invocations"]
        assert abs(reclaim["predicted"] - reclaim["observed"]) <= max(0.10 * reclaim["observed"], 1), reclaim
    if storm == "oom" and rows["OOM kills"]["observed"] == 0:
        # The model matched the kernel above, but this run did not test the OOM path. Since
        # 2026-12-02 the kernel kills nobody in most runs on the development machine (peak at
        # the limit, 0.6 s; 105 of 105 runs killed before), cause not yet known.
        pytest.skip("the OOM storm reached no OOM kill in this run: the model's OOM path went untested")


def test_validate_refuses_a_workload_without_a_limit(tmp_path):
    result = chargeplay("validate", "-o", str(tmp_path / "v"), "--", "true")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--memory-max" in result.stderr
