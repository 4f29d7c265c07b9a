"""The kprobes that stand in for the memcg tracepoints on kernels before 6.14, offline.

tests/data/kernels/<release>/facts.json's `memcg_probes` is what `python -m lab facts` read
inside each lab kernel (its available_filter_functions, and its BTF's function prototypes and
struct member offsets), and events/kprobes/<function>/format the layout of the kprobe events
it created there and removed. The expected probe lines below are written out by hand from
those offsets (memcg = *(lruvec - lruvec's offset + memcg's offset) in mem_cgroup_per_node,
then css.cgroup, kn and id), and the live test (tests/test_memcg_probes_live.py) checks that
they fetch the right memcg on the kernels themselves.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from collect.decode import Decoder, memcg_state_val_in_pages
from collect.event_format import read_event_format
from collect.memcg_probes import (
    NOT_NEEDED, STAT_FUNCTIONS, ProbeFacts, events_of_group, owned_groups, plan_probes, stat_units,
)
from test_kernel_formats import GFP_ACCOUNT, KERNELS, TRACE_FLAGS, K61, K612, K618, raw, record
from traces.samples import sample_path

ALL_MISSING = [f.tracepoint for f in STAT_FUNCTIONS]
GROUP = "chargeplay_4242"


def probe_facts(kernel: str) -> ProbeFacts:
    recorded = json.loads((KERNELS / kernel / "facts.json").read_text())["memcg_probes"]
    recorded.pop("formats_of")
    return ProbeFacts(**recorded)


def lab_enums(kernel: str) -> dict[str, dict[str, int]]:
    """The kernel's enums as its own capture recorded them (the lab samples' manifests)."""
    sample = {K61: "file-storm-6.1", K612: "file-storm-6.12"}[kernel]
    return json.loads((sample_path(sample) / "manifest.json").read_text())["enums"]


@pytest.mark.parametrize(("kernel", "lruvec_to_memcg", "kn", "kn_id"), [
    (K61, "+2552", 248, 104),  # 6.1: the lruvec first in mem_cgroup_per_node, memcg at 2552
    (K612, "-64", 256, 96),  # 6.12: memcg first, the lruvec at 64
])
def test_each_lab_kernel_gets_a_probe_on_each_function_from_its_own_btf(kernel, lruvec_to_memcg, kn, kn_id):
    plan = plan_probes(GROUP, ALL_MISSING, probe_facts(kernel))
    memcg_id = f"+{kn_id}(+{kn}(+0($arg1))):u64"  # mem_cgroup.css.cgroup is at 0 on both
    assert plan.definitions == {
        "__mod_memcg_lruvec_state": f"p:{GROUP}/__mod_memcg_lruvec_state __mod_memcg_lruvec_state "
                                    f"id=+{kn_id}(+{kn}(+0({lruvec_to_memcg}($arg1)))):u64 item=$arg2:s32 val=$arg3:s32",
        "__mod_memcg_state": f"p:{GROUP}/__mod_memcg_state __mod_memcg_state id={memcg_id} item=$arg2:s32 val=$arg3:s32",
        "__count_memcg_events": f"p:{GROUP}/__count_memcg_events __count_memcg_events id={memcg_id} item=$arg2:s32 val=$arg3:u64",
    }
    assert plan.not_probed == {}
    assert plan.notes() == ["memcg stat events: kprobes on __mod_memcg_lruvec_state, __mod_memcg_state, __count_memcg_events "
                            "stand in for the memcg tracepoints this kernel lacks (Linux 6.14+)"]


def test_6_18_has_the_tracepoints_and_needs_no_kprobe():
    """Nothing is missing on 6.18 (its memcg formats are recorded): no probe, no BTF read, nothing said."""
    missing = [e for e in ALL_MISSING if not (KERNELS / K618 / "events" / "memcg" / e / "format").exists()]
    plan = plan_probes(GROUP, missing, None)
    assert (missing, plan.definitions, plan.reason, plan.notes()) == ([], {}, NOT_NEEDED, [])


def test_a_kernel_without_kprobes_says_so_once():
    plan = plan_probes(GROUP, ALL_MISSING, ProbeFacts(kprobe_events=False, traceable=[], function_args={}, members={}))
    assert plan.definitions == {}
    assert plan.notes() == ["memcg:mod_memcg_lruvec_state, memcg:mod_memcg_state, memcg:count_memcg_events: no kprobe: "
                            "kprobes are not built into this kernel (no kprobe_events in tracefs)"]


def test_a_function_inlined_away_or_with_other_arguments_is_not_probed():
    facts = probe_facts(K612)
    facts.traceable = [name for name in facts.traceable if name != "__count_memcg_events"]
    facts.function_args["__mod_memcg_state"] = ["struct mem_cgroup *", "int", "long int"]
    plan = plan_probes(GROUP, ALL_MISSING, facts)
    assert list(plan.definitions) == ["__mod_memcg_lruvec_state"]
    assert plan.not_probed == {
        "memcg:mod_memcg_state": "no kprobe: __mod_memcg_state takes (struct mem_cgroup *, int, long int) on this kernel, "
                                 "not (struct mem_cgroup *, int, int)",
        "memcg:count_memcg_events": "no kprobe: __count_memcg_events is not traceable on this kernel (inlined, or not in "
                                    "available_filter_functions)",
    }


def test_only_the_missing_tracepoints_are_probed():
    plan = plan_probes(GROUP, ["mod_memcg_lruvec_state"], probe_facts(K61))
    assert list(plan.definitions) == ["__mod_memcg_lruvec_state"]


@pytest.mark.parametrize(("val", "unit", "pages"), [
    (16, 1024, 4), (-16, 1024, -4),  # a 16 KiB kernel stack
    (8192, 1, 2), (-8192, 1, -2),
    (64, 1, 1),  # a sub-page change rounds up to one page (max(..., 1UL))
    (-64, 1, -1), (-4097, 1, -2),  # a negative one, computed unsigned, rounds away from zero
    (3, 4096, 3), (-3, 4096, -3),  # page items pass unchanged
    (0, 1, 0),
])
def test_vals_convert_to_pages_as_the_kernels_memcg_state_val_in_pages(val, unit, pages):
    """Worked out by hand in C's arithmetic: e.g. -64 * 1 as unsigned long is 2**64 - 64,
    divided by 4096 is 2**52 - 1, whose low 32 bits as an int are -1."""
    item = np.array([7], np.int32)
    assert memcg_state_val_in_pages(item, np.array([val], np.int32), {7: unit} if unit != 4096 else {}, 4096).tolist() == [pages]


@pytest.mark.parametrize("kernel", [K61, K612])
def test_stat_units_name_the_kernels_byte_and_kib_items(kernel):
    enums = lab_enums(kernel)
    units = stat_units(enums)
    nodes, memcgs = enums["node_stat_item"], enums["memcg_stat_item"]
    assert units[nodes["NR_KERNEL_STACK_KB"]] == 1024
    assert units[nodes["NR_SLAB_RECLAIMABLE_B"]] == units[memcgs["MEMCG_PERCPU_B"]] == 1
    assert nodes["NR_FILE_PAGES"] not in units and memcgs["MEMCG_KMEM"] not in units


@pytest.mark.parametrize("kernel", [K61, K612])
def test_kprobe_records_decode_into_the_tracepoints_kinds_and_units(kernel):
    """A record of the kprobe event the lab kernel made (its own format file) becomes the row the
    6.18 tracepoint gives for the same call: val in pages, the kind's source the kprobe."""
    events = KERNELS / kernel / "events"
    lruvec, state, count = (read_event_format(events, "kprobes", f) for f in
                            ("__mod_memcg_lruvec_state", "__mod_memcg_state", "__count_memcg_events"))
    enums = lab_enums(kernel)
    nodes, memcgs = enums["node_stat_item"], enums["memcg_stat_item"]
    d = Decoder(formats={fmt.id: (kind, fmt) for fmt, kind in ((lruvec, "memcg_lruvec_state"), (state, "memcg_state"),
                                                                   (count, "memcg_event"))},
                gfp_account=GFP_ACCOUNT, trace_flags=TRACE_FLAGS, page_size=4096, t0=0, stat_units=stat_units(enums))
    rows = d.decode(raw([
        record(lruvec, 99, __probe_ip=0xFFFFFFFF81000000, id=77, item=nodes["NR_FILE_PAGES"], val=-3),
        record(lruvec, 99, __probe_ip=0xFFFFFFFF81000000, id=77, item=nodes["NR_KERNEL_STACK_KB"], val=16),
        record(lruvec, 99, __probe_ip=0xFFFFFFFF81000000, id=77, item=nodes["NR_SLAB_UNRECLAIMABLE_B"], val=-64),
        record(state, 99, __probe_ip=0xFFFFFFFF81000000, id=77, item=memcgs["MEMCG_KMEM"], val=2),
        record(count, 99, __probe_ip=0xFFFFFFFF81000000, id=77, item=5, val=1 << 33),  # a count, not pages
    ])).to_pylist()
    assert [(r["kind"], r["memcg_id"], r["item"], r["val"]) for r in rows] == [
        ("memcg_lruvec_state", 77, nodes["NR_FILE_PAGES"], -3), ("memcg_lruvec_state", 77, nodes["NR_KERNEL_STACK_KB"], 4),
        ("memcg_lruvec_state", 77, nodes["NR_SLAB_UNRECLAIMABLE_B"], -1), ("memcg_state", 77, memcgs["MEMCG_KMEM"], 2),
        ("memcg_event", 77, 5, 1 << 33)]
    assert d.sources["memcg_lruvec_state"]["tracepoint"] == "kprobe on __mod_memcg_lruvec_state"
    assert d.sources["memcg_lruvec_state"]["columns"]["val"].startswith("val, in the item's unit, to pages")
    assert d.sources["memcg_event"]["columns"]["val"] == "val"


KPROBE_EVENTS = """\
p:chargeplay_4242/__mod_memcg_lruvec_state __mod_memcg_lruvec_state id=+104(+248(+0(+2552($arg1)))):u64 item=$arg2:s32 val=$arg3:s32
p:chargeplay_4242/__mod_memcg_state __mod_memcg_state id=+104(+248(+0($arg1))):u64 item=$arg2:s32 val=$arg3:s32
r16:chargeplay_77/try_charge_memcg try_charge_memcg ret=$retval:s32
p:kprobes/my_probe do_sys_open
p:chargeplay_x/f f
"""


def test_chargeplays_kprobe_groups_are_found_by_name_and_others_left_alone(tmp_path: Path):
    (tmp_path / "kprobe_events").write_text(KPROBE_EVENTS)
    assert owned_groups(tmp_path) == {"chargeplay_4242": 4242, "chargeplay_77": 77}
    assert events_of_group(tmp_path, "chargeplay_4242") == ["__mod_memcg_lruvec_state", "__mod_memcg_state"]
    assert events_of_group(tmp_path, "kprobes") == ["my_probe"]
    assert owned_groups(tmp_path / "absent") == {}
