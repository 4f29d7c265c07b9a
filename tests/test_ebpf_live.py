"""Live capture with the eBPF backend: the same trace as tracefs, and nothing left behind.

Skips with a reason naming what is missing: root, tracefs, BTF, libbpf (Debian's libbpf1),
the built object (`make bpf`, which `make test` runs).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import BUSY_NEIGHBOUR, CHARGEPLAY, OVER_MAX, SLOWDOWN, chargeplay, wait_until
from test_collect_live import ALLOC_KINDS, FILE_MAKER, assert_kmem_counter_matches_the_trace, kmem_counter_args, leftovers
from collect import cgroup
from collect.bpf_loader import CHARGE_PROBES, KPROBE_PROGRAMS, PROGRAM_PREFIX, Loader
from collect.ebpf_records import RECORD_SIZE
from traces.gfp import gfp_bit
from traces.reader import Trace
from traces.schema import CHARGE_FUNCTIONS, FREE_KINDS

KINDS_COMPARED = ["kmalloc", "kmem_cache_alloc", "page_alloc", "user_return"]
# What the slab allocator allocates for itself (a new slab's pages, its obj_exts vector, an
# empty sheaf) depends on the state of the slab caches the earlier capture left, not on the
# backend: those kmallocs and the unaccounted page allocations are left out of the comparison.
SLAB_INTERNAL = "^(alloc_slab_obj_exts|alloc_empty_sheaf)\\+"


def _bpf_programs() -> list[tuple[str, int]]:
    """(name, recursion misses) of each BPF program loaded in the kernel (libbpf: next id, fd by
    id, info by fd; struct bpf_prog_info: char name[16] at offset 64, u64 recursion_misses at 208)."""
    libbpf = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    programs, prog_id = [], ctypes.c_uint32(0)
    while libbpf.bpf_prog_get_next_id(prog_id, ctypes.byref(prog_id)) == 0:
        fd = libbpf.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            continue
        info = (ctypes.c_uint8 * 256)()
        size = ctypes.c_uint32(256)
        if libbpf.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) == 0:
            programs.append((bytes(info[64:80]).split(b"\0", 1)[0].decode(), int.from_bytes(bytes(info[208:216]), "little")))
        ctypes.CDLL(None).close(fd)
    return programs


def our_bpf_programs() -> int:
    """kmem.bpf.c's programs, loaded in the kernel."""
    return sum(name.startswith(PROGRAM_PREFIX) for name, _ in _bpf_programs())


def _capture_files(tmp_path: Path, backend: str, files: int, name: str, *options: str) -> tuple[int, Path]:
    """The workload's pid, and the file where it wrote its memcg's kmem counter."""
    workdir, pidfile = tmp_path / f"{name}-files", tmp_path / f"{name}-pid"
    workdir.mkdir()
    counter_args, counter_file = kmem_counter_args(tmp_path, name)
    result = chargeplay(
        "collect", "-o", str(tmp_path / name), "--backend", backend, *options, "--memory-max", "256M", "--",
        sys.executable, "-c", FILE_MAKER, str(files), str(workdir), str(pidfile), *counter_args,
    )
    assert result.returncode == 0, result.stderr
    return int(pidfile.read_text()), counter_file


def test_both_backends_and_both_bpf_outputs_record_the_same_workload_alike(ebpf, tmp_path):
    files = 500
    outsider = subprocess.Popen([sys.executable, "-c", BUSY_NEIGHBOUR])
    captures = {"ringbuf": ("ebpf", "--bpf-output", "ringbuf"), "perf": ("ebpf", "--bpf-output", "perf"), "tracefs": ("tracefs",)}
    try:
        traces = {}
        for name, (backend, *options) in captures.items():
            pid, counter_file = _capture_files(tmp_path, backend, files, name, *options)
            traces[name] = (Trace.open(tmp_path / name), pid, counter_file)
    finally:
        outsider.kill()
        outsider.wait()
    counts, slab_facts = {}, {}
    for name, (trace, pid, counter_file) in traces.items():
        assert trace.manifest["backend"] == captures[name][0] and trace.status == "complete"
        if name != "tracefs":
            assert trace.manifest["ebpf"]["output"] == name
        assert trace.manifest["lost"]["total"] == 0
        events = trace.events().collect()
        dentries = events.filter((pl.col("kind") == "kmem_cache_alloc") & (pl.col("cache") == "dentry"))
        assert dentries.filter(pl.col("accounted") & (pl.col("pid") == pid)).height >= files, name
        # The pid filter holds: no allocation by another process (the interpreter never forks).
        assert set(events.filter(pl.col("kind").is_in(ALLOC_KINDS))["pid"].unique()) == {pid}, name
        assert outsider.pid not in set(events.filter(~pl.col("kind").is_in(["kfree", "kmem_cache_free", "page_free", "memcg_state", "memcg_lruvec_state", "memcg_event"]))["pid"])
        assert set(events.filter(pl.col("kind").str.starts_with("memcg"))["memcg_id"].unique()) == {trace.manifest["target"]["memcg_id"]}
        assert_kmem_counter_matches_the_trace(trace, events, pid, counter_file)
        symbols = trace.side_table("symbols").collect()
        named = events.join(symbols, left_on="call_site", right_on="id", how="left", maintain_order="left")
        compared = named.filter(~named["symbol"].str.contains(SLAB_INTERNAL).fill_null(False)
                                & ((pl.col("kind") != "page_alloc") | pl.col("accounted")))
        counts[name] = dict(compared.group_by("kind").len().iter_rows())
        # What the kernel's tracepoint says of each cache (eBPF: from the cache itself, by key).
        slab_facts[name] = set(events.filter(pl.col("kind") == "kmem_cache_alloc")
                               .select("cache", "bytes_req", "bytes_alloc", "accounted").unique().iter_rows())
    for name in ("ringbuf", "perf"):
        for kind in KINDS_COMPARED:
            e, t = counts[name].get(kind, 0), counts["tracefs"].get(kind, 0)
            assert abs(e - t) <= max(0.05 * t, 20), (name, kind, counts)
        common = {facts[0] for facts in slab_facts[name]} & {facts[0] for facts in slab_facts["tracefs"]}
        assert "dentry" in common
        assert {f for f in slab_facts[name] if f[0] in common} == {f for f in slab_facts["tracefs"] if f[0] in common}
    assert leftovers(ebpf) == []


def test_frees_of_objects_whose_allocations_the_trace_leaves_out_are_left_out_too(ebpf, tmp_path):
    """Every open() takes a names_cache object for the path (getname) and frees it again
    before it returns, uncharged: GFP_KERNEL, from a cache without SLAB_ACCOUNT. The default
    capture records neither that allocation nor, now, its free (it recorded the frees before,
    a fifth of a file workload's events); --all-allocations records both. Nor does it record
    the workload's kfrees of what it allocated uncharged (a kfree names no cache; the file
    system's own kmallocs): no free of the workload's in the default trace frees an object the
    trace did not allocate, its object table having forgotten none. The frees of what the
    trace does charge stay: each of the loop's files frees its filp at close (before 6.12 in
    an RCU callback, whichever task is current; a few may be among the calls the kernel
    skipped, test_calls_the_kernel_skipped_...)."""
    files = 500
    names_frees, filps, kfrees, unallocated, evicted = {}, {}, {}, {}, {}
    for name, options in {"default": (), "all": ("--all-allocations",)}.items():
        pid, _ = _capture_files(tmp_path, "ebpf", files, name, *options)
        trace = Trace.open(tmp_path / name)
        events = trace.events().collect()
        frees = events.filter(pl.col("kind") == "kmem_cache_free")
        names_frees[name] = frees.filter((pl.col("cache") == "names_cache") & (pl.col("pid") == pid)).height
        allocated = events.filter((pl.col("kind") == "kmem_cache_alloc") & (pl.col("cache") == "filp") & (pl.col("pid") == pid))
        filps[name] = allocated.join(frees, on="obj", how="semi").height
        by_workload = events.filter(pl.col("kind").is_in(FREE_KINDS) & (pl.col("pid") == pid))
        kfrees[name] = by_workload.filter(pl.col("kind") == "kfree").height
        unallocated[name] = by_workload.filter(pl.col("obj").is_null()).height
        evicted[name] = trace.manifest["ebpf"]["objects_evicted"]
    assert names_frees["default"] == 0
    assert names_frees["all"] >= files
    assert filps["default"] >= 0.95 * files
    # An allocation whose pair of `objects` slots holds two other live objects evicts the older
    # (collect/kmem.bpf.c; none in most runs here, 0.4% of allocations on the overhead
    # benchmark), and a free in such a pair comes through, its allocation in the trace or not.
    assert unallocated["default"] == 0 or evicted["default"] > 0, (unallocated, evicted)
    assert kfrees["all"] > kfrees["default"]  # there were uncharged kfrees to leave out


FILE_CHURN = """
import os, sys
directory, n = sys.argv[1], int(sys.argv[2])
names = [os.path.join(directory, f"f{i}") for i in range(n)]
for name in names:
    os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600))
for name in names:
    os.unlink(name)
"""


def test_calls_the_kernel_skipped_are_in_the_trace_and_said_where_its_figures_are(ebpf, tmp_path):
    """The kernel runs no BPF program while one runs on that CPU, and counts each call it
    skips per program: an interrupt that frees or uncharges during one (the unlinks' RCU
    callbacks: in tmpfs an unlink frees the dentry) goes unrecorded. Read from outside while
    the capture runs (most captures of this churn skip some; the kernel's count only grows):
    every reading taken before the drain that ended the trace's last span is at most the
    trace's count, every one taken after the trace ended at least; its spans hold every call,
    and `chargeplay info` says so."""
    for attempt in range(5):
        out = tmp_path / f"t{attempt}"
        with tempfile.TemporaryDirectory(dir="/dev/shm") as workdir:
            collector = subprocess.Popen([*CHARGEPLAY, "collect", "-o", str(out), "--backend", "ebpf", "--",
                                          sys.executable, "-c", FILE_CHURN, workdir, "20000"],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            readings = []  # (monotonic ns before, after, the kernel's count, programs loaded)
            while collector.poll() is None:
                before = time.monotonic_ns()
                ours = [misses for name, misses in _bpf_programs() if name.startswith(PROGRAM_PREFIX)]
                readings.append((before, time.monotonic_ns(), sum(ours), len(ours)))
                time.sleep(0.005)
        assert collector.returncode == 0, collector.stderr.read()
        manifest = Trace.open(out).manifest
        skipped = manifest["ebpf"]["skipped"]
        if skipped["total"]:
            break
    assert skipped["total"], "no capture of the churn had a call skipped: nothing to check"
    assert sum(span["events"] for span in skipped["spans"]) == sum(skipped["per_program"].values()) == skipped["total"]
    loaded = [reading for reading in readings if reading[3] == max(r[3] for r in readings)]  # not while (un)loading
    last_span_drain = manifest["start"]["trace_ns"] + skipped["spans"][-1]["to_ns"]
    assert all(count <= skipped["total"] for _, after, count, _ in loaded if after <= last_span_drain)
    assert all(count >= skipped["total"] for before, _, count, _ in loaded if before >= manifest["end"]["trace_ns"])
    info = chargeplay("info", str(out))
    assert f"the kernel skipped its BPF programs {skipped['total']:,} times" in info.stdout


def test_records_that_go_round_a_small_ring_buffer_many_times_arrive_whole(ebpf, tmp_path):
    """A shell that forks and execs 3 programs per round, slowly enough that each 0.1 s drain
    finds the ring (--buffer-kb 512: 1 MiB on 2 CPUs) far from full, writes many times the
    ring's size: the forks and execs are all there (the shell's own exec besides), which a
    batch misread where it wraps would break."""
    rounds = 100
    script = f"i=0; while [ $i -lt {rounds} ]; do touch {tmp_path}/x; rm {tmp_path}/x; sleep 0.05; i=$((i+1)); done"
    result = chargeplay("collect", "-o", str(tmp_path / "t"), "--backend", "ebpf", "--bpf-output", "ringbuf",
                        "--buffer-kb", "512", "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    trace = Trace.open(tmp_path / "t")
    assert trace.manifest["lost"]["total"] == 0
    events = trace.events().collect()
    records_ring = trace.manifest["ebpf"]["buffer_bytes"][0]
    assert events.height * (8 + RECORD_SIZE) > 5 * records_ring  # a header and the record, each
    kinds = dict(events.group_by("kind").len().iter_rows())
    assert (kinds["task_new"], kinds["task_exec"]) == (3 * rounds, 3 * rounds + 1)


def _charge_probe_problem(tracefs: Path) -> str | None:
    """Why this kernel cannot take the charge probes, from its own facts, or None if it can:
    kprobes need kprobe_events in tracefs, and each charge function must be a symbol of its
    own (in /proc/kallsyms: not inlined away) under one of its names, tried in
    CHARGE_FUNCTIONS order."""
    if not (tracefs / "kprobe_events").exists():
        return "kprobes are not built into this kernel (no kprobe_events in tracefs)"
    symbols = {line.split()[2] for line in Path("/proc/kallsyms").read_text().splitlines()}
    missing = [names[0] for names, *_ in CHARGE_PROBES.values() if not symbols & set(names)]
    return f"kprobe on {missing[0]} refused: " if missing else None


def test_auto_says_which_backend_it_chose_and_whether_charge_probes_attached(ebpf, tmp_path):
    result = chargeplay("collect", "-o", str(tmp_path / "t"), "--backend", "auto", "--", "true")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("backend: ebpf ")
    trace = Trace.open(tmp_path / "t")
    assert trace.manifest["backend"] == "ebpf"
    said = [line for line in lines if line.startswith("charge probes unavailable: ")]
    charges = trace.events().filter(pl.col("kind") == "charge").collect()
    problem = _charge_probe_problem(ebpf)
    if problem is None:
        # Exec of `true` in its new memcg charges it (page tables, stack, page cache): every
        # charge goes through try_charge_memcg, whose probe must have seen at least one.
        assert said == [] and "charge probes" not in result.stderr, result.stderr
        assert charges.filter(pl.col("item") == CHARGE_FUNCTIONS.index("try_charge_memcg")).height > 0
    elif problem.endswith(": "):  # a refused kprobe: the kernel's error follows
        assert len(said) == 1 and said[0].startswith(f"charge probes unavailable: {problem}"), result.stderr
        assert said[0].endswith("; recording tracepoints only") and charges.height == 0
    else:  # this machine: no kprobes at all
        assert said == [f"charge probes unavailable: {problem}; recording tracepoints only"], result.stderr
        assert charges.height == 0


def test_sigkill_of_the_collector_leaves_no_bpf_program(ebpf, tmp_path):
    before = our_bpf_programs()
    collector = subprocess.Popen(
        [*CHARGEPLAY, "collect", "-o", str(tmp_path / "t"), "--backend", "ebpf", "--segment-seconds", "0.3", "--",
         "sh", "-c", f"while :; do touch {tmp_path}/x; rm {tmp_path}/x; done"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert wait_until(lambda: len(list((tmp_path / "t" / "events").glob("part-*.parquet"))) >= 2, timeout=60)
        assert our_bpf_programs() > before
    finally:
        collector.send_signal(signal.SIGKILL)
        collector.communicate(timeout=30 * SLOWDOWN)
    assert wait_until(lambda: our_bpf_programs() == before, timeout=15)
    assert wait_until(lambda: leftovers(ebpf) == [], timeout=15), leftovers(ebpf)
    assert Trace.open(tmp_path / "t").status == "interrupted"


def test_charge_probe_programs_pass_the_kernel_verifier(ebpf):
    """The kprobes cannot attach on kernels without kprobes (these machines), but the programs
    they would run are loaded with the others everywhere: the kernel's verifier accepted them."""
    loader = Loader("ringbuf", (16, 16))
    try:
        loaded = {name for name, _ in _bpf_programs()}
    finally:
        loader.close()
    assert {name[:15] for name in KPROBE_PROGRAMS} <= loaded  # the kernel keeps 15 characters of a name


def test_charge_probes_agree_with_the_memcgs_own_events(ebpf, tmp_path):
    """A workload driven over memory.max (cgroup v2), against the kernel's own memory.events:
    mem_cgroup_oom raises an `oom` event and then calls mem_cgroup_out_of_memory (orders up to
    PAGE_ALLOC_COSTLY_ORDER, which a touched page is), so the probe's OOM calls equal `oom`; a
    blocking try_charge_memcg that fails went through reclaim at least once, and each pass
    raised a `max` event, so failed blocking charges are at most `max` (mm/memcontrol.c)."""
    if cgroup.memory_hierarchy()[0] != 2:
        pytest.skip("needs a cgroup v2 memory hierarchy (this host has v1: no memory.events)")
    problem = _charge_probe_problem(ebpf)
    if problem is not None:
        pytest.skip(f"charge probes unavailable: {problem.removesuffix(': ')}")
    events_file = tmp_path / "memory.events"
    result = chargeplay("collect", "-o", str(tmp_path / "t"), "--backend", "ebpf", "--memory-max", "32M", "--",
                        sys.executable, "-c", OVER_MAX, str(events_file))
    assert result.returncode == 0, result.stderr
    events = cgroup.read_keyed(events_file)
    trace = Trace.open(tmp_path / "t")
    assert trace.manifest["lost"]["total"] == 0
    charges = trace.events().filter(pl.col("kind") == "charge").collect()
    tries = charges.filter(pl.col("item") == CHARGE_FUNCTIONS.index("try_charge_memcg"))
    blocking = (pl.col("gfp") & gfp_bit(trace.gfp_flags, "__GFP_DIRECT_RECLAIM")) != 0
    failed_blocking = tries.filter(pl.col("failed") & blocking).height
    ooms = charges.filter(pl.col("item") == CHARGE_FUNCTIONS.index("mem_cgroup_out_of_memory")).height
    assert events["oom_kill"] == 1, events
    assert ooms == events["oom"] >= 1, (ooms, events)
    assert failed_blocking <= events["max"] and events["max"] >= 1, (failed_blocking, events)
    # and the charges that led there were seen too
    assert tries.filter(~pl.col("failed")).height > 0


def test_memcg_stat_events_the_kernel_cannot_give_are_said_in_the_manifest_and_by_replay(ebpf, tmp_path):
    """Before 6.14 the kernel has no memcg tracepoints, and the eBPF backend no stand-in for
    them: the trace must say so (manifest kinds), and replaying it must warn that page cache
    and anon memory are missing, not under-count in silence."""
    has_tracepoints = (ebpf / "events" / "memcg" / "mod_memcg_state").exists()
    _capture_files(tmp_path, "ebpf", 200, "t")
    trace = Trace.open(tmp_path / "t")
    stat_events = trace.events().filter(pl.col("kind").is_in(["memcg_state", "memcg_lruvec_state"])).collect().height
    result = chargeplay("replay", str(tmp_path / "t"), "-o", str(tmp_path / "r"), "--policy", "mainline-6.18")
    assert result.returncode == 0, result.stderr
    warned = "warning: " in result.stderr and "no memcg stat events (" in result.stderr and "no memcg:mod_memcg_state tracepoint" in result.stderr
    for kind in ("memcg_state", "memcg_lruvec_state", "memcg_event"):
        assert ("unavailable" in trace.manifest["kinds"][kind]) is not has_tracepoints, kind
    assert (stat_events > 0, warned) == (has_tracepoints, not has_tracepoints), result.stderr
