"""Live, on a kernel without the memcg tracepoints but with kprobes (the lab's 6.1 and 6.12):
the kprobe events that stand in for them record the memcg's own page cache and anon memory,
and are gone when the capture ends.

The memcg's own counters are the referee: the workload reads its memcg's memory.stat itself,
with a pread (its last), while it holds 16 MiB of page cache and 16 MiB of anon memory; that
pread's return to user space marks the moment in the trace (as in tests/test_collect_live.py;
the collector's own samples are too far apart under TCG to catch the workload holding).
The memcg is created empty, so the trace's NR_FILE_PAGES, NR_ANON_MAPPED and NR_SHMEM changes
before that mark add up to what it read as file, anon and shmem. memory.stat is flushed lazily
(a read flushes only once pending updates pass MEMCG_CHARGE_BATCH, 64 pages, per online CPU,
and each CPU may hold up to 64 of its own), so they must agree within 2 * 64 pages per CPU.

Skips, naming kprobes, where they are not needed (6.14+: the tracepoints) or not built in.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from collect import cgroup
from collect.memcg_probes import OWNED_GROUP
from conftest import chargeplay
from test_collect_live import PREAD64

MIB = 1 << 20
HELD = 16 * MIB
# Writes HELD bytes of page cache (in the lab's guests TMPDIR is tmpfs: shmem, which memory.stat
# counts in file and shmem), touches HELD bytes of private anonymous memory (Python's default
# mmap(-1, n) is MAP_SHARED: shmem, not anon), copies tracefs's kprobe_events as it is during
# the capture, then reads its own memcg's memory.stat with a pread, its last syscall but the
# writes of what it read.
WORKLOAD = r"""
import mmap, os, sys
scratch, kprobes, pidfile, version, mount, out = sys.argv[1:7]
open(pidfile, "w").write(str(os.getpid()))
held = 16 << 20
with open(scratch + "/cache", "wb") as cache:
    for _ in range(held >> 20):
        cache.write(b"x" * (1 << 20))
anon = mmap.mmap(-1, held, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for offset in range(0, held, 4096):
    anon[offset] = 1
open(kprobes, "w").write(open("/sys/kernel/tracing/kprobe_events").read())
lines = open("/proc/self/cgroup").read().splitlines()
path = next(line.split(":", 2)[2] for line in lines
            if (line.startswith("0::") if version == "2" else "memory" in line.split(":")[1].split(",")))
stat = os.open(mount + path + "/memory.stat", os.O_RDONLY)
result = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
os.write(result, os.pread(stat, 1 << 16, 0))
"""
# memory.stat's names, by cgroup version, for the node_stat_item whose changes the trace records.
STAT_ITEMS = {"NR_FILE_PAGES": {2: "file", 1: "cache"}, "NR_ANON_MAPPED": {2: "anon", 1: "rss"}, "NR_SHMEM": {2: "shmem", 1: "shmem"}}


@pytest.fixture
def kprobes_needed(memcg_controller, tracefs) -> Path:
    if (tracefs / "events" / "memcg" / "mod_memcg_lruvec_state").is_dir():
        pytest.skip("kprobes not needed: this kernel has the memcg tracepoints (Linux 6.14+)")
    if not (tracefs / "kprobe_events").exists():
        pytest.skip("kprobes are not built into this kernel (no kprobe_events in tracefs)")
    return tracefs


def test_kprobes_record_the_memcgs_page_cache_and_anon_and_leave_nothing(kprobes_needed, tmp_path):
    import polars as pl  # here: polars takes seconds to import in the lab's guests

    from traces.reader import Trace

    tracefs = kprobes_needed
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    version, mount = cgroup.memory_hierarchy()
    files = {name: tmp_path / name for name in ("kprobe_events", "pid", "memory.stat")}
    result = chargeplay("collect", "-o", str(tmp_path / "t"), "--", sys.executable, "-c", WORKLOAD, str(scratch),
                        *map(str, (files["kprobe_events"], files["pid"], version, mount, files["memory.stat"])), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "kprobes on __mod_memcg_lruvec_state" in result.stderr

    trace = Trace.open(tmp_path / "t")
    assert trace.manifest["kinds"]["memcg_lruvec_state"]["tracepoint"] == "kprobe on __mod_memcg_lruvec_state"
    events = trace.events().collect().with_row_index("row")
    target = trace.manifest["target"]["memcg_id"]
    memcg_events = events.filter(pl.col("kind").is_in(["memcg_state", "memcg_lruvec_state", "memcg_event"]))
    assert memcg_events.height > 0 and set(memcg_events["memcg_id"].unique()) == {target}  # the kernel's filter, on the fetched id

    # The trace up to the workload's read of memory.stat against what it read.
    pid = int(files["pid"].read_text())
    read_end = events.filter((pl.col("kind") == "user_return") & (pl.col("pid") == pid) & (pl.col("item") == PREAD64))["row"][-1]
    before = memcg_events.filter((pl.col("kind") == "memcg_lruvec_state") & (pl.col("row") < read_end))
    stat = cgroup.read_keyed(files["memory.stat"])
    nodes, page = trace.manifest["enums"]["node_stat_item"], trace.page_size
    tolerance = 2 * 64 * (os.cpu_count() or 1)
    for item, names in STAT_ITEMS.items():
        recorded = int(before.filter(pl.col("item") == nodes[item])["val"].sum())
        observed = stat[names[version]] // page
        print(f"{item}: trace {recorded} pages, memory.stat {names[version]} {observed} pages")
        assert abs(recorded - observed) <= tolerance, (item, recorded, observed)
        if item != "NR_SHMEM":
            assert observed >= HELD // page - tolerance, (item, observed)  # read while holding its memory

    # The kprobe events were there during the capture, under the collector's own group, and are gone.
    during = (tmp_path / "kprobe_events").read_text()
    groups = {m.group(0) for word in during.split()
              if word.startswith(("p:", "r")) and (m := OWNED_GROUP.match(word.split(":", 1)[-1].split("/")[0]))}
    assert len(groups) == 1, during
    (group,) = groups
    assert re.findall(rf"{group}/(\w+)", during) == ["__mod_memcg_lruvec_state", "__mod_memcg_state", "__count_memcg_events"]
    assert group not in (tracefs / "kprobe_events").read_text()
    assert not (tracefs / "events" / group).exists()
