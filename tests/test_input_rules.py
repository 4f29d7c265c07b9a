"""What replay.input makes of a trace's events, on a hand-written trace of 43 events in five
segments, each operation worked out by hand from the rules in replay/input.py's docstring."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from replay.input import InputStream, build
from replay.ops import (
    ANON_FREED, ANON_UNMAPPED, FAILED_CHARGE, LRU_CHARGE, LRU_OOM_FREED, LRU_RECLAIMED, OBJ_ALLOC, OBJ_FREE, OOM_CHARGE, POOL_ANON,
    PAGE_ALLOC, POOL_FILE, POOL_KMEM_PAGES, POOL_OTHER, POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE, RECLAIM_TIME, RETRY_FOUND_ROOM, TASK_CLONE_VM,
    TASK_EXEC, TASK_EXIT, TASK_FORK, TASK_JOIN, USER_RETURN,
)
from replay.run import reclaim_cost
from traces.atomic import write_json
from traces.manifest import MANIFEST
from traces.reader import Trace
from traces.samples import sample_path
from traces.schema import EVENT_SCHEMA
from traces.segments import SegmentWriter

LIKE = "socket-storm"  # its manifest (6.18's enums and gfp table) and slab table
TASK, VICTIM = 100, 200


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Trace:
    like = sample_path(LIKE)
    manifest = json.loads((like / MANIFEST).read_text())
    node, memcg, gfp = manifest["enums"]["node_stat_item"], manifest["enums"]["memcg_stat_item"], manifest["gfp_flags"]
    target = manifest["target"]["memcg_id"]
    account, thp, user = gfp["GFP_KERNEL_ACCOUNT"], gfp["GFP_TRANSHUGE"], gfp["GFP_HIGHUSER_MOVABLE"]

    def event(kind: str, pid: int = TASK, ctx: str = "task", **columns) -> dict:
        return dict(kind=kind, pid=pid, ctx=ctx, cpu=0, comm=f"task{pid}", **columns)

    def alloc(kind: str, obj: int, size: int, cache: str | None = None, ctx: str = "task") -> dict:
        return event(kind, ctx=ctx, obj=obj, cache=cache, bytes_req=size, bytes_alloc=size, gfp=account, accounted=True,
                     failed=False, call_site=7)

    def folio(kind: str, obj: int, order: int, gfp: int | None = None) -> dict:  # a user folio: charged apart
        allocation = kind == "page_alloc"
        return event(kind, obj=obj, order=order, bytes_alloc=4096 << order, gfp=gfp,
                     accounted=False if allocation else None, failed=False if allocation else None)

    def stat(kind: str, item: int, val: int, pid: int = TASK, ctx: str = "task") -> dict:
        return event(kind, pid=pid, ctx=ctx, memcg_id=target, item=item, val=val)

    events = [
        event("user_return"),  # 0
        alloc("kmem_cache_alloc", 1, 192, "dentry"),  # 1: a dentry, freed (2) in the system call
        event("kmem_cache_free", obj=1, cache="dentry"),  # 2
        alloc("kmem_cache_alloc", 2, 832, "sock_inode_cache"),  # 3: ... that also makes a socket's inode
        event("user_return"),  # 4
        alloc("kmem_cache_alloc", 3, 192, "dentry"),  # 5: a dentry of a system call with no pinning inode
        stat("memcg_lruvec_state", node["NR_FILE_PAGES"], 4),  # 6: file pages the task follows with
        stat("memcg_lruvec_state", node["NR_SHMEM"], 4),  # 7: ... the same shmem change: swap-backed
        stat("memcg_lruvec_state", node["NR_FILE_PAGES"], 2),  # 8: file pages
        alloc("kmalloc", 4, 64, ctx="softirq"),  # 9: an interrupt's allocation: no memcg
        alloc("kmalloc", 5, 64),  # 10 (second segment)
        event("reclaim_begin", gfp=account, order=0),  # 11
        stat("memcg_lruvec_state", node["NR_FILE_PAGES"], -3),  # 12: the capturing kernel's own reclaim
        event("reclaim_end", val=3),  # 13
        event("oom", val=VICTIM),  # 14: the task's charge after reclaim OOM-killed VICTIM
        stat("memcg_lruvec_state", node["NR_ANON_MAPPED"], -5, pid=VICTIM),  # 15: the victim's anon pages go
        stat("memcg_state", memcg["MEMCG_SOCK"], 3, ctx="softirq"),  # 16: socket buffers charged in softirq
        event("kfree", obj=3, cache="dentry"),  # 17: frees the dentry of row 5, a segment later
        stat("memcg_lruvec_state", node["NR_ANON_MAPPED"], 6),  # 18: anon pages mapped
        stat("memcg_lruvec_state", node["NR_INACTIVE_ANON"], 6),  # 19: ... join the LRU: nothing freed
        stat("memcg_lruvec_state", node["NR_ANON_MAPPED"], -6),  # 20 (third segment): unmapped, still charged
        stat("memcg_lruvec_state", node["NR_INACTIVE_ANON"], -2, pid=VICTIM),  # 21: 2 leave the LRU: freed, whoever
        stat("memcg_lruvec_state", node["NR_ACTIVE_ANON"], 2),  # 22: a list grows: nothing freed
        stat("memcg_lruvec_state", node["NR_INACTIVE_ANON"], -3),  # 23: 3 freed
        stat("memcg_lruvec_state", node["NR_ACTIVE_ANON"], -3),  # 24: of 3, the 1 still unmapped
        folio("page_alloc", 20, 9, thp),  # 25: a THP
        event("reclaim_begin", gfp=thp, order=0),  # 26: its charge reclaims
        event("reclaim_end", val=0),  # 27
        event("reclaim_begin", gfp=thp, order=0),  # 28
        event("reclaim_end", val=0),  # 29
        folio("page_free", 20, 9),  # 30 (fourth segment): ... and fails: the THP is put back
        folio("page_alloc", 21, 0, user),  # 31: a page
        event("reclaim_begin", gfp=user, order=0),  # 32: its charge reclaims
        event("reclaim_end", val=0),  # 33
        stat("memcg_lruvec_state", node["NR_ANON_MAPPED"], 1),  # 34: ... and succeeds
        folio("page_free", 21, 0),  # 35: a charged page freed: its anon stats say so, not this
        folio("page_alloc", 22, 0, user),  # 36: a page never charged
        folio("page_free", 22, 0),  # 37: ... freed with no reclaim in between
        folio("page_alloc", 23, 0, user),  # 38
        event("reclaim_begin", gfp=user, order=0),  # 39
        event("reclaim_end", val=0),  # 40 (fifth segment)
        event("user_return"),  # 41: the system call ended: whatever its allocations were
        folio("page_free", 23, 0),  # 42: ... this free is no failed charge
        folio("page_alloc", 24, 9, thp),  # 43: a THP
        stat("memcg_state", memcg["MEMCG_SOCK"], 1),  # 44: some other charge of the task in between
        stat("memcg_lruvec_state", node["NR_ANON_MAPPED"], 512),  # 45: ... and the THP is charged
        event("reclaim_begin", gfp=user, order=0),  # 46: a page's charge reclaims
        event("reclaim_end", val=0),  # 47
        event("oom", val=TASK),  # 48: ... and OOM-kills the task itself
        stat("memcg_lruvec_state", node["NR_ANON_MAPPED"], 1),  # 49: ... whose retry then charged the page
    ]
    return written(tmp_path_factory.mktemp("trace") / "t", manifest, events)


def written(path, manifest: dict, events: list[dict]) -> Trace:
    """A trace of these events (a microsecond apart unless they say when, ten to a segment) under LIKE's
    manifest and slab table."""
    for ts, row in enumerate(events):
        row.setdefault("ts_ns", 1_000 * (ts + 1))
    manifest.update(segments=[], events=len(events))
    writer = SegmentWriter(path, lambda segment: manifest["segments"].append(segment.__dict__), max_events=10)
    writer.write(pa.Table.from_pylist(events, schema=EVENT_SCHEMA))
    writer.close_segment()
    (path / "slabs.parquet").write_bytes((sample_path(LIKE) / "slabs.parquet").read_bytes())
    write_json(path / MANIFEST, manifest)
    return Trace.open(path)


def test_each_event_makes_the_operation_the_rules_say(trace):
    data = build(trace)
    gfp = trace.gfp_flags
    account = gfp["GFP_KERNEL_ACCOUNT"]
    dentry, inode, kmalloc64 = (data.cache_names.index(name) for name in ("dentry", "sock_inode_cache", "kmalloc-cg-64"))
    task, victim = (list(data.task_pids).index(pid) for pid in (TASK, VICTIM))
    # row, op, pages, pool, cache, object slot, gfp, task, in interrupt
    expected = [
        (0, USER_RETURN, 0, POOL_OTHER, -1, -1, 0, task, False),
        (1, OBJ_ALLOC, 0, POOL_SLAB_UNRECLAIMABLE, dentry, 1, account, task, False),  # pinned by the inode of row 3
        (2, OBJ_FREE, 0, POOL_SLAB_UNRECLAIMABLE, dentry, 1, 0, task, False),  # its free too, though it came first
        (3, OBJ_ALLOC, 0, POOL_SLAB_UNRECLAIMABLE, inode, 2, account, task, False),  # slot 1, freed at row 2, waits
        (4, USER_RETURN, 0, POOL_OTHER, -1, -1, 0, task, False),
        (5, OBJ_ALLOC, 0, POOL_SLAB_RECLAIMABLE, dentry, 3, account, task, False),  # dentry: SLAB_RECLAIM_ACCOUNT
        (6, LRU_CHARGE, 4, POOL_ANON, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], task, False),
        (8, LRU_CHARGE, 2, POOL_FILE, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], task, False),
        (10, OBJ_ALLOC, 0, POOL_SLAB_UNRECLAIMABLE, kmalloc64, 1, account, task, False),  # a new segment: slot 1 again
        (12, LRU_RECLAIMED, 3, POOL_FILE, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], task, False),
        (13, RECLAIM_TIME, 0, POOL_OTHER, -1, -1, 0, task, False),
        (14, OOM_CHARGE, 1, POOL_ANON, -1, -1, account, task, False),  # order and gfp of the reclaim_begin of row 11
        (15, LRU_OOM_FREED, 5, POOL_ANON, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], victim, False),
        (16, LRU_CHARGE, 3, POOL_KMEM_PAGES, -1, -1, gfp["GFP_ATOMIC"], task, True),
        (17, OBJ_FREE, 0, POOL_SLAB_RECLAIMABLE, dentry, 3, 0, task, False),
        (18, LRU_CHARGE, 6, POOL_ANON, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], task, False),
        (18, USER_RETURN, 0, POOL_OTHER, -1, -1, 0, task, False),  # a fault mapped them: it returns to user space
        (20, ANON_UNMAPPED, 6, POOL_ANON, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], task, False),
        (21, ANON_FREED, 2, POOL_ANON, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], victim, False),
        (23, ANON_FREED, 3, POOL_ANON, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], task, False),
        (24, ANON_FREED, 1, POOL_ANON, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], task, False),
        (27, RECLAIM_TIME, 0, POOL_OTHER, -1, -1, 0, task, False),
        (29, RECLAIM_TIME, 0, POOL_OTHER, -1, -1, 0, task, False),
        (30, FAILED_CHARGE, 512, POOL_ANON, -1, -1, gfp["GFP_TRANSHUGE"], task, False),  # order of row 25, gfp of 28
        (33, RECLAIM_TIME, 0, POOL_OTHER, -1, -1, 0, task, False),
        (34, LRU_CHARGE, 1, POOL_ANON, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], task, False),
        (34, USER_RETURN, 0, POOL_OTHER, -1, -1, 0, task, False),
        (40, RECLAIM_TIME, 0, POOL_OTHER, -1, -1, 0, task, False),  # its reclaim_begin came a segment before
        (41, USER_RETURN, 0, POOL_OTHER, -1, -1, 0, task, False),
        (44, LRU_CHARGE, 1, POOL_KMEM_PAGES, -1, -1, gfp["GFP_KERNEL"], task, False),
        (45, LRU_CHARGE, 512, POOL_ANON, -1, -1, gfp["GFP_TRANSHUGE"], task, False),  # with its fault's gfp (row 43)
        (45, USER_RETURN, 0, POOL_OTHER, -1, -1, 0, task, False),
        (47, RECLAIM_TIME, 0, POOL_OTHER, -1, -1, 0, task, False),
        (48, OOM_CHARGE, 1, POOL_ANON, -1, RETRY_FOUND_ROOM, gfp["GFP_HIGHUSER_MOVABLE"], task, False),  # the task's next operation: a charge
        (49, LRU_CHARGE, 1, POOL_ANON, -1, -1, gfp["GFP_HIGHUSER_MOVABLE"], task, False),
        (49, USER_RETURN, 0, POOL_OTHER, -1, -1, 0, task, False),
    ]
    got = list(zip(data.row.tolist(), data.op.tolist(), data.pages.tolist(), data.pool.tolist(), data.cache.tolist(),
                   data.obj.tolist(), data.gfp.tolist(), data.task.tolist(), data.irq.tolist()))
    assert got == expected
    assert data.bytes[data.op == OBJ_FREE].tolist() == [192, 192]  # a free has its allocation's size
    # the capturing kernel's reclaims, each as the ns from its reclaim_begin (events are 1 us apart)
    assert data.bytes[data.op == RECLAIM_TIME].tolist() == [2000, 1000, 1000, 1000, 1000, 1000]


def test_the_segments_carry_what_spans_them(trace):
    assert len(trace.segment_paths) == 5  # rows 0-9, 10-19, ...: the free of row 17 found its allocation of
    # row 5, rows 20-24 the unmapped pages of the segment before, row 30 the THP of row 25, and row 40 the
    # reclaim_begin of row 39
    batches = [batch.row.tolist() for batch in InputStream(trace).batches()]
    assert batches == [[0, 1, 2, 3, 4, 5, 6, 8], [10, 12, 13, 14, 15, 16, 17, 18, 18], [20, 21, 23, 24, 27, 29], [30, 33, 34, 34],
                       [40, 41, 44, 45, 45, 47, 48, 49, 49]]  # an anon charge's row twice: its fault returns to user space


def test_each_operation_charges_the_memcg_below_the_target_its_task_charges_pages_to(tmp_path):
    """Memcgs a workload made below the target (manifest target.descendants, indexes 1 and 2):
    a stat change is its memcg's; a task's allocations go to the memcg its last page charge in
    task context went to (0, the target, before any); a free to its allocation's memcg."""
    manifest = json.loads((sample_path(LIKE) / MANIFEST).read_text())
    node, memcg, gfp = manifest["enums"]["node_stat_item"], manifest["enums"]["memcg_stat_item"], manifest["gfp_flags"]
    target = manifest["target"]["memcg_id"]
    manifest["target"]["descendants"] = [{"path": "/t/a", "memcg_id": target + 10}, {"path": "/t/b", "memcg_id": target + 20}]
    a, b, elsewhere = target + 10, target + 20, target + 99
    other = 300

    def alloc(obj: int, pid: int = TASK) -> dict:
        return dict(kind="kmalloc", pid=pid, ctx="task", obj=obj, bytes_req=64, bytes_alloc=64, gfp=gfp["GFP_KERNEL_ACCOUNT"],
                    accounted=True, failed=False, call_site=7)

    def stat(kind: str, item: int, of: int, pid: int, ctx: str = "task") -> dict:
        return dict(kind=kind, pid=pid, ctx=ctx, memcg_id=of, item=item, val=1)

    events = [
        alloc(1),  # 0: before any page charge: the target's
        stat("memcg_lruvec_state", node["NR_ANON_MAPPED"], a, TASK),  # 1: a's; TASK charges a from now on
        alloc(2),  # 2: a's
        stat("memcg_lruvec_state", node["NR_FILE_PAGES"], b, other),  # 3: b's; the other task charges b
        dict(kind="kfree", pid=other, ctx="task", obj=2),  # 4: a's, whoever frees it
        dict(kind="kfree", pid=other, ctx="task", obj=1),  # 5: the target's
        stat("memcg_lruvec_state", node["NR_FILE_PAGES"], elsewhere, other),  # 6: not the target's subtree: nothing
        alloc(3, other),  # 7: b's
        stat("memcg_state", memcg["MEMCG_SOCK"], a, other, ctx="softirq"),  # 8: a's socket, in softirq
        alloc(4, other),  # 9: still b's: an interrupt's charge says nothing of the task it interrupted
    ]
    data = build(written(tmp_path / "t", manifest, [{**e, "cpu": 0, "comm": "t"} for e in events]))
    assert list(zip(data.row.tolist(), data.op.tolist(), data.memcg.tolist())) == [
        (0, OBJ_ALLOC, 0), (1, LRU_CHARGE, 1), (1, USER_RETURN, 1), (2, OBJ_ALLOC, 1), (3, LRU_CHARGE, 2), (4, OBJ_FREE, 1), (5, OBJ_FREE, 0),
        (7, OBJ_ALLOC, 2), (8, LRU_CHARGE, 1), (9, OBJ_ALLOC, 2),
    ]


def test_an_object_prefers_the_node_its_kmalloc_node_named_else_its_cpus(tmp_path):
    """kernel.cpu_nodes maps CPUs 0-1 to node 0 and CPUs 2-3 to node 1: a kmalloc without a node
    (-1) prefers its CPU's, a kmalloc_node the node it names, one naming a node without CPUs
    (which the model holds no slabs for) its CPU's again; a free and a page need no node."""
    manifest = json.loads((sample_path(LIKE) / MANIFEST).read_text())
    manifest["kernel"].update(cpus=4, cpu_nodes=[0, 0, 1, 1])
    gfp = manifest["gfp_flags"]["GFP_KERNEL_ACCOUNT"]

    def alloc(obj: int, cpu: int, node: int) -> dict:
        return dict(kind="kmalloc", pid=TASK, ctx="task", cpu=cpu, obj=obj, bytes_req=64, bytes_alloc=64, gfp=gfp, node=node,
                    accounted=True, failed=False, call_site=7)

    events = [alloc(1, 0, -1), alloc(2, 3, -1), alloc(3, 0, 1), alloc(4, 3, 0), alloc(5, 1, 7),
              dict(kind="kfree", pid=TASK, ctx="task", cpu=3, obj=1),
              dict(kind="page_alloc", pid=TASK, ctx="task", cpu=2, obj=6, order=0, bytes_alloc=4096, gfp=gfp, accounted=True,
                   failed=False)]
    data = build(written(tmp_path / "t", manifest, [{**e, "comm": "t"} for e in events]))
    assert data.nodes == 2
    assert list(zip(data.op.tolist(), data.node.tolist())) == [
        (OBJ_ALLOC, 0), (OBJ_ALLOC, 1), (OBJ_ALLOC, 1), (OBJ_ALLOC, 0), (OBJ_ALLOC, 0), (OBJ_FREE, 0), (PAGE_ALLOC, 0)]


def test_the_task_tree_makes_task_operations_but_the_kernels_oom_victim_lives_on(tmp_path):
    """task_new is TASK_FORK or, with CLONE_VM, TASK_CLONE_VM (obj: the new task's id); exec and
    exit are TASK_EXEC and TASK_EXIT, except the exit of the kernel's OOM victim: the model,
    which decides its own kills, keeps that process (and what it holds) until it kills it."""
    manifest = json.loads((sample_path(LIKE) / MANIFEST).read_text())
    child, thread = 201, 202

    def task(kind: str, pid: int, **columns) -> dict:
        return dict(kind=kind, pid=pid, ctx="task", cpu=0, comm="t", **columns)

    events = [
        task("task_new", TASK, val=VICTIM, item=0),  # 0: a process
        task("task_new", TASK, val=thread, item=0x100 | 0x10000),  # 1: a thread
        task("task_new", VICTIM, val=child, item=0x100),  # 2: a vfork child
        task("task_exec", child),  # 3
        task("task_exit", child),  # 4
        task("task_new", TASK, val=999, item=0),  # 5: a task with no event of its own: none to name
        task("oom", TASK, val=VICTIM),  # 6: the kernel kills VICTIM (the task made no reclaim_begin: no charge to replay)
        task("task_exit", VICTIM),  # 7: its exit: not replayed; its first event after its vfork child's exit: it waited
        task("task_exit", thread),  # 8
    ]
    data = build(written(tmp_path / "t", manifest, events))
    ids = {pid: list(data.task_pids).index(pid) for pid in (TASK, VICTIM, child, thread)}
    assert list(zip(data.row.tolist(), data.op.tolist(), data.task.tolist(), data.obj.tolist())) == [
        (0, TASK_FORK, ids[TASK], ids[VICTIM]), (1, TASK_CLONE_VM, ids[TASK], ids[thread]),
        (2, TASK_CLONE_VM, ids[VICTIM], ids[child]), (3, TASK_EXEC, ids[child], -1), (4, TASK_EXIT, ids[child], -1),
        (7, TASK_JOIN, ids[VICTIM], ids[child]), (8, TASK_EXIT, ids[thread], -1),
    ]


def test_reclaim_costs_a_call_and_a_time_per_page_the_slowest_left_out(tmp_path):
    # Three calls reclaim nothing, in 50 us, 70 us and 3 ms (preempted): 70 us a call, the median.
    # Four reclaim a batch or more, beyond the call's own 70 us: 64 pages in 32 us and 32 in 16 us
    # (0.5 us a page), 64 in 128 us (2 us a page), 32 in 5 ms (156.25 us a page: preempted, above
    # the 95th percentile of the four, 133.1 us, so left out). Per page: 176 us over 160 pages,
    # 1.1 us (the median, 1.25 us; all four, 26.96 us). 8 pages in 5 ms are too few to tell a
    # page's cost from the call's.
    manifest = json.loads((sample_path(LIKE) / MANIFEST).read_text())
    calls = [(0, 50_000), (0, 70_000), (0, 3_000_000), (64, 102_000), (32, 86_000), (64, 198_000), (32, 5_070_000),
             (8, 5_000_000)]
    events, t = [], 0
    for pages, took in calls:
        events += [dict(kind="reclaim_begin", pid=TASK, ctx="task", cpu=0, ts_ns=t + 1, gfp=0, order=0),
                   dict(kind="reclaim_end", pid=TASK, ctx="task", cpu=0, ts_ns=t + 1 + took, val=pages)]
        t += 10_000_000
    assert reclaim_cost(written(tmp_path / "t", manifest, events)) == {"reclaim_ns_per_call": 70_000, "reclaim_ns_per_page": 1_100,
                                                                       "reclaim_cost_from": "trace"}


def test_waits_for_a_child_and_the_kernels_throttle_sleeps_become_operations(tmp_path):
    """A task's first event within 5 ms after a task it made exited: it waited for it (TASK_JOIN,
    obj: the child, before the event's own operation); later than that, or another task's: no.
    A gap of 10 ms or more after a reclaim the task made on its return to user space (memory.high's,
    mem_cgroup_handle_over_high), from a system call or from the page fault that mapped an anon
    folio (the fault's stat changes that charge nothing, and the reclaim's own frees, do not end
    that return): the kernel's throttle sleep, a RECLAIM_TIME of the gap; after a reclaim
    elsewhere (a charge's, in a system call) the gap is the task's own: nothing."""
    manifest = json.loads((sample_path(LIKE) / MANIFEST).read_text())
    account = manifest["gfp_flags"]["GFP_KERNEL_ACCOUNT"]
    node, target = manifest["enums"]["node_stat_item"], manifest["target"]["memcg_id"]
    thp_fault = manifest["enums"]["vm_event_item"]["THP_FAULT_ALLOC"]
    child, late_child = 201, 301

    def event(kind: str, pid: int, ts_ns: int, **columns) -> dict:
        return dict(kind=kind, pid=pid, ctx="task", cpu=0, comm="t", ts_ns=ts_ns, **columns)

    def kmalloc(pid: int, ts_ns: int, obj: int) -> dict:
        return event("kmalloc", pid, ts_ns, obj=obj, bytes_req=64, bytes_alloc=64, gfp=account, accounted=True, failed=False)

    ms = 1_000_000
    events = [
        event("task_new", TASK, 1 * ms, val=child, item=0),  # 0
        event("user_return", child, 2 * ms),  # 1
        event("reclaim_begin", child, 3 * ms, gfp=account, order=0),  # 2: at its return to user space
        event("reclaim_end", child, 4 * ms, val=0),  # 3: 1 ms of reclaim
        kmalloc(child, 24 * ms, 1),  # 4: 20 ms later: the kernel's throttle sleep, then the allocation
        event("task_exit", child, 25 * ms),  # 5
        event("user_return", TASK, 29 * ms),  # 6: 4 ms after its child's exit: it waited for it
        kmalloc(TASK, 30 * ms, 2),  # 7
        event("reclaim_begin", TASK, 31 * ms, gfp=account, order=0),  # 8: a charge's reclaim, in the system call
        event("reclaim_end", TASK, 32 * ms, val=0),  # 9
        kmalloc(TASK, 52 * ms, 3),  # 10: 20 ms later, but not after a return to user space: no sleep
        event("task_new", TASK, 53 * ms, val=late_child, item=0),  # 11
        event("task_exit", late_child, 54 * ms),  # 12
        event("user_return", TASK, 60 * ms),  # 13: 6 ms after: not a wait
        event("memcg_lruvec_state", TASK, 61 * ms, memcg_id=target, item=node["NR_ANON_MAPPED"], val=512),  # 14: a THP fault
        event("memcg_lruvec_state", TASK, 61 * ms + 1, memcg_id=target, item=node["NR_ANON_THPS"], val=512),  # 15
        event("memcg_event", TASK, 61 * ms + 2, memcg_id=target, item=thp_fault, val=1),  # 16
        event("reclaim_begin", TASK, 62 * ms, gfp=account, order=0),  # 17: at the fault's return to user space
        event("kfree", TASK, 62 * ms + 500, obj=7),  # 18: a shrinker's free in that reclaim
        event("reclaim_end", TASK, 63 * ms, val=0),  # 19
        kmalloc(TASK, 83 * ms, 4),  # 20: 20 ms later: the kernel's throttle sleep
    ]
    data = build(written(tmp_path / "t", manifest, events))
    ids = {pid: list(data.task_pids).index(pid) for pid in (TASK, child, late_child)}  # objects: slots 1, 2, 3
    assert list(zip(data.row.tolist(), data.op.tolist(), data.task.tolist(), data.obj.tolist(), data.bytes.tolist())) == [
        (0, TASK_FORK, ids[TASK], ids[child], 0), (1, USER_RETURN, ids[child], -1, 0),
        (3, RECLAIM_TIME, ids[child], -1, 1 * ms), (4, RECLAIM_TIME, ids[child], -1, 20 * ms), (4, OBJ_ALLOC, ids[child], 1, 64),
        (5, TASK_EXIT, ids[child], -1, 0), (6, TASK_JOIN, ids[TASK], ids[child], 0), (6, USER_RETURN, ids[TASK], -1, 0),
        (7, OBJ_ALLOC, ids[TASK], 2, 64), (9, RECLAIM_TIME, ids[TASK], -1, 1 * ms), (10, OBJ_ALLOC, ids[TASK], 3, 64),
        (11, TASK_FORK, ids[TASK], ids[late_child], 0), (12, TASK_EXIT, ids[late_child], -1, 0), (13, USER_RETURN, ids[TASK], -1, 0),
        (14, LRU_CHARGE, ids[TASK], -1, 0), (14, USER_RETURN, ids[TASK], -1, 0), (19, RECLAIM_TIME, ids[TASK], -1, 1 * ms),
        (20, RECLAIM_TIME, ids[TASK], -1, 20 * ms), (20, OBJ_ALLOC, ids[TASK], 4, 64),
    ]


def test_a_fault_that_charges_a_page_table_returns_to_user_space(tmp_path):
    """A read fault on untouched memory maps the shared zero page and charges only the page-table
    page it needs (a kmem page allocation straight after a return to user space, then
    NR_PAGETABLE): it returns to user space after it, as a fault that maps an anon folio does. A
    page table allocated after other work of a system call (fork copies them after the vmas it
    allocates), freed, or counted in an interrupt is no fault of the task's."""
    manifest = json.loads((sample_path(LIKE) / MANIFEST).read_text())
    gfp = manifest["gfp_flags"]
    pgtable = gfp["GFP_KERNEL_ACCOUNT"] | gfp["__GFP_ZERO"]
    node, target = manifest["enums"]["node_stat_item"], manifest["target"]["memcg_id"]

    def event(kind: str, ctx: str = "task", **columns) -> dict:
        return dict(kind=kind, pid=TASK, ctx=ctx, cpu=0, comm="t", **columns)

    def table_page(obj: int) -> dict:
        return event("page_alloc", obj=obj, order=0, bytes_alloc=4096, gfp=pgtable, accounted=True, failed=False)

    def tables(val: int, ctx: str = "task") -> dict:
        return event("memcg_lruvec_state", ctx, memcg_id=target, item=node["NR_PAGETABLE"], val=val)

    events = [
        event("user_return"),  # 0
        table_page(1),  # 1: a fault's page table
        tables(1),  # 2: ... counted: the fault returns to user space
        tables(-1),  # 3: a table freed (an unmap): no
        tables(1, ctx="softirq"),  # 4: not the task's fault
        event("kmalloc", obj=2, cache="kmalloc-cg-64", bytes_req=64, bytes_alloc=64, gfp=gfp["GFP_KERNEL_ACCOUNT"],
              accounted=True, failed=False, call_site=7),  # 5: a system call's allocation
        table_page(3),  # 6: ... then a page table in that system call
        tables(1),  # 7: no return here
        event("user_return"),  # 8: but at the system call's end
    ]
    data = build(written(tmp_path / "t", manifest, events))
    assert list(zip(data.row.tolist(), data.op.tolist())) == [
        (0, USER_RETURN), (1, PAGE_ALLOC), (2, USER_RETURN), (5, OBJ_ALLOC), (6, PAGE_ALLOC), (8, USER_RETURN)]


def test_a_wait_and_a_throttle_sleep_carried_into_the_next_segment_fit_in_its_operations(tmp_path):
    """Segments of ten events. The first ends with a reclaim at the child's return to user space;
    the second holds the child's next return 20 ms later (its throttle sleep: a RECLAIM_TIME
    before it), the child's exit and eight returns of the parent, the first of them its wait for
    the child (a TASK_JOIN before it). Twelve operations from ten events, one of them carried
    from the segment before: the segment must have room for it."""
    manifest = json.loads((sample_path(LIKE) / MANIFEST).read_text())
    child, ms = 201, 1_000_000

    def event(kind: str, pid: int, ts_ns: int, **columns) -> dict:
        return dict(kind=kind, pid=pid, ctx="task", cpu=0, comm="t", ts_ns=ts_ns, **columns)

    first = [event("task_new", TASK, 1 * ms, val=child, item=0), *[event("user_return", TASK, (2 + k) * ms) for k in range(6)],
             event("user_return", child, 8 * ms), event("reclaim_begin", child, 9 * ms, gfp=0, order=0),
             event("reclaim_end", child, 10 * ms, val=0)]
    second = [event("user_return", child, 30 * ms), event("task_exit", child, 31 * ms),
              *[event("user_return", TASK, (32 + k) * ms) for k in range(8)]]
    data = build(written(tmp_path / "t", manifest, first + second))
    assert list(zip(data.row.tolist(), data.op.tolist()))[-12:] == [
        (10, RECLAIM_TIME), (10, USER_RETURN), (11, TASK_EXIT), (12, TASK_JOIN), *[(row, USER_RETURN) for row in range(12, 20)]]
