"""From a trace to the replay's operations (replay.ops), as flat numpy arrays.

What becomes an operation:
- accounted, successful kmalloc and kmem_cache_alloc of at most 8 KiB made in task context:
  OBJ_ALLOC (larger kmallocs come from the page allocator and show up as accounted page
  allocations); kmallocs are placed in the kmalloc-cg-SIZE cache accounted kmallocs use;
- frees of those objects: OBJ_FREE, with the allocation's size, cache and pool;
- accounted (__GFP_ACCOUNT) page allocations made in task context and their frees: PAGE_ALLOC,
  PAGE_FREE. An interrupt's accounted allocation is charged to no memcg, whichever task it
  interrupted (current_obj_cgroup in 6.8+, memcg_kmem_bypass before: no memcg outside
  in_task() unless one was made active), and so is its free: no operation;
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
- the target memcg's MEMCG_SOCK changes (cgroup v2 only): socket buffers, LRU_CHARGE and
  LRU_UNCHARGE of kmem pages, GFP_KERNEL in task context and GFP_ATOMIC in softirq;
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

from replay.object_slots import ObjectSlots
from replay.ops import (
    LRU_CHARGE, LRU_OOM_FREED, LRU_RECLAIMED, LRU_UNCHARGE, OBJ_ALLOC, OOM_CHARGE, PAGE_ALLOC, PAGE_SIZE, POOL_ANON, POOL_FILE,
    POOL_KMEM_PAGES, POOL_OTHER, POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE, USER_RETURN,
)
from traces.reader import Trace

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
    time span; objects allocated in one segment and freed in a later one are carried over
    in a table of live charged allocations.
    """

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        events = trace.events()
        facts = trace.facts  # measured when the trace was opened and checked
        self.t_first, self.t_last = facts.first_ns, facts.last_ns
        self.cpus = max(trace.manifest["kernel"]["cpus"] or 0, facts.max_cpu + 1)  # a CPU brought online during capture
        self.task_pids = np.sort(events.select(pl.col("pid").unique()).collect()["pid"].to_numpy())
        self.slab_pools = _slab_pools(trace).collect().lazy()  # read once, joined in every segment
        sizes = (
            _object_allocations(events, self.slab_pools).group_by("cache").agg(pl.col("bytes_alloc").max())
            .collect().sort("cache")
        )
        self.cache_names: list[str] = sizes["cache"].to_list()
        self.cache_ids = {name: i for i, name in enumerate(self.cache_names)}
        self.geometry = _cache_geometry(trace, dict(sizes.iter_rows()))
        self.initial_pools = _initial_pools(trace)
        self.reclaim_marks = (  # every reclaim_begin and reclaim_end: windows may span segments
            events.with_row_index("row").filter(pl.col("kind").is_in(["reclaim_begin", "reclaim_end"]))
            .select(pl.col("row").cast(pl.Int64), "pid", (pl.col("kind") == "reclaim_begin").alias("in_reclaim"))
            .collect().lazy()
        )
        self.victims = (  # each OOM victim from its oom:mark_victim on
            events.with_row_index("row").filter(pl.col("kind") == "oom")
            .select(pl.col("row").cast(pl.Int64), pl.col("val").cast(pl.Int32).alias("pid"), pl.lit(True).alias("killed"))
            .collect().lazy()
        )
        self.reclaim_begins = (  # the charge each OOM kill was for: the invoking task's last reclaim_begin
            events.with_row_index("row").filter(pl.col("kind") == "reclaim_begin")
            .select(pl.col("row").cast(pl.Int64), "pid", "gfp", "order").collect().lazy()
        )

    @property
    def segments(self) -> int:
        return len(self.trace.segment_paths)

    def batches(self) -> Iterator[ReplayInput]:
        return (batch for batch, _ in self.described_batches())

    def described_batches(self) -> Iterator[tuple[ReplayInput, pl.DataFrame]]:
        """Each segment's operations, with what a result records of them and the engines do
        not read: every operation's call site and task name."""
        live = pl.DataFrame(schema=CHARGED_SCHEMA)
        slots = ObjectSlots()
        offset = 0
        for path in self.trace.segment_paths:
            events = pl.scan_parquet(path).with_row_index("row", offset=offset).with_columns(
                pl.col("row").cast(pl.Int64), pl.col("comm").cast(pl.Categorical),  # task names repeat: sorted as codes
            )
            ops, live = self._segment_operations(events, live)
            offset += pl.scan_parquet(path).select(pl.len()).collect().item()
            batch = self._arrays(ops)
            batch.obj = slots.assign(batch.op, batch.obj)
            yield batch, ops.select("call_site", "comm")

    def _segment_operations(self, events: pl.LazyFrame, live: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        trace = self.trace
        allocs = _pinned_by_their_file(_object_allocations(events, self.slab_pools), events).with_columns(
            pl.lit(OBJ_ALLOC, pl.Int8).alias("op"), pl.lit(0, pl.Int64).alias("pages"),
        )
        pages = events.filter((pl.col("kind") == "page_alloc") & charged_to_memcg()).with_columns(
            pl.lit(PAGE_ALLOC, pl.Int8).alias("op"), pl.lit(2, pl.Int64).pow(pl.col("order").cast(pl.Int64)).alias("pages"),
            pl.lit(POOL_KMEM_PAGES, pl.Int8).alias("pool"), pl.lit(None, pl.String).alias("cache"),
        )
        charged = pl.concat([live.lazy(), *(f.select(CHARGED_SCHEMA.names()).cast(CHARGED_SCHEMA) for f in (allocs, pages))])
        frees = (
            events.filter(pl.col("kind").is_in(["kfree", "kmem_cache_free", "page_free"]) & pl.col("obj").is_not_null())
            .drop("cache", "bytes_alloc")
            .join(charged, on="obj", how="inner")
            .with_columns((pl.col("op") + 1).alias("op"))  # OBJ_FREE, PAGE_FREE follow their allocation codes
        )
        enums = trace.manifest.get("enums", {}).get("node_stat_item", {})
        lru_items = {enums[name]: pool for name, pool in (("NR_FILE_PAGES", POOL_FILE), ("NR_ANON_MAPPED", POOL_ANON)) if name in enums}
        stack, anon = enums.get("NR_KERNEL_STACK_KB", -1), enums.get("NR_ANON_MAPPED", -1)
        shmem = enums.get("NR_SHMEM", -1)
        lru = (
            events.filter((pl.col("kind") == "memcg_lruvec_state") & pl.col("item").is_in([*lru_items, stack, shmem])
                          & (pl.col("memcg_id") == trace.manifest["target"]["memcg_id"]) & (pl.col("val") != 0))
            .sort("row")
            .with_columns(((pl.col("item").shift(-1).over("pid") == shmem) & (pl.col("val").shift(-1).over("pid") == pl.col("val")))
                          .fill_null(False).alias("swap_backed"))
            .filter(pl.col("item") != shmem)
            .join_asof(self.reclaim_marks, on="row", by="pid", strategy="backward", check_sortedness=False)  # the task's last mark before
            .join_asof(self.victims, on="row", by="pid", strategy="backward", check_sortedness=False)
            .with_columns(
                pl.when(pl.col("val") > 0).then(pl.lit(LRU_CHARGE))
                .when(pl.col("in_reclaim").fill_null(False) & (pl.col("item") != stack)).then(pl.lit(LRU_RECLAIMED))
                .when(pl.col("killed").fill_null(False) & (pl.col("item") == anon)).then(pl.lit(LRU_OOM_FREED))
                .otherwise(pl.lit(LRU_UNCHARGE)).cast(pl.Int8).alias("op"),
                pl.col("val").abs().alias("pages"),
                pl.when(pl.col("swap_backed")).then(pl.lit(POOL_ANON, pl.Int8))
                .otherwise(pl.col("item").replace_strict({**lru_items, stack: POOL_KMEM_PAGES}, default=POOL_FILE, return_dtype=pl.Int8))
                .alias("pool"),
                pl.when(pl.col("item") == stack).then(pl.lit(trace.gfp_flags.get("GFP_KERNEL", 0), pl.UInt32))
                .otherwise(pl.lit(trace.gfp_flags.get("GFP_HIGHUSER_MOVABLE", 0), pl.UInt32)).alias("gfp"),
            )
        )
        sockets = _socket_charges(trace, events)
        ooms = (
            events.filter(pl.col("kind") == "oom").drop("gfp", "order")
            .join_asof(self.reclaim_begins, on="row", by="pid", strategy="backward", check_sortedness=False)
            .filter(pl.col("order").is_not_null())
            .with_columns(pl.lit(OOM_CHARGE, pl.Int8).alias("op"), pl.lit(2, pl.Int64).pow(pl.col("order").cast(pl.Int64)).alias("pages"),
                          pl.lit(POOL_ANON, pl.Int8).alias("pool"))
        )
        returns = events.filter(pl.col("kind") == "user_return").with_columns(
            pl.lit(USER_RETURN, pl.Int8).alias("op"), pl.lit(0, pl.Int64).alias("pages"), pl.lit(POOL_OTHER, pl.Int8).alias("pool"),
        )
        columns = OPERATION_SCHEMA.names()
        ops = pl.concat([f.select(columns) for f in (allocs, pages, frees, lru, sockets, ooms, returns)],
                        how="vertical_relaxed").sort("row").collect()
        still_live = charged.join(frees.select("obj"), on="obj", how="anti").collect()
        return ops, still_live

    def _arrays(self, ops: pl.DataFrame) -> ReplayInput:
        return ReplayInput(
            ts=ops["ts_ns"].to_numpy().astype(np.int64),
            cpu=ops["cpu"].to_numpy().astype(np.int32),
            task=np.searchsorted(self.task_pids, ops["pid"].to_numpy()).astype(np.int32),
            irq=(ops["ctx"] != "task").fill_null(False).to_numpy(),
            op=ops["op"].to_numpy().astype(np.int8),
            gfp=ops["gfp"].fill_null(0).to_numpy().astype(np.int64),
            pages=ops["pages"].fill_null(0).to_numpy().astype(np.int64),
            bytes=ops["bytes_alloc"].fill_null(0).to_numpy().astype(np.int64),
            cache=ops["cache"].replace_strict(self.cache_ids, default=-1, return_dtype=pl.Int32).to_numpy(),
            obj=ops["obj"].fill_null(-1).to_numpy().astype(np.int64),
            pool=ops["pool"].to_numpy().astype(np.int8),
            row=ops["row"].to_numpy(),
            **self.geometry,
            cache_names=self.cache_names,
            task_pids=self.task_pids,
            initial_pools=self.initial_pools,
            cpus=self.cpus,
            t_first=self.t_first,
            t_last=self.t_last,
        )

    def empty(self) -> ReplayInput:
        """No operations, but every fact that spans the trace: what an engine starts from."""
        return self._arrays(pl.DataFrame(schema=OPERATION_SCHEMA))


OPERATION_SCHEMA = pl.Schema({
    "row": pl.Int64, "ts_ns": pl.Int64, "cpu": pl.UInt16, "pid": pl.Int32, "ctx": pl.String, "op": pl.Int8, "gfp": pl.UInt32,
    "pages": pl.Int64, "bytes_alloc": pl.Int64, "cache": pl.String, "obj": pl.Int64, "pool": pl.Int8,
    "call_site": pl.Int32, "comm": pl.Categorical(),
})
CHARGED_SCHEMA = pl.Schema({"obj": pl.Int64, "op": pl.Int8, "cache": pl.String, "bytes_alloc": pl.Int64, "pages": pl.Int64, "pool": pl.Int8})


def _socket_charges(trace: Trace, events: pl.LazyFrame) -> pl.LazyFrame:
    """The target memcg's MEMCG_SOCK changes: socket buffers, which cgroup v2 charges to the
    socket's memcg (mem_cgroup_charge_skmem; v1 keeps them in a counter of their own, and the
    stat never moves). The charge has gfp_memcg_charge()'s gfp: GFP_KERNEL in task context,
    GFP_ATOMIC in softirq (since 6.1, 4b1327be9fe5's fix), whichever task the softirq
    interrupted; the uncharge goes through the per-CPU stock like other kernel pages."""
    sock = trace.manifest.get("enums", {}).get("memcg_stat_item", {}).get("MEMCG_SOCK", -1)
    return (
        events.filter((pl.col("kind") == "memcg_state") & (pl.col("item") == sock)
                      & (pl.col("memcg_id") == trace.manifest["target"]["memcg_id"]) & (pl.col("val") != 0))
        .with_columns(
            pl.when(pl.col("val") > 0).then(pl.lit(LRU_CHARGE)).otherwise(pl.lit(LRU_UNCHARGE)).cast(pl.Int8).alias("op"),
            pl.col("val").abs().alias("pages"),
            pl.lit(POOL_KMEM_PAGES, pl.Int8).alias("pool"),
            pl.when(in_task()).then(pl.lit(trace.gfp_flags.get("GFP_KERNEL", 0), pl.UInt32))
            .otherwise(pl.lit(trace.gfp_flags.get("GFP_ATOMIC", 0), pl.UInt32)).alias("gfp"),
        )
    )


def in_task() -> pl.Expr:
    """An event in task context (a trace without the context column: all of them)."""
    return pl.col("ctx").fill_null("task") == "task"


def charged_to_memcg() -> pl.Expr:
    """A successful accounted allocation of the task itself: one the kernel charges."""
    return pl.col("accounted") & ~pl.col("failed") & in_task()


# Inodes of file systems that keep their files' dentries and inodes off every LRU a shrinker
# walks: tmpfs pins a file's dentry while the file exists (shmem_mknod's extra dget); sockfs,
# pipefs and the other pseudo file systems (the generic inode_cache) free inode and dentry at the
# last close (generic_delete_inode, d_alloc_pseudo's always-delete dentries). Memcg reclaim can
# take none of it, though the caches are SLAB_RECLAIM_ACCOUNT.
PINNING_INODE_CACHES = ("sock_inode_cache", "inode_cache", "shmem_inode_cache")


def _pinned_by_their_file(allocs: pl.LazyFrame, events: pl.LazyFrame) -> pl.LazyFrame:
    """Such inodes, and the dentries made in the same system call as one (a socket, a pipe, a
    tmpfs file), go to the unreclaimable slab pool. A system call is a task's events since its
    last return to user space in the segment (one cut by a segment boundary pairs nothing).
    Only dentries are paired: the other allocations keep their order and pay no join."""
    returns = events.filter(pl.col("kind") == "user_return").select(pl.col("row").alias("syscall"), "pid").sort("syscall")

    def in_syscall(frame: pl.LazyFrame) -> pl.LazyFrame:  # join_asof needs both sides sorted; joins do not keep order
        return (frame.sort("row").join_asof(returns, left_on="row", right_on="syscall", by="pid", strategy="backward",
                                            check_sortedness=False)
                .with_columns(pl.col("syscall").fill_null(-1)))  # before the task's first return in the segment

    inodes = allocs.filter(pl.col("cache").is_in(PINNING_INODE_CACHES))
    pinning = in_syscall(inodes).select("pid", "syscall").unique().with_columns(pl.lit(True).alias("pinned"))
    dentries = (
        in_syscall(allocs.filter(pl.col("cache") == "dentry")).join(pinning, on=["pid", "syscall"], how="left")
        .with_columns(pl.when(pl.col("pinned").fill_null(False)).then(pl.lit(POOL_SLAB_UNRECLAIMABLE, pl.Int8))
                      .otherwise(pl.col("pool")).alias("pool"))
        .drop("syscall", "pinned")
    )
    unreclaimable_inodes = inodes.with_columns(pl.lit(POOL_SLAB_UNRECLAIMABLE, pl.Int8).alias("pool"))
    others = allocs.filter(~pl.col("cache").is_in([*PINNING_INODE_CACHES, "dentry"]).fill_null(False))
    return pl.concat([others, unreclaimable_inodes, dentries], how="vertical_relaxed")


def _object_allocations(events: pl.LazyFrame, slab_pools: pl.LazyFrame) -> pl.LazyFrame:
    """Accounted, successful slab allocations, kmallocs named after their kmalloc-cg cache."""
    return (
        events.filter(pl.col("kind").is_in(["kmalloc", "kmem_cache_alloc"]) & charged_to_memcg()
                      & (pl.col("bytes_alloc") <= KMALLOC_MAX_CACHE_SIZE))
        .with_columns(
            pl.when(pl.col("kind") == "kmalloc").then(pl.format("kmalloc-cg-{}", pl.col("bytes_alloc")))
            .otherwise(pl.col("cache")).alias("cache"),
        )
        .join(slab_pools, on="cache", how="left")
        .with_columns(pl.col("pool").fill_null(POOL_SLAB_UNRECLAIMABLE))
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
