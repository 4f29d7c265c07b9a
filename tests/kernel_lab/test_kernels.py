"""Each lab kernel boots here and has what capture on cgroup v2 needs, read from its own files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from collect.memcg_probes import STAT_FUNCTIONS
from lab import kernels
from labtools import lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def every_kernels_facts(vng, tmp_path_factory) -> Path:
    """The facts of the whole matrix, from one `lab facts` (its kernels boot side by side)."""
    out = tmp_path_factory.mktemp("facts")
    result = lab("facts", "--kernel", "all", "--out", str(out), timeout=15 * 60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(params=list(kernels.MATRIX))
def facts(request, every_kernels_facts) -> dict:
    release = kernels.find(request.param).release
    facts = json.loads((every_kernels_facts / release / "facts.json").read_text())
    return {**facts, "asked_for": release}


def test_it_boots_the_kernel_asked_for(facts):
    assert facts["release"] == facts["asked_for"]


def test_cgroup_v2_with_the_memory_controller(facts):
    assert facts["cgroup_fs"] == "cgroup2"
    assert "memory" in facts["root_controllers"]
    for name in ("memory.high", "memory.max", "memory.events", "memory.peak", "memory.stat", "memory.current"):
        assert name in facts["child_memory_files"], name


def test_tracefs_events_btf_and_kprobes(facts):
    assert facts["tracefs"] and facts["btf"] and facts["kprobe_events"]
    for event in ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc", "mm_page_free"):
        assert event in facts["events"]["kmem"], event
    assert "mm_vmscan_memcg_reclaim_begin" in facts["events"]["vmscan"]
    assert "mark_victim" in facts["events"]["oom"]


def test_the_charge_path_can_be_probed(facts):
    functions = facts["charge_functions"]
    for name in ("try_charge_memcg", "mem_cgroup_out_of_memory", "obj_cgroup_charge"):
        assert functions[name], f"{name} is not traceable on {facts['release']}"
    # the over-high handler lost its double underscore only later
    assert functions["mem_cgroup_handle_over_high"] or functions["__mem_cgroup_handle_over_high"]


def test_memory_high_is_enforced(facts):
    """Touching memory.high's worth of pages (plus the interpreter's own) in a child whose
    memory.high is set goes over it: the kernel counts `high` events and the peak passes high."""
    high = facts["memory_high"]
    assert high["memory.high"] == 24 << 20
    assert high["events_before"]["high"] == 0
    assert high["events_after"]["high"] > 0
    assert high["peak"] > high["memory.high"]
    assert high["events_after"]["oom_kill"] == 0  # throttled and reclaimed, not killed


def test_kprobes_can_stand_in_for_the_memcg_tracepoints(facts):
    """Neither kernel has the memcg tracepoints (6.14+), and each can probe the functions they sit
    in, with the arguments collect.memcg_probes expects: lab.facts made the events, copied their
    formats and removed them."""
    assert facts["events"]["memcg"] == []
    probes = facts["memcg_probes"]
    assert probes["kprobe_events"] and probes["members_missing"] == ""
    assert probes["formats_of"] == [f.name for f in STAT_FUNCTIONS]
