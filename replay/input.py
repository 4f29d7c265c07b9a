"""From a trace to the replay's operations (replay.ops), as flat numpy arrays.

What becomes an operation:
- accounted, successful kmalloc and kmem_cache_alloc of at most 8 KiB: OBJ_ALLOC (larger
  kmallocs come from the page allocator and show up as accounted page allocations);
  kmallocs are placed in the kmalloc-cg-SIZE cache accounted kmallocs use;
- frees of those objects: OBJ_FREE, with the allocation's size, cache and pool;
- accounted (__GFP_ACCOUNT) page allocations and their frees: PAGE_ALLOC, PAGE_FREE;
- the target memcg's NR_FILE_PAGES and NR_ANON_MAPPED changes: LRU_CHARGE and
  LRU_UNCHARGE of file and anon pages, charged with GFP_HIGHUSER_MOVABLE. Shmem (an
  NR_FILE_PAGES change the task follows with the same NR_SHMEM change) is swap-backed:
  the kernel keeps it on the anon LRU, so it joins the anon pool, which only swap can
  reclaim (and an OOM kill frees: an approximation, shmem outlives its mappers). Those that fall inside a reclaim_begin/end of the
  task that reclaims are the capturing kernel's own reclaim, not the workload's doing:
  LRU_RECLAIMED (the model decides its own reclaim);
- the target memcg's NR_KERNEL_STACK_KB changes (in pages): kernel stacks, which
  memcg_charge_kernel_stack charges page by page with GFP_KERNEL (a vmalloc'ed stack's
  page allocations carry no __GFP_ACCOUNT, so they are not accounted page allocations):
  LRU_CHARGE and LRU_UNCHARGE of kmem pages;
- the anon pages an OOM victim frees after its oom:mark_victim: LRU_OOM_FREED (the
  kernel's kill freed them; the model decides its own kills);
- oom:mark_victim: OOM_CHARGE, the charge the invoking task could not make, of the order
  and gfp of that task's last reclaim_begin (the OOM killer runs in the charging task
  after reclaim failed). When the victim is that task, its charge fails and the trace has
  no other record of it;
- returns to user space: USER_RETURN.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import polars as pl

from replay.event_pass import new_tasks, segment_operations
from replay.object_slots import ObjectSlots
from replay.ops import PAGE_SIZE, POOL_ANON, POOL_FILE, POOL_OTHER, POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE
from traces.reader import Trace
from traces.schema import KINDS

KMALLOC_MAX_CACHE_SIZE = 2 * PAGE_SIZE
ARRAYS = ("ts", "cpu", "task", "irq", "op", "gfp", "pages", "bytes", "cache", "obj", "pool", "row")


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
    obj: np.ndarray  # int64 object or page slot (replay.object_slots), else -1
    pool: np.ndarray  # int8 pool the memory belongs to
    row: np.ndarray  # int64 the event's row in the trace
    cache_order: np.ndarray  # per cache: preferred slab order
    cache_min_order: np.ndarray  # per cache: minimum order
    cache_objects: np.ndarray  # per cache: objects per slab of the preferred order
    cache_objects_min: np.ndarray  # per cache: objects per slab of the minimum order
    cache_names: list[str]
    task_pids: np.ndarray
    initial_pools: np.ndarray  # pages per pool when the trace starts
    cpus: int
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
    time span; a compiled pass over each segment's events (replay.event_pass) carries the
    rest, per task and per live object, from one segment to the next.
    """

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        events = trace.events()
        facts = trace.facts  # measured when the trace was opened and checked
        self.t_first, self.t_last = facts.first_ns, facts.last_ns
        self.cpus = max(trace.manifest["kernel"]["cpus"] or 0, facts.max_cpu + 1)  # a CPU brought online during capture
        self.task_pids = np.sort(events.select(pl.col("pid").unique()).collect()["pid"].to_numpy())
        slab_pools = _slab_pools(trace).collect()
        sizes = (
            _object_allocations(events).group_by("cache").agg(pl.col("bytes_alloc").max()).collect().sort("cache")
        )
        self.cache_names: list[str] = sizes["cache"].to_list()
        self.cache_ids = {name: i for i, name in enumerate(self.cache_names)}
        self.cache_pools = np.array(  # the pool of each cache's slabs; unknown caches: unreclaimable
            [dict(slab_pools.iter_rows()).get(name, POOL_SLAB_UNRECLAIMABLE) for name in self.cache_names], np.int8)
        self.kmalloc_caches = np.array([self.cache_ids.get(f"kmalloc-cg-{size}", -1) for size in range(KMALLOC_MAX_CACHE_SIZE + 1)],
                                       np.int32)
        self.geometry = _cache_geometry(trace, dict(sizes.iter_rows()))
        self.initial_pools = _initial_pools(trace)
        enums = trace.manifest.get("enums", {}).get("node_stat_item", {})
        self.items = np.array([enums.get(name, -1) for name in ("NR_FILE_PAGES", "NR_ANON_MAPPED", "NR_KERNEL_STACK_KB", "NR_SHMEM")],
                              np.int64)
        self.lru_gfp = np.array([trace.gfp_flags.get("GFP_HIGHUSER_MOVABLE", 0), trace.gfp_flags.get("GFP_KERNEL", 0)], np.int64)

    @property
    def segments(self) -> int:
        return len(self.trace.segment_paths)

    def batches(self) -> Iterator[ReplayInput]:
        return (batch for batch, _ in self.described_batches())

    def described_batches(self) -> Iterator[tuple[ReplayInput, pl.DataFrame]]:
        """Each segment's operations, with what a result records of them and the engines do
        not read: every operation's call site and task name."""
        tasks, slots = new_tasks(len(self.task_pids)), ObjectSlots()
        offset = 0
        for path in self.trace.segment_paths:
            events = self._event_columns(path)
            column = lambda name: events[name].to_numpy()  # noqa: E731
            task = np.searchsorted(self.task_pids, column("pid"))
            slots.reserve(int(events["allocation"].sum()))
            event, op, gfp, pages, nbytes, cache, obj, pool = segment_operations(
                column("kind"), task, self._tasks_of(column("victim")), column("charged_ok"), column("lru"),
                column("item"), column("val"), column("obj"), column("order"), column("bytes_alloc"), column("gfp"),
                column("cache"), self.kmalloc_caches, self.cache_pools, self.items, self.lru_gfp, tasks,
                slots.slot_of, slots.free, slots.counts, slots.charge)
            batch = replace(
                self.empty(), ts=column("ts_ns")[event], cpu=column("cpu")[event].astype(np.int32),
                task=task[event].astype(np.int32), irq=column("irq")[event].astype(np.bool_), op=op, gfp=gfp, pages=pages, bytes=nbytes, cache=cache, obj=obj, pool=pool,
                row=event + offset,
            )
            offset += events.height
            yield batch, events.select("call_site", "comm")[event]

    def _event_columns(self, path) -> pl.DataFrame:
        """A segment's events as the pass reads them: kinds as codes, nulls as values no rule matches."""
        kind, target = pl.col("kind"), self.trace.manifest["target"]["memcg_id"]
        slab_object = kind.is_in(["kmalloc", "kmem_cache_alloc"])
        return pl.scan_parquet(path).select(
            kind.cast(pl.Enum(KINDS)).to_physical().alias("kind"),
            "ts_ns", "cpu", "pid", pl.col("comm").cast(pl.Categorical), "call_site",
            (pl.col("ctx") != "task").fill_null(False).cast(pl.UInt8).alias("irq"),  # flags as bytes: numpy reads them as they are
            kind.is_in(["kmalloc", "kmem_cache_alloc", "page_alloc"]).alias("allocation"),
            (pl.col("accounted") & ~pl.col("failed") & (~slab_object | (pl.col("bytes_alloc") <= KMALLOC_MAX_CACHE_SIZE)))
            .fill_null(False).cast(pl.UInt8).alias("charged_ok"),
            ((kind == "memcg_lruvec_state") & pl.col("item").is_in([int(i) for i in self.items if i >= 0])
             & (pl.col("memcg_id") == target) & (pl.col("val") != 0)).fill_null(False).cast(pl.UInt8).alias("lru"),
            pl.when(kind == "oom").then(pl.col("val")).fill_null(-1).alias("victim"),
            *(pl.col(name).fill_null(-1).cast(pl.Int64) for name in ("item", "obj", "order")),
            *(pl.col(name).fill_null(0).cast(pl.Int64) for name in ("val", "bytes_alloc", "gfp")),
            pl.col("cache").replace_strict(self.cache_ids, default=-1, return_dtype=pl.Int32).fill_null(-1),
        ).collect()

    def _tasks_of(self, pids: np.ndarray) -> np.ndarray:
        """Each pid's task id; -1 for none, and for a pid without events of its own."""
        tasks = np.full(len(pids), -1, np.int64)
        given = np.flatnonzero(pids >= 0)
        found = np.searchsorted(self.task_pids, pids[given])
        known = found < len(self.task_pids)
        known[known] = self.task_pids[found[known]] == pids[given][known]
        tasks[given[known]] = found[known]
        return tasks

    def empty(self) -> ReplayInput:
        """No operations, but every fact that spans the trace: what an engine starts from."""
        return ReplayInput(
            ts=np.zeros(0, np.int64), cpu=np.zeros(0, np.int32), task=np.zeros(0, np.int32), irq=np.zeros(0, np.bool_),
            op=np.zeros(0, np.int8), gfp=np.zeros(0, np.int64), pages=np.zeros(0, np.int64), bytes=np.zeros(0, np.int64),
            cache=np.zeros(0, np.int32), obj=np.zeros(0, np.int64), pool=np.zeros(0, np.int8), row=np.zeros(0, np.int64),
            **self.geometry, cache_names=self.cache_names, task_pids=self.task_pids, initial_pools=self.initial_pools,
            cpus=self.cpus, t_first=self.t_first, t_last=self.t_last,
        )


def _object_allocations(events: pl.LazyFrame) -> pl.LazyFrame:
    """Accounted, successful slab allocations, kmallocs named after their kmalloc-cg cache."""
    return (
        events.filter(pl.col("kind").is_in(["kmalloc", "kmem_cache_alloc"]) & pl.col("accounted") & ~pl.col("failed")
                      & (pl.col("bytes_alloc") <= KMALLOC_MAX_CACHE_SIZE))
        .with_columns(
            pl.when(pl.col("kind") == "kmalloc").then(pl.format("kmalloc-cg-{}", pl.col("bytes_alloc")))
            .otherwise(pl.col("cache")).alias("cache"),
        )
    )


def build(trace: Trace) -> ReplayInput:
    """The whole trace's operations at once (tests and small traces; replay streams)."""
    stream = InputStream(trace)
    return concat(list(stream.batches()), stream)


def concat(parts: list[ReplayInput], stream: "InputStream") -> ReplayInput:
    joined = {name: np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0) for name in ARRAYS}
    empty = stream.empty()
    return replace(empty, **joined)


def _slab_pools(trace: Trace) -> pl.LazyFrame:
    slabs = trace.side_table("slabs")
    if slabs is None:
        return pl.LazyFrame(schema={"cache": pl.String, "pool": pl.Int8})
    return slabs.select(
        pl.col("name").alias("cache"),
        pl.when(pl.col("reclaim_account")).then(pl.lit(POOL_SLAB_RECLAIMABLE)).otherwise(pl.lit(POOL_SLAB_UNRECLAIMABLE))
        .cast(pl.Int8).alias("pool"),
    )


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
    """What the memcg held when the capture started, from its first counter sample."""
    pools = np.zeros(6, np.int64)
    samples = trace.side_table("memcg")
    if samples is None:
        return pools
    first = samples.sort("ts_ns").head(1).collect().to_dicts()
    if not first:
        return pools
    sample = first[0]
    pools[POOL_FILE] = (sample.get("file") or 0) // PAGE_SIZE
    pools[POOL_ANON] = (sample.get("anon") or 0) // PAGE_SIZE
    pools[POOL_OTHER] = max((sample.get("usage") or 0) // PAGE_SIZE - pools[POOL_FILE] - pools[POOL_ANON], 0)
    return pools
