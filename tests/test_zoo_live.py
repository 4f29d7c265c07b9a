"""The workload zoo (zoo/): each workload, captured in a fresh memcg, charges what its docstring
says, by the kernel's rules; and `python3 -m zoo` itself (--list, errors, standard library only).

Each live test runs the real command line, `chargeplay collect -o DIR --memory-max 512M --
python3 -m zoo NAME --scale S` (512 MiB: no limit bites, so what is charged is the workload's
doing, not reclaim's), reads the trace, and checks the docstring's claims against what the
kernel recorded: allocations by call site (the kernel function that allocated, from the trace's
symbols) and cache, whether they were accounted, the memcg's own counter changes (the memcg
tracepoints, Linux 6.14 and later) and its sampled counters (memcg.parquet). Expected amounts
come from what the workload reports it made (its last line, NAME: key=value ...) and from kernel
rules stated where they are used, never from an earlier run. Written against Linux 6.18 on
x86-64: a claim that cannot be checked here (no memcg tracepoints, no user xattrs on tmpfs, THP
off, another file system under /var/tmp) is skipped with the reason.
"""
from __future__ import annotations

import ast
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl
import pytest

from conftest import assert_user_error, chargeplay, wait_until
from replay.input import build
from replay.ops import OBJ_ALLOC
from traces.reader import Trace
from zoo import WORKLOADS, buffers, files, memory, mix, objects, pagecache, support, tasks
from zoo.support import HOLD_SECONDS, PREFIX, scaled

ROOT = Path(__file__).resolve().parent.parent
# The system's python3, as a lab guest has it (not a version manager's shim, whose shell script
# would run inside the memcg too); the test's own interpreter where there is none.
PYTHON3 = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
PAGE = os.sysconf("SC_PAGE_SIZE")
KIB = 1 << 10
MIB = 1 << 20
# THREAD_SIZE: x86-64's kernel stack is 16 KiB (THREAD_SIZE_ORDER 2; KASAN doubles it, which
# only makes more). Elsewhere at least a page.
STACK_PAGES = 16 * KIB // PAGE if platform.machine() == "x86_64" else 1
# What each test runs the workload at: small enough for the file to take a couple of minutes,
# large enough that every count checked stands far above what the interpreter does on its own.
SCALES = {
    "files-disk": 0.1, "files-tmpfs": 0.1, "pagecache-read": 0.25, "pagecache-write": 0.25,
    "sockets-unix": 0.25, "sockets-tcp": 0.25, "sockets-udp": 0.25, "pipes": 0.25,
    "epoll": 0.1, "inotify": 0.1, "event-fds": 0.1, "xattrs": 0.1,
    "fork-churn": 0.1, "exec-churn": 0.06, "thread-churn": 0.04,
    "anon-touch": 0.5, "page-tables": 0.25, "thp": 0.5, "mix": 0.2, "siblings": 0.2, "files-every-cpu": 0.05,
}


def zoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON3, "-m", "zoo", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


# --- the command line, no kernel needed ---------------------------------------------------------

def test_list_names_every_workload_with_what_it_charges():
    result = zoo("--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(WORKLOADS)
    assert len(lines) >= 13
    for line, workload in zip(lines, WORKLOADS.values()):
        assert line.split(None, 1)[1] == workload.summary and len(workload.summary) > 20


def test_every_docstring_says_what_reclaim_can_take_back():
    for workload in WORKLOADS.values():
        assert "reclaim" in workload.run.__doc__, workload.name


@pytest.mark.parametrize("args", [
    ["no-such-workload"], [], ["pipes", "--scale", "0"], ["pipes", "--scale", "-1"], ["pipes", "--scale", "many"],
    ["pipes", "--scale", "nan"], ["pipes", "extra"], ["pipes", "--bogus"], ["--list", "pipes"],
])
def test_a_bad_name_or_argument_is_one_line_and_exit_code_2(args):
    result = zoo(*args)
    assert_user_error(result)
    assert result.stdout == ""


def test_a_bad_name_names_the_workloads_there_are():
    result = zoo("no-such-workload")
    assert_user_error(result, "no-such-workload", "files-disk", "mix")


def processes_in_group(group: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == group:  # pgrp
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.parametrize("name", ["files-disk", "files-tmpfs", "sockets-unix", "mix"])
def test_sigterm_mid_run_removes_what_it_made_and_leaves_no_process(name):
    """chargeplay collect stops a workload with SIGTERM: its scratch directories go and its
    children too, even in the middle of the work (at scale 4, seconds of it: at scale 1 files-disk
    took 1.2 s here, and on a loaded machine it had ended before the signal came)."""
    process = subprocess.Popen([PYTHON3, "-m", "zoo", name, "--scale", "4"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_until(lambda: scratch_of(process.pid) or name == "sockets-unix", timeout=10)
        time.sleep(0.3)  # well into the work, or the hold
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert wait_until(lambda: processes_in_group(process.pid) == [], timeout=10), processes_in_group(process.pid)
    assert scratch_of(process.pid) == set()


def test_a_run_removes_what_killed_runs_left_and_nothing_of_running_ones(tmp_path):
    """SIGKILL (the OOM killer's) leaves a workload no way to clean up: the next run removes
    scratch directories whose run is gone, on its way out, and keeps those of live runs."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that is certainly no running zoo
    live = os.getpid()
    made = [Path(where) / f"{PREFIX}{pid}-test" for where in ("/var/tmp", "/dev/shm") for pid in (gone.pid, live)]
    for path in made:
        (path / "d").mkdir(parents=True)
    try:
        result = zoo("event-fds", "--scale", "0.01")
        assert result.returncode == 0, result.stderr
        assert [path.exists() for path in made] == [False, True, False, True]
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def test_the_zoo_imports_nothing_but_the_standard_library():
    """It runs under a bare system python3 (a lab guest's): no polars, no chargeplay."""
    for path in sorted((ROOT / "zoo").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names or name == "__future__", (path.name, name)


# --- the workloads, live ------------------------------------------------------------------------

def traced_cache(name: str) -> str:
    """The name under which the trace shows `name`'s objects. SLUB merges compatible caches: a
    merged cache's name is a symlink to the merged slab, whose own name (s->name, which the
    tracepoints print) is the alias /proc/slabinfo lists (collect/slabs.py reads it the same way)."""
    slab = Path("/sys/kernel/slab") / name
    if not slab.is_symlink():
        return name
    target = os.readlink(slab)
    aliases = sorted(p.name for p in slab.parent.iterdir() if p.is_symlink() and os.readlink(p) == target)
    listed = {line.split(None, 1)[0] for line in Path("/proc/slabinfo").read_text().splitlines()[2:] if line.strip()}
    return next((alias for alias in aliases if alias in listed), aliases[0])


def fs_type(path: str) -> str:
    """The type of the file system `path` is on (the longest mount point above it)."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype = line.split()[:3]
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def scratch_of(run: int) -> set[str]:
    """The scratch directories of the zoo run whose main process is `run` (they carry its pid)."""
    return {str(p) for where in ("/var/tmp", "/dev/shm") for p in Path(where).glob(f"{PREFIX}{run}-*")}


@dataclass
class Capture:
    """One workload's trace, and what it said it made."""

    name: str
    made: dict[str, float]
    trace: Trace

    @cached_property
    def events(self) -> pl.DataFrame:
        symbols = self.trace.side_table("symbols").collect().select(
            call_site="id", function=pl.col("symbol").str.extract(r"^([\w.]+)\+"))
        return self.trace.events().collect().with_row_index("row").join(symbols, on="call_site", how="left")

    @cached_property
    def samples(self) -> pl.DataFrame:
        return self.trace.side_table("memcg").collect()

    @cached_property
    def slabs(self) -> pl.DataFrame:
        return self.trace.side_table("slabs").collect()

    @property
    def main_pid(self) -> int:
        """The workload's own process: collect forks it, moves it into the memcg and execs it."""
        return self.events["pid"][0]

    def allocs(self, functions: Iterable[str] | str | None = None, *, kind: str | None = None, cache: str | None = None,
               accounted: bool | None = None, pid: int | None = None) -> pl.DataFrame:
        """Allocations (kmalloc, kmem_cache_alloc, page_alloc), narrowed by call site (kernel
        function), kind, cache (as `traced_cache` names it), accounting and task."""
        rows = self.events.filter(pl.col("kind").is_in(["kmalloc", "kmem_cache_alloc", "page_alloc"]))
        if functions is not None:
            rows = rows.filter(pl.col("function").is_in([functions] if isinstance(functions, str) else list(functions)))
        if kind is not None:
            rows = rows.filter(pl.col("kind") == kind)
        if cache is not None:
            rows = rows.filter(pl.col("cache") == traced_cache(cache))
        if accounted is not None:
            rows = rows.filter(pl.col("accounted") == accounted)
        if pid is not None:
            rows = rows.filter(pl.col("pid") == pid)
        return rows

    def stat(self, item: str, events: pl.DataFrame | None = None) -> pl.Series:
        """The memcg's own changes of counter `item` (an enum memcg_stat_item, node_stat_item or
        vm_event_item name): their vals. Skips where the kernel records none of them."""
        kinds = self.trace.manifest["kinds"]
        enums = self.trace.manifest["enums"]
        for kind, enum in (("memcg_state", "memcg_stat_item"), ("memcg_lruvec_state", "node_stat_item"),
                           ("memcg_event", "vm_event_item")):
            if item in enums.get(enum, {}):
                if "unavailable" in kinds[kind]:
                    pytest.skip(f"{item}: this kernel has no memcg tracepoints ({kinds[kind]['unavailable']}; Linux 6.14 has them)")
                rows = self.events if events is None else events
                return rows.filter((pl.col("kind") == kind) & (pl.col("item") == enums[enum][item]))["val"]
        pytest.skip(f"this kernel has no counter {item}")

    def charged(self, item: str, events: pl.DataFrame | None = None) -> int:
        """What the positive changes of `item` add up to."""
        return int(self.stat(item, events).clip(lower_bound=0).sum())

    def hold_window(self) -> pl.DataFrame:
        """The main process's events from its last return to user space before the workload's
        hold (time.sleep(HOLD_SECONDS)) to the hold's own return: what the loop just before the
        hold did, which makes no system call (touching memory), and nothing else."""
        returns = self.events.filter((pl.col("kind") == "user_return") & (pl.col("pid") == self.main_pid))
        gaps = returns.with_columns(gap=pl.col("ts_ns").diff(), start=pl.col("row").shift())
        hold = gaps.filter(pl.col("gap") >= HOLD_SECONDS * 0.9e9).head(1)
        assert hold.height == 1, "no return to user space after a hold: the workload did not hold"
        start, end = hold["start"][0], hold["row"][0]
        return self.events.filter(pl.col("row").is_between(start, end) & (pl.col("pid") == self.main_pid))


def capture(tmp_path: Path, name: str) -> Capture:
    # --all-allocations: the docstrings' claims include what the kernel does not charge.
    result = chargeplay("collect", "-o", str(tmp_path / "trace"), "--memory-max", "512M", "--all-allocations", "--",
                        PYTHON3, "-m", "zoo", name, "--scale", str(SCALES[name]), cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stderr
    trace = Trace.open(tmp_path / "trace")
    assert trace.status == "complete", trace.manifest["stop_reason"]
    assert trace.manifest["stop_reason"] == "workload exited with status 0", result.stdout + result.stderr
    assert trace.manifest["lost"]["total"] == 0  # a count below could be short for that reason alone
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"{name}: "))
    made = {key: float(value) for key, value in re.findall(r"(\w+)=([\d.]+)", line)}
    captured = Capture(name, made, trace)
    assert scratch_of(captured.main_pid) == set()  # it removed its scratch directories
    return captured


def n(capture: Capture, key: str) -> int:
    return int(capture.made[key])


def check_file_names(c: Capture) -> int:
    """The names a file tree workload created: a dentry (SLAB_ACCOUNT) for each (d_alloc), and
    a name kmalloc'ed apart, GFP_KERNEL_ACCOUNT, for each of DNAME_INLINE_LEN (32 or 40) bytes
    or more: every long name, and nowhere near one per short name (fN). How many names."""
    files, long_names = n(c, "files"), n(c, "long_names")
    names = files + n(c, "directories") + n(c, "replaced")
    assert c.allocs("__d_alloc", kind="kmem_cache_alloc", cache="dentry", accounted=True).height >= names
    external = c.allocs("__d_alloc", kind="kmalloc", accounted=True).height
    short = files // 2
    assert long_names <= external < long_names + short // 10, (external, long_names)
    # Each file was open to create it: its struct file (filp, SLAB_ACCOUNT).
    assert c.allocs(["alloc_empty_file", "__alloc_file"], cache="filp", accounted=True).height >= files + n(c, "replaced")
    return names


def check_files_disk(c: Capture) -> None:
    names = check_file_names(c)
    # Reclaimable slab: both caches are SLAB_RECLAIM_ACCOUNT.
    for cache in ("dentry", traced_cache("ext4_inode_cache")):
        assert c.slabs.filter(pl.col("name") == cache)["reclaim_account"].to_list() == [True], cache
    if fs_type("/var/tmp") != "ext4":
        pytest.skip(f"/var/tmp is {fs_type('/var/tmp')}, not ext4: no ext4 inodes to count")
    assert c.allocs("ext4_alloc_inode", cache="ext4_inode_cache", accounted=True).height >= names


def check_files_every_cpu(c: Capture) -> None:
    # Each CPU's two children, pinned there, built a tree each: a dentry per file, allocated on
    # that CPU. The second round removed the first round's trees, each on another CPU than the
    # one that made it: the removed files' inodes (evicted at the unlink, freed by an RCU
    # callback the remover queued on its own CPU) are freed on another CPU than allocated.
    cpus, per_tree = n(c, "cpus"), n(c, "files") // n(c, "trees")
    dentries = c.allocs("__d_alloc", kind="kmem_cache_alloc", cache="dentry", accounted=True)
    per_cpu = dentries.group_by("cpu").len().filter(pl.col("len") >= 2 * per_tree)
    assert per_cpu.height == cpus, per_cpu
    inode_cache = traced_cache("ext4_inode_cache" if fs_type("/var/tmp") == "ext4" else "shmem_inode_cache")
    inodes = c.events.filter((pl.col("cache") == inode_cache) & pl.col("obj").is_not_null())
    allocated = inodes.filter(pl.col("kind") == "kmem_cache_alloc").select("obj", made_on="cpu")
    freed = inodes.filter(pl.col("kind") == "kmem_cache_free").join(allocated, on="obj")
    elsewhere = freed.filter(pl.col("cpu") != pl.col("made_on")).height
    assert elsewhere >= n(c, "removed_on_another_cpu") if cpus > 1 else elsewhere == 0, (elsewhere, cpus)


def check_files_tmpfs(c: Capture) -> None:
    names = check_file_names(c)
    data_pages = n(c, "data_pages")
    assert c.allocs("shmem_alloc_inode", cache="shmem_inode_cache", accounted=True).height >= names
    # tmpfs inodes are not reclaimable slab (the cache has no SLAB_RECLAIM_ACCOUNT).
    assert c.slabs.filter(pl.col("name") == traced_cache("shmem_inode_cache"))["reclaim_account"].to_list() == [False]
    # One shmem page per data file: NR_SHMEM, and NR_FILE_PAGES with it; removed, all uncharged.
    assert c.charged("NR_SHMEM") >= data_pages > 0
    assert c.charged("NR_FILE_PAGES") >= data_pages
    assert c.stat("NR_SHMEM").sum() <= 0


def check_pagecache_read(c: Capture) -> None:
    pages = n(c, "file_mib") * MIB // PAGE
    # Charged twice, once by the write and once by the first pass after DONTNEED dropped it (which
    # uncharged it); the other passes hit the cache, so nowhere near once per pass (no limit here).
    charged = c.charged("NR_FILE_PAGES")
    assert 2 * pages <= charged < 3 * pages, (charged, pages)
    assert n(c, "passes") >= 10
    assert -c.stat("NR_FILE_PAGES").clip(upper_bound=0).sum() >= 2 * pages  # dropped, then removed
    # The page cache's xarray nodes are accounted allocations.
    assert c.allocs("xas_alloc", cache="radix_tree_node", accounted=True).height > 0
    assert c.stat("NR_FILE_PAGES").sum() < pages  # removing the file uncharged what was left


def check_pagecache_write(c: Capture) -> None:
    pages = n(c, "written_mib") * MIB // PAGE
    segment = n(c, "segment_mib") * MIB
    assert c.charged("NR_FILE_PAGES") >= pages
    assert c.charged("NR_FILE_DIRTY") >= pages  # every page written is dirtied
    assert c.charged("NR_WRITEBACK") >= pages  # and written back (fdatasync per segment)
    assert c.stat("NR_FILE_PAGES").sum() < segment // PAGE  # removing the segments uncharged them
    # Sampling can miss the peak, never exceed it: the memcg never held much more than the kept
    # segments and the one being written (were removed segments still charged, it would).
    kept = (pagecache.KEPT + 1) * segment
    assert c.samples["file"].max() <= kept + 4 * MIB < pages * PAGE, c.samples["file"].max()


def check_sockets_unix(c: Capture) -> None:
    sockets, queued = 2 * n(c, "pairs"), n(c, "queued_bytes")
    assert queued == sockets * buffers.UNIX_QUEUED and n(c, "drained_bytes") == queued
    assert c.allocs("sk_prot_alloc", cache="UNIX-STREAM", accounted=True).height >= sockets
    assert c.allocs("sock_alloc_inode", cache="sock_inode_cache", accounted=True).height >= sockets
    # sk_allocation is GFP_KERNEL_ACCOUNT: every skb head (one per send) is accounted...
    skbs = c.allocs("__alloc_skb", kind="kmem_cache_alloc", pid=c.main_pid)
    assert skbs.height >= sockets and skbs["accounted"].all()
    # ... and so is the data: the memcg's kmem counter held all of it during the hold.
    assert c.samples["kmem_usage"].max() >= queued


def check_sockets_tcp(c: Capture) -> None:
    connections, queued = n(c, "connections"), n(c, "queued_bytes")
    assert queued > 0 and n(c, "drained_bytes") == queued
    # The clients' and the listener's tcp_sock, in the task (the server ends come from softirq).
    tcp = c.allocs("sk_prot_alloc", cache="TCP", accounted=True)
    assert tcp.filter(pl.col("ctx") == "task").height >= connections + 1
    # The server ends, cloned in softirq, are charged to no memcg: replay charges only the task's.
    assert tcp.filter(pl.col("ctx") == "softirq").height >= connections
    replayed = build(c.trace)
    tcp_rows = set(tcp["row"].to_list())
    charged_rows = {int(row) for row, op in zip(replayed.row, replayed.op) if op == OBJ_ALLOC and int(row) in tcp_rows}
    assert charged_rows == set(tcp.filter(pl.col("ctx") == "task")["row"].to_list())
    # The data's skbs are allocated without __GFP_ACCOUNT.
    skbs = c.allocs("__alloc_skb", kind="kmem_cache_alloc")
    assert skbs.height >= connections and not skbs["accounted"].any()
    # SO_LINGER 0: each connection is reset, none waits in TIME_WAIT after the workload.
    assert c.allocs("inet_twsk_alloc").height == 0
    check_socket_memory(c, queued)


def check_sockets_udp(c: Capture) -> None:
    sockets, queued = n(c, "sockets"), n(c, "datagrams_queued")
    assert queued > 0
    assert c.allocs("sk_prot_alloc", cache="UDP", accounted=True).filter(pl.col("ctx") == "task").height >= sockets + 1
    skbs = c.allocs("__alloc_skb", kind="kmem_cache_alloc")
    assert skbs.height >= queued and not skbs["accounted"].any()
    check_socket_memory(c, queued * buffers.UDP_DATAGRAM)


def check_socket_memory(c: Capture, queued: int) -> None:
    """TCP and UDP data is charged as socket memory on cgroup v2 (MEMCG_SOCK, pages), on v1 not
    at all unless memory.kmem.tcp.limit_in_bytes was set (collect sets no such limit)."""
    if c.trace.manifest["target"]["cgroup_version"] == 1:
        assert c.charged("MEMCG_SOCK") == 0
    else:
        assert c.charged("MEMCG_SOCK") * PAGE >= queued


def check_pipes(c: Capture) -> None:
    count, filled = n(c, "pipes"), n(c, "filled_bytes")
    assert filled == count * buffers.PIPE_FILL and n(c, "drained_bytes") == filled
    # alloc_pipe_info: the pipe_inode_info and its ring of pipe_buffers, both GFP_KERNEL_ACCOUNT.
    assert c.allocs("alloc_pipe_info", kind="kmalloc", accounted=True).height >= 2 * count
    # Each page of data: an order-0 page allocated with __GFP_ACCOUNT, charged as kmem...
    pages = c.allocs(kind="page_alloc", accounted=True, pid=c.main_pid).filter(pl.col("order") == 0)
    assert pages.height >= filled // PAGE
    # ... which the memcg's kmem counter held, all of it, during the hold.
    assert c.samples["kmem_usage"].max() >= filled
    # Not on any LRU: while the pipes were made and filled, next to the 16 kmem pages each, the
    # memcg's file and anon pages barely moved (the interpreter's own).
    made = c.allocs("alloc_pipe_info")["row"]
    filling = c.events.filter(pl.col("row").is_between(made.min(), made.max()))
    assert c.charged("NR_FILE_PAGES", filling) + c.charged("NR_ANON_MAPPED", filling) < filled // PAGE // 8


def check_epoll(c: Capture) -> None:
    registrations = n(c, "instances") * n(c, "registered_each")
    # EPOLL_CTL_ADD: an epitem each (ep_insert, inlined into do_epoll_ctl on recent kernels)...
    assert c.allocs(["ep_insert", "do_epoll_ctl"], cache="eventpoll_epi", accounted=True).height >= registrations
    # ... and an eppoll_entry for the one wait queue an eventfd's poll adds it to...
    assert c.allocs("ep_ptable_queue_proc", cache="eventpoll_pwq", accounted=True).height >= registrations
    # ... and a file's first registration, its epitems_head (SLAB_ACCOUNT).
    assert c.allocs(["attach_epitem", "do_epoll_ctl", "ep_insert"], cache="ep_head", accounted=True).height >= n(
        c, "registered_each")
    # Each instance's struct eventpoll: kzalloc'ed GFP_KERNEL, not accounted.
    instances = c.allocs(["ep_alloc", "do_epoll_create"], kind="kmalloc")
    assert instances.height >= n(c, "instances") and not instances["accounted"].any()


def check_inotify(c: Capture) -> None:
    watches, events = n(c, "watches"), n(c, "events_read")
    marks = c.allocs(["inotify_update_watch", "inotify_new_watch"], cache="inotify_inode_mark", accounted=True)
    assert marks.height >= watches
    # The queued events, GFP_KERNEL_ACCOUNT: at least one per event read (the overflow event,
    # if there was one, is allocated with the group).
    queued = c.allocs(["inotify_handle_inode_event", "inotify_handle_event"], kind="kmalloc", accounted=True)
    assert queued.height >= events - 1 >= 2 * watches  # IN_OPEN, IN_MODIFY, IN_CLOSE_WRITE at least
    # Each one-byte write dirtied one page-cache page per file.
    assert c.charged("NR_FILE_DIRTY") >= watches


def check_event_fds(c: Capture) -> None:
    count = n(c, "eventfds")
    assert n(c, "timerfds") == n(c, "signalfds") == count
    # A file each, and a pseudo dentry each, both SLAB_ACCOUNT...
    assert c.allocs(["alloc_empty_file", "__alloc_file"], cache="filp", accounted=True).height >= 3 * count
    assert c.allocs("__d_alloc", kind="kmem_cache_alloc", cache="dentry", accounted=True).height >= 3 * count
    # ... on the one shared anon inode: no inode each.
    assert c.allocs(["alloc_inode", "new_inode_pseudo"]).height < count
    # The contexts, kmalloc'ed GFP_KERNEL: not accounted.
    for functions in (["do_eventfd"], ["__do_sys_timerfd_create", "do_timerfd_create"], ["do_signalfd4"]):
        contexts = c.allocs(functions, kind="kmalloc")
        assert contexts.height >= count and not contexts["accounted"].any(), functions


def check_xattrs(c: Capture) -> None:
    files = n(c, "files_each")
    big = files // 2  # every other file also has a 1 KiB value
    assert n(c, "disk_xattrs") == files + big
    if fs_type("/var/tmp") == "ext4":
        # A 1 KiB value needs a block of its own, entered in the mbcache (not accounted).
        entries = c.allocs("mb_cache_entry_create", cache="mb_cache_entry")
        assert entries.height >= big and not entries["accounted"].any()
        assert c.allocs("ext4_alloc_inode", accounted=True).height >= files
    if n(c, "tmpfs_xattrs") == 0:
        pytest.skip("tmpfs here has no user xattrs (Linux 6.6 added them): only the ext4 half ran")
    assert n(c, "tmpfs_xattrs") == files + big
    # Each tmpfs value: a simple_xattr, kvmalloc'ed GFP_KERNEL_ACCOUNT.
    values = c.allocs("simple_xattr_alloc", accounted=True)
    assert values.height >= files + big
    assert values.filter(pl.col("bytes_req") >= objects.BIG_VALUE).height >= big


def check_task_creation(c: Capture, tasks_made: int) -> None:
    """Every new task: a task_struct (SLAB_ACCOUNT) and a kernel stack, which
    memcg_charge_kernel_stack charges page by page (NR_KERNEL_STACK_KB, recorded in pages)."""
    assert c.allocs(cache="task_struct", accounted=True).height >= tasks_made
    assert c.allocs(cache="pid", accounted=True).height >= tasks_made
    assert c.charged("NR_KERNEL_STACK_KB") >= tasks_made * STACK_PAGES


def check_fork_churn(c: Capture) -> None:
    forks = n(c, "forks")
    for cache in ("mm_struct", "signal_cache", "sighand_cache", "files_cache"):
        assert c.allocs(cache=cache, accounted=True).height >= forks, cache
    assert c.allocs("vm_area_dup", accounted=True).height >= forks * 10  # every VMA copied
    # The copied page tables of the parent's anon memory: at least one page each.
    assert c.charged("NR_PAGETABLE") >= forks
    check_task_creation(c, forks)


def check_exec_churn(c: Capture) -> None:
    execs = n(c, "execs")
    # exec builds a new mm (bprm_mm_init): two per child, fork's copy and exec's own.
    assert c.allocs(cache="mm_struct", accounted=True).height >= 2 * execs
    ran = c.events.filter(pl.col("comm") == Path(tasks.PROGRAM).name)["pid"].n_unique()
    assert ran >= execs  # each child became the program, in the memcg
    assert c.charged("NR_ANON_MAPPED") >= execs  # a written stack page at least, each
    check_task_creation(c, execs)


def check_thread_churn(c: Capture) -> None:
    threads = n(c, "threads")
    assert n(c, "ran") == threads
    # Threads share the mm, signal handlers and files (CLONE_VM, CLONE_SIGHAND, CLONE_FILES):
    # none of those is copied per thread.
    for cache in ("mm_struct", "sighand_cache", "files_cache"):
        assert c.allocs(cache=cache).height < threads // 10, cache
    check_task_creation(c, threads)


def thp_mode() -> str:
    text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    return re.search(r"\[(\w+)\]", text).group(1)


def check_anon_touch(c: Capture) -> None:
    pages = n(c, "pages")
    assert pages == n(c, "anon_mib") * MIB // PAGE
    window = c.hold_window()
    # One anon page per page written, each its own 1-page charge (no THP asked for)...
    anon = c.stat("NR_ANON_MAPPED", window)
    assert pages <= anon.clip(lower_bound=0).sum() <= pages + 64  # the interpreter's own few
    if thp_mode() != "always":
        assert anon.max() == 1
    # ... and one page-table page per 2 MiB.
    assert c.charged("NR_PAGETABLE", window) >= pages * PAGE // (2 * MIB)
    assert c.samples["anon"].max() >= pages * PAGE  # held: sampled during the hold


def check_page_tables(c: Capture) -> None:
    read, written = n(c, "steps_read"), n(c, "steps_written")
    window = c.hold_window()
    # Every 2 MiB step touched needs a PTE table of its own (and one PMD table per GiB)...
    tables = c.charged("NR_PAGETABLE", window)
    assert tables >= read + written
    # ... but a read maps the zero page, which charges nothing: only the written steps charge
    # an anon page (and the interpreter its own few).
    anon = c.charged("NR_ANON_MAPPED", window)
    assert written <= anon <= written + 64 < tables
    assert c.samples["kmem_usage"].max() >= (read + written) * PAGE  # page tables are kmem


def check_thp(c: Capture) -> None:
    huge = n(c, "huge_pages")
    if thp_mode() == "never":
        pytest.skip("transparent huge pages are off here (enabled=never)")
    window = c.hold_window()
    thps = c.stat("NR_ANON_THPS", window)
    # Each huge-page fault: one order-9 page, charged as one (NR_ANON_THPS and NR_ANON_MAPPED
    # by 512 at once), counted THP_FAULT_ALLOC, with a page-table page deposited.
    assert thps.len() >= 1 and (thps == 512).all(), thps.to_list()
    assert c.allocs(kind="page_alloc", pid=c.main_pid).filter(pl.col("order") == 9).height >= thps.len()
    assert (c.stat("NR_ANON_MAPPED", window) == 512).sum() == thps.len()
    assert c.stat("THP_FAULT_ALLOC", window).sum() == thps.len()
    assert c.charged("NR_PAGETABLE", window) >= thps.len()
    # Every page written: the huge ones and any fallen back to order 0 cover the whole region.
    assert c.charged("NR_ANON_MAPPED", window) >= huge * 512


def check_mix(c: Capture) -> None:
    assert n(c, "parts") == len(mix.MIX)
    scale = c.made["each_scale"]

    # Four parts, told apart by what only they allocate; each must have run in a child of its
    # own (not the parent), as much as its scale says.
    signatures = {
        "files-disk": (c.allocs("__d_alloc", kind="kmalloc", accounted=True), scaled(files.FILES, scale) // 2),  # long names
        "sockets-tcp": (c.allocs("sk_prot_alloc", cache="TCP").filter(pl.col("ctx") == "task"), scaled(buffers.TCP_CONNECTIONS, scale)),
        "pipes": (c.allocs("alloc_pipe_info", kind="kmalloc"), 2 * scaled(buffers.PIPES, scale)),
        "fork-churn": (c.allocs(cache="task_struct"), scaled(tasks.FORKS, scale)),
    }
    pids = {}
    for name, (rows, least) in signatures.items():
        assert rows.height >= least, name
        pids[name] = rows.group_by("pid").len().sort("len")["pid"][-1]
    assert len(set(pids.values())) == len(pids) and c.main_pid not in pids.values(), pids
    # At once: each of them had begun before the first of those that hold memory for a second
    # (sockets, pipes) let it go.
    first = {name: c.events.filter(pl.col("pid") == pid)["ts_ns"].min() for name, pid in pids.items()}
    last = {name: c.events.filter(pl.col("pid") == pid)["ts_ns"].max() for name, pid in pids.items()}
    assert max(first.values()) < min(last["sockets-tcp"], last["pipes"])
    # The other two: the file read in twice, the anon memory touched.
    assert c.charged("NR_FILE_PAGES") >= 2 * scaled(pagecache.READ_FILE_MB, scale) * MIB // PAGE
    assert c.charged("NR_ANON_MAPPED") >= scaled(memory.ANON_MB, scale) * MIB // PAGE


def file_system_of(path: str) -> str:
    """The type of the file system `path` is on (the longest mount point above it)."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    above = [(mount, fs_type) for _, mount, fs_type, *_ in mounts if path == mount or path.startswith(mount.rstrip("/") + "/")]
    return max(above, key=lambda pair: len(pair[0]))[1]


def check_siblings(c: Capture) -> None:
    """Each part charged its own memcg, below the target, and the capture recorded those
    memcgs' counter changes: a page is charged to the memcg of the task that faults it in, an
    object to the objcg of the task that allocates it (MEMCG_KMEM counts the pages charged)."""
    scale = c.made["each_scale"]
    target = c.trace.manifest["target"]
    below = {Path(d["path"]).name: d["memcg_id"] for d in target["descendants"]}
    assert below.keys() == {f"{mix.SIBLING_PREFIX}{name}" for name in [*mix.SIBLINGS, "main"]}
    assert all(Path(d["path"]).parent == Path(target["cgroup_path"]) for d in target["descendants"])

    def in_memcg(name: str) -> pl.DataFrame:
        return c.events.filter(pl.col("memcg_id") == below[f"{mix.SIBLING_PREFIX}{name}"])

    # pagecache-read's file, to its own memcg: charged twice on a disk (see check_pagecache_read),
    # once on tmpfs (a lab guest's /var/tmp), whose shmem pages DONTNEED does not drop.
    file_pages = scaled(pagecache.READ_FILE_MB, scale) * MIB // PAGE
    times = 1 if file_system_of(support.DISK) == "tmpfs" else 2
    assert c.charged("NR_FILE_PAGES", in_memcg("pagecache-read")) >= times * file_pages
    # files-tmpfs' shmem pages: one in every 16th file.
    data_pages = len(range(0, scaled(files.FILES, scale), 16))
    assert c.charged("NR_SHMEM", in_memcg("files-tmpfs")) >= data_pages
    # sockets-unix's queued data: kmem of its memcg, and of the target above it (hierarchical).
    queued = 2 * scaled(buffers.UNIX_PAIRS, scale) * buffers.UNIX_QUEUED
    assert c.charged("MEMCG_KMEM", in_memcg("sockets-unix")) >= queued // PAGE
    assert c.samples["kmem_usage"].max() >= queued


CHECKS: dict[str, Callable[[Capture], None]] = {
    "files-disk": check_files_disk, "files-tmpfs": check_files_tmpfs,
    "pagecache-read": check_pagecache_read, "pagecache-write": check_pagecache_write,
    "sockets-unix": check_sockets_unix, "sockets-tcp": check_sockets_tcp, "sockets-udp": check_sockets_udp,
    "pipes": check_pipes, "epoll": check_epoll, "inotify": check_inotify, "event-fds": check_event_fds,
    "xattrs": check_xattrs, "fork-churn": check_fork_churn, "exec-churn": check_exec_churn,
    "thread-churn": check_thread_churn, "anon-touch": check_anon_touch, "page-tables": check_page_tables,
    "thp": check_thp, "mix": check_mix, "siblings": check_siblings, "files-every-cpu": check_files_every_cpu,
}


def test_every_workload_has_a_check_and_a_scale():
    assert set(CHECKS) == set(WORKLOADS) == set(SCALES)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_the_workload_charges_what_its_docstring_says(tracefs, tmp_path, name):
    CHECKS[name](capture(tmp_path, name))
