"""The model of memcg charging: one function per kernel function (mm/memcontrol.c,
mm/page_counter.c, mm/slub.c, rules from shared/KERNEL-MODEL.md), applied to a trace's
operations batch by batch (replay_batch).

It is written once, in Python that numba compiles, and runs twice (replay.engine): compiled
for speed (`--engine fast`), and the same source interpreted (`--engine reference`), where a
debugger or a print steps through it line by line. The differential tests compare the two.

State lives in int64 arrays with named slots, so that the compiled code reads it at
native speed; each function takes the arrays it needs:

- memcg: the page counter (usage, max, high, failcnt), what the usage is made of (pages per
  pool), the debt (pages reclaimed that the trace has yet to free; below 0: pages the
  capturing kernel reclaimed and the model still holds), anon pages unmapped and not yet
  freed, slab pages that reclaim shrank and RCU has yet to free, the time of the operation
  being replayed, each objcg's pre-charged bytes no stock holds, and the file LRU: a queue of
  folio sizes in its tail that grows between batches, with freed folios per order;
- stats: the result's counters; knobs: the policy, limits and gfp bits as ints (string knobs
  become small codes; -ENOMEM is the outcome FAILED, not an exception);
- per_cpu: page stocks per memcg cached (memcg_stock_pcp) and object stock bytes of one objcg
  (obj_stock_pcp);
- per_task: current->memcg_nr_pages_over_high, stall; per mm, anon pages held, OOM debt, the
  tasks using it and the pages it maps copy-on-write ("tasks and their mm" below);
- objects by slot (replay.object_slots: reused once freed; -1, no object, gets the last
  one): whether the replay holds an object or pages there or failed their charge, which
  task allocated them (the closed loop's), and (slab charging) which slab holds them;
- slabs: rows of a table. Each cache has a current slab and a partial list per NUMA node (a
  caches row per kmem_cache_node; an object operation's cache_node names the row of its cache
  and the node it prefers). A partial list is a stack threaded through the slab rows (a head
  per row of caches, a next per slab); it may hold discarded slabs, which take_partial skips. A
  discarded slab's row is reused (a free list threaded the same way) once no list holds it.

The approximations:

- One page counter: the target's. Its ancestors' limits are folded into its own (their usage
  in the model is the workload's, so the tightest limit is the one that acts). Memcgs the
  workload made below it (replay.input) keep per-CPU stocks and objcg bytes of their own, but
  their own limits (none in the zoo) are not modelled: their charges count against the target's.
- Closed loop (the default; "the closed loop" below): reclaim and throttling are stall time of
  the task, which delays its later operations. Open loop (CLOSED_LOOP off) keeps the trace's
  timeline: the stall is only added up. Async reclaim (high_work, watermarks) is instantaneous
  and stalls nobody. A task that waited for a task it made to exit (TASK_JOIN) goes on no
  earlier than that one ended, as far behind as it (wait_for_child). Other waits on another
  task (a pipe, a lock) are not in the trace: there each task goes on at its own pace.
- Reclaim takes file pages, then reclaimable slab (for a charge with __GFP_FS), then anon
  pages if swap is on, at `reclaim_ns_per_page` each. Which slab objects a shrinker could
  free (an unused dentry) and which not (an open file's) the trace does not say: the model
  may take slab the kernel cannot (replay.input keeps out what tmpfs and pseudo file systems
  pin). Shrunk slab leaves the counter one RCU grace period later (`rcu_grace_ns`: dentries
  and inodes are freed by RCU callbacks), so the charge whose reclaim shrank it, and its
  retries, find no room in it. File pages go as whole folios, oldest first (the LRU's tail), so
  one large folio can satisfy a call; a freed folio leaves the LRU as the oldest one of its
  order (the trace does not say which). What reclaim takes is owed: the trace later frees some
  of those pages or objects itself, and such frees first pay off the debt instead of
  uncharging twice. The capturing kernel's own reclaim (LRU pages gone inside its
  reclaim_begin/end) is not replayed: it cancels the model's debt, and where the model has not
  reclaimed as much it leaves a credit. No refaults: a trace records a page-cache charge once
  and no reads, so file pages reclaim took stay gone, where the kernel charges them again when
  the workload reads them (the result's reclaimed_file_pages says how much page cache went).
- An OOM kill picks the process whose mm maps the most anon pages (oom_badness: only anon
  rss; its own and those it maps copy-on-write from its parent; file rss, which the trace
  cannot show, is left out) and frees the pages its mm maps alone ("tasks and their mm"
  below; pages unmapped and not yet freed are no task's: they stay charged until the trace
  frees them); with no such process, the charge fails. A trace without task_new events
  (before 2026-12-04) makes every task a process of its own. A victim that is
  the charging task itself keeps its memory until its charge has failed (it exits then);
  another victim's memory goes at once. The trace's later frees of a victim's anon pages pay
  off what the kill took. The kernel's own kills are not replayed: an oom event replays the
  charge the kernel could not make (OOM_CHARGE), and the anon pages the kernel's victim frees
  after it (LRU_OOM_FREED) only pay off what the model's own kill of that task took; a task
  the model has not killed keeps its own, until the model kills it (pages beyond its own, COW
  originals another task charged, are uncharged). A charge the kernel failed without a kill
  (FAILED_CHARGE: a THP fault's, a dying task's) is replayed the same way. Either drains the
  charging CPU's stock first (the kernel's charge did), and holds as much of the model's room
  as the other CPUs' page stocks could hold unseen (drain_all_stock only schedules their
  drain): up to a batch per CPU, through the charge, or until its OOM kill where the trace
  shows the kernel's retry after the kill going through (the drain work ran meanwhile). A
  task the model's OOM killer chose stays dying until the trace's end, whatever the trace
  shows it doing: its charges at the limit kill nobody and fail (task_is_dying).
- A huge page (an anon LRU charge of more than one page: a THP fault's) is charged with its
  fault's gfp as the policy has it (thp_charge_gfp), as is a THP fault's charge the kernel
  failed; when the model's fails, its small pages are charged one by one at once, as if the
  task faulted the whole range in straight away.
- Slab charging keeps SLUB's slab geometry (the orders /sys/kernel/slab gives) for every policy,
  4.2 SLAB's node-local attempt (NODE_LOCAL_NOWAIT) included, and a single current slab per
  cache and node rather than per CPU. An object prefers the node its kmalloc_node named, else its
  CPU's; where the page allocator would have taken another node's pages (the node being full)
  is not modelled: only the fallbacks a failed charge causes.
- Page stocks are per CPU and memcg: a CPU caches stock_memcgs memcgs (1 before 6.16,
  NR_MEMCG_STOCK = 7 since), and a memcg that finds its own stock empty charges the counter
  while another's stock holds pages. Memcgs outside the target's subtree are not in the trace:
  that they evict the workload's stocks on kernels before 6.16 is not modelled.
  drain_all_stock empties the page stocks only; the object stocks keep their bytes.
- The charge path is 6.x's for every policy: a __GFP_HIGH charge at max is forced (4.2 failed
  it) and an OOM kill happens in the charge (4.2 deferred it to the end of the page fault and
  failed the charge meanwhile).
- Numbers are int64 (compiled and interpreted alike): the throttle penalty, which squares the
  overage, saturates instead of growing past the clamp it is compared with, and
  page_ns_above_high carries into a second word. Results are exact while the usage above
  high, shifted left by 20 or times the gap between two operations in ns, fits in int64 (4 GiB
  above high stays exact across gaps of up to 2 hours).
"""
from __future__ import annotations

import math

import numpy as np

from common.jit import njit  # before numba: it sets numba's cache directory
from numba import config as numba_config  # isort: skip
from numba.extending import intrinsic  # isort: skip
from replay.ops import (
    ANON_FREED, ANON_UNMAPPED, CLOCK_SHARING, FAILED_CHARGE, LRU_CHARGE, LRU_OOM_FREED, LRU_RECLAIMED, LRU_UNCHARGE, MEMCG_CHARGE_BATCH_6X, MEMCG_DELAY_PRECISION_SHIFT,
    MEMCG_DELAY_SCALING_SHIFT, NR_MEMCG_STOCK, OBJ_ALLOC, OBJ_EXT_BYTES, OBJ_FREE, OOM_CHARGE, OUTCOME,
    PAGE_ALLOC, PAGE_ALLOC_COSTLY_ORDER, PAGE_FREE, PAGE_SHIFT, PAGE_SIZE, POOL_ANON, POOL_FILE, POOL_KMEM_PAGES,
    POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE, RECLAIM_TIME, RECLAIM_TRIGGERS, RETRY_FOUND_ROOM, SWAP_CLUSTER_MAX, TASK_CLONE_VM, TASK_EXEC, TASK_EXIT,
    TASK_FORK, TASK_JOIN, TRIGGER, USER_RETURN,
)
from replay.policy import HIGH_MODES, THP_CHARGE_GFPS

# Outcome codes and reclaim triggers, as plain ints the compiled code can use.
STOCK, NO_CHARGE, CHARGED, RECLAIMED = OUTCOME["stock"], OUTCOME["no_charge"], OUTCOME["charged"], OUTCOME["reclaimed"]
FALLBACK, OTHER_NODE = OUTCOME["fallback"], OUTCOME["other_node"]
FORCED, OOM, FAILED = OUTCOME["forced"], OUTCOME["oom"], OUTCOME["failed"]
CHARGED_ABOVE_HIGH, RECLAIMED_FOR_HIGH = OUTCOME["above_high"], OUTCOME["reclaimed_for_high"]
BY_MAX, BY_HIGH_SYNC, BY_USER_RETURN, BY_ASYNC = (TRIGGER[t] for t in ("max", "high_sync", "user_return", "async"))
SYNC, RETURN_TO_USER, MAINLINE, FAIL_NOWAIT, WATERMARK = (HIGH_MODES.index(mode) for mode in (
    "sync", "return-to-user", "mainline", "fail-nowait", "watermark"))
THP_NO_RECLAIM, THP_RECLAIM = THP_CHARGE_GFPS.index("no-reclaim"), THP_CHARGE_GFPS.index("reclaim")
OWN_CLOCKS, SHARED_BY_PROCESS, SHARED_BY_WORKLOAD = (CLOCK_SHARING.index(c) for c in ("task", "process", "workload"))

# knobs: the policy, limits and gfp bits, and the trace's NUMA nodes (NODES), one int each.
(OBJECT_CHARGING, NOWAIT_HIGH_ORDER, STOCK_BATCH, HIGH_MODE, MAX_RECLAIM_RETRIES, WATERMARK_MARGIN, SWAP,
 RECLAIM_NS_PER_CALL, RECLAIM_NS_PER_PAGE, RCU_GRACE_NS, CLOSED_LOOP, CLOCKS, SHRUNK_SLAB_COUNTS, STOCK_MEMCGS, THP_GFP,
 NODE_LOCAL_NOWAIT, NODES, GFP_DIRECT_RECLAIM, GFP_NORETRY, GFP_RETRY_MAYFAIL, GFP_NOFAIL, GFP_HIGH, GFP_FS, GFP_KERNEL,
 STOCK_PHASE, HZ) = range(26)
N_KNOBS = HZ + 1

# memcg: the page counter and what its usage is made of.
USAGE, MAX, HIGH, FAILCNT = range(4)
POOLS = 4  # memcg[POOLS + pool]: pages per pool
DEBT = POOLS + 6  # memcg[DEBT + pool]: pages reclaimed that the trace has yet to free
LRU_HEAD, LRU_TAIL = DEBT + 6, DEBT + 7  # memcg[FILE_LRU + LRU_HEAD .. FILE_LRU + LRU_TAIL): file folios, oldest first
UNMAPPED = DEBT + 8  # anon pages unmapped and still charged (not yet freed)
# Shrunk slab pages waiting for RCU: those of the grace period under way (it ends at RCU_GP_END), and those
# shrunk meanwhile, which wait for the next one. NOW: the time in the operation being replayed (its start,
# plus what its task has stalled in it so far); TRACE_NOW: its time in the trace.
RCU_WAITING, RCU_NEXT, RCU_GP_END, NOW, TRACE_NOW = DEBT + 9, DEBT + 10, DEBT + 11, DEBT + 12, DEBT + 13
UNDRAINED = DEBT + 14  # pages held for the other CPUs' stocks until the OOM killer has run (their drain work with it)
FREED_FOLIOS = DEBT + 15  # memcg[FREED_FOLIOS + order]: freed folios still to leave the file LRU
# memcg[OBJCG_BYTES + i]: bytes pre-charged to memcg i's objcg that no object stock holds (nr_charged_bytes)
OBJCG_BYTES = FREED_FOLIOS + 64
MAX_MEMCGS = 256  # the target and the memcgs below it, by index (replay.input)
FILE_LRU = OBJCG_BYTES + MAX_MEMCGS

# stats: the result's counters, in the order of STAT_FIELDS; then reclaim calls and pages per trigger.
STAT_FIELDS = ("charges", "stock_hits", "forced", "max_events", "high_events", "oom_kills", "high_order_attempts",
               "fallbacks", "other_node", "ns_above_high", "page_ns_above_high", "throttle_ns", "peak_pages",
               "reclaimed_file_pages")
(CHARGES, STOCK_HITS, FORCED_CHARGES, MAX_EVENTS, HIGH_EVENTS, OOM_KILLS, HIGH_ORDER_ATTEMPTS, FALLBACKS, OTHER_NODE_OBJECTS,
 NS_ABOVE_HIGH, PAGE_NS_ABOVE_HIGH, THROTTLE_NS, PEAK_PAGES, RECLAIMED_FILE_PAGES) = range(len(STAT_FIELDS))
PAGE_NS_ABOVE_HIGH_CARRIES = len(STAT_FIELDS)  # page_ns_above_high = carries * CARRY + stats[PAGE_NS_ABOVE_HIGH]
RECLAIM_CALLS = PAGE_NS_ABOVE_HIGH_CARRIES + 1  # stats[RECLAIM_CALLS + trigger]
RECLAIMED_PAGES = RECLAIM_CALLS + len(RECLAIM_TRIGGERS)
N_STATS = RECLAIMED_PAGES + len(RECLAIM_TRIGGERS)
CARRY = 1 << 62

# per_cpu columns: the object stock (pre-charged bytes, and the memcg of the objcg they are for; -1: none),
# the page stock's next slot to evict, whether the CPU has had an operation (its stock took the STOCK_PHASE
# then), then per slot (STOCK_MEMCGS of them, up to NR_MEMCG_STOCK) the memcg it caches (-1: free) and its
# pre-charged pages.
OBJ_STOCK, OBJ_STOCK_MEMCG, STOCK_EVICT, CPU_SEEN = range(4)
STOCK_SLOTS = 4  # per_cpu[cpu, cached_column(slot)]: the slot's memcg; per_cpu[cpu, pages_column(slot)]: its pages
N_PER_CPU = STOCK_SLOTS + 2 * NR_MEMCG_STOCK
# per_task columns: current->memcg_nr_pages_over_high, stall ns, anon pages held (what killing the task frees),
# anon pages an OOM kill took that the trace has yet to free, anon pages the kernel's OOM victim freed that the
# model holds until it kills it, whether the model's OOM killer chose it (it is dying: tsk_is_oom_victim).
# Then the task's mm (the row holding it), and on an mm's row: the tasks using it (0: gone), the anon pages it
# maps copy-on-write from the mm it was forked from, and that mm's row (-1: none). ANON, OOM_DEBT, OOM_KEPT and
# DYING are kept on the mm's row. Then the closed loop's (below): the capturing kernel's reclaim and throttle
# time of the task, the delay it started with, its waiting operations (first and last; -1: none), whether they wait for
# another task's (HELD: its fork, or the exit of a task it waited for), the task whose clock it runs on, the
# stall of all tasks on its clock, the interrupts' frees waiting for the delay at their set-off (first and
# last; -1: none), and the trace time of the last operation that changed the clock's delay and the delay
# before it (these ten on the clock's row); then whether the task's exit is still to be replayed or was
# (EXIT_QUEUED, EXITED) and the clock held until it is (-1: none).
OVER_HIGH, STALL, ANON, OOM_DEBT, OOM_KEPT, DYING, MM, USERS, INHERITED, COW_FROM = range(10)
KERNEL_STALL, STARTED_LATE, QUEUE_HEAD, QUEUE_TAIL, HELD, RUNS_ON, CLOCK_STALL = range(10, 17)
DEFERRED_HEAD, DEFERRED_TAIL, STALLED_AT, DELAY_BEFORE_STALL, EXIT_STATE, JOINER = range(17, 23)
N_TASK_COLUMNS = 23
RUNNING, EXIT_QUEUED, EXITED = range(3)  # EXIT_STATE values
# slabs columns; SLAB_NEXT_PARTIAL threads a partial list (SLAB_LISTED: the slab is on one) or the free rows
SLAB_CACHE, SLAB_CAPACITY, SLAB_PAGES, SLAB_POOL, SLAB_USED, SLAB_NEXT_PARTIAL, SLAB_LISTED = range(7)
CURRENT_SLAB, PARTIAL_HEAD = range(2)  # caches columns; -1: none
ORDER, MIN_ORDER, OBJECTS, OBJECTS_MIN = range(4)  # geometry columns
# cursor: what the loop carries from one batch to the next; FREE_SLAB: the first reusable slab row, -1: none;
# WAITING: the entries of the closed loop's heap (`waiting`, columns DUE and OP).
LAST_TS, SLAB_COUNT, BUCKET, BUCKET_START, BUCKET_END, FREE_SLAB, WAITING = range(7)
N_CURSOR = WAITING + 1
DUE, OP = range(2)  # waiting columns
NEXT, CLOCK = range(2)  # queued columns
END_OF_TIME = np.iinfo(np.int64).max
# object_state, by object slot: what the replay holds there
IDLE, HOLDS_OBJECT, HOLDS_PAGES, FAILED_ALLOCATION = range(4)

SATURATED = 1 << 62  # a throttle penalty past any clamp
DEF_PRIORITY = 12  # reclaim's first, lightest scan: the LRU's size >> 12
# overage**2 * HZ fits in int64 up to here for any HZ up to MAX_HZ (the manifest's bound)
MAX_HZ = 10_000
MAX_EXACT_OVERAGE = math.isqrt(((1 << 63) - 1) // MAX_HZ)
LVL_CLK_SHIFT, LVL_SIZE = 3, 64  # the timer wheel's: each level 8 times coarser, 64 buckets a level


# -- page_counter.c --------------------------------------------------------------------------

@njit
def page_counter_try_charge(memcg, nr_pages):
    """Charge the counter unless it would pass max (then failcnt counts the failure). The
    ancestors' limits are folded into the target's, so one counter stands for the chain."""
    if memcg[USAGE] + nr_pages > memcg[MAX]:
        memcg[FAILCNT] += 1
        return False
    memcg[USAGE] += nr_pages
    return True


@njit
def page_counter_uncharge(memcg, nr_pages):
    memcg[USAGE] -= nr_pages


@njit
def margin(memcg):
    """mem_cgroup_margin: pages the counter can take before max."""
    return max(memcg[MAX] - memcg[USAGE], 0)


# -- per-CPU page stock ----------------------------------------------------------------------

@njit
def cached_column(slot):
    """The per_cpu column of stock->cached[slot]: the memcg the slot caches."""
    return STOCK_SLOTS + 2 * slot


@njit
def pages_column(slot):
    """The per_cpu column of stock->nr_pages[slot]."""
    return STOCK_SLOTS + 2 * slot + 1


@njit
def stock_slot(knobs, per_cpu, cpu, memcg_ix):
    """The slot of the CPU's page stock that caches memcg memcg_ix (-1: a free slot); -1 if none."""
    for slot in range(knobs[STOCK_MEMCGS]):
        if per_cpu[cpu, cached_column(slot)] == memcg_ix:
            return slot
    return -1


@njit
def consume_stock(knobs, per_cpu, nr_pages, cpu, memcg_ix):
    """Serve a charge of up to a batch from the CPU's stock of its memcg: no page counter, no
    limit check."""
    if nr_pages > knobs[STOCK_BATCH]:
        return False
    slot = stock_slot(knobs, per_cpu, cpu, memcg_ix)
    if slot < 0 or per_cpu[cpu, pages_column(slot)] < nr_pages:
        return False
    per_cpu[cpu, pages_column(slot)] -= nr_pages
    return True


@njit
def refill_stock(memcg, knobs, per_cpu, nr_pages, cpu, memcg_ix):
    """Pre-charged pages go to the CPU's stock of their memcg. A CPU caches STOCK_MEMCGS
    memcgs (1 before 6.16, NR_MEMCG_STOCK since): one not cached takes a free slot, else the
    next slot round-robin (a random one before a 2026 stable fix), drained first. A stock
    grown past a batch is drained; since 6.16 a refill of more than a batch is uncharged at once."""
    if knobs[STOCK_MEMCGS] > 1 and nr_pages > knobs[STOCK_BATCH]:
        page_counter_uncharge(memcg, nr_pages)
        return
    slot = stock_slot(knobs, per_cpu, cpu, memcg_ix)
    if slot < 0:
        slot = stock_slot(knobs, per_cpu, cpu, -1)
        if slot < 0:
            slot = per_cpu[cpu, STOCK_EVICT]
            per_cpu[cpu, STOCK_EVICT] = (slot + 1) % knobs[STOCK_MEMCGS]
            drain_stock(memcg, per_cpu, cpu, slot)
        per_cpu[cpu, cached_column(slot)] = memcg_ix
    per_cpu[cpu, pages_column(slot)] += nr_pages
    if per_cpu[cpu, pages_column(slot)] > knobs[STOCK_BATCH]:
        drain_stock(memcg, per_cpu, cpu, slot)


@njit
def stocked_before_the_trace(memcg, knobs, per_cpu, cpu, memcg_ix):
    """At the CPU's first operation: its page stock holds STOCK_PHASE pages of the operation's
    memcg, charged before the trace began (Limits.stock_phase; 0: a new memcg's empty stock)."""
    per_cpu[cpu, CPU_SEEN] = 1
    if knobs[STOCK_PHASE]:
        per_cpu[cpu, cached_column(0)], per_cpu[cpu, pages_column(0)] = memcg_ix, knobs[STOCK_PHASE]
        memcg[USAGE] += knobs[STOCK_PHASE]


@njit
def drain_stock(memcg, per_cpu, cpu, slot):
    """Uncharge what a slot of the CPU's stock holds; the slot is free again."""
    page_counter_uncharge(memcg, per_cpu[cpu, pages_column(slot)])
    per_cpu[cpu, cached_column(slot)] = -1
    per_cpu[cpu, pages_column(slot)] = 0


@njit
def drain_local_stock(memcg, per_cpu, cpu):
    """Drain every slot of one CPU's page stock (drain_local_memcg_stock)."""
    for slot in range(NR_MEMCG_STOCK):
        drain_stock(memcg, per_cpu, cpu, slot)


@njit
def drain_all_stock(memcg, per_cpu):
    """Drain every CPU's page stock at once, every memcg's: all are the target's or below it
    (the kernel drains the other CPUs asynchronously: charge_the_kernel_could_not_make
    accounts for that)."""
    for cpu in range(per_cpu.shape[0]):
        drain_local_stock(memcg, per_cpu, cpu)


@njit
def drain_work_ran(memcg):
    """The drain work drain_all_stock scheduled on the other CPUs has run: the pages held for
    their stocks (charge_the_kernel_could_not_make) are uncharged."""
    page_counter_uncharge(memcg, memcg[UNDRAINED])
    memcg[UNDRAINED] = 0


@njit
def stocked_pages(per_cpu):
    """Pages the page stocks hold, every CPU's and memcg's."""
    pages = 0
    for cpu in range(per_cpu.shape[0]):
        for slot in range(NR_MEMCG_STOCK):
            pages += per_cpu[cpu, pages_column(slot)]
    return pages


# -- try_charge_memcg (KERNEL-MODEL §2) and memory.high (§3) -----------------------------------

@njit
def charge(memcg, stats, knobs, per_cpu, per_task, nr_pages, gfp, cpu, task, irq, pool, memcg_ix):
    """A page charge of a pool to memcg memcg_ix: try_charge_memcg, then the pages count in
    their pool; the outcome code."""
    outcome = try_charge_memcg(memcg, stats, knobs, per_cpu, per_task, gfp, nr_pages, cpu, task, irq, memcg_ix)
    if outcome != FAILED:
        memcg[POOLS + pool] += nr_pages
    return outcome


@njit
def try_charge_memcg(memcg, stats, knobs, per_cpu, per_task, gfp, nr_pages, cpu, task, irq, memcg_ix):
    """Charge nr_pages to memcg memcg_ix (KERNEL-MODEL §2): its stock, then the counter with
    a batch, then reclaim, drain, retries and the OOM killer, in the kernel's order; the
    outcome code, FAILED for -ENOMEM. Every memcg's pages count in the one page counter: the
    target's, where the limits act (a memcg below it has none of its own)."""
    batch = max(knobs[STOCK_BATCH], nr_pages)
    retries = knobs[MAX_RECLAIM_RETRIES]
    drained = reclaimed_once = passed_oom = oom_killed = False
    while True:
        if consume_stock(knobs, per_cpu, nr_pages, cpu, memcg_ix):
            stats[STOCK_HITS] += 1
            return STOCK
        if knobs[HIGH_MODE] == FAIL_NOWAIT and not gfp & knobs[GFP_DIRECT_RECLAIM] and memcg[USAGE] > memcg[HIGH]:
            return nomem(memcg, stats, knobs, gfp, nr_pages, reclaimed_once)
        if page_counter_try_charge(memcg, batch):
            break
        if batch > nr_pages:
            batch = nr_pages
            continue
        if not gfp & knobs[GFP_DIRECT_RECLAIM]:
            return nomem(memcg, stats, knobs, gfp, nr_pages, reclaimed_once)
        stats[MAX_EVENTS] += 1
        reclaimed = try_to_free_mem_cgroup_pages(memcg, stats, knobs, per_task, task, nr_pages, gfp, BY_MAX, False)
        reclaimed_once = True
        if margin(memcg) >= nr_pages:
            continue
        if not drained:
            drain_all_stock(memcg, per_cpu)
            drained = True
            continue
        if gfp & knobs[GFP_NORETRY]:
            return nomem(memcg, stats, knobs, gfp, nr_pages, reclaimed_once)
        if reclaimed != 0 and nr_pages <= 1 << PAGE_ALLOC_COSTLY_ORDER:
            continue
        if retries > 0:
            retries -= 1
            continue
        if gfp & knobs[GFP_RETRY_MAYFAIL]:
            return nomem(memcg, stats, knobs, gfp, nr_pages, reclaimed_once)
        dying = per_task[mm_of(per_task, task), DYING]
        if passed_oom and dying:  # task_is_dying(): the charge fails, the victim exits
            exit_mmap(memcg, per_task, mm_of(per_task, task))
            return nomem(memcg, stats, knobs, gfp, nr_pages, reclaimed_once)
        if mem_cgroup_oom(memcg, stats, per_task, nr_pages, task) < 0:
            return nomem(memcg, stats, knobs, gfp, nr_pages, reclaimed_once)
        if not dying:  # a kill: dump_header takes milliseconds, in which the other CPUs ran their drain work
            drain_work_ran(memcg)
            oom_killed = True
        passed_oom = True
        retries = knobs[MAX_RECLAIM_RETRIES]
    stats[CHARGES] += 1
    if batch > nr_pages:
        refill_stock(memcg, knobs, per_cpu, batch - nr_pages, cpu, memcg_ix)
    high_reclaims, throttled = stats[RECLAIM_CALLS + BY_HIGH_SYNC], stats[THROTTLE_NS]
    handle_high_after_charge(memcg, stats, knobs, per_task, gfp, nr_pages, batch, task, irq)
    if oom_killed:
        return OOM
    if reclaimed_once:
        return RECLAIMED
    # What memory.high did to this charge: the divergence the 2015 thread argued about.
    if stats[RECLAIM_CALLS + BY_HIGH_SYNC] != high_reclaims or stats[THROTTLE_NS] != throttled:
        return RECLAIMED_FOR_HIGH
    return CHARGED_ABOVE_HIGH if memcg[USAGE] > memcg[HIGH] else CHARGED


@njit
def nomem(memcg, stats, knobs, gfp, nr_pages, raised_max_event):
    """The kernel's `nomem:` label: fail, unless __GFP_NOFAIL or __GFP_HIGH force the charge
    past max (`force:`), raising the MAX event if reclaim has not already."""
    if not gfp & (knobs[GFP_NOFAIL] | knobs[GFP_HIGH]):
        return FAILED
    memcg[USAGE] += nr_pages  # page_counter_charge: no limit check
    stats[FORCED_CHARGES] += 1
    if not raised_max_event:
        stats[MAX_EVENTS] += 1
    return FORCED


@njit
def handle_high_after_charge(memcg, stats, knobs, per_task, gfp, nr_pages, batch, task, irq):
    """What each era does once a charge has reached the page counter."""
    mode, over = knobs[HIGH_MODE], memcg[USAGE] > memcg[HIGH]
    if mode == SYNC or mode == FAIL_NOWAIT or mode == WATERMARK:
        if over and gfp & knobs[GFP_DIRECT_RECLAIM]:  # 4.2: only charges that may block
            stats[HIGH_EVENTS] += 1
            try_to_free_mem_cgroup_pages(memcg, stats, knobs, per_task, task, nr_pages, gfp, BY_HIGH_SYNC, False)
        if mode == WATERMARK:
            watermark_reclaim(memcg, stats, knobs, per_task, task)
    elif mode == RETURN_TO_USER:
        if over:
            per_task[task, OVER_HIGH] += batch
    elif mode == MAINLINE:
        if over and irq:
            reclaim_high(memcg, stats, knobs, per_task, task, MEMCG_CHARGE_BATCH_6X, BY_ASYNC)  # high_work
        elif over:
            per_task[task, OVER_HIGH] += batch
        if per_task[task, OVER_HIGH] > MEMCG_CHARGE_BATCH_6X and gfp & knobs[GFP_DIRECT_RECLAIM]:
            mem_cgroup_handle_over_high(memcg, stats, knobs, per_task, task, BY_HIGH_SYNC)


@njit
def watermark_reclaim(memcg, stats, knobs, per_task, task):
    """Async reclaim once free space under max drops below the margin, down to the low
    watermark (wmark_low = wmark_high - wmark_high / 256, as memory.wmark_ratio does)."""
    wmark_high = memcg[MAX] - knobs[WATERMARK_MARGIN]
    if memcg[USAGE] > wmark_high:
        wmark_low = wmark_high - wmark_high // 256
        try_to_free_mem_cgroup_pages(memcg, stats, knobs, per_task, task, memcg[USAGE] - wmark_low, knobs[GFP_KERNEL],
                                     BY_ASYNC, True)


@njit
def resume_user_mode_work(memcg, stats, knobs, per_task, task):
    """Return to user space: 4.4 reclaims the overage once; 6.x may also throttle."""
    if knobs[HIGH_MODE] == RETURN_TO_USER and per_task[task, OVER_HIGH] != 0:
        nr_pages = per_task[task, OVER_HIGH]
        per_task[task, OVER_HIGH] = 0
        reclaim_high(memcg, stats, knobs, per_task, task, nr_pages, BY_USER_RETURN)
    elif knobs[HIGH_MODE] == MAINLINE:
        mem_cgroup_handle_over_high(memcg, stats, knobs, per_task, task, BY_USER_RETURN)


@njit
def reclaim_high(memcg, stats, knobs, per_task, task, nr_pages, trigger):
    if memcg[USAGE] <= memcg[HIGH]:
        return 0
    stats[HIGH_EVENTS] += 1
    return try_to_free_mem_cgroup_pages(memcg, stats, knobs, per_task, task, nr_pages, knobs[GFP_KERNEL], trigger, False)


@njit
def mem_cgroup_handle_over_high(memcg, stats, knobs, per_task, task, trigger):
    """__mem_cgroup_handle_over_high: reclaim, then sleep off the remaining overage."""
    nr_pages = per_task[task, OVER_HIGH]
    if not nr_pages:
        return
    per_task[task, OVER_HIGH] = 0
    retries = knobs[MAX_RECLAIM_RETRIES]
    in_retry = False
    while True:
        target = SWAP_CLUSTER_MAX if in_retry else nr_pages
        reclaimed = reclaim_high(memcg, stats, knobs, per_task, task, target, trigger)
        penalty = min(calculate_high_delay(memcg, knobs, nr_pages), 2 * knobs[HZ])  # MEMCG_MAX_HIGH_DELAY_JIFFIES
        if penalty <= knobs[HZ] // 100:
            return
        if reclaimed != 0 or retries > 0:
            if reclaimed == 0:
                retries -= 1
            in_retry = True
            continue
        sleep_ns = schedule_timeout(knobs, memcg[NOW], penalty)
        stall(memcg, knobs, per_task, task, sleep_ns)
        stats[THROTTLE_NS] += sleep_ns
        return


@njit
def schedule_timeout(knobs, now, timeout):
    """How long schedule_timeout(timeout jiffies) sleeps from `now` (ns): until the tick that runs
    its timer's bucket. calc_wheel_index puts the timer on the wheel's level for its distance
    (level n holds distances below 63 << 3n jiffies) and calc_index rounds its expiry up past
    the next multiple of that level's granularity (8 ** level jiffies), so it never fires early."""
    tick_ns = 1_000_000_000 // knobs[HZ]
    expires = now // tick_ns + timeout
    level = 0
    while timeout >= (LVL_SIZE - 1) << (LVL_CLK_SHIFT * level):  # LVL_START(level + 1)
        level += 1
    bucket_expiry = ((expires >> (LVL_CLK_SHIFT * level)) + 1) << (LVL_CLK_SHIFT * level)
    return bucket_expiry * tick_ns - now


@njit
def calculate_high_delay(memcg, knobs, nr_pages):
    """Penalty jiffies: about HZ * r^2 * nr / 64 with r = (usage - high) / high; SATURATED
    where int64 would overflow (the caller clamps it to 2 * HZ anyway)."""
    usage, high = memcg[USAGE], memcg[HIGH]
    if usage <= high:
        return 0
    high = max(high, 1)  # calculate_overage: a threshold of 1 page when high is 0
    overage = ((usage - high) << 20) // high
    if overage > MAX_EXACT_OVERAGE:
        penalty = SATURATED  # the exact one is over 53,000 * HZ jiffies: past the clamp whatever nr_pages
    else:
        penalty = (overage * overage * knobs[HZ]) >> MEMCG_DELAY_PRECISION_SHIFT >> MEMCG_DELAY_SCALING_SHIFT
    if nr_pages > 0 and penalty > SATURATED // nr_pages:
        return SATURATED
    return penalty * nr_pages // MEMCG_CHARGE_BATCH_6X


# -- tasks and their mm ------------------------------------------------------------------------
#
# Tasks and the memory they map: which tasks share an mm, what a fork copies, what an OOM
# kill frees (kernel/fork.c, fs/exec.c, kernel/exit.c, mm/oom_kill.c), for the model's OOM killer.
#
# A task's anon pages belong to its mm, held on one row of per_task: the row of the task that
# made the mm (MM names it; a thread, or a vfork child before its exec, uses its parent's). A
# forked process gets a copy-on-write copy: it maps all its parent's anon pages (INHERITED),
# which count in its rss as in its parent's (copy_present_pte), and which stay charged while any
# process still maps them. So an OOM kill frees only the pages its victim maps alone:
#
# - its own, less those a living child forked from it still maps;
# - those it inherited, once the mm it inherited them from is gone and no other process
#   forked from that mm is left.
#
# Approximations: a copy-on-write break (the child writes to an inherited page and gets its own
# copy) is a new page of the child like any other, the inherited count does not shrink; a
# child's inherited pages are its parent's at the fork, not what the parent maps later; what a
# grandchild inherited is the parent's business only through its own parent. Tasks the trace
# saw no task_new of (those older than the capture) are processes of their own.


def new_per_task(tasks: int, clocks: int) -> np.ndarray:
    """Every task a process of its own, until the trace says otherwise; each on its own clock,
    or all on task 0's (knob CLOCKS: SHARED_BY_WORKLOAD)."""
    per_task = np.zeros((tasks, N_TASK_COLUMNS), np.int64)
    per_task[:, MM] = np.arange(tasks)
    per_task[:, USERS] = 1
    per_task[:, COW_FROM] = -1
    per_task[:, QUEUE_HEAD] = per_task[:, QUEUE_TAIL] = -1
    per_task[:, DEFERRED_HEAD] = per_task[:, DEFERRED_TAIL] = per_task[:, JOINER] = -1
    per_task[:, STALLED_AT] = np.iinfo(np.int64).min  # never stalled
    per_task[:, RUNS_ON] = 0 if clocks == SHARED_BY_WORKLOAD else np.arange(tasks)
    return per_task


@njit
def mm_of(per_task, task):
    return per_task[task, MM]


@njit
def dup_task_struct(per_task, parent, child):
    """The child's task_struct starts as a copy of its parent's (arch_dup_task_struct), made in
    the clone after the parent charged it and the child's kernel stack: the pages the parent
    charged above memory.high and has not yet answered for (memcg_nr_pages_over_high), and the
    TIF_NOTIFY_RESUME that calls for it, are the child's too, answered on its first return to
    user space as on the parent's."""
    per_task[child, OVER_HIGH] = per_task[parent, OVER_HIGH]


@njit
def copy_mm(per_task, parent, child, clone_vm):
    """copy_process: the child uses its parent's mm (CLONE_VM: a thread, a vfork child) or a
    copy of it (dup_mmap: the parent's anon pages, mapped copy-on-write)."""
    mm = mm_of(per_task, parent)
    if clone_vm:
        per_task[child, MM] = mm
        per_task[child, USERS] = 0
        per_task[mm, USERS] += 1
    else:
        start_mm(per_task, child)
        per_task[child, INHERITED] = per_task[mm, ANON] + per_task[mm, INHERITED]
        per_task[child, COW_FROM] = mm


@njit
def begin_new_exec(per_task, task):
    """exec: the task leaves its mm (its pages there go as the trace unmaps them) for a new one."""
    exit_mm(per_task, task)
    start_mm(per_task, task)


@njit
def start_mm(per_task, task):
    per_task[task, MM] = task
    per_task[task, USERS] = 1
    per_task[task, INHERITED] = 0
    per_task[task, COW_FROM] = -1


@njit
def exit_mm(per_task, task):
    """The task stops using its mm; the last user takes it down (mmput): it maps nothing more."""
    mm = mm_of(per_task, task)
    per_task[mm, USERS] = max(per_task[mm, USERS] - 1, 0)
    if per_task[mm, USERS] == 0:
        per_task[mm, INHERITED] = 0


@njit
def alive(per_task, mm):
    """The mm is in use by tasks the OOM killer has not chosen."""
    return per_task[mm, USERS] > 0 and not per_task[mm, DYING]


@njit
def oom_badness(per_task, mm):
    """The rss of an mm's anon pages (get_mm_rss: its own and those it maps copy-on-write)."""
    return per_task[mm, ANON] + per_task[mm, INHERITED]


@njit
def anon_freed_by_kill(per_task, victim):
    """The anon pages the victim's mm maps alone: what its exit frees (exit_mmap, the OOM reaper)."""
    shared_with_children = 0
    last_of_its_family = True
    source = per_task[victim, COW_FROM]
    for mm in range(per_task.shape[0]):
        if mm == victim or not alive(per_task, mm):
            continue
        if per_task[mm, COW_FROM] == victim:
            shared_with_children = max(shared_with_children, per_task[mm, INHERITED])
        if source >= 0 and per_task[mm, COW_FROM] == source:
            last_of_its_family = False
    own = per_task[victim, ANON] - min(shared_with_children, per_task[victim, ANON])
    if source >= 0 and (alive(per_task, source) or not last_of_its_family):
        return own
    return own + per_task[victim, INHERITED]


# -- reclaim and OOM ---------------------------------------------------------------------------

@njit
def try_to_free_mem_cgroup_pages(memcg, stats, knobs, per_task, task, nr_pages, gfp, trigger, exact):
    """Reclaim at least max(nr_pages, SWAP_CLUSTER_MAX): whole file folios, then
    reclaimable slab, then anon pages; the pages that count as progress.

    Slab goes only with __GFP_FS (super_cache_scan stops without it: a GFP_NOFS charge
    shrinks no dentries or inodes). Since 6.5 (583c27a167c2) memcg reclaim does not count
    what the shrinkers free: the usage drops, the returned progress does not grow."""
    want = nr_pages if exact else max(nr_pages, SWAP_CLUSTER_MAX)
    lru = shrink_file_lru(memcg, want)
    stats[RECLAIMED_FILE_PAGES] += lru  # page cache the workload may read again: the kernel charges it again then
    slab = 0
    if gfp & knobs[GFP_FS]:
        slab = reclaim_pages(memcg, POOL_SLAB_RECLAIMABLE, min(max(want - lru, 0), memcg[POOLS + POOL_SLAB_RECLAIMABLE]), 0)
    if knobs[SWAP]:
        lru = reclaim_pages(memcg, POOL_ANON, min(max(want - lru - slab, 0), memcg[POOLS + POOL_ANON]), lru)
    page_counter_uncharge(memcg, lru)
    call_rcu(memcg, knobs, slab)
    stats[RECLAIM_CALLS + trigger] += 1
    stats[RECLAIMED_PAGES + trigger] += lru + slab
    if trigger != BY_ASYNC:
        stall(memcg, knobs, per_task, task, knobs[RECLAIM_NS_PER_CALL] + (lru + slab) * knobs[RECLAIM_NS_PER_PAGE])
    return lru + slab if knobs[SHRUNK_SLAB_COUNTS] else lru


@njit
def call_rcu(memcg, knobs, nr_pages):
    """Shrunk dentries and inodes are freed by RCU callbacks (dentry_free, i_callback), after a
    grace period: one starts now if none is under way, else they wait for the next one. With
    no grace period (rcu_grace_ns 0) they leave at once."""
    if knobs[RCU_GRACE_NS] == 0:
        page_counter_uncharge(memcg, nr_pages)
        return
    if nr_pages == 0:
        return
    if memcg[RCU_WAITING] == 0:
        memcg[RCU_WAITING] = nr_pages
        memcg[RCU_GP_END] = memcg[NOW] + knobs[RCU_GRACE_NS]
    else:
        memcg[RCU_NEXT] += nr_pages


@njit
def rcu_do_batch(memcg, knobs, now):
    """The RCU callbacks of every grace period that has ended by `now` free what they hold."""
    memcg[NOW] = now
    while memcg[RCU_WAITING] and memcg[RCU_GP_END] <= now:
        page_counter_uncharge(memcg, memcg[RCU_WAITING])
        memcg[RCU_WAITING], memcg[RCU_NEXT] = memcg[RCU_NEXT], 0
        memcg[RCU_GP_END] += knobs[RCU_GRACE_NS]


@njit
def shrink_file_lru(memcg, want):
    """do_try_to_free_pages' priority loop over the file LRU (shrink_lruvec, scanning files
    only: no swap): at priority p, from DEF_PRIORITY down, the list's size then >> p pages
    are scanned (get_scan_count), SWAP_CLUSTER_MAX at a time, oldest folio first and each
    folio whole; reclaim stops after the round that brings the pages freed to `want`. So a
    call frees more than it asked for where a window holds more (a large folio, a late
    round). The model's file pool stands for the inactive list: it has no active list. Page
    by page should the pool hold more than its folios."""
    got = 0
    for priority in range(DEF_PRIORITY, -1, -1):
        window = memcg[POOLS + POOL_FILE] >> priority
        while window > 0 and memcg[POOLS + POOL_FILE]:
            chunk = min(window, SWAP_CLUSTER_MAX)
            window -= chunk
            scanned = 0
            while scanned < chunk and memcg[POOLS + POOL_FILE]:
                folio = oldest_folio(memcg)
                if folio == 0:
                    folio = chunk - scanned
                folio = min(folio, memcg[POOLS + POOL_FILE])
                got = reclaim_pages(memcg, POOL_FILE, folio, got)
                scanned += folio
            if got >= want:
                return got
    return got


@njit
def oldest_folio(memcg):
    """Take the LRU's oldest folio that is still charged; its size, 0 if none."""
    while memcg[LRU_HEAD] < memcg[LRU_TAIL]:
        folio = memcg[FILE_LRU + memcg[LRU_HEAD]]
        memcg[LRU_HEAD] += 1
        if memcg[FREED_FOLIOS + folio_order(folio)]:
            memcg[FREED_FOLIOS + folio_order(folio)] -= 1  # the trace freed it already
        else:
            return folio
    return 0


@njit
def compact_file_lru(memcg):
    """Close the LRU's gaps: drop what reclaim took and, per order, the oldest folios the trace
    freed (those oldest_folio would skip); the rest move to the front, oldest first. Between
    batches, so that the queue holds the charged folios, not every folio the trace charged."""
    kept = 0
    for i in range(memcg[LRU_HEAD], memcg[LRU_TAIL]):
        folio = memcg[FILE_LRU + i]
        if memcg[FREED_FOLIOS + folio_order(folio)]:
            memcg[FREED_FOLIOS + folio_order(folio)] -= 1
        else:
            memcg[FILE_LRU + kept] = folio
            kept += 1
    memcg[LRU_HEAD], memcg[LRU_TAIL] = 0, kept


@njit
def folio_order(nr_pages):
    order = -1
    while nr_pages:
        nr_pages >>= 1
        order += 1
    return order


@njit
def reclaim_pages(memcg, pool, nr_pages, got):
    """Reclaim nr_pages of a pool (owed until the trace frees them); what is got so far."""
    memcg[POOLS + pool] -= nr_pages
    memcg[DEBT + pool] += nr_pages
    return got + nr_pages


@njit
def mem_cgroup_oom(memcg, stats, per_task, nr_pages, task):
    """Kill the process with the most anon pages mapped (charges up to PAGE_ALLOC_COSTLY_ORDER):
    the victim's mm, -1 if none maps any. Another process's memory goes at once, the charging
    task's own when its charge has failed. A dying charging task is picked again and nothing
    is killed (out_of_memory: task_will_free_mem(current))."""
    if nr_pages > 1 << PAGE_ALLOC_COSTLY_ORDER:
        return -1
    own = mm_of(per_task, task)
    if per_task[own, DYING]:
        return own
    victim = -1
    for mm in range(per_task.shape[0]):
        if per_task[mm, USERS] > 0 and (victim < 0 or oom_badness(per_task, mm) > oom_badness(per_task, victim)):
            victim = mm
    if victim < 0 or oom_badness(per_task, victim) == 0:
        return -1
    stats[OOM_KILLS] += 1
    per_task[victim, DYING] = 1
    if victim != own:
        exit_mmap(memcg, per_task, victim)
    return victim


@njit
def exit_mmap(memcg, per_task, victim):
    """An OOM victim's mm goes: the anon pages it maps alone are uncharged, owed until the trace
    frees them (those it freed already, after the kernel's own kill of it, are not); those a
    living process still maps copy-on-write stay charged."""
    pages = min(anon_freed_by_kill(per_task, victim), memcg[POOLS + POOL_ANON])
    per_task[victim, ANON] = 0
    per_task[victim, INHERITED] = 0
    per_task[victim, OOM_DEBT] += max(pages - per_task[victim, OOM_KEPT], 0)
    per_task[victim, OOM_KEPT] = 0
    memcg[POOLS + POOL_ANON] -= pages
    page_counter_uncharge(memcg, pages)


@njit
def charge_the_kernel_could_not_make(memcg, stats, knobs, per_cpu, per_task, nr_pages, gfp, cpu, task, irq, memcg_ix,
                                     room_after_kill):
    """A charge the capturing kernel OOM-killed for (OOM_CHARGE) or failed (FAILED_CHARGE):
    try it; if the model can make it, cancel it (mem_cgroup_cancel_charge), since where the
    kernel's retry succeeded the trace charges the pages itself, and where it failed the
    task went on without them (a THP fault falls back to small pages, which the trace
    charges).

    The kernel's charge drained its own CPU's stock (drain_all_stock drains the charging CPU
    itself): the model drains it too. The kernel's margin stayed below nr_pages through its
    reclaim, but the kernel may hold pages there the trace cannot show: drain_all_stock only
    schedules work to drain the other CPUs' stocks (schedule_work_on), which the charge does
    not wait for, so up to MEMCG_CHARGE_BATCH pages on each other CPU can still be charged
    while it reclaims. So much of the model's room as those stocks explain is held through
    the charge. Where the trace shows the kernel's retry after its OOM kill going through
    (`room_after_kill`: the task's next operation is a charge, not more reclaim), the work ran
    during the kill (dump_header takes milliseconds): the held pages go when the model's OOM
    killer has run (UNDRAINED). Else the room the model has and the kernel had not (a few pages
    its accounting misses) stays held until the charge is over."""
    drain_local_stock(memcg, per_cpu, cpu)
    held = min(max(room(memcg, knobs, per_cpu, gfp) - nr_pages + 1, 0), knobs[STOCK_BATCH] * (per_cpu.shape[0] - 1))
    memcg[USAGE] += held
    if room_after_kill:
        memcg[UNDRAINED], held = held, 0
    outcome = try_charge_memcg(memcg, stats, knobs, per_cpu, per_task, gfp, nr_pages, cpu, task, irq, memcg_ix)
    if outcome != FAILED:
        page_counter_uncharge(memcg, nr_pages)
    page_counter_uncharge(memcg, held)
    drain_work_ran(memcg)
    return outcome


@njit
def room(memcg, knobs, per_cpu, gfp):
    """What a charge of this gfp could get: the margin, the page stocks and what its reclaim can take."""
    reclaimable = memcg[POOLS + POOL_FILE]
    if gfp & knobs[GFP_FS]:
        reclaimable += memcg[POOLS + POOL_SLAB_RECLAIMABLE]
    if knobs[SWAP]:
        reclaimable += memcg[POOLS + POOL_ANON]
    return margin(memcg) + stocked_pages(per_cpu) + reclaimable


# -- transparent huge pages ------------------------------------------------------------------

@njit
def thp_charge_gfp(knobs, gfp):
    """The gfp of a huge page's charge under the policy (Policy.thp_charge_gfp): the fault's
    own (vma_thp_gfp_mask), or without or with __GFP_DIRECT_RECLAIM."""
    if knobs[THP_GFP] == THP_NO_RECLAIM:
        return gfp & ~knobs[GFP_DIRECT_RECLAIM]
    if knobs[THP_GFP] == THP_RECLAIM:
        return gfp | knobs[GFP_DIRECT_RECLAIM]
    return gfp


@njit
def charge_huge_page(memcg, stats, knobs, per_cpu, per_task, nr_pages, gfp, cpu, task, irq, memcg_ix):
    """A THP fault's charge (do_huge_pmd_anonymous_page: mem_cgroup_charge, no OOM kill for so
    costly an order). When it fails the fault falls back to small pages, which the task then
    faults in one by one (it wrote the whole range: the trace charged all of it), each charged
    with GFP_KERNEL: FALLBACK, or OOM if one of them killed, FAILED if one failed."""
    outcome = charge(memcg, stats, knobs, per_cpu, per_task, nr_pages, thp_charge_gfp(knobs, gfp), cpu, task, irq, POOL_ANON,
                     memcg_ix)
    if outcome != FAILED:
        lru_charged(memcg, per_task, nr_pages, POOL_ANON, task)
        return outcome
    outcome = FALLBACK
    for _ in range(nr_pages):
        small = charge(memcg, stats, knobs, per_cpu, per_task, 1, knobs[GFP_KERNEL], cpu, task, irq, POOL_ANON, memcg_ix)
        if small == FAILED:
            return FAILED
        lru_charged(memcg, per_task, 1, POOL_ANON, task)
        if small == OOM:
            outcome = OOM
    return outcome


# -- uncharging --------------------------------------------------------------------------------

@njit
def pay_debt(memcg, pool, nr_pages):
    """Pages of a free that reclaim already took; the rest is uncharged for real."""
    paid = min(max(memcg[DEBT + pool], 0), nr_pages)
    memcg[DEBT + pool] -= paid
    return nr_pages - paid


@njit
def lru_charged(memcg, per_task, nr_pages, pool, task):
    """A file folio joins the LRU's young end; anon pages count for the charging task's mm."""
    if pool == POOL_FILE:
        memcg[FILE_LRU + memcg[LRU_TAIL]] = nr_pages
        memcg[LRU_TAIL] += 1
    elif pool == POOL_ANON:
        per_task[mm_of(per_task, task), ANON] += nr_pages


@njit
def pay_oom_debt(per_task, nr_pages, mm):
    """Anon pages an mm's task frees that the model's OOM kill of it took already; the rest."""
    paid = min(per_task[mm, OOM_DEBT], nr_pages)
    per_task[mm, OOM_DEBT] -= paid
    return nr_pages - paid


@njit
def free_oom_victim_anon(memcg, per_task, nr_pages, task):
    """Anon pages the kernel's OOM victim frees after its oom:mark_victim: those the model's
    kill of it took are paid off; those it charged itself stay charged until the model kills
    it (the model decides its own kills). Pages beyond both were charged by another task:
    COW originals its parent wrote to after the fork, which the victim mapped last. Its exit
    frees them whoever killed it, so they are uncharged. A victim the model killed while it
    was charging, whose charge then fit (the other CPUs' stocks drained), took nothing with
    it: its exit frees them all, those it kept included."""
    mm = mm_of(per_task, task)
    unpaid = pay_oom_debt(per_task, nr_pages, mm)
    if per_task[mm, DYING]:
        freed = unpaid + per_task[mm, OOM_KEPT]
        per_task[mm, OOM_KEPT] = 0
        per_task[mm, ANON] = max(per_task[mm, ANON] - freed, 0)
        uncharge_folios(memcg, freed, POOL_ANON)
        return
    kept = min(unpaid, max(per_task[mm, ANON] - per_task[mm, OOM_KEPT], 0))
    per_task[mm, OOM_KEPT] += kept
    uncharge_folios(memcg, unpaid - kept, POOL_ANON)


@njit
def uncharge_lru(memcg, per_task, nr_pages, pool, task):
    """LRU pages gone at once: anon pages unmapped and freed, file pages off the page cache."""
    if pool == POOL_ANON:
        free_unmapped_anon(memcg, unmap_anon(memcg, per_task, nr_pages, task))
    else:
        uncharge_folios(memcg, nr_pages, pool)


@njit
def unmap_anon(memcg, per_task, nr_pages, task):
    """zap_pte_range: the pages leave the task's rss (what an OOM kill of it would free), but
    stay charged until freed (those the model's kill of it took already excepted); how many
    stay charged."""
    mm = mm_of(per_task, task)
    nr_pages = pay_oom_debt(per_task, nr_pages, mm)
    per_task[mm, ANON] = max(per_task[mm, ANON] - nr_pages, 0)
    memcg[UNMAPPED] += nr_pages
    return nr_pages


@njit
def free_unmapped_anon(memcg, nr_pages):
    """Unmapped anon pages freed (mmu_gather's batch after the TLB flush): uncharged."""
    nr_pages = min(nr_pages, memcg[UNMAPPED])
    memcg[UNMAPPED] -= nr_pages
    uncharge_folios(memcg, nr_pages, POOL_ANON)


@njit
def uncharge_folios(memcg, nr_pages, pool):
    """Uncharge LRU pages of a pool, those reclaim took already excepted."""
    unpaid = pay_debt(memcg, pool, nr_pages)
    if pool == POOL_FILE and unpaid == nr_pages:  # a folio the model holds: it leaves the LRU
        memcg[FREED_FOLIOS + folio_order(nr_pages)] += 1
    nr_pages = min(unpaid, memcg[POOLS + pool])  # never below what the model holds
    memcg[POOLS + pool] -= nr_pages
    page_counter_uncharge(memcg, nr_pages)


@njit
def uncharge_kmem_pages(memcg, knobs, per_cpu, nr_pages, cpu, pool, memcg_ix):
    nr_pages = min(pay_debt(memcg, pool, nr_pages), memcg[POOLS + pool])
    memcg[POOLS + pool] -= nr_pages
    if knobs[OBJECT_CHARGING]:
        refill_stock(memcg, knobs, per_cpu, nr_pages, cpu, memcg_ix)  # obj_cgroup_uncharge_pages goes through the stock
    else:
        page_counter_uncharge(memcg, nr_pages)


# -- object charging (6.x obj_cgroup) ----------------------------------------------------------

@njit
def obj_cgroup_charge(memcg, stats, knobs, per_cpu, per_task, size, gfp, cpu, task, irq, pool, memcg_ix):
    """An object of `size` bytes (obj_full_size) from the CPU's byte stock if it holds its
    memcg's, else whole pages through the page path, the rest of the last page left in the
    byte stock (which then holds this memcg's)."""
    if per_cpu[cpu, OBJ_STOCK_MEMCG] == memcg_ix and per_cpu[cpu, OBJ_STOCK] >= size:  # consume_obj_stock
        per_cpu[cpu, OBJ_STOCK] -= size
        stats[STOCK_HITS] += 1
        return STOCK
    nr_pages, nr_bytes = size >> PAGE_SHIFT, size & (PAGE_SIZE - 1)
    if nr_bytes:
        nr_pages += 1
    outcome = charge(memcg, stats, knobs, per_cpu, per_task, nr_pages, gfp, cpu, task, irq, pool, memcg_ix)
    if outcome != FAILED and nr_bytes:
        switch_obj_stock(memcg, knobs, per_cpu, cpu, pool, memcg_ix)
        per_cpu[cpu, OBJ_STOCK] += PAGE_SIZE - nr_bytes
    return outcome


@njit
def obj_cgroup_uncharge(memcg, knobs, per_cpu, size, cpu, pool, memcg_ix):
    """refill_obj_stock(allow_uncharge): the bytes go to the CPU's byte stock, made this
    memcg's; whole pages above one go back to the page stock."""
    switch_obj_stock(memcg, knobs, per_cpu, cpu, pool, memcg_ix)
    per_cpu[cpu, OBJ_STOCK] += size
    if per_cpu[cpu, OBJ_STOCK] > PAGE_SIZE:
        nr_pages = per_cpu[cpu, OBJ_STOCK] >> PAGE_SHIFT
        per_cpu[cpu, OBJ_STOCK] &= PAGE_SIZE - 1
        uncharge_obj_pages(memcg, knobs, per_cpu, nr_pages, cpu, pool, memcg_ix)


@njit
def switch_obj_stock(memcg, knobs, per_cpu, cpu, pool, memcg_ix):
    """refill_obj_stock's reset: a CPU's byte stock holds one objcg's bytes. Another's are
    drained (drain_obj_stock): whole pages go back to that memcg's page stock, the rest stays
    with its objcg (nr_charged_bytes); the new objcg's own such bytes come in."""
    old = per_cpu[cpu, OBJ_STOCK_MEMCG]
    if old == memcg_ix:
        return
    if old >= 0:
        uncharge_obj_pages(memcg, knobs, per_cpu, per_cpu[cpu, OBJ_STOCK] >> PAGE_SHIFT, cpu, pool, old)
        memcg[OBJCG_BYTES + old] += per_cpu[cpu, OBJ_STOCK] & (PAGE_SIZE - 1)
    per_cpu[cpu, OBJ_STOCK] = memcg[OBJCG_BYTES + memcg_ix]
    memcg[OBJCG_BYTES + memcg_ix] = 0
    per_cpu[cpu, OBJ_STOCK_MEMCG] = memcg_ix


@njit
def uncharge_obj_pages(memcg, knobs, per_cpu, nr_pages, cpu, pool, memcg_ix):
    """obj_cgroup_uncharge_pages: whole pages of a byte stock uncharged, from `pool` first (the
    byte stock is shared by both slab pools)."""
    own = min(nr_pages, memcg[POOLS + pool] + memcg[DEBT + pool])
    uncharge_kmem_pages(memcg, knobs, per_cpu, own, cpu, pool, memcg_ix)
    if nr_pages > own:
        uncharge_kmem_pages(memcg, knobs, per_cpu, nr_pages - own, cpu, POOL_SLAB_RECLAIMABLE + POOL_SLAB_UNRECLAIMABLE - pool,
                            memcg_ix)


# -- slab charging (4.x per-memcg caches): slabs of each cache and NUMA node, charged whole ---------

@njit
def slab_alloc_object(memcg, stats, knobs, per_cpu, per_task, slabs, caches, geometry, cursor, object_slab,
                      slot, cache_node, gfp, cpu, task, irq, pool, memcg_ix):
    """An object from a slab of the node the allocation prefers (caches row `cache_node`: the
    cache's kmem_cache_node there), or from a new slab charged for it. Charging that slab
    without reclaim (4.2 SLAB's gfp_exact_node) may fail where reclaim would have made room:
    then fallback_alloc looks on the other nodes first."""
    outcome = NO_CHARGE
    slab = node_slab(slabs, caches, cursor, cache_node)
    if slab < 0:
        node_gfp = gfp & ~knobs[GFP_DIRECT_RECLAIM] if knobs[NODE_LOCAL_NOWAIT] else gfp
        slab, outcome = allocate_slab(memcg, stats, knobs, per_cpu, per_task, slabs, geometry, cursor, cache_node, node_gfp,
                                      cpu, task, irq, pool, memcg_ix)
        if slab < 0 and knobs[NODE_LOCAL_NOWAIT]:
            slab, outcome = fallback_alloc(memcg, stats, knobs, per_cpu, per_task, slabs, caches, geometry, cursor,
                                           cache_node, gfp, cpu, task, irq, pool, memcg_ix)
        if slab < 0:
            return outcome
    caches[slabs[slab, SLAB_CACHE], CURRENT_SLAB] = slab  # its own node's: another node's, after a fallback
    slabs[slab, SLAB_USED] += 1
    object_slab[slot] = slab
    return outcome


@njit
def node_slab(slabs, caches, cursor, cache_node):
    """The node's slab with a free slot: its current one, else one from its partial list; -1: none."""
    slab = caches[cache_node, CURRENT_SLAB]
    if slab < 0 or slabs[slab, SLAB_USED] == slabs[slab, SLAB_CAPACITY]:
        slab = take_partial(slabs, caches, cursor, cache_node)
    return slab


@njit
def fallback_alloc(memcg, stats, knobs, per_cpu, per_task, slabs, caches, geometry, cursor, cache_node, gfp, cpu, task,
                   irq, pool, memcg_ix):
    """SLAB fallback_alloc: a free object on another node (in node order after the preferred one),
    which needs no charge; else a new slab charged with the caller's gfp, which may reclaim, on
    the preferred node (numa_mem_id(): the CPU's node, which a kmalloc_node naming another node
    is taken to be too). The slab (-1 if none) and the outcome."""
    nodes = knobs[NODES]
    cache, node = cache_node // nodes, cache_node % nodes
    for step in range(1, nodes):
        slab = node_slab(slabs, caches, cursor, cache * nodes + (node + step) % nodes)
        if slab >= 0:
            stats[OTHER_NODE_OBJECTS] += 1
            return slab, OTHER_NODE
    return allocate_slab(memcg, stats, knobs, per_cpu, per_task, slabs, geometry, cursor, cache_node, gfp, cpu, task, irq,
                         pool, memcg_ix)


@njit
def take_partial(slabs, caches, cursor, cache_node):
    """Pop the node's partial slabs of the cache until one still has objects and free slots; -1: none.

    A slab is pushed when it stops being full while not current, and popped before it can
    become current (and full) again, so it is on its list at most once.
    """
    slab = caches[cache_node, PARTIAL_HEAD]
    while slab >= 0:
        caches[cache_node, PARTIAL_HEAD] = slabs[slab, SLAB_NEXT_PARTIAL]
        slabs[slab, SLAB_LISTED] = 0
        if 0 < slabs[slab, SLAB_USED] < slabs[slab, SLAB_CAPACITY]:
            return slab
        if slabs[slab, SLAB_USED] == 0:
            free_slab_row(slabs, cursor, slab)  # discarded while on the list
        slab = caches[cache_node, PARTIAL_HEAD]
    return -1


@njit
def allocate_slab(memcg, stats, knobs, per_cpu, per_task, slabs, geometry, cursor, cache_node, gfp, cpu, task, irq,
                  pool, memcg_ix):
    """SLUB allocate_slab: try the cache's order with a no-retry gfp (and, in 4.3, without
    direct reclaim above the minimum order), then fall back to the minimum order with the
    caller's gfp. The new slab (-1 if none) and the outcome."""
    order, min_order = geometry[cache_node, ORDER], geometry[cache_node, MIN_ORDER]
    first_gfp = (gfp | knobs[GFP_NORETRY]) & ~knobs[GFP_NOFAIL]
    if order > min_order:
        stats[HIGH_ORDER_ATTEMPTS] += 1
        if knobs[NOWAIT_HIGH_ORDER]:
            first_gfp &= ~knobs[GFP_DIRECT_RECLAIM]
    outcome = charge(memcg, stats, knobs, per_cpu, per_task, 1 << order, first_gfp, cpu, task, irq, pool, memcg_ix)
    if outcome != FAILED:
        return new_slab(slabs, cursor, cache_node, geometry[cache_node, OBJECTS], 1 << order, pool), outcome
    outcome = charge(memcg, stats, knobs, per_cpu, per_task, 1 << min_order, gfp, cpu, task, irq, pool, memcg_ix)
    if outcome == FAILED:
        return -1, outcome
    if order > min_order:
        stats[FALLBACKS] += 1
        outcome = FALLBACK
    return new_slab(slabs, cursor, cache_node, geometry[cache_node, OBJECTS_MIN], 1 << min_order, pool), outcome


@njit
def new_slab(slabs, cursor, cache_node, capacity, pages, pool):
    """A free row of the slab table, or the next one: an empty slab of the cache on the node."""
    slab = cursor[FREE_SLAB]
    if slab >= 0:
        cursor[FREE_SLAB] = slabs[slab, SLAB_NEXT_PARTIAL]
    else:
        slab = cursor[SLAB_COUNT]
        cursor[SLAB_COUNT] += 1
    slabs[slab, SLAB_CACHE] = cache_node
    slabs[slab, SLAB_CAPACITY] = capacity
    slabs[slab, SLAB_PAGES] = pages
    slabs[slab, SLAB_POOL] = pool
    slabs[slab, SLAB_USED] = 0
    slabs[slab, SLAB_NEXT_PARTIAL] = -1
    slabs[slab, SLAB_LISTED] = 0
    return slab


@njit
def free_slab_row(slabs, cursor, slab):
    slabs[slab, SLAB_NEXT_PARTIAL] = cursor[FREE_SLAB]
    cursor[FREE_SLAB] = slab


@njit
def slab_free_object(memcg, knobs, per_cpu, slabs, caches, cursor, object_slab, slot):
    slab = object_slab[slot]
    if slab < 0:
        raise ValueError("an object is freed that no slab holds")
    object_slab[slot] = -1  # the object leaves its slab
    slabs[slab, SLAB_USED] -= 1
    cache_node = slabs[slab, SLAB_CACHE]
    current = caches[cache_node, CURRENT_SLAB] == slab
    if slabs[slab, SLAB_USED] == 0 and not current:
        uncharge_kmem_pages(memcg, knobs, per_cpu, slabs[slab, SLAB_PAGES], 0, slabs[slab, SLAB_POOL], 0)  # discard_slab
        if not slabs[slab, SLAB_LISTED]:
            free_slab_row(slabs, cursor, slab)
    elif slabs[slab, SLAB_USED] == slabs[slab, SLAB_CAPACITY] - 1 and not current:
        slabs[slab, SLAB_NEXT_PARTIAL] = caches[cache_node, PARTIAL_HEAD]  # a full slab became partial
        slabs[slab, SLAB_LISTED] = 1
        caches[cache_node, PARTIAL_HEAD] = slab


# -- the loop ----------------------------------------------------------------------------------

@njit
def replay_batch(ts, cpu, task, irq, op, gfp, pages, nbytes, cache_node, obj, pool, memcg_of, outcome, queued, first,
                 t_first, resolution_ns, memcg, stats, knobs, per_cpu, per_task, object_state, object_slab, object_task,
                 object_born, slabs, caches, geometry, cursor, waiting, bucket_last, bucket_peak):
    """Replay a batch's operations from `first` on, each at its time on its task's clock (the
    closed loop below); outcome is the batch's slice of the result's. The state arrays carry
    everything from one batch to the next; every operation of a batch is replayed by its end.
    Returns where it stopped: the batch's end, or the operation before which an operation due
    first could need a slab row or a time bucket the tables have no room for (the engine grows
    them and calls again from there: cursor[WAITING] says whether operations still wait)."""
    memcg, stats, knobs, per_cpu, per_task = (borrowed(memcg), borrowed(stats), borrowed(knobs), borrowed(per_cpu),
                                              borrowed(per_task))
    object_state, object_slab, object_task = borrowed(object_state), borrowed(object_slab), borrowed(object_task)
    object_born = borrowed(object_born)
    slabs, caches, geometry, cursor, waiting = borrowed(slabs), borrowed(caches), borrowed(geometry), borrowed(cursor), borrowed(waiting)
    bucket_last, bucket_peak, queued = borrowed(bucket_last), borrowed(bucket_peak), borrowed(queued)
    ts, cpu, task, irq, op, gfp = borrowed(ts), borrowed(cpu), borrowed(task), borrowed(irq), borrowed(op), borrowed(gfp)
    pages, nbytes, obj, pool, cache_node = borrowed(pages), borrowed(nbytes), borrowed(obj), borrowed(pool), borrowed(cache_node)
    memcg_of, outcome = borrowed(memcg_of), borrowed(outcome)
    n = ts.shape[0]
    for i in range(first, n + 1):
        until = ts[i] if i < n else END_OF_TIME  # at the batch's end, whatever still waits
        while cursor[WAITING] and waiting[0, DUE] <= until:
            j, now = waiting[0, OP], max(waiting[0, DUE], cursor[LAST_TS])
            if not room_for(op[j], now, t_first, resolution_ns, knobs, slabs, cursor, bucket_last):
                return i
            clock = dequeue(waiting, cursor, per_task, queued, j)
            replay_operation(ts, cpu, task, irq, op, gfp, pages, nbytes, cache_node, obj, pool, memcg_of, outcome, j, now,
                             t_first, resolution_ns, memcg, stats, knobs, per_cpu, per_task, object_state, object_slab,
                             slabs, caches, geometry, cursor, bucket_last, bucket_peak)
            task_went_on(ts, task, op, obj, nbytes, waiting, cursor, knobs, per_task, queued, j, clock, True)
        if i == n:
            break
        if not room_for(op[i], ts[i], t_first, resolution_ns, knobs, slabs, cursor, bucket_last):
            return i
        if (op[i] == OBJ_ALLOC or op[i] == PAGE_ALLOC) and obj[i] >= 0:
            object_task[obj[i]] = task[i]
            object_born[obj[i]] = ts[i]
        if op[i] == TASK_FORK or op[i] == TASK_CLONE_VM:
            per_task[obj[i], RUNS_ON] = clock_at_birth(knobs, per_task, task[i], obj[i], op[i] == TASK_CLONE_VM)
            per_task[obj[i], EXIT_STATE] = RUNNING
        if op[i] == TASK_EXIT:
            per_task[task[i], EXIT_STATE] = EXIT_QUEUED
        clock = clock_of(per_task, task, irq, op, obj, object_task, object_state, i)
        if clock >= 0 and irq[i]:  # an interrupt's free of what a task allocated (clock_of): deferred
            wait_for_set_off(ts, knobs, per_task, queued, waiting, cursor, i, clock, object_born[obj[i]])
        elif clock < 0 or on_time(knobs, per_task, clock):
            replay_operation(ts, cpu, task, irq, op, gfp, pages, nbytes, cache_node, obj, pool, memcg_of, outcome, i, ts[i],
                             t_first, resolution_ns, memcg, stats, knobs, per_cpu, per_task, object_state, object_slab,
                             slabs, caches, geometry, cursor, bucket_last, bucket_peak)
            task_went_on(ts, task, op, obj, nbytes, waiting, cursor, knobs, per_task, queued, i, clock, False)
        else:
            enqueue(ts, op, obj, nbytes, waiting, cursor, knobs, per_task, queued, i, clock)
    return n


@njit(inline="always")
def room_for(o, now, t_first, resolution_ns, knobs, slabs, cursor, bucket_last):
    """Whether the tables hold what replaying operation `o` at `now` may add: a slab row for an
    object allocation (slab charging), the usage time bucket of `now`."""
    if o == OBJ_ALLOC and not knobs[OBJECT_CHARGING] and cursor[FREE_SLAB] < 0 and cursor[SLAB_COUNT] == slabs.shape[0]:
        return False
    return now - t_first < bucket_last.shape[0] * resolution_ns


@njit(inline="always")
def replay_operation(ts, cpu, task, irq, op, gfp, pages, nbytes, cache_node, obj, pool, memcg_of, outcome, i, now,
                     t_first, resolution_ns, memcg, stats, knobs, per_cpu, per_task, object_state, object_slab,
                     slabs, caches, geometry, cursor, bucket_last, bucket_peak):
    """Operation i, at `now` (ns, the trace's clock shifted by its task's delay)."""
    t, c, o, m = task[i], cpu[i], op[i], memcg_of[i]
    if not per_cpu[c, CPU_SEEN]:
        stocked_before_the_trace(memcg, knobs, per_cpu, c, m)
    account_time(memcg, stats, cursor[LAST_TS], now)
    cursor[LAST_TS] = max(cursor[LAST_TS], now)  # behind it only after a batch whose end ran late operations
    rcu_do_batch(memcg, knobs, now)
    memcg[TRACE_NOW] = ts[i]
    slot = obj[i] if obj[i] >= 0 else object_state.shape[0] - 1
    if (o == OBJ_FREE or o == PAGE_FREE) and not freed_as_charged(object_state, slot, o):
        pass  # the replay failed its allocation: nothing to uncharge
    elif o == OBJ_ALLOC:  # slab_post_alloc_hook: 6.x charges the object, 4.x the slab it lands in
        if knobs[OBJECT_CHARGING]:
            outcome[i] = obj_cgroup_charge(memcg, stats, knobs, per_cpu, per_task, nbytes[i] + OBJ_EXT_BYTES,
                                           gfp[i], c, t, irq[i], pool[i], m)
        else:
            outcome[i] = slab_alloc_object(memcg, stats, knobs, per_cpu, per_task, slabs, caches, geometry, cursor,
                                           object_slab, slot, cache_node[i], gfp[i], c, t, irq[i], pool[i], m)
    elif o == OBJ_FREE:  # slab_free_hook
        if knobs[OBJECT_CHARGING]:
            obj_cgroup_uncharge(memcg, knobs, per_cpu, nbytes[i] + OBJ_EXT_BYTES, c, pool[i], m)
        else:
            slab_free_object(memcg, knobs, per_cpu, slabs, caches, cursor, object_slab, slot)
    elif o == LRU_CHARGE and pool[i] == POOL_ANON and pages[i] > 1:
        outcome[i] = charge_huge_page(memcg, stats, knobs, per_cpu, per_task, pages[i], gfp[i], c, t, irq[i], m)
    elif o == PAGE_ALLOC or o == LRU_CHARGE:
        outcome[i] = charge(memcg, stats, knobs, per_cpu, per_task, pages[i], gfp[i], c, t, irq[i], pool[i], m)
        if o == LRU_CHARGE and outcome[i] != FAILED:
            lru_charged(memcg, per_task, pages[i], pool[i], t)
    elif o == PAGE_FREE or (o == LRU_UNCHARGE and pool[i] == POOL_KMEM_PAGES):  # kernel stacks, socket buffers too
        uncharge_kmem_pages(memcg, knobs, per_cpu, pages[i], c, pool[i], m)
    elif o == LRU_UNCHARGE:
        uncharge_lru(memcg, per_task, pages[i], pool[i], t)
    elif o == ANON_UNMAPPED:
        unmap_anon(memcg, per_task, pages[i], t)
    elif o == ANON_FREED:
        free_unmapped_anon(memcg, pages[i])
    elif o == LRU_RECLAIMED:
        memcg[DEBT + pool[i]] -= pages[i]
    elif o == LRU_OOM_FREED:
        free_oom_victim_anon(memcg, per_task, pages[i], t)
    elif o == OOM_CHARGE or o == FAILED_CHARGE:
        fault_gfp = thp_charge_gfp(knobs, gfp[i]) if pages[i] > 1 << PAGE_ALLOC_COSTLY_ORDER else gfp[i]  # a THP fault's
        outcome[i] = charge_the_kernel_could_not_make(memcg, stats, knobs, per_cpu, per_task, pages[i], fault_gfp, c, t, irq[i],
                                                      m, o == OOM_CHARGE and obj[i] == RETRY_FOUND_ROOM)
    elif o == USER_RETURN:
        resume_user_mode_work(memcg, stats, knobs, per_task, t)
    elif o == TASK_FORK or o == TASK_CLONE_VM:
        dup_task_struct(per_task, t, obj[i])
        copy_mm(per_task, t, obj[i], o == TASK_CLONE_VM)
    elif o == TASK_EXEC:
        begin_new_exec(per_task, t)
    elif o == TASK_EXIT:
        exit_mm(per_task, t)
    elif o == TASK_JOIN:
        wait_for_child(memcg, knobs, per_task, t, obj[i])
    elif o == RECLAIM_TIME:
        delay_changes(memcg, knobs, per_task, per_task[t, RUNS_ON])
        per_task[per_task[t, RUNS_ON], KERNEL_STALL] += nbytes[i]
    if o == OBJ_ALLOC or o == PAGE_ALLOC:
        object_state[slot] = FAILED_ALLOCATION if outcome[i] == FAILED else HOLDS_OBJECT if o == OBJ_ALLOC else HOLDS_PAGES
    record_usage(memcg, stats, cursor, now - t_first, resolution_ns, bucket_last, bucket_peak)


@njit(inline="always")
def freed_as_charged(object_state, slot, o):
    """Whether a free finds in `slot` what the replay charged there (not an allocation it
    failed); the slot is left empty."""
    state = object_state[slot]
    holds = HOLDS_OBJECT if o == OBJ_FREE else HOLDS_PAGES
    if state == holds or state == FAILED_ALLOCATION:
        object_state[slot] = IDLE
    return state == holds


# -- the closed loop ---------------------------------------------------------------------------
#
# Each task runs on its own clock (knob CLOSED_LOOP; off, every delay is 0 and the trace's order
# stands). A task's delay is the stall the policy imposed on it (reclaim time, memory.high
# penalty sleeps) beyond the capturing kernel's own reclaim time in the trace (RECLAIM_TIME),
# never below 0, plus the delay its parent had when it forked it: a task cannot start before
# its fork. Each of its operations happens at its trace time plus its delay at that moment.
# Operations in interrupt context keep their trace time: they are the outside world's (a
# packet), no task's. A free is its task's operation like any other, on its clock, also when
# another task allocated the object (a reader's, an unlink of a file another task made): a
# throttled writer's data is still read and freed while it sleeps, and an object made late
# lives no longer for it. A free in interrupt context (an RCU callback, a softirq) is deferred work
# most often set off by the task that allocated the object (its close, its unlink), which the
# trace does not show: taken to be set off one RCU grace period (knob RCU_GRACE_NS) before it
# ran, or at the allocation if that is later, it comes as long after its set-off as in the
# trace, at its trace time plus the allocating task's delay at the set-off. So a close and the
# callback it queues move together, and a sleep after the close does not hold the callback,
# also when the allocation itself still waits on its late task's clock (the callback then waits
# for the task to pass the set-off, which comes no earlier than the allocation). A task's free
# whose allocation has not been replayed yet waits behind it on that task's clock (a reader
# that waited for the data), at its trace time plus that clock's delay.
#
# The replay takes operations in the order of those times. A task's operations wait in a queue
# (queued[i, NEXT]: the next one on the same clock, -1 none; queued[i, CLOCK]: that task;
# QUEUE_HEAD and QUEUE_TAIL per task) while it runs late; the first one of each such queue waits
# in `waiting`, a binary heap of (time due, operation) with the earliest first (cursor[WAITING]:
# its size). A task made by a fork that still waits waits too (HELD), until its fork is
# replayed, and so does a task that waited for a task it made to exit (TASK_JOIN), until that
# exit is replayed (when the trace has it queued already: else it goes on as far behind as that
# task is by then). So a task has an entry in the heap when it has waiting operations and is not
# HELD: at most one per task. An interrupt's free waits in the heap on its own (queued[i,
# CLOCK] -1), once its task's delay at the set-off is known: at most one entry per operation
# of the batch besides. While operations of the task from before the set-off still wait, it
# waits on the task's list of deferred frees (DEFERRED_HEAD and DEFERRED_TAIL, threaded by
# queued[i, NEXT], its set-off in queued[i, CLOCK]).
# For a set-off already past, the clock keeps one step of history: the trace time of its last
# operation that changed its delay, and the delay before (STALLED_AT, DELAY_BEFORE_STALL).
#
# Which tasks share a clock (knob CLOCKS) is a choice about the workload, which the trace cannot
# tell: OWN_CLOCKS (the default), each task on its own, as the kernel throttles each task
# alone, so a reader whose writer was throttled reads on at its own time (and frees what it
# reads as late as the writer sent it); SHARED_BY_PROCESS, a task made with CLONE_VM (a thread, a vfork
# child) runs on its creator's clock, for thread pools that wait for their slowest member; and
# SHARED_BY_WORKLOAD, all on one, as if every task waited for every other (a pipeline in lock
# step). Own clocks roughly bound the workload's stretch from below, one clock from above. The clock
# is the row of the task that owns it (RUNS_ON): its stall, reclaim time and start.
#
# Approximations: a batch's operations (a trace segment's, at most BATCH_SIZE of them) are all
# replayed before the next batch's, so the next batch's on-time operations may come before
# what the last one ran late (its clock, LAST_TS, stays put: no time is counted twice); a
# vfork child stays on its parent's clock after its exec; an interrupt's free whose task stalled
# twice or more between its set-off and its trace time waits for all those stalls but the last.

@njit
def task_delay(knobs, per_task, task):
    """How far behind its trace the task runs, in ns."""
    clock = per_task[task, RUNS_ON]
    return delay_beyond(knobs, per_task, clock, per_task[clock, KERNEL_STALL])


@njit
def delay_beyond(knobs, per_task, clock, kernel_stall):
    """The clock's delay when the capturing kernel has held its tasks `kernel_stall` ns in reclaim."""
    if not knobs[CLOSED_LOOP]:
        return 0
    return per_task[clock, STARTED_LATE] + max(per_task[clock, CLOCK_STALL] - kernel_stall, 0)


@njit(inline="always")
def stall(memcg, knobs, per_task, task, ns):
    """The policy holds the task `ns` in reclaim or asleep: its clock falls behind as much, and
    what it does next in this operation (a sleep after reclaim: its jiffy) comes that much later."""
    delay_changes(memcg, knobs, per_task, per_task[task, RUNS_ON])
    memcg[NOW] += ns
    per_task[task, STALL] += ns
    per_task[per_task[task, RUNS_ON], CLOCK_STALL] += ns


@njit(inline="always")
def delay_changes(memcg, knobs, per_task, clock):
    """The operation under way changes the clock's delay: keep the delay from before it."""
    if per_task[clock, STALLED_AT] != memcg[TRACE_NOW]:
        per_task[clock, STALLED_AT], per_task[clock, DELAY_BEFORE_STALL] = memcg[TRACE_NOW], task_delay(knobs, per_task, clock)


@njit(inline="always")
def wait_for_child(memcg, knobs, per_task, task, child):
    """The task waited for `child` to exit (wait4, pthread_join): it goes on no earlier than the
    child ended. Until the child's exit, queued already, is replayed, the task's clock is held
    (task_went_on lets it go); a child whose exit is not queued it follows as far as it is behind."""
    clock = per_task[task, RUNS_ON]
    if clock == per_task[child, RUNS_ON]:
        return
    delay_changes(memcg, knobs, per_task, clock)  # here, at the wait, whenever the child ends
    if per_task[child, EXIT_STATE] == EXIT_QUEUED:
        per_task[child, JOINER] = clock
        per_task[clock, HELD] = 1
    else:
        fall_behind(knobs, per_task, clock, child)


@njit(inline="always")
def fall_behind(knobs, per_task, clock, task):
    """The clock falls as far behind its trace as `task` is, if it is not already."""
    per_task[clock, STARTED_LATE] += max(task_delay(knobs, per_task, task) - task_delay(knobs, per_task, clock), 0)


@njit(inline="always")
def clock_at_birth(knobs, per_task, parent, child, clone_vm):
    """The clock a task made by `parent` runs on: its own, or its creator's (knob CLOCKS)."""
    if knobs[CLOCKS] == SHARED_BY_WORKLOAD or (knobs[CLOCKS] == SHARED_BY_PROCESS and clone_vm):
        return per_task[parent, RUNS_ON]
    return child


@njit(inline="always")
def clock_of(per_task, task, irq, op, obj, object_task, object_state, i):
    """The task on whose clock operation i runs; -1: none (an interrupt's, at its trace time)."""
    if (op[i] == OBJ_FREE or op[i] == PAGE_FREE) and obj[i] >= 0 and object_task[obj[i]] >= 0:
        if object_state[obj[i]] == IDLE or irq[i]:  # its allocation waits on that clock, or a deferred free
            return per_task[object_task[obj[i]], RUNS_ON]
    return -1 if irq[i] else per_task[task[i], RUNS_ON]


@njit(inline="always")
def on_time(knobs, per_task, task):
    """Whether the task's next operation is replayed at its trace time: nothing of it waits."""
    return per_task[task, QUEUE_HEAD] < 0 and not per_task[task, HELD] and task_delay(knobs, per_task, task) == 0


@njit
def due(ts, op, nbytes, knobs, per_task, task, i):
    """When operation i is due on the task's clock: its trace time plus the task's delay. The
    capturing kernel's reclaim that a RECLAIM_TIME closes is in the trace's timeline already:
    it comes off the delay from its own time on."""
    kernel_stall = per_task[task, KERNEL_STALL] + (nbytes[i] if op[i] == RECLAIM_TIME else 0)
    return ts[i] + delay_beyond(knobs, per_task, task, kernel_stall)


@njit
def enqueue(ts, op, obj, nbytes, waiting, cursor, knobs, per_task, queued, i, clock):
    """Operation i waits behind the operations on its clock; the first one waits for its time."""
    if ((op[i] == TASK_FORK or op[i] == TASK_CLONE_VM) and born_on_own_clock(per_task, obj[i], clock)
            and per_task[obj[i], QUEUE_HEAD] < 0):
        per_task[obj[i], HELD] = 1  # its operations wait for this one
    queued[i, NEXT], queued[i, CLOCK] = -1, clock
    if per_task[clock, QUEUE_HEAD] < 0:
        per_task[clock, QUEUE_HEAD] = i
        if not per_task[clock, HELD]:
            heap_push(waiting, cursor, due(ts, op, nbytes, knobs, per_task, clock, i), i)
    else:
        queued[per_task[clock, QUEUE_TAIL], NEXT] = i
    per_task[clock, QUEUE_TAIL] = i


@njit
def dequeue(waiting, cursor, per_task, queued, i):
    """Operation i, the heap's earliest and the first on its clock (if on one), is due: the next one
    comes first. Returns its clock (-1: none)."""
    heap_pop(waiting, cursor)
    clock = queued[i, CLOCK]
    if clock >= 0:
        per_task[clock, QUEUE_HEAD] = queued[i, NEXT]
        if queued[i, NEXT] < 0:
            per_task[clock, QUEUE_TAIL] = -1
    return clock


@njit(inline="always")
def task_went_on(ts, task, op, obj, nbytes, waiting, cursor, knobs, per_task, queued, i, clock, was_waiting):
    """After operation i: a forked task starts on its parent's clock; a task that waited for the
    one that exited goes on, as far behind; when i waited, the next operation on its clock waits
    for its own time; deferred frees whose set-off i passed wait for theirs."""
    if (op[i] == TASK_FORK or op[i] == TASK_CLONE_VM) and born_on_own_clock(per_task, obj[i], clock):
        child = obj[i]
        per_task[child, STARTED_LATE] = task_delay(knobs, per_task, clock)
        if per_task[child, HELD]:
            per_task[child, HELD] = 0
            first = per_task[child, QUEUE_HEAD]
            if first >= 0:
                heap_push(waiting, cursor, due(ts, op, nbytes, knobs, per_task, child, first), first)
    if op[i] == TASK_EXIT:
        per_task[task[i], EXIT_STATE] = EXITED
        joiner = per_task[task[i], JOINER]
        if joiner >= 0:
            per_task[task[i], JOINER] = -1
            fall_behind(knobs, per_task, joiner, task[i])
            per_task[joiner, HELD] = 0
            first = per_task[joiner, QUEUE_HEAD]
            if first >= 0:
                heap_push(waiting, cursor, due(ts, op, nbytes, knobs, per_task, joiner, first), first)
    if was_waiting and clock >= 0 and per_task[clock, QUEUE_HEAD] >= 0 and not per_task[clock, HELD]:
        first = per_task[clock, QUEUE_HEAD]
        heap_push(waiting, cursor, due(ts, op, nbytes, knobs, per_task, clock, first), first)
    if clock >= 0 and per_task[clock, DEFERRED_HEAD] >= 0:
        release_deferred_frees(ts, knobs, per_task, queued, waiting, cursor, clock)


@njit(inline="always")
def before_set_off(ts, per_task, clock, set_off):
    """Whether operations of the clock from before trace time `set_off` still wait."""
    head = per_task[clock, QUEUE_HEAD]
    return head >= 0 and ts[head] <= set_off


@njit(inline="always")
def delay_at(knobs, per_task, clock, set_off):
    """The clock's delay when its tasks were at trace time `set_off` (replayed up to there)."""
    if per_task[clock, STALLED_AT] > set_off:
        return per_task[clock, DELAY_BEFORE_STALL]
    return task_delay(knobs, per_task, clock)


@njit
def wait_for_set_off(ts, knobs, per_task, queued, waiting, cursor, i, clock, born):
    """Interrupt's free i comes at its trace time plus its clock's delay at its set-off (the
    closed loop above); while that delay is not known yet, it waits on the clock's deferred list."""
    set_off = max(ts[i] - knobs[RCU_GRACE_NS], born)
    queued[i, NEXT] = -1
    if before_set_off(ts, per_task, clock, set_off):
        queued[i, CLOCK] = set_off
        if per_task[clock, DEFERRED_HEAD] < 0:
            per_task[clock, DEFERRED_HEAD] = i
        else:
            queued[per_task[clock, DEFERRED_TAIL], NEXT] = i
        per_task[clock, DEFERRED_TAIL] = i
    else:
        queued[i, CLOCK] = -1  # in the heap, on no clock
        heap_push(waiting, cursor, ts[i] + delay_at(knobs, per_task, clock, set_off), i)


@njit
def release_deferred_frees(ts, knobs, per_task, queued, waiting, cursor, clock):
    """The clock's deferred frees whose set-off its tasks have passed wait for their time, in order."""
    while per_task[clock, DEFERRED_HEAD] >= 0:
        i = per_task[clock, DEFERRED_HEAD]
        set_off = queued[i, CLOCK]
        if before_set_off(ts, per_task, clock, set_off):
            return
        per_task[clock, DEFERRED_HEAD] = queued[i, NEXT]
        if queued[i, NEXT] < 0:
            per_task[clock, DEFERRED_TAIL] = -1
        queued[i, CLOCK] = -1
        heap_push(waiting, cursor, ts[i] + delay_at(knobs, per_task, clock, set_off), i)


@njit(inline="always")
def born_on_own_clock(per_task, child, clock):
    """Whether a task made on `clock` starts a clock of its own (which its fork's delay starts)."""
    return per_task[child, RUNS_ON] == child and child != clock


@njit
def heap_push(waiting, cursor, at, i):
    k = cursor[WAITING]
    cursor[WAITING] += 1
    while k > 0:
        parent = (k - 1) // 2
        if not earlier(at, i, waiting[parent, DUE], waiting[parent, OP]):
            break
        waiting[k, DUE], waiting[k, OP] = waiting[parent, DUE], waiting[parent, OP]
        k = parent
    waiting[k, DUE], waiting[k, OP] = at, i


@njit
def heap_pop(waiting, cursor):
    """Drop the earliest entry."""
    cursor[WAITING] -= 1
    size = cursor[WAITING]
    at, i = waiting[size, DUE], waiting[size, OP]
    k = 0
    while 2 * k + 1 < size:
        child = 2 * k + 1
        if child + 1 < size and earlier(waiting[child + 1, DUE], waiting[child + 1, OP], waiting[child, DUE], waiting[child, OP]):
            child += 1
        if not earlier(waiting[child, DUE], waiting[child, OP], at, i):
            break
        waiting[k, DUE], waiting[k, OP] = waiting[child, DUE], waiting[child, OP]
        k = child
    waiting[k, DUE], waiting[k, OP] = at, i


@njit
def earlier(at, i, other_at, other_i):
    """Time order; operations due at once go in trace order."""
    return at < other_at or (at == other_at and i < other_i)


@intrinsic
def borrowed_view(typingctx, array):
    """The same array without its reference count (meminfo), valid while the original is.

    numba counts references to every array a compiled helper is given, with atomic
    increments its pruning pass often fails to remove once the helpers are inlined: on the
    state arrays that would cost more than the rest of an operation.
    """
    def codegen(context, builder, signature, args):
        original = context.make_array(array)(context, builder, args[0])
        view = context.make_array(array)(context, builder)
        context.populate_array(view, data=original.data, shape=original.shape, strides=original.strides,
                               itemsize=original.itemsize, meminfo=None)
        return view._getvalue()
    return array(array), codegen


def same_array(array):
    """borrowed when the model runs interpreted: no reference count to leave out."""
    return array


# numba_config.DISABLE_JIT is what replay.engine sets while it loads the interpreted copy.
borrowed = same_array if numba_config.DISABLE_JIT else borrowed_view


@njit
def account_time(memcg, stats, start, end):
    if memcg[USAGE] > memcg[HIGH] and end > start:
        stats[NS_ABOVE_HIGH] += end - start
        stats[PAGE_NS_ABOVE_HIGH] += (memcg[USAGE] - memcg[HIGH]) * (end - start)
        if stats[PAGE_NS_ABOVE_HIGH] >= CARRY:  # a second word, where int64 would overflow
            stats[PAGE_NS_ABOVE_HIGH] -= CARRY
            stats[PAGE_NS_ABOVE_HIGH_CARRIES] += 1


@njit
def record_usage(memcg, stats, cursor, t_ns, resolution_ns, bucket_last, bucket_peak):
    """The usage time series (last and peak per bucket) and the peak; the bucket is recomputed
    only when t_ns leaves the last one."""
    if not cursor[BUCKET_START] <= t_ns < cursor[BUCKET_END]:
        cursor[BUCKET] = t_ns // resolution_ns
        cursor[BUCKET_START] = cursor[BUCKET] * resolution_ns
        cursor[BUCKET_END] = cursor[BUCKET_START] + resolution_ns
    usage, bucket = memcg[USAGE], cursor[BUCKET]
    bucket_last[bucket] = usage
    bucket_peak[bucket] = max(bucket_peak[bucket], usage)
    stats[PEAK_PAGES] = max(stats[PEAK_PAGES], usage)

