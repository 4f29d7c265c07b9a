"""From a trace to the replay's operations (replay.ops), as flat numpy arrays.

What becomes an operation:
- accounted, successful kmalloc and kmem_cache_alloc of at most 8 KiB: OBJ_ALLOC (larger
  kmallocs come from the page allocator and show up as accounted page allocations);
  kmallocs are placed in the kmalloc-cg-SIZE cache accounted kmallocs use;
- frees of those objects: OBJ_FREE, with the allocation's size, cache and pool;
- accounted (__GFP_ACCOUNT) page allocations and their frees: PAGE_ALLOC, PAGE_FREE;
- the target memcg's NR_FILE_PAGES and NR_ANON_MAPPED changes: LRU_CHARGE and
  LRU_UNCHARGE of file and anon pages, charged with GFP_HIGHUSER_MOVABLE (shmem
  counts as file: an approximation);
- returns to user space: USER_RETURN.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from replay.ops import (
    LRU_CHARGE, LRU_UNCHARGE, OBJ_ALLOC, OBJ_FREE, PAGE_ALLOC, PAGE_FREE, PAGE_SIZE, POOL_ANON, POOL_FILE,
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
    obj: np.ndarray  # int64 object or page pseudonym, else -1
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

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def tasks(self) -> int:
        return len(self.task_pids)

    def n_buckets(self, resolution_ns: int) -> int:
        return int((self.ts[-1] - self.ts[0]) // resolution_ns) + 1 if len(self) else 1


def operations(trace: Trace) -> pl.DataFrame:
    """One row per operation, time-ordered: the table behind ReplayInput."""
    events = trace.events().with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    table = trace.gfp_flags
    slabs = _slab_pools(trace)
    allocs = (
        events.filter(pl.col("kind").is_in(["kmalloc", "kmem_cache_alloc"]) & pl.col("accounted") & ~pl.col("failed")
                      & (pl.col("bytes_alloc") <= KMALLOC_MAX_CACHE_SIZE))
        .with_columns(
            pl.when(pl.col("kind") == "kmalloc").then(pl.format("kmalloc-cg-{}", pl.col("bytes_alloc")))
            .otherwise(pl.col("cache")).alias("cache"),
            pl.lit(OBJ_ALLOC, pl.Int8).alias("op"), pl.lit(0, pl.Int64).alias("pages"),
        )
        .join(slabs, on="cache", how="left")
        .with_columns(pl.col("pool").fill_null(POOL_SLAB_UNRECLAIMABLE))
    )
    pages = events.filter((pl.col("kind") == "page_alloc") & pl.col("accounted") & ~pl.col("failed")).with_columns(
        pl.lit(PAGE_ALLOC, pl.Int8).alias("op"), pl.lit(2, pl.Int64).pow(pl.col("order").cast(pl.Int64)).alias("pages"),
        pl.lit(POOL_KMEM_PAGES, pl.Int8).alias("pool"),
    )
    charged = pl.concat([allocs.select("obj", "op", "cache", "bytes_alloc", "pages", "pool"),
                         pages.select("obj", "op", pl.lit(None, pl.String).alias("cache"), "bytes_alloc", "pages", "pool")])
    frees = (
        events.filter(pl.col("kind").is_in(["kfree", "kmem_cache_free", "page_free"]) & pl.col("obj").is_not_null())
        .drop("cache", "bytes_alloc")
        .join(charged, on="obj", how="inner")
        .with_columns((pl.col("op") + 1).alias("op"))  # OBJ_FREE, PAGE_FREE follow their allocation codes
    )
    enums = trace.manifest.get("enums", {}).get("node_stat_item", {})
    lru_items = {enums[name]: pool for name, pool in (("NR_FILE_PAGES", POOL_FILE), ("NR_ANON_MAPPED", POOL_ANON)) if name in enums}
    lru = (
        events.filter((pl.col("kind") == "memcg_lruvec_state") & pl.col("item").is_in(list(lru_items))
                      & (pl.col("memcg_id") == trace.manifest["target"]["memcg_id"]) & (pl.col("val") != 0))
        .with_columns(
            pl.when(pl.col("val") > 0).then(pl.lit(LRU_CHARGE)).otherwise(pl.lit(LRU_UNCHARGE)).cast(pl.Int8).alias("op"),
            pl.col("val").abs().alias("pages"),
            pl.col("item").replace_strict(lru_items, return_dtype=pl.Int8).alias("pool"),
            pl.lit(table.get("GFP_HIGHUSER_MOVABLE", 0), pl.UInt32).alias("gfp"),
        )
    )
    returns = events.filter(pl.col("kind") == "user_return").with_columns(
        pl.lit(USER_RETURN, pl.Int8).alias("op"), pl.lit(0, pl.Int64).alias("pages"), pl.lit(POOL_OTHER, pl.Int8).alias("pool"),
    )
    columns = ["row", "ts_ns", "cpu", "pid", "ctx", "op", "gfp", "pages", "bytes_alloc", "cache", "obj", "pool"]
    return (
        pl.concat([frame.select(columns) for frame in (allocs, pages, frees, lru, returns)], how="vertical_relaxed")
        .sort("row")
        .collect()
    )


def _slab_pools(trace: Trace) -> pl.LazyFrame:
    slabs = trace.side_table("slabs")
    if slabs is None:
        return pl.LazyFrame(schema={"cache": pl.String, "pool": pl.Int8})
    return slabs.select(
        pl.col("name").alias("cache"),
        pl.when(pl.col("reclaim_account")).then(pl.lit(POOL_SLAB_RECLAIMABLE)).otherwise(pl.lit(POOL_SLAB_UNRECLAIMABLE))
        .cast(pl.Int8).alias("pool"),
    )


def build(trace: Trace) -> ReplayInput:
    ops = operations(trace)
    cache_names = sorted(ops["cache"].drop_nulls().unique().to_list())
    geometry = _cache_geometry(trace, cache_names, ops)
    cache_ids = {name: i for i, name in enumerate(cache_names)}
    pids = np.unique(ops["pid"].to_numpy()) if ops.height else np.zeros(0, np.int32)
    return ReplayInput(
        ts=ops["ts_ns"].to_numpy().astype(np.int64),
        cpu=ops["cpu"].to_numpy().astype(np.int32),
        task=np.searchsorted(pids, ops["pid"].to_numpy()).astype(np.int32),
        irq=(ops["ctx"] != "task").fill_null(False).to_numpy(),
        op=ops["op"].to_numpy().astype(np.int8),
        gfp=ops["gfp"].fill_null(0).to_numpy().astype(np.int64),
        pages=ops["pages"].fill_null(0).to_numpy().astype(np.int64),
        bytes=ops["bytes_alloc"].fill_null(0).to_numpy().astype(np.int64),
        cache=ops["cache"].replace_strict(cache_ids, default=-1, return_dtype=pl.Int32).to_numpy(),
        obj=ops["obj"].fill_null(-1).to_numpy().astype(np.int64),
        pool=ops["pool"].to_numpy().astype(np.int8),
        row=ops["row"].to_numpy(),
        **geometry,
        cache_names=cache_names,
        task_pids=pids,
        initial_pools=_initial_pools(trace),
        cpus=int(trace.manifest.get("kernel", {}).get("cpus") or (int(ops["cpu"].max()) + 1 if ops.height else 1)),
    )


def _cache_geometry(trace: Trace, names: list[str], ops: pl.DataFrame) -> dict[str, np.ndarray]:
    """Slab order, minimum order and objects per slab of each cache; a cache the capture
    did not describe gets order 0 and its object size from the trace."""
    slabs = trace.side_table("slabs")
    known = {row["name"]: row for row in (slabs.collect().to_dicts() if slabs is not None else [])}
    sizes = dict(ops.filter(pl.col("cache").is_not_null()).group_by("cache").agg(pl.col("bytes_alloc").max()).iter_rows())
    order, min_order, objects, objects_min = [], [], [], []
    for name in names:
        row = known.get(name, {"size": sizes[name], "order": 0, "min_order": 0})
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
