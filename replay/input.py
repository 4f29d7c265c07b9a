"""From a trace to the replay's operations (replay.ops), as flat numpy arrays.

What becomes an operation ("the target memcg" includes the memcgs its workload made below it,
the manifest's target.descendants: page counters are hierarchical, so their charges are the
target's too):
- accounted, successful kmalloc and kmem_cache_alloc of at most 8 KiB made in task context:
  OBJ_ALLOC (larger kmallocs come from the page allocator and show up as accounted page
  allocations); kmallocs are placed in the kmalloc-cg-SIZE cache accounted kmallocs use;
- frees of those objects: OBJ_FREE, with the allocation's size, cache and pool;
- accounted (__GFP_ACCOUNT) page allocations made in task context and their frees: PAGE_ALLOC,
  PAGE_FREE. An interrupt's accounted allocation is charged to no memcg, whichever task it
  interrupted (current_obj_cgroup in 6.8+, memcg_kmem_bypass before: no memcg outside
  in_task() unless one was made active), and so is its free: no operation;
- the target memcg's NR_FILE_PAGES and NR_ANON_MAPPED changes: LRU_CHARGE and
  LRU_UNCHARGE of file and anon pages, charged with GFP_HIGHUSER_MOVABLE. Unmapped anon
  pages stay charged until they are freed, which takes them off the anon LRU (the TLB
  flush comes first: mmu_gather): an NR_ANON_MAPPED drop is ANON_UNMAPPED, and a drop of
  NR_INACTIVE_ANON or NR_ACTIVE_ANON frees as many of the unmapped pages (ANON_FREED), in
  whichever task's context it comes. Approximations: without swap anon pages do not move
  between the two lists (where they do, a move frees pages early), and pages leaving the LRU
  for another reason (shmem truncated, an OOM victim's pages) may too. Shmem (an
  NR_FILE_PAGES change the task follows with the same NR_SHMEM change) is swap-backed:
  the kernel keeps it on the anon LRU, so it joins the anon pool, which only swap can
  reclaim (and an OOM kill frees: an approximation, shmem outlives its mappers). Those that fall inside a reclaim_begin/end of the
  task that reclaims are the capturing kernel's own reclaim, not the workload's doing:
  LRU_RECLAIMED (the model decides its own reclaim);
- the target memcg's NR_KERNEL_STACK_KB changes (in pages): kernel stacks, which
  memcg_charge_kernel_stack charges page by page with GFP_KERNEL (a vmalloc'ed stack's
  page allocations carry no __GFP_ACCOUNT, so they are not accounted page allocations):
  LRU_CHARGE and LRU_UNCHARGE of kmem pages;
- the target memcg's MEMCG_SOCK changes (cgroup v2 only): socket buffers, LRU_CHARGE and
  LRU_UNCHARGE of kmem pages, GFP_KERNEL in task context and GFP_ATOMIC in softirq;
- the anon pages an OOM victim frees after its oom:mark_victim: LRU_OOM_FREED (the
  kernel's kill freed them; the model decides its own kills);
- oom:mark_victim: OOM_CHARGE, the charge the invoking task could not make, of the order
  and gfp of that task's last reclaim_begin (the OOM killer runs in the charging task
  after reclaim failed). When the victim is that task, its charge fails and the trace has
  no other record of it. Its obj is RETRY_FOUND_ROOM where the task's next operation is a
  charge, not more reclaim: the kernel's retry after the kill went through;
- a page allocation of a task, not charged, that the task frees before any charge of its
  own, after one or more memcg reclaims: FAILED_CHARGE, the charge the kernel failed
  without an OOM kill, of the allocation's order and the gfp of the last reclaim_begin
  (a user or page cache folio is charged after its allocation; when the charge fails, the
  folio is put back at once). Two kinds show up: a THP fault, whose failed charge makes 18
  reclaim calls before the fault falls back to small pages, and a fault of an OOM victim
  before it has exited, which makes 35 (out_of_memory picks the dying task itself, and its
  charge then fails: passed_oom && task_is_dying);
- the capturing kernel's memcg reclaims, each as the time it held its task (reclaim_begin to
  reclaim_end): RECLAIM_TIME; and its memory.high throttle sleeps, a gap of 10 ms or more
  (MIN_THROTTLE_NS) from the end of the reclaims of a task's return to user space (from a
  system call, or from a fault that mapped an anon folio: the returns below) to its next
  event: RECLAIM_TIME too, before that event's operation. Closed-loop replay replaces that
  stall with the policy's;
- returns to user space: USER_RETURN, at each system call's exit (the trace's user_return) and
  after each anon folio a task charges (NR_ANON_MAPPED up in task context: the end of a page
  fault, which returns to user space too; since 2026-12-05). A fault the kernel takes inside a
  system call (copy_to_user into a fresh buffer) returns only at the call's exit: there the
  model reclaims and throttles a little early;
- the task tree: a task_new whose new task shares its parent's mm (CLONE_VM: a thread, a
  vfork child) is TASK_CLONE_VM, one with a copy-on-write copy TASK_FORK (obj: the new task);
  task_exec and task_exit are TASK_EXEC and TASK_EXIT, but for the exit of the kernel's OOM
  victim: the model decides its own kills, and keeps that process alive, holding its memory,
  until it kills it. The model's OOM killer reads them: a kill takes a whole process, and
  frees only the pages no other process still maps. A task whose first event comes within 5 ms
  (JOIN_WINDOW_NS) after a task it made exited was waiting for it (wait4, pthread_join: the exit
  woke it): TASK_JOIN (obj: that task), before that event's own operation; the closed loop
  keeps it from going on before the task it waited for ended.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from replay import events_to_operations as passes
from replay.events_to_operations import KMALLOC_MAX_CACHE_SIZE
from replay.object_slots import ObjectSlots
from replay.ops import OBJ_ALLOC, PAGE_SIZE, POOL_ANON, POOL_FILE, POOL_OTHER, POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE
from traces.reader import Trace
from traces.schema import KINDS
# Each operation array of ReplayInput and its dtype: the engines' replay_batch takes them as
# they are (replay.engine), so a trace's batches need no conversion.
ARRAY_DTYPES = {"ts": np.int64, "cpu": np.int32, "task": np.int32, "irq": np.bool_, "op": np.int8, "gfp": np.int64,
                "pages": np.int64, "bytes": np.int64, "cache": np.int32, "obj": np.int64, "pool": np.int8, "memcg": np.int16,
                "row": np.int64, "node": np.int16}
ARRAYS = tuple(ARRAY_DTYPES)


@dataclass
class ReplayInput:
    ts: np.ndarray  # int64 ns
    cpu: np.ndarray  # int32
    task: np.ndarray  # int32, dense task ids (task_pids maps them back)
    irq: np.ndarray  # bool: the operation ran in interrupt context
    op: np.ndarray  # int8
    gfp: np.ndarray  # int64 raw gfp bits of the capturing kernel
    pages: np.ndarray  # int64 pages (page and LRU operations)
    bytes: np.ndarray  # int64 object size (object operations)
    cache: np.ndarray  # int32 cache id (object operations), else -1
    obj: np.ndarray  # int64 object or page slot (replay.object_slots); the new task (TASK_FORK, TASK_CLONE_VM); else -1
    pool: np.ndarray  # int8 pool the memory belongs to
    memcg: np.ndarray  # int16 the memcg charged: 0 the target, i its (i-1)th descendant (manifest target.descendants)
    row: np.ndarray  # int64 the event's row in the trace
    node: np.ndarray  # int16 the NUMA node an object allocation prefers (its kmalloc_node's, else its CPU's), else 0
    cache_order: np.ndarray  # per cache: preferred slab order
    cache_min_order: np.ndarray  # per cache: minimum order
    cache_objects: np.ndarray  # per cache: objects per slab of the preferred order
    cache_objects_min: np.ndarray  # per cache: objects per slab of the minimum order
    cache_names: list[str]
    task_pids: np.ndarray
    initial_pools: np.ndarray  # pages per pool when the trace starts
    cpus: int
    nodes: int  # NUMA nodes with CPUs (manifest kernel.cpu_nodes; 1 for traces from before it)
    t_first: int  # the whole trace's first and last event times: batches share one clock
    t_last: int

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def tasks(self) -> int:
        return len(self.task_pids)

    def n_buckets(self, resolution_ns: int) -> int:
        return (self.t_last - self.t_first) // resolution_ns + 1


class InputStream:
    """A trace's operations, segment by segment, so memory follows a segment, not the trace.

    A light first scan fixes what spans segments: task ids, cache ids and geometry, the
    time span. The compiled pass (replay.events_to_operations) then walks each segment's
    events in order, carrying from one segment to the next the live charged allocations and
    each task's reclaim and OOM state. The next segment is read while one is replayed.
    """

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        events = trace.events()
        facts = trace.facts  # measured when the trace was opened and checked
        self.t_first, self.t_last = facts.first_ns, facts.last_ns
        self.cpus = max(trace.manifest["kernel"]["cpus"] or 0, facts.max_cpu + 1)  # a CPU brought online during capture
        known = trace.manifest["kernel"].get("cpu_nodes") or [0]
        self.cpu_nodes = np.array(known + [0] * (self.cpus - len(known)), np.int16)  # a CPU no node lists: node 0
        self.nodes = int(self.cpu_nodes.max()) + 1
        pids, sizes = pl.collect_all([
            events.select(pl.col("pid").unique().sort()),
            _object_allocations(events).group_by("cache").agg(pl.col("bytes_alloc").max()).sort("cache"),
        ])
        self.task_pids = pids["pid"].to_numpy()
        target = trace.manifest["target"]
        # A workload's own memcgs below the target charge the target too (hierarchical page counters).
        self.target_memcgs = [target["memcg_id"], *(d["memcg_id"] for d in target.get("descendants") or [])]
        self.cache_names: list[str] = sizes["cache"].to_list()
        self.cache_ids = {name: i for i, name in enumerate(self.cache_names)}
        self.geometry = _cache_geometry(trace, dict(sizes.iter_rows()))
        self.initial_pools = _initial_pools(trace)
        self.cache_pool, self.cache_class = _cache_kinds(trace, self.cache_names)
        self.kmalloc_cache = np.array([self.cache_ids.get(f"kmalloc-cg-{size}", -1) for size in range(KMALLOC_MAX_CACHE_SIZE + 1)],
                                      np.int32)
        self.kernel_facts = _kernel_facts(trace)

    @property
    def segments(self) -> int:
        return len(self.trace.segment_paths)

    def batches(self) -> Iterator[ReplayInput]:
        return (batch for batch, _ in self.described_batches())

    def described_batches(self) -> Iterator[tuple[ReplayInput, pa.Table]]:
        """Each segment's operations, with what a result records of them and the engines do
        not read: every operation's call site and task name. Three stages overlap: one worker
        thread reads segment i+2, a second passes over segment i+1 (in order: the pass carries
        state from segment to segment) while the caller replays segment i."""
        carried = Carried(len(self.task_pids))
        paths = self.trace.segment_paths
        with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as passer:

            def prepared(path: Path) -> Future:
                columns = reader.submit(self._columns, path)
                return passer.submit(lambda: self._segment_operations(columns.result(), carried))

            upcoming = deque(prepared(path) for path in paths[:2])
            for index in range(len(paths)):
                batch = upcoming.popleft().result()
                if index + 2 < len(paths):
                    upcoming.append(prepared(paths[index + 2]))
                yield batch

    def _columns(self, path: Path) -> dict:
        """A segment's events as the pass takes them: codes and null-free numbers."""
        table = pq.read_table(path, columns=READ_COLUMNS, read_dictionary=["kind", "ctx", "cache", "comm"])
        kind = _codes(table.column("kind"), lambda name: KINDS.index(name) if name else -1, np.int8)
        flags = pl.from_arrow(table.select(["ctx", "accounted", "failed"])).select(IN_TASK, CHARGED.fill_null(False))
        in_task, charged = (flags.to_series(n).to_numpy() for n in range(2))
        nbytes = _numbers(table, "bytes_alloc", -1)
        with_change = pc.and_(pc.is_valid(table.column("item")), pc.is_valid(table.column("val"))).to_numpy(zero_copy_only=False)
        val, cpu = _numbers(table, "val", 0), _numbers(table, "cpu", 0)
        return dict(
            kind=kind, task=np.searchsorted(self.task_pids, _numbers(table, "pid", 0)).astype(np.int32), in_task=in_task,
            charged=charged, nbytes=nbytes,
            cache=np.where(kind == passes.KMALLOC, self.kmalloc_cache[np.clip(nbytes, 0, KMALLOC_MAX_CACHE_SIZE)],
                           _codes(table.column("cache"), lambda name: self.cache_ids.get(name, -1), np.int32)),
            obj=_numbers(table, "obj", -1), order=_numbers(table, "order", -1), gfp=_numbers(table, "gfp", 0),
            item=_numbers(table, "item", 0), val=val, stat_memcg=self._memcg_indexes(_numbers(table, "memcg_id", 0), with_change),
            named_task=self._named_tasks(kind, val), ts=_numbers(table, "ts_ns", 0), cpu=cpu,
            node=self._preferred_nodes(_numbers(table, "node", -1), cpu),
            about=table.select(["call_site", "comm"]),
        )

    def _segment_operations(self, events: dict, carried: "Carried") -> tuple[ReplayInput, pa.Table]:
        """One segment's operations, and each one's call site and task name."""
        n = len(events["kind"])
        # An exit adds its parent's join at most, a reclaim's end the throttle sleep after it, in this
        # segment or, carried (JOINABLE, HIGH_RECLAIM_END), in the next; an anon fault's charge the
        # return to user space after it.
        kind, pending = events["kind"], carried.tasks[:, [passes.JOINABLE, passes.HIGH_RECLAIM_END]]
        adding = (np.count_nonzero((kind == passes.TASK_EXIT_EVENT) | (kind == passes.RECLAIM_END)
                                   | (kind == passes.MEMCG_LRUVEC_STATE)) + np.count_nonzero(pending >= 0))
        room = n + int(adding)
        out = (np.empty(room, np.int64), np.empty(room, np.int8), np.empty(room, np.int64), np.empty(room, np.int64),
               np.empty(room, np.int64), np.empty(room, np.int32), np.empty(room, np.int64), np.empty(room, np.int8),
               np.empty(room, np.int16))
        slots = carried.slots
        slots.new_segment()
        slots.make_room(int(np.count_nonzero(events["charged"])))  # only charged allocations take a slot
        count = passes.segment_operations(
            *(events[name] for name in PASS_COLUMNS), *out, np.empty(room, np.int64), np.empty(room, np.int64), carried.tasks,
            slots.slot_of, slots.free, slots.counts, slots.live, self.cache_pool, self.cache_class, self.kernel_facts,
            carried.unmapped, carried.operations)
        src, op, gfp, pages, nbytes, cache, obj, pool, memcg = (column[:count] for column in out)
        batch = replace(
            self.empty(), ts=events["ts"][src], cpu=events["cpu"][src].astype(np.int32), task=events["task"][src],
            irq=~events["in_task"][src], op=op, gfp=gfp, pages=pages, bytes=nbytes, cache=cache, obj=obj, pool=pool,
            memcg=memcg, row=src + carried.rows, node=np.where(op == OBJ_ALLOC, events["node"][src], 0).astype(np.int16),
        )
        carried.rows += n
        carried.operations += count
        return batch, events["about"].take(src)

    def _preferred_nodes(self, asked: np.ndarray, cpu: np.ndarray) -> np.ndarray:
        """The node each allocation prefers: the one its kmalloc_node asked for, else (-1, or a
        node without CPUs, which the model does not hold) its CPU's (numa_mem_id())."""
        return np.where((asked >= 0) & (asked < self.nodes), asked, self.cpu_nodes[np.clip(cpu, 0, self.cpus - 1)])

    def _memcg_indexes(self, memcg_id: np.ndarray, with_change: np.ndarray) -> np.ndarray:
        """Each stat change's memcg as an index into target_memcgs; -1: another memcg's, or no change."""
        ids = np.asarray(self.target_memcgs, np.uint64)
        order = np.argsort(ids)
        at, known = _positions(ids[order], memcg_id)
        return np.where(known & with_change, order[at], -1).astype(np.int16)

    def _named_tasks(self, kind: np.ndarray, val: np.ndarray) -> np.ndarray:
        """The task an oom event (its victim) or a task_new (the new task) names in its val, a
        pid, as a task id; -1 elsewhere, and for a task with no event of its own in the trace."""
        named = np.full(len(kind), -1, np.int32)
        rows = np.flatnonzero((kind == passes.OOM) | (kind == passes.TASK_NEW))
        at, known = _positions(self.task_pids, val[rows])
        named[rows[known]] = at[known]
        return named

    def empty(self) -> ReplayInput:
        """No operations, but every fact that spans the trace: what an engine starts from."""
        return ReplayInput(
            **{name: np.zeros(0, dtype) for name, dtype in ARRAY_DTYPES.items()}, **self.geometry,
            cache_names=self.cache_names, task_pids=self.task_pids, initial_pools=self.initial_pools,
            cpus=self.cpus, nodes=self.nodes, t_first=self.t_first, t_last=self.t_last,
        )


class Carried:
    """What the pass carries from one segment to the next."""

    def __init__(self, tasks: int) -> None:
        self.tasks = np.zeros((tasks, passes.N_TASK_STATE), np.int64)
        self.tasks[:, [passes.BEGIN_ORDER, passes.DENTRIES, passes.LAST_LRU, passes.PARENT, passes.JOINABLE, passes.HIGH_RECLAIM_END]] = -1
        self.unmapped = np.zeros(1, np.int64)  # the target's anon pages unmapped and not yet freed
        self.slots = ObjectSlots()
        self.rows = 0  # events in the segments before
        self.operations = 0  # and their operations


PASS_COLUMNS = ("ts", "kind", "task", "in_task", "charged", "nbytes", "cache", "obj", "order", "gfp", "item", "val", "stat_memcg",
                "named_task")  # replay.events_to_operations.segment_operations's event arguments
READ_COLUMNS = ["ts_ns", "cpu", "pid", "comm", "ctx", "kind", "memcg_id", "call_site", "cache", "obj", "bytes_alloc",
                "order", "gfp", "accounted", "item", "val", "failed", "node"]


def _codes(column: pa.ChunkedArray, code_of: Callable[[str | None], int], dtype: type) -> np.ndarray:
    """A dictionary-encoded string column as codes: each distinct string (and null) coded once."""
    parts = [np.zeros(0, dtype)]
    for chunk in column.chunks:
        lookup = np.array([code_of(value) for value in chunk.dictionary.to_pylist()] + [code_of(None)], dtype)
        parts.append(lookup[pc.fill_null(chunk.indices, len(lookup) - 1).to_numpy()])
    return np.concatenate(parts)


def _positions(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each value sits in the sorted `keys`, and whether it is there at all."""
    if not len(keys):
        return np.zeros(len(values), np.int64), np.zeros(len(values), np.bool_)
    at = np.minimum(np.searchsorted(keys, values), len(keys) - 1)
    return at, keys[at] == values


def _numbers(table: pa.Table, column: str, null: int | bool) -> np.ndarray:
    return pc.fill_null(table.column(column), null).to_numpy()


def _kernel_facts(trace: Trace) -> np.ndarray:
    """The enum values and gfp masks the compiled pass needs (replay.events_to_operations FACTS)."""
    enums = trace.manifest.get("enums", {})
    node, memcg, gfp = enums.get("node_stat_item", {}), enums.get("memcg_stat_item", {}), trace.gfp_flags
    facts = np.full(passes.N_FACTS, -1, np.int64)
    facts[passes.NR_FILE_PAGES] = node.get("NR_FILE_PAGES", -1)
    facts[passes.NR_ANON_MAPPED] = node.get("NR_ANON_MAPPED", -1)
    facts[passes.NR_KERNEL_STACK_KB] = node.get("NR_KERNEL_STACK_KB", -1)
    facts[passes.NR_SHMEM] = node.get("NR_SHMEM", -1)
    facts[passes.MEMCG_SOCK] = memcg.get("MEMCG_SOCK", -1)
    facts[passes.GFP_KERNEL] = gfp.get("GFP_KERNEL", 0)
    facts[passes.GFP_HIGHUSER_MOVABLE] = gfp.get("GFP_HIGHUSER_MOVABLE", 0)
    facts[passes.GFP_ATOMIC] = gfp.get("GFP_ATOMIC", 0)
    facts[passes.NR_INACTIVE_ANON] = node.get("NR_INACTIVE_ANON", -1)
    facts[passes.NR_ACTIVE_ANON] = node.get("NR_ACTIVE_ANON", -1)
    facts[passes.NR_PAGETABLE] = node.get("NR_PAGETABLE", -1)
    return facts


# Inodes of file systems that keep their files' dentries and inodes off every LRU a shrinker
# walks: tmpfs pins a file's dentry while the file exists (shmem_mknod's extra dget); sockfs,
# pipefs and the other pseudo file systems (the generic inode_cache) free inode and dentry at the
# last close (generic_delete_inode, d_alloc_pseudo's always-delete dentries). Memcg reclaim can
# take none of it, though the caches are SLAB_RECLAIM_ACCOUNT. Such inodes, and the dentries made
# in the same system call as one (a socket, a pipe, a tmpfs file), go to the unreclaimable slab
# pool. A system call is a task's events since its last return to user space in the segment.
PINNING_INODE_CACHES = ("sock_inode_cache", "inode_cache", "shmem_inode_cache")


IN_TASK = (pl.col("ctx").fill_null("task") == "task").alias("in_task")  # no context column (eBPF): task
# What charges the memcg: a successful accounted allocation in task context (null: no).
CHARGED = (pl.col("accounted") & ~pl.col("failed") & IN_TASK).alias("charged")


def _object_allocations(events: pl.LazyFrame) -> pl.LazyFrame:
    """Charged slab allocations, kmallocs named after their kmalloc-cg cache (the caches and
    sizes the compiled pass will meet)."""
    return (
        events.filter(pl.col("kind").is_in(["kmalloc", "kmem_cache_alloc"]) & CHARGED
                      & (pl.col("bytes_alloc") <= KMALLOC_MAX_CACHE_SIZE))
        .select(
            pl.when(pl.col("kind") == "kmalloc").then(pl.format("kmalloc-cg-{}", pl.col("bytes_alloc")))
            .otherwise(pl.col("cache")).alias("cache"),
            "bytes_alloc",
        )
        .filter(pl.col("cache").is_not_null())
    )


def build(trace: Trace) -> ReplayInput:
    """The whole trace's operations at once (tests and small traces; replay streams)."""
    stream = InputStream(trace)
    return concat(list(stream.batches()), stream)


def concat(parts: list[ReplayInput], stream: "InputStream") -> ReplayInput:
    joined = {name: np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0) for name in ARRAYS}
    empty = stream.empty()
    return replace(empty, **joined)


def _cache_kinds(trace: Trace, cache_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per cache: its objects' pool (reclaimable slab for SLAB_RECLAIM_ACCOUNT caches) and
    what its objects pin (replay.events_to_operations ORDINARY, PINNING_INODE, DENTRY)."""
    slabs = trace.side_table("slabs")
    reclaimable = set() if slabs is None else set(slabs.filter(pl.col("reclaim_account")).collect()["name"].to_list())
    pool = [POOL_SLAB_RECLAIMABLE if name in reclaimable else POOL_SLAB_UNRECLAIMABLE for name in cache_names]
    kind = [passes.PINNING_INODE if name in PINNING_INODE_CACHES else passes.DENTRY if name == "dentry" else passes.ORDINARY
            for name in cache_names]
    return np.array(pool, np.int8), np.array(kind, np.int8)


def _cache_geometry(trace: Trace, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Slab order, minimum order and objects per slab of each cache (in `sizes` order); a
    cache the capture did not describe gets order 0 and its object size from the trace."""
    slabs = trace.side_table("slabs")
    known = {row["name"]: row for row in (slabs.collect().to_dicts() if slabs is not None else [])}
    order, min_order, objects, objects_min = [], [], [], []
    for name, object_size in sizes.items():
        row = known.get(name, {"size": object_size, "order": 0, "min_order": 0})
        size = max(int(row["size"]), 1)
        order.append(int(row["order"]))
        min_order.append(int(row["min_order"]))
        objects.append(max((PAGE_SIZE << int(row["order"])) // size, 1))
        objects_min.append(max((PAGE_SIZE << int(row["min_order"])) // size, 1))
    as_array = lambda values: np.array(values, dtype=np.int64)  # noqa: E731
    return dict(cache_order=as_array(order), cache_min_order=as_array(min_order),
                cache_objects=as_array(objects), cache_objects_min=as_array(objects_min))


def _initial_pools(trace: Trace) -> np.ndarray:
    """What the memcg held when the trace's events begin, from its last counter sample before
    them (the first, when none is: a capture samples before its workload starts; a flight
    recorder's trace begins where it dropped its older segments)."""
    pools = np.zeros(6, np.int64)
    samples = trace.side_table("memcg")
    if samples is None:
        return pools
    samples = samples.sort("ts_ns")
    before = samples.filter(pl.col("ts_ns") <= trace.facts.first_ns).tail(1).collect()
    first = (before if before.height else samples.head(1).collect()).to_dicts()
    if not first:
        return pools
    sample = first[0]
    pools[POOL_FILE] = (sample.get("file") or 0) // PAGE_SIZE
    pools[POOL_ANON] = (sample.get("anon") or 0) // PAGE_SIZE
    pools[POOL_OTHER] = max((sample.get("usage") or 0) // PAGE_SIZE - pools[POOL_FILE] - pools[POOL_ANON], 0)
    return pools
