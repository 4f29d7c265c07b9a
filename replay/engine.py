"""The replay engines: the one model (replay.model) fed a trace's operations batch by batch,
compiled (`--engine fast`) or interpreted (`--engine reference`).

Both engines run the same source. numba's `njit` returns the plain Python function when
`numba.config.DISABLE_JIT` is true at decoration time, so `interpreted` executes
replay/model.py a second time, as a fresh module object, with DISABLE_JIT set only while it
executes: every function of that copy is plain Python, and they call each other through the
copy's own globals, so the whole model runs interpreted while replay.model stays compiled,
both in one process (the differential tests compare them side by side). The alternatives
fall short: NUMBA_DISABLE_JIT for the whole process leaves no compiled engine beside the
interpreted one; a dispatcher's py_func runs only that function interpreted, its callees
being the compiled dispatchers in replay.model's globals.

The interpreted run is the model as executable documentation: a debugger or a print steps
through the kernel rules line by line.
"""
from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np

from replay import model
from replay.input import ARRAY_DTYPES, ReplayInput
from replay.model import (
    CARRY, CLOCKS, CLOSED_LOOP, FAILCNT, FILE_LRU, FREE_SLAB, GFP_DIRECT_RECLAIM, GFP_FS, GFP_HIGH, GFP_KERNEL, GFP_NOFAIL, GFP_NORETRY,
    GFP_RETRY_MAYFAIL, SHRUNK_SLAB_COUNTS,
    HIGH, HIGH_MODE, HZ, LAST_TS, LRU_TAIL, MAX, MAX_MEMCGS, MAX_RECLAIM_RETRIES, NODE_LOCAL_NOWAIT, NODES, NOWAIT_HIGH_ORDER, N_KNOBS, N_PER_CPU, N_STATS,
    N_CURSOR, OBJ_STOCK_MEMCG, OBJECT_CHARGING, PAGE_NS_ABOVE_HIGH_CARRIES, POOLS, RCU_GRACE_NS, RECLAIMED_PAGES, RECLAIM_CALLS,
    RECLAIM_NS_PER_CALL, RECLAIM_NS_PER_PAGE, SLAB_COUNT, SLAB_LISTED, STALL, STAT_FIELDS, STOCK_BATCH, STOCK_MEMCGS, STOCK_PHASE, STOCK_SLOTS, SWAP, THP_GFP, USAGE, WAITING,
    WATERMARK_MARGIN, new_per_task,
)
from replay.ops import CLOCK_SHARING, LRU_CHARGE, POOL_FILE, RECLAIM_TRIGGERS, GfpBits, Limits
from replay.policy import HIGH_MODES, THP_CHARGE_GFPS, Policy
from replay.result import EngineResult
from traces.errors import UserError

BATCH_SIZE = 1 << 21  # operations per call of replay_batch: bounds the per-batch dtype conversions
# Each input array's dtype in replay_batch (ReplayInput's own, so that a trace's batches need
# no conversion and the loop is compiled once); the trace row is the result's, not the model's.
# The node an object prefers is folded into its cache's id, as the row of caches for that
# cache and node (cache_node).
INPUT_DTYPES = tuple((name, dtype) for name, dtype in ARRAY_DTYPES.items() if name not in ("row", "node"))
SLAB_ROWS = 1024  # the slab table's first size
MAX_SLABS = np.iinfo(np.int32).max  # object_slab holds slab ids as int32: half the memory per object


def interpreted(module: ModuleType) -> ModuleType:
    """A fresh copy of a module of numba functions, executed with the JIT off: plain Python."""
    spec = importlib.util.spec_from_file_location(f"{module.__name__}.interpreted", module.__file__)
    copy = importlib.util.module_from_spec(spec)
    # numba's config as replay.model imports it: after common.jit has set the cache directory
    jit_was_disabled = model.numba_config.DISABLE_JIT
    model.numba_config.DISABLE_JIT = True
    try:
        spec.loader.exec_module(copy)
    finally:
        model.numba_config.DISABLE_JIT = jit_was_disabled
    return copy


class Replay:
    """One policy's replay, fed a trace's operations batch by batch (replay.run.Engine); the
    subclass says which run of the model."""

    model: ModuleType

    def __init__(self, start: ReplayInput, policy: Policy, limits: Limits, gfp: GfpBits, resolution_ns: int,
                 batch_size: int = BATCH_SIZE) -> None:
        self.knobs = knobs_array(policy, limits, gfp, start.nodes)
        self.nodes = start.nodes
        self.resolution_ns, self.t_first, self.batch_size = resolution_ns, start.t_first, batch_size
        self.result = EngineResult.empty(0, start.tasks, start.n_buckets(resolution_ns), resolution_ns)
        self.memcg = np.zeros(FILE_LRU, np.int64)
        self.memcg[MAX], self.memcg[HIGH] = limits.max_pages, limits.high_pages
        self.memcg[POOLS:POOLS + 6] = start.initial_pools
        self.memcg[USAGE] = sum(int(p) for p in start.initial_pools)
        held = int(start.initial_pools[POOL_FILE])  # held before the trace: the oldest, folio sizes unknown
        self._room_for_folios(held)
        self.memcg[FILE_LRU:FILE_LRU + held] = 1
        self.memcg[LRU_TAIL] = held
        self.stats = np.zeros(N_STATS, np.int64)
        self.per_cpu = np.zeros((start.cpus, N_PER_CPU), np.int64)
        self.per_cpu[:, OBJ_STOCK_MEMCG] = -1  # no stock holds any memcg's charge yet
        self.per_cpu[:, STOCK_SLOTS::2] = -1
        self.per_task = new_per_task(start.tasks, self.knobs[CLOCKS])
        self.object_state = np.zeros(1, np.int8)  # by object slot, then -1's slot; grows as feed() needs
        self.object_task = np.full(1, -1, np.int32)  # likewise: the task that allocated it (the closed loop's)
        self.object_born = np.zeros(1, np.int64)  # likewise: its allocation's trace time (ditto)
        self.object_slab = np.full(1, -1, np.int32)  # likewise, when slabs are charged
        self.slabs = np.zeros((0, SLAB_LISTED + 1), np.int64)  # grows as feed() needs
        geometry = (start.cache_order, start.cache_min_order, start.cache_objects, start.cache_objects_min)
        # a row per cache and node (kmem_cache_node), each with its cache's geometry
        self.geometry = np.repeat(np.stack(geometry, axis=1).astype(np.int64).reshape(-1, 4), start.nodes, axis=0)
        self.caches = np.full((len(self.geometry), 2), -1, np.int64)
        self.cursor = np.zeros(N_CURSOR, np.int64)
        self.cursor[LAST_TS], self.cursor[FREE_SLAB] = start.t_first, -1
        self.bounds = {"cpu": (0, start.cpus), "task": (0, start.tasks), "obj": (-1, 0),
                       "cache": (-1, len(self.geometry) // start.nodes), "node": (0, start.nodes), "memcg": (0, MAX_MEMCGS)}

    def feed(self, batch: ReplayInput) -> np.ndarray:
        """Replay the next operations (batches of one trace, in order); their outcomes."""
        if len(batch):
            self._room_for_objects(int(batch.obj.max()) + 1)
        self._check_ids(batch)
        outcome = np.zeros(len(batch), np.uint8)
        for start in range(0, len(batch), self.batch_size):
            stop = min(start + self.batch_size, len(batch))
            part = {name: np.ascontiguousarray(getattr(batch, name)[start:stop], dtype) for name, dtype in INPUT_DTYPES}
            part["cache"] = cache_node(part["cache"], batch.node[start:stop], self.nodes)
            self._room_for_folios(int(np.count_nonzero((part["op"] == LRU_CHARGE) & (part["pool"] == POOL_FILE))))
            queued = np.empty((stop - start, 2), np.int64)  # the closed loop's queues of waiting operations
            # its heap: each task's first waiting operation, and frees that wait on no clock
            waiting = np.empty((len(self.per_task) + stop - start, 2), np.int64)
            done = self._replay(part, outcome[start:stop], queued, waiting, 0)
            while done < stop - start or self.cursor[WAITING]:  # it stopped for a slab row or a time bucket
                if self.cursor[FREE_SLAB] < 0 and self.cursor[SLAB_COUNT] == len(self.slabs):
                    self._grow_slabs()
                else:
                    self._grow_buckets()
                done = self._replay(part, outcome[start:stop], queued, waiting, done)
        return outcome

    def _replay(self, part: dict[str, np.ndarray], outcome: np.ndarray, queued: np.ndarray, waiting: np.ndarray,
                first: int) -> int:
        return self.model.replay_batch(
            *part.values(), outcome, queued, first, self.t_first, self.resolution_ns, self.memcg, self.stats, self.knobs,
            self.per_cpu, self.per_task, self.object_state, self.object_slab, self.object_task,
            self.object_born, self.slabs, self.caches, self.geometry, self.cursor, waiting, self.result.bucket_last, self.result.bucket_peak)

    def finish(self) -> EngineResult:
        """Counters, stall and time series of everything fed (outcomes came with each batch)."""
        result, stats = self.result, self.stats
        for name, value in zip(STAT_FIELDS, stats):
            setattr(result, name, int(value))
        result.page_ns_above_high += int(stats[PAGE_NS_ABOVE_HIGH_CARRIES]) * CARRY
        result.failcnt = int(self.memcg[FAILCNT])
        result.stall_ns[:] = self.per_task[:, STALL]
        result.delay_ns[:] = [self.model.task_delay(self.knobs, self.per_task, task) for task in range(len(self.per_task))]
        result.end_ns = int(self.cursor[LAST_TS]) - self.t_first
        result.reclaim_calls[:] = stats[RECLAIM_CALLS:RECLAIM_CALLS + len(RECLAIM_TRIGGERS)]
        result.reclaimed_pages[:] = stats[RECLAIMED_PAGES:RECLAIMED_PAGES + len(RECLAIM_TRIGGERS)]
        return result

    def _check_ids(self, batch: ReplayInput) -> None:
        """The compiled loop indexes its tables without bounds checks: an id out of range
        would corrupt memory instead of raising, so it is refused here."""
        for name, (low, high) in self.bounds.items():
            ids = getattr(batch, name)
            if len(ids) and (ids.min() < low or ids.max() >= high):
                raise ValueError(f"operation {name} ids span {ids.min()}..{ids.max()}; the trace has {low}..{high - 1}")

    def _room_for_folios(self, more: int) -> None:
        """Make the memcg array's file LRU hold `more` folios: compacted first, then grown
        (doubling) while that frees less than half of it."""
        if FILE_LRU + int(self.memcg[LRU_TAIL]) + more <= len(self.memcg):
            return
        self.model.compact_file_lru(self.memcg)
        needed = FILE_LRU + int(self.memcg[LRU_TAIL]) + more
        if 2 * needed > len(self.memcg):
            grown = np.zeros(max(needed, 2 * len(self.memcg)), np.int64)
            grown[:len(self.memcg)] = self.memcg
            self.memcg = grown

    def _room_for_objects(self, objects: int) -> None:
        """Grow the per-object arrays (doubling) to hold slots below `objects`; -1's slot stays last."""
        if objects > len(self.object_state) - 1:
            size = max(objects, 2 * (len(self.object_state) - 1)) + 1
            self.object_state = _grown(self.object_state, size, 0)
            self.object_task = _grown(self.object_task, size, -1)
            self.object_born = _grown(self.object_born, size, 0)
            if not self.knobs[OBJECT_CHARGING]:
                self.object_slab = _grown(self.object_slab, size, -1)
            self.bounds["obj"] = (-1, size - 1)

    def _grow_buckets(self) -> None:
        """Double the usage time series: closed-loop replay runs past the trace's end."""
        result, size = self.result, 2 * len(self.result.bucket_last)
        result.bucket_last, result.bucket_peak = (_grown_at_end(a, size) for a in (result.bucket_last, result.bucket_peak))

    def _grow_slabs(self) -> None:
        """Double the slab table."""
        if len(self.slabs) == MAX_SLABS:
            raise UserError(f"more than {MAX_SLABS} slabs would not fit the replay's int32 slab ids")
        grown = np.zeros((min(max(SLAB_ROWS, 2 * len(self.slabs)), MAX_SLABS), self.slabs.shape[1]), np.int64)
        grown[:len(self.slabs)] = self.slabs
        self.slabs = grown


def _grown(array: np.ndarray, size: int, fill: object) -> np.ndarray:
    """`array` in `size` elements: its own but the last first, `fill` after them, its last last."""
    grown = np.full(size, fill, array.dtype)
    grown[:len(array) - 1], grown[-1] = array[:-1], array[-1]
    return grown


def _grown_at_end(array: np.ndarray, size: int) -> np.ndarray:
    grown = np.full(size, -1, array.dtype)
    grown[:len(array)] = array
    return grown


class Compiled(Replay):
    """The model compiled by numba: `--engine fast`."""

    model = model


class Interpreted(Replay):
    """The same model run as plain Python: `--engine reference`."""

    model = interpreted(model)


def cache_node(cache: np.ndarray, node: np.ndarray, nodes: int) -> np.ndarray:
    """Each object operation's row of caches: its cache's on the node it prefers; else -1."""
    return np.where(cache >= 0, cache * nodes + node, -1).astype(cache.dtype)


def knobs_array(policy: Policy, limits: Limits, gfp: GfpBits, nodes: int = 1) -> np.ndarray:
    """The policy, limits and gfp bits, and the trace's NUMA node count, as the model reads them."""
    policy.validate()
    knobs = np.zeros(N_KNOBS, np.int64)
    knobs[OBJECT_CHARGING] = policy.charge_unit == "object"
    knobs[NOWAIT_HIGH_ORDER] = policy.slab_growth_gfp == "nowait-high-order"
    knobs[STOCK_BATCH] = policy.stock_batch
    knobs[HIGH_MODE] = HIGH_MODES.index(policy.high_mode)
    knobs[MAX_RECLAIM_RETRIES] = policy.max_reclaim_retries
    knobs[WATERMARK_MARGIN] = policy.watermark_margin_pages
    knobs[SWAP] = limits.swap
    knobs[RECLAIM_NS_PER_CALL], knobs[RECLAIM_NS_PER_PAGE] = limits.reclaim_ns_per_call, limits.reclaim_ns_per_page
    knobs[RCU_GRACE_NS] = limits.rcu_grace_ns
    knobs[CLOSED_LOOP] = limits.closed_loop
    knobs[CLOCKS] = CLOCK_SHARING.index(limits.clock)
    knobs[GFP_DIRECT_RECLAIM], knobs[GFP_NORETRY] = gfp.direct_reclaim, gfp.noretry
    knobs[GFP_RETRY_MAYFAIL], knobs[GFP_NOFAIL], knobs[GFP_HIGH] = gfp.retry_mayfail, gfp.nofail, gfp.high
    knobs[GFP_FS], knobs[GFP_KERNEL] = gfp.fs, gfp.kernel
    knobs[SHRUNK_SLAB_COUNTS] = policy.shrunk_slab_counts
    knobs[STOCK_MEMCGS] = policy.stock_memcgs
    knobs[THP_GFP] = THP_CHARGE_GFPS.index(policy.thp_charge_gfp)
    knobs[NODE_LOCAL_NOWAIT] = policy.node_local_charge == "nowait"
    knobs[NODES] = nodes
    knobs[STOCK_PHASE] = limits.stock_phase % policy.stock_batch
    knobs[HZ] = limits.hz
    return knobs
