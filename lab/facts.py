"""What a kernel offers chargeplay, read from its own files: run inside a lab VM (the standard
library and collect's file readers only, so that it starts fast under TCG) or on the host.

Writes OUT/<release>/events/<system>/<event>/format for the tracepoint systems chargeplay
reads, OUT/<release>/events/kprobes/<function>/format for the kprobe events that stand in for
the memcg tracepoints where the kernel lacks them (created, dumped and removed), and
OUT/<release>/facts.json. No addresses: kallsyms and available_filter_functions are only
searched for names.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from collect.cgroup import create_child, read_keyed
from collect.memcg_probes import GROUP_PREFIX, MemcgProbes, ProbeFacts, plan_probes, read_probe_facts

TRACEFS = Path("/sys/kernel/tracing")
CGROUP = Path("/sys/fs/cgroup")
# Whole systems, not just the events chargeplay reads today: the collectors are being taught
# to use whatever each kernel has.
SYSTEMS = ["kmem", "memcg", "vmscan", "oom", "raw_syscalls", "sched", "task", "cgroup"]
# The charge-path functions a kprobe backend would attach to, under each kernel's own names.
CHARGE_FUNCTIONS = [
    "try_charge_memcg", "try_charge", "charge_memcg", "obj_cgroup_charge", "__memcg_kmem_charge_page",
    "__memcg_slab_post_alloc_hook", "mem_cgroup_handle_over_high", "__mem_cgroup_handle_over_high",
    "reclaim_high", "mem_cgroup_out_of_memory", "drain_all_stock", "refill_stock", "consume_stock",
]


def dump_formats(out: Path) -> dict[str, list[str]]:
    """Copy each event's format file; returns system -> events found."""
    found: dict[str, list[str]] = {}
    for name in ("header_page", "header_event"):
        (out / "events").mkdir(parents=True, exist_ok=True)
        (out / "events" / name).write_text((TRACEFS / "events" / name).read_text())
    for system in SYSTEMS:
        events = sorted(p.parent.name for p in (TRACEFS / "events" / system).glob("*/format"))
        for event in events:
            target = out / "events" / system / event / "format"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text((TRACEFS / "events" / system / event / "format").read_text())
        found[system] = events
    return found


def charge_functions() -> dict[str, list[str]]:
    """Each wanted function -> the traceable names it has here (".part.0"/".isra.0" clones
    included; an inlined function has none)."""
    names: dict[str, list[str]] = {f: [] for f in CHARGE_FUNCTIONS}
    try:
        lines = (TRACEFS / "available_filter_functions").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        name = line.split()[0]
        base = name.split(".")[0]
        if base in names:
            names[base].append(name)
    return names


def dump_probe_formats(out: Path, facts: ProbeFacts) -> list[str]:
    """Create the memcg stat kprobes (collect.memcg_probes) for whichever memcg tracepoints this
    kernel lacks, copy their format files to OUT/events/kprobes/FUNCTION/format and remove
    them; returns the functions probed."""
    missing = [e for e in ("mod_memcg_state", "mod_memcg_lruvec_state", "count_memcg_events")
               if not (TRACEFS / "events" / "memcg" / e).is_dir()]
    if not missing:
        return []
    group = f"{GROUP_PREFIX}{os.getpid()}"
    probes = MemcgProbes(TRACEFS, group, plan_probes(group, missing, facts))
    try:
        probes.create()
        for function in probes.created:
            target = out / "events" / "kprobes" / function / "format"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text((TRACEFS / "events" / group / function / "format").read_text())
        return list(probes.created)
    finally:
        probes.remove()


def memory_high_enforced(megabytes: int = 24) -> dict[str, object]:
    """Allocate `megabytes` (touched) in a fresh child memcg whose memory.high is that size:
    with the interpreter's own memory it goes over, and the kernel must count `high` events."""
    child = create_child(f"lab-high-{os.getpid()}")[0].path  # under the cgroup guest.sh delegates
    try:
        (child / "memory.high").write_text(f"{megabytes}M")
        before = read_keyed(child / "memory.events")
        start = time.monotonic()
        program = f"b = [b'x' * (1 << 20) for _ in range({megabytes})]"
        subprocess.run(["sh", "-c", f'echo $$ > {child}/cgroup.procs && exec "$0" -c "$1"', sys.executable, program],
                       check=True)
        return {
            "memory.high": int((child / "memory.high").read_text()),
            "events_before": before,
            "events_after": read_keyed(child / "memory.events"),
            "peak": int((child / "memory.peak").read_text()) if (child / "memory.peak").exists() else None,
            "seconds": round(time.monotonic() - start, 1),
        }
    finally:
        child.rmdir()


def facts(out: Path, high_test: bool) -> dict[str, object]:
    release = platform.release()
    out = out / release
    found = dump_formats(out)
    probe = CGROUP / "lab-files-probe"
    probe.mkdir(exist_ok=True)
    try:
        memcg_files = sorted(p.name for p in probe.iterdir() if p.name.startswith("memory."))
    finally:
        probe.rmdir()
    result: dict[str, object] = {
        "release": release,
        "cgroup_fs": "cgroup2" if (CGROUP / "cgroup.controllers").exists() else "cgroup1",
        "root_controllers": (CGROUP / "cgroup.controllers").read_text().split() if (CGROUP / "cgroup.controllers").exists() else [],
        "child_memory_files": memcg_files,
        "btf": Path("/sys/kernel/btf/vmlinux").exists(),
        "tracefs": (TRACEFS / "events").is_dir(),
        "kprobe_events": (TRACEFS / "kprobe_events").exists(),
        "events": found,
        "charge_functions": charge_functions(),
    }
    probe_facts = read_probe_facts(TRACEFS)
    result["memcg_probes"] = {**asdict(probe_facts), "formats_of": dump_probe_formats(out, probe_facts)}
    if high_test:
        result["memory_high"] = memory_high_enforced()
    (out / "facts.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


if __name__ == "__main__":
    # usage: python3 -m lab.facts OUT [--memory-high-test]
    summary = facts(Path(sys.argv[1]), "--memory-high-test" in sys.argv[2:])
    print(json.dumps({k: summary[k] for k in ("release", "cgroup_fs", "btf", "kprobe_events")}))
