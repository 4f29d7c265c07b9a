"""The fast engine: replay.reference's model of memcg charging, compiled with numba.

Its result must equal the reference's exactly (EngineResult.differences() == [], checked
by tests/test_engines_agree.py), so it is the reference rewritten for speed and nothing
else: each @njit helper stands for the reference method (and kernel function) of the
same name, makes the same checks in the same order and counts the same events. What
changes is the representation:

- State lives in int64 arrays with named slots instead of attributes: MEMCG (usage, max,
  high, failcnt, pools, debt, and the file LRU: a queue of folio sizes in its tail that
  grows between batches, with freed folios per order), STATS (the result's counters), a per-CPU table (page and
  object stock), a per-task table (pages over high, stall, anon pages held, OOM debt).
- The reference's dicts and sets keyed by object pseudonym become arrays indexed by it:
  pseudonyms are dense from 0; -1 (no pseudonym) gets the last slot.
- Slabs are rows of a table. Each cache's partial list is a stack threaded through the
  rows (a head per cache, a next per slab); like the reference's lists it may hold
  discarded slabs, which take_partial skips.
- String knobs become small integer codes; -ENOMEM is the outcome FAILED, not an exception.
- The helpers are given the arrays `borrowed`, without numba's reference counting, which
  would otherwise cost more than the model itself.
- Numbers are int64 where the reference has Python ints: the throttle penalty, which
  squares the overage, saturates instead of growing past the clamp it is compared with,
  and page_ns_above_high carries into a second word. Results are exact while the usage
  above high, shifted left by 20 or times the gap between two operations in ns, fits in
  int64 (4 GiB above high stays exact across gaps of up to 2 hours).

The operations go through the compiled loop in batches, the state carried between calls
in those arrays, so per-batch scratch (dtype conversions) stays bounded however long the
trace; the slab table grows between batches by at most one slab per object allocation.
"""
from __future__ import annotations

import math

import numpy as np

from common.jit import njit  # before numba: it sets numba's cache directory
from numba.extending import intrinsic  # isort: skip
from replay.input import ReplayInput
from replay.ops import (
    HZ, LRU_CHARGE, LRU_OOM_FREED, LRU_RECLAIMED, LRU_UNCHARGE, MEMCG_CHARGE_BATCH_6X, MEMCG_DELAY_PRECISION_SHIFT,
    MEMCG_DELAY_SCALING_SHIFT, MEMCG_MAX_HIGH_DELAY_JIFFIES, OBJ_ALLOC, OBJ_EXT_BYTES, OBJ_FREE, OOM_CHARGE, OUTCOME,
    PAGE_ALLOC, PAGE_ALLOC_COSTLY_ORDER,
    PAGE_FREE, PAGE_SHIFT, PAGE_SIZE, POOL_ANON, POOL_FILE, POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE,
    RECLAIM_TRIGGERS, SWAP_CLUSTER_MAX,
    TRIGGER, USER_RETURN, GfpBits, Limits,
)
from replay.policy import HIGH_MODES, Policy
from replay.result import EngineResult
from traces.errors import UserError

BATCH_SIZE = 1 << 21  # operations per call of the compiled loop

# Outcome codes and reclaim triggers, as plain ints the compiled code can use.
STOCK, NO_CHARGE, CHARGED, RECLAIMED = OUTCOME["stock"], OUTCOME["no_charge"], OUTCOME["charged"], OUTCOME["reclaimed"]
FALLBACK, FORCED, OOM, FAILED = OUTCOME["fallback"], OUTCOME["forced"], OUTCOME["oom"], OUTCOME["failed"]
BY_MAX, BY_HIGH_SYNC, BY_USER_RETURN, BY_ASYNC = (TRIGGER[t] for t in ("max", "high_sync", "user_return", "async"))
SYNC, RETURN_TO_USER, MAINLINE, FAIL_NOWAIT, WATERMARK = (HIGH_MODES.index(mode) for mode in (
    "sync", "return-to-user", "mainline", "fail-nowait", "watermark"))

# knobs: the policy, limits and gfp bits, one int each.
(OBJECT_CHARGING, NOWAIT_HIGH_ORDER, STOCK_BATCH, HIGH_MODE, MAX_RECLAIM_RETRIES, WATERMARK_MARGIN, SWAP,
 RECLAIM_NS_PER_PAGE, GFP_DIRECT_RECLAIM, GFP_NORETRY, GFP_RETRY_MAYFAIL, GFP_NOFAIL, GFP_HIGH) = range(13)
N_KNOBS = GFP_HIGH + 1

# memcg: the page counter and what its usage is made of (reference.Memcg).
USAGE, MAX, HIGH, FAILCNT = range(4)
POOLS = 4  # memcg[POOLS + pool]: pages per pool
DEBT = POOLS + 6  # memcg[DEBT + pool]: pages reclaimed that the trace has yet to free (reference.Memcg.debt)
LRU_HEAD, LRU_TAIL = DEBT + 6, DEBT + 7  # memcg[FILE_LRU + LRU_HEAD .. FILE_LRU + LRU_TAIL): file folios, oldest first
FREED_FOLIOS = DEBT + 8  # memcg[FREED_FOLIOS + order]: freed folios still to leave the file LRU
FILE_LRU = FREED_FOLIOS + 64

# stats: the result's counters, in the order of STAT_FIELDS; then reclaim calls and pages per trigger.
STAT_FIELDS = ("charges", "stock_hits", "forced", "max_events", "high_events", "oom_kills", "high_order_attempts",
               "fallbacks", "ns_above_high", "page_ns_above_high", "throttle_ns", "peak_pages")
(CHARGES, STOCK_HITS, FORCED_CHARGES, MAX_EVENTS, HIGH_EVENTS, OOM_KILLS, HIGH_ORDER_ATTEMPTS, FALLBACKS,
 NS_ABOVE_HIGH, PAGE_NS_ABOVE_HIGH, THROTTLE_NS, PEAK_PAGES) = range(len(STAT_FIELDS))
PAGE_NS_ABOVE_HIGH_CARRIES = len(STAT_FIELDS)  # page_ns_above_high = carries * CARRY + stats[PAGE_NS_ABOVE_HIGH]
RECLAIM_CALLS = PAGE_NS_ABOVE_HIGH_CARRIES + 1  # stats[RECLAIM_CALLS + trigger]
RECLAIMED_PAGES = RECLAIM_CALLS + len(RECLAIM_TRIGGERS)
N_STATS = RECLAIMED_PAGES + len(RECLAIM_TRIGGERS)
CARRY = 1 << 62

PAGE_STOCK, OBJ_STOCK = range(2)  # per_cpu columns: pre-charged pages, pre-charged bytes
# per_task columns: current->memcg_nr_pages_over_high, stall ns, anon pages held (reference.anon), OOM debt,
# anon pages the kernel's OOM victim freed that the model holds until it kills it (reference.oom_kept)
OVER_HIGH, STALL, ANON, OOM_DEBT, OOM_KEPT = range(5)
SLAB_CACHE, SLAB_CAPACITY, SLAB_PAGES, SLAB_POOL, SLAB_USED, SLAB_NEXT_PARTIAL = range(6)  # slabs columns
CURRENT_SLAB, PARTIAL_HEAD = range(2)  # caches columns; -1: none
ORDER, MIN_ORDER, OBJECTS, OBJECTS_MIN = range(4)  # geometry columns
# cursor: what the loop carries from one batch to the next.
LAST_TS, SLAB_COUNT, BUCKET, BUCKET_START, BUCKET_END = range(5)

SATURATED = 1 << 62  # a throttle penalty past any clamp
MAX_EXACT_OVERAGE = math.isqrt(((1 << 63) - 1) // HZ)  # overage**2 * HZ fits in int64 up to here


# -- page_counter.c --------------------------------------------------------------------------

@njit
def page_counter_try_charge(memcg, nr_pages):
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
    return max(memcg[MAX] - memcg[USAGE], 0)


# -- per-CPU page stock ----------------------------------------------------------------------

@njit
def consume_stock(knobs, per_cpu, nr_pages, cpu):
    if nr_pages > knobs[STOCK_BATCH] or per_cpu[cpu, PAGE_STOCK] < nr_pages:
        return False
    per_cpu[cpu, PAGE_STOCK] -= nr_pages
    return True


@njit
def refill_stock(memcg, knobs, per_cpu, nr_pages, cpu):
    per_cpu[cpu, PAGE_STOCK] += nr_pages
    if per_cpu[cpu, PAGE_STOCK] > knobs[STOCK_BATCH]:
        drain_stock(memcg, per_cpu, cpu)


@njit
def drain_stock(memcg, per_cpu, cpu):
    page_counter_uncharge(memcg, per_cpu[cpu, PAGE_STOCK])
    per_cpu[cpu, PAGE_STOCK] = 0


@njit
def drain_all_stock(memcg, per_cpu):
    for cpu in range(per_cpu.shape[0]):
        drain_stock(memcg, per_cpu, cpu)


# -- try_charge_memcg (KERNEL-MODEL §2) and memory.high (§3) -----------------------------------

@njit
def charge(memcg, stats, knobs, per_cpu, per_task, nr_pages, gfp, cpu, task, irq, pool):
    """A page charge; the outcome code."""
    outcome = try_charge_memcg(memcg, stats, knobs, per_cpu, per_task, gfp, nr_pages, cpu, task, irq)
    if outcome != FAILED:
        memcg[POOLS + pool] += nr_pages
    return outcome


@njit
def try_charge_memcg(memcg, stats, knobs, per_cpu, per_task, gfp, nr_pages, cpu, task, irq):
    """Charge nr_pages; the outcome code, FAILED for -ENOMEM."""
    batch = max(knobs[STOCK_BATCH], nr_pages)
    retries = knobs[MAX_RECLAIM_RETRIES]
    drained = reclaimed_once = oom_killed = False
    victim = -1
    while True:
        if consume_stock(knobs, per_cpu, nr_pages, cpu):
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
        reclaimed = try_to_free_mem_cgroup_pages(memcg, stats, knobs, per_task, task, nr_pages, BY_MAX, False)
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
        if oom_killed and victim == task:  # passed_oom && task_is_dying(): the charge fails, the victim exits
            exit_mmap(memcg, per_task, victim)
            return nomem(memcg, stats, knobs, gfp, nr_pages, reclaimed_once)
        victim = mem_cgroup_oom(memcg, stats, per_task, nr_pages, task)
        if victim >= 0:
            oom_killed = True
            retries = knobs[MAX_RECLAIM_RETRIES]
            continue
        return nomem(memcg, stats, knobs, gfp, nr_pages, reclaimed_once)
    stats[CHARGES] += 1
    if batch > nr_pages:
        refill_stock(memcg, knobs, per_cpu, batch - nr_pages, cpu)
    handle_high_after_charge(memcg, stats, knobs, per_task, gfp, nr_pages, batch, task, irq)
    if oom_killed:
        return OOM
    return RECLAIMED if reclaimed_once else CHARGED


@njit
def nomem(memcg, stats, knobs, gfp, nr_pages, raised_max_event):
    """Fail, unless __GFP_NOFAIL or __GFP_HIGH force the charge past max."""
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
            try_to_free_mem_cgroup_pages(memcg, stats, knobs, per_task, task, nr_pages, BY_HIGH_SYNC, False)
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
        try_to_free_mem_cgroup_pages(memcg, stats, knobs, per_task, task, memcg[USAGE] - wmark_low, BY_ASYNC, True)


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
    return try_to_free_mem_cgroup_pages(memcg, stats, knobs, per_task, task, nr_pages, trigger, False)


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
        penalty = min(calculate_high_delay(memcg, nr_pages), MEMCG_MAX_HIGH_DELAY_JIFFIES)
        if penalty <= HZ // 100:
            return
        if reclaimed != 0 or retries > 0:
            if reclaimed == 0:
                retries -= 1
            in_retry = True
            continue
        per_task[task, STALL] += penalty * (1_000_000_000 // HZ)
        stats[THROTTLE_NS] += penalty * (1_000_000_000 // HZ)
        return


@njit
def calculate_high_delay(memcg, nr_pages):
    """Penalty jiffies: about HZ * r^2 * nr / 64 with r = (usage - high) / high; SATURATED
    where int64 would overflow (the caller clamps it to 2 * HZ anyway)."""
    usage, high = memcg[USAGE], memcg[HIGH]
    if usage <= high:
        return 0
    high = max(high, 1)  # calculate_overage: a threshold of 1 page when high is 0
    overage = ((usage - high) << 20) // high
    if overage > MAX_EXACT_OVERAGE:
        penalty = SATURATED  # the exact one is over 5e8 jiffies: past the clamp whatever nr_pages
    else:
        penalty = (overage * overage * HZ) >> MEMCG_DELAY_PRECISION_SHIFT >> MEMCG_DELAY_SCALING_SHIFT
    if nr_pages > 0 and penalty > SATURATED // nr_pages:
        return SATURATED
    return penalty * nr_pages // MEMCG_CHARGE_BATCH_6X


# -- reclaim and OOM ---------------------------------------------------------------------------

@njit
def try_to_free_mem_cgroup_pages(memcg, stats, knobs, per_task, task, nr_pages, trigger, exact):
    """Reclaim at least max(nr_pages, SWAP_CLUSTER_MAX): whole file folios, then
    reclaimable slab, then anon pages."""
    want = nr_pages if exact else max(nr_pages, SWAP_CLUSTER_MAX)
    got = shrink_file_lru(memcg, want)
    got = reclaim_pages(memcg, POOL_SLAB_RECLAIMABLE, min(max(want - got, 0), memcg[POOLS + POOL_SLAB_RECLAIMABLE]), got)
    if knobs[SWAP]:
        got = reclaim_pages(memcg, POOL_ANON, min(max(want - got, 0), memcg[POOLS + POOL_ANON]), got)
    page_counter_uncharge(memcg, got)
    stats[RECLAIM_CALLS + trigger] += 1
    stats[RECLAIMED_PAGES + trigger] += got
    if trigger != BY_ASYNC:
        per_task[task, STALL] += got * knobs[RECLAIM_NS_PER_PAGE]
    return got


@njit
def shrink_file_lru(memcg, want):
    """Evict the oldest file folios, each whole, until `want` pages are freed; page by page
    should the pool hold more than its folios."""
    got = 0
    while got < want and memcg[POOLS + POOL_FILE]:
        folio = oldest_folio(memcg)
        if folio == 0:
            folio = want - got
        got = reclaim_pages(memcg, POOL_FILE, min(folio, memcg[POOLS + POOL_FILE]), got)
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
    """Kill the task with the most anon pages (charges up to PAGE_ALLOC_COSTLY_ORDER); the
    victim, -1 if none holds any. Another task's memory goes at once, the charging task's
    own when its charge has failed."""
    if nr_pages > 1 << PAGE_ALLOC_COSTLY_ORDER:
        return -1
    victim = -1
    for t in range(per_task.shape[0]):
        if victim < 0 or per_task[t, ANON] > per_task[victim, ANON]:
            victim = t
    if victim < 0 or per_task[victim, ANON] == 0:
        return -1
    stats[OOM_KILLS] += 1
    if victim != task:
        exit_mmap(memcg, per_task, victim)
    return victim


@njit
def exit_mmap(memcg, per_task, victim):
    """An OOM victim's anon pages are uncharged; owed until the trace frees them (those it
    freed already, after the kernel's own kill of it, are not)."""
    pages = min(per_task[victim, ANON], memcg[POOLS + POOL_ANON])
    per_task[victim, ANON] = 0
    per_task[victim, OOM_DEBT] += max(pages - per_task[victim, OOM_KEPT], 0)
    per_task[victim, OOM_KEPT] = 0
    memcg[POOLS + POOL_ANON] -= pages
    page_counter_uncharge(memcg, pages)


@njit
def charge_that_ended_in_oom(memcg, stats, knobs, per_cpu, per_task, nr_pages, gfp, cpu, task, irq):
    """The charge the capturing kernel OOM-killed for: tried, and cancelled if made. So much of
    the model's room as other CPUs' stocks explain (drain_all_stock only schedules their
    drain) is held through it (reference.charge_that_ended_in_oom)."""
    held = min(max(room(memcg, knobs, per_cpu) - nr_pages + 1, 0), knobs[STOCK_BATCH] * (per_cpu.shape[0] - 1))
    memcg[USAGE] += held
    outcome = try_charge_memcg(memcg, stats, knobs, per_cpu, per_task, gfp, nr_pages, cpu, task, irq)
    if outcome != FAILED:
        page_counter_uncharge(memcg, nr_pages)
    page_counter_uncharge(memcg, held)
    return outcome


@njit
def room(memcg, knobs, per_cpu):
    """What a charge could get: the margin, the page stocks and what reclaim can take."""
    reclaimable = memcg[POOLS + POOL_FILE] + memcg[POOLS + POOL_SLAB_RECLAIMABLE]
    if knobs[SWAP]:
        reclaimable += memcg[POOLS + POOL_ANON]
    return margin(memcg) + per_cpu[:, PAGE_STOCK].sum() + reclaimable


# -- uncharging --------------------------------------------------------------------------------

@njit
def pay_debt(memcg, pool, nr_pages):
    """Pages of a free that reclaim already took; the rest is uncharged for real."""
    paid = min(max(memcg[DEBT + pool], 0), nr_pages)
    memcg[DEBT + pool] -= paid
    return nr_pages - paid


@njit
def lru_charged(memcg, per_task, nr_pages, pool, task):
    """A file folio joins the LRU's young end; anon pages count for the charging task."""
    if pool == POOL_FILE:
        memcg[FILE_LRU + memcg[LRU_TAIL]] = nr_pages
        memcg[LRU_TAIL] += 1
    elif pool == POOL_ANON:
        per_task[task, ANON] += nr_pages


@njit
def pay_oom_debt(per_task, nr_pages, task):
    """Anon pages the task frees that the model's OOM kill of it took already; the rest."""
    paid = min(per_task[task, OOM_DEBT], nr_pages)
    per_task[task, OOM_DEBT] -= paid
    return nr_pages - paid


@njit
def free_oom_victim_anon(memcg, per_task, nr_pages, task):
    """The kernel's OOM victim frees anon pages: the model's kill of it paid them, it keeps its
    own until the model kills it, the rest (COW originals) are uncharged (reference)."""
    unpaid = pay_oom_debt(per_task, nr_pages, task)
    kept = min(unpaid, max(per_task[task, ANON] - per_task[task, OOM_KEPT], 0))
    per_task[task, OOM_KEPT] += kept
    uncharge_folios(memcg, unpaid - kept, POOL_ANON)


@njit
def uncharge_lru(memcg, per_task, nr_pages, pool, task):
    if pool == POOL_ANON:
        nr_pages = pay_oom_debt(per_task, nr_pages, task)
        per_task[task, ANON] = max(per_task[task, ANON] - nr_pages, 0)
    uncharge_folios(memcg, nr_pages, pool)


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
def uncharge_kmem_pages(memcg, knobs, per_cpu, nr_pages, cpu, pool):
    nr_pages = min(pay_debt(memcg, pool, nr_pages), memcg[POOLS + pool])
    memcg[POOLS + pool] -= nr_pages
    if knobs[OBJECT_CHARGING]:
        refill_stock(memcg, knobs, per_cpu, nr_pages, cpu)  # obj_cgroup_uncharge_pages goes through the stock
    else:
        page_counter_uncharge(memcg, nr_pages)


# -- object charging (6.x obj_cgroup) ----------------------------------------------------------

@njit
def obj_cgroup_charge(memcg, stats, knobs, per_cpu, per_task, size, gfp, cpu, task, irq, pool):
    if per_cpu[cpu, OBJ_STOCK] >= size:  # consume_obj_stock
        per_cpu[cpu, OBJ_STOCK] -= size
        stats[STOCK_HITS] += 1
        return STOCK
    nr_pages, nr_bytes = size >> PAGE_SHIFT, size & (PAGE_SIZE - 1)
    if nr_bytes:
        nr_pages += 1
    outcome = charge(memcg, stats, knobs, per_cpu, per_task, nr_pages, gfp, cpu, task, irq, pool)
    if outcome != FAILED and nr_bytes:
        per_cpu[cpu, OBJ_STOCK] += PAGE_SIZE - nr_bytes
    return outcome


@njit
def obj_cgroup_uncharge(memcg, knobs, per_cpu, size, cpu, pool):
    """refill_obj_stock(allow_uncharge): whole pages above one go back to the page stock."""
    per_cpu[cpu, OBJ_STOCK] += size
    if per_cpu[cpu, OBJ_STOCK] > PAGE_SIZE:
        nr_pages = per_cpu[cpu, OBJ_STOCK] >> PAGE_SHIFT
        per_cpu[cpu, OBJ_STOCK] &= PAGE_SIZE - 1
        own = min(nr_pages, memcg[POOLS + pool] + memcg[DEBT + pool])
        uncharge_kmem_pages(memcg, knobs, per_cpu, own, cpu, pool)
        if nr_pages > own:  # the byte stock is shared by both slab pools
            uncharge_kmem_pages(memcg, knobs, per_cpu, nr_pages - own, cpu, POOL_SLAB_RECLAIMABLE + POOL_SLAB_UNRECLAIMABLE - pool)


# -- slab charging (4.x per-memcg caches): slabs of each cache, charged whole --------------------

@njit
def slab_alloc_object(memcg, stats, knobs, per_cpu, per_task, slabs, caches, geometry, cursor, object_slab,
                      slot, cache, gfp, cpu, task, irq, pool):
    outcome = NO_CHARGE
    slab = caches[cache, CURRENT_SLAB]
    if slab < 0 or slabs[slab, SLAB_USED] == slabs[slab, SLAB_CAPACITY]:
        slab = take_partial(slabs, caches, cache)
    if slab < 0:
        slab, outcome = allocate_slab(memcg, stats, knobs, per_cpu, per_task, slabs, geometry, cursor,
                                      cache, gfp, cpu, task, irq, pool)
        if slab < 0:
            return outcome
    caches[cache, CURRENT_SLAB] = slab
    slabs[slab, SLAB_USED] += 1
    object_slab[slot] = slab
    return outcome


@njit
def take_partial(slabs, caches, cache):
    """Pop the cache's partial slabs until one still has objects and free slots; -1: none.

    A slab is pushed when it stops being full while not current, and popped before it can
    become current (and full) again, so it is on its cache's stack at most once.
    """
    slab = caches[cache, PARTIAL_HEAD]
    while slab >= 0:
        caches[cache, PARTIAL_HEAD] = slabs[slab, SLAB_NEXT_PARTIAL]
        if 0 < slabs[slab, SLAB_USED] < slabs[slab, SLAB_CAPACITY]:
            return slab
        slab = caches[cache, PARTIAL_HEAD]
    return -1


@njit
def allocate_slab(memcg, stats, knobs, per_cpu, per_task, slabs, geometry, cursor, cache, gfp, cpu, task, irq, pool):
    """SLUB allocate_slab: try the cache's order with a no-retry gfp (and, in 4.3, without
    direct reclaim above the minimum order), then fall back to the minimum order with the
    caller's gfp. The new slab (-1 if none) and the outcome."""
    order, min_order = geometry[cache, ORDER], geometry[cache, MIN_ORDER]
    first_gfp = (gfp | knobs[GFP_NORETRY]) & ~knobs[GFP_NOFAIL]
    if order > min_order:
        stats[HIGH_ORDER_ATTEMPTS] += 1
        if knobs[NOWAIT_HIGH_ORDER]:
            first_gfp &= ~knobs[GFP_DIRECT_RECLAIM]
    outcome = charge(memcg, stats, knobs, per_cpu, per_task, 1 << order, first_gfp, cpu, task, irq, pool)
    if outcome != FAILED:
        return new_slab(slabs, cursor, cache, geometry[cache, OBJECTS], 1 << order, pool), outcome
    outcome = charge(memcg, stats, knobs, per_cpu, per_task, 1 << min_order, gfp, cpu, task, irq, pool)
    if outcome == FAILED:
        return -1, outcome
    if order > min_order:
        stats[FALLBACKS] += 1
        outcome = FALLBACK
    return new_slab(slabs, cursor, cache, geometry[cache, OBJECTS_MIN], 1 << min_order, pool), outcome


@njit
def new_slab(slabs, cursor, cache, capacity, pages, pool):
    """The next row of the slab table (reference.Slab(cache, capacity, pages, pool))."""
    slab = cursor[SLAB_COUNT]
    cursor[SLAB_COUNT] += 1
    slabs[slab, SLAB_CACHE] = cache
    slabs[slab, SLAB_CAPACITY] = capacity
    slabs[slab, SLAB_PAGES] = pages
    slabs[slab, SLAB_POOL] = pool
    slabs[slab, SLAB_USED] = 0
    slabs[slab, SLAB_NEXT_PARTIAL] = -1
    return slab


@njit
def slab_free_object(memcg, knobs, per_cpu, slabs, caches, object_slab, slot):
    slab = object_slab[slot]
    if slab < 0:
        raise ValueError("an object is freed that no slab holds (the reference raises KeyError)")
    object_slab[slot] = -1  # objects.pop(obj)
    slabs[slab, SLAB_USED] -= 1
    cache = slabs[slab, SLAB_CACHE]
    current = caches[cache, CURRENT_SLAB] == slab
    if slabs[slab, SLAB_USED] == 0 and not current:
        uncharge_kmem_pages(memcg, knobs, per_cpu, slabs[slab, SLAB_PAGES], 0, slabs[slab, SLAB_POOL])  # discard_slab
    elif slabs[slab, SLAB_USED] == slabs[slab, SLAB_CAPACITY] - 1 and not current:
        slabs[slab, SLAB_NEXT_PARTIAL] = caches[cache, PARTIAL_HEAD]  # a full slab became partial
        caches[cache, PARTIAL_HEAD] = slab


# -- the loop ----------------------------------------------------------------------------------

@njit
def replay_batch(ts, cpu, task, irq, op, gfp, pages, nbytes, cache, obj, pool, outcome,
                 t_first, resolution_ns, memcg, stats, knobs, per_cpu, per_task, charged, object_slab,
                 slabs, caches, geometry, cursor, bucket_last, bucket_peak):
    """Reference.feed for one batch of operations; outcome is the batch's slice of the result's."""
    memcg, stats, knobs, per_cpu, per_task = (borrowed(memcg), borrowed(stats), borrowed(knobs), borrowed(per_cpu),
                                              borrowed(per_task))
    charged, object_slab, slabs, caches = borrowed(charged), borrowed(object_slab), borrowed(slabs), borrowed(caches)
    geometry, cursor = borrowed(geometry), borrowed(cursor)
    bucket_last, bucket_peak = borrowed(bucket_last), borrowed(bucket_peak)
    no_pseudonym = charged.shape[0] - 1
    for i in range(ts.shape[0]):
        now = ts[i]
        account_time(memcg, stats, cursor[LAST_TS], now)
        cursor[LAST_TS] = now
        t, c, o = task[i], cpu[i], op[i]
        slot = obj[i] if obj[i] >= 0 else no_pseudonym
        if (o == OBJ_FREE or o == PAGE_FREE) and not charged[slot]:
            pass  # the replay failed its allocation: nothing to uncharge
        elif o == OBJ_ALLOC:  # slab_post_alloc_hook
            if knobs[OBJECT_CHARGING]:
                outcome[i] = obj_cgroup_charge(memcg, stats, knobs, per_cpu, per_task, nbytes[i] + OBJ_EXT_BYTES,
                                               gfp[i], c, t, irq[i], pool[i])
            else:
                outcome[i] = slab_alloc_object(memcg, stats, knobs, per_cpu, per_task, slabs, caches, geometry, cursor,
                                               object_slab, slot, cache[i], gfp[i], c, t, irq[i], pool[i])
        elif o == OBJ_FREE:  # slab_free_hook
            if knobs[OBJECT_CHARGING]:
                obj_cgroup_uncharge(memcg, knobs, per_cpu, nbytes[i] + OBJ_EXT_BYTES, c, pool[i])
            else:
                slab_free_object(memcg, knobs, per_cpu, slabs, caches, object_slab, slot)
        elif o == PAGE_ALLOC or o == LRU_CHARGE:
            outcome[i] = charge(memcg, stats, knobs, per_cpu, per_task, pages[i], gfp[i], c, t, irq[i], pool[i])
            if o == LRU_CHARGE and outcome[i] != FAILED:
                lru_charged(memcg, per_task, pages[i], pool[i], t)
        elif o == PAGE_FREE:
            uncharge_kmem_pages(memcg, knobs, per_cpu, pages[i], c, pool[i])
        elif o == LRU_UNCHARGE:
            uncharge_lru(memcg, per_task, pages[i], pool[i], t)
        elif o == LRU_RECLAIMED:
            memcg[DEBT + pool[i]] -= pages[i]
        elif o == LRU_OOM_FREED:
            free_oom_victim_anon(memcg, per_task, pages[i], t)
        elif o == OOM_CHARGE:
            outcome[i] = charge_that_ended_in_oom(memcg, stats, knobs, per_cpu, per_task, pages[i], gfp[i], c, t, irq[i])
        elif o == USER_RETURN:
            resume_user_mode_work(memcg, stats, knobs, per_task, t)
        if (o == OBJ_ALLOC or o == PAGE_ALLOC) and outcome[i] != FAILED:
            charged[slot] = True
        elif o == OBJ_FREE or o == PAGE_FREE:
            charged[slot] = False
        record_usage(memcg, stats, cursor, now - t_first, resolution_ns, bucket_last, bucket_peak)


@intrinsic
def borrowed(typingctx, array):
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


@njit
def account_time(memcg, stats, start, end):
    if memcg[USAGE] > memcg[HIGH] and end > start:
        stats[NS_ABOVE_HIGH] += end - start
        stats[PAGE_NS_ABOVE_HIGH] += (memcg[USAGE] - memcg[HIGH]) * (end - start)
        if stats[PAGE_NS_ABOVE_HIGH] >= CARRY:  # the reference's Python int does not overflow
            stats[PAGE_NS_ABOVE_HIGH] -= CARRY
            stats[PAGE_NS_ABOVE_HIGH_CARRIES] += 1


@njit
def record_usage(memcg, stats, cursor, t_ns, resolution_ns, bucket_last, bucket_peak):
    """EngineResult.record; the bucket is recomputed only when t_ns leaves the last one."""
    if not cursor[BUCKET_START] <= t_ns < cursor[BUCKET_END]:
        cursor[BUCKET] = t_ns // resolution_ns
        cursor[BUCKET_START] = cursor[BUCKET] * resolution_ns
        cursor[BUCKET_END] = cursor[BUCKET_START] + resolution_ns
    usage, bucket = memcg[USAGE], cursor[BUCKET]
    bucket_last[bucket] = usage
    bucket_peak[bucket] = max(bucket_peak[bucket], usage)
    stats[PEAK_PAGES] = max(stats[PEAK_PAGES], usage)


# -- the Python API ----------------------------------------------------------------------------

# Each input array's dtype in the compiled loop (replay.input.ReplayInput's own, so that
# a trace's batches need no conversion and the loop is compiled once).
INPUT_DTYPES = (("ts", np.int64), ("cpu", np.int32), ("task", np.int32), ("irq", np.bool_), ("op", np.int8),
                ("gfp", np.int64), ("pages", np.int64), ("bytes", np.int64), ("cache", np.int32),
                ("obj", np.int64), ("pool", np.int8))
MAX_SLABS = np.iinfo(np.int32).max  # object_slab holds slab ids as int32: half the memory per object


class Fast:
    """One policy's replay, fed a trace's operations batch by batch (replay.run.Engine)."""

    def __init__(self, start: ReplayInput, policy: Policy, limits: Limits, gfp: GfpBits, resolution_ns: int,
                 batch_size: int = BATCH_SIZE) -> None:
        self.knobs = knobs_array(policy, limits, gfp)
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
        self.per_cpu = np.zeros((start.cpus, 2), np.int64)
        self.per_task = np.zeros((start.tasks, OOM_KEPT + 1), np.int64)
        self.charged = np.zeros(start.objects + 1, np.bool_)  # pseudonyms, then -1's slot
        self.object_slab = np.full(1 if self.knobs[OBJECT_CHARGING] else start.objects + 1, -1, np.int32)
        self.slabs = np.zeros((0, 6), np.int64)  # grows as feed() needs
        geometry = (start.cache_order, start.cache_min_order, start.cache_objects, start.cache_objects_min)
        self.geometry = np.stack(geometry, axis=1).astype(np.int64).reshape(-1, 4)
        self.caches = np.full((len(self.geometry), 2), -1, np.int64)
        self.cursor = np.zeros(5, np.int64)
        self.cursor[LAST_TS] = start.t_first
        self.bounds = {"cpu": (0, start.cpus), "task": (0, start.tasks), "obj": (-1, start.objects),
                       "cache": (-1, len(self.geometry))}

    def feed(self, batch: ReplayInput) -> np.ndarray:
        """Replay the next operations (batches of one trace, in order); their outcomes."""
        self._check_ids(batch)
        outcome = np.zeros(len(batch), np.uint8)
        for start in range(0, len(batch), self.batch_size):
            stop = min(start + self.batch_size, len(batch))
            part = {name: np.ascontiguousarray(getattr(batch, name)[start:stop], dtype) for name, dtype in INPUT_DTYPES}
            if not self.knobs[OBJECT_CHARGING]:
                self._room_for_slabs(int(self.cursor[SLAB_COUNT]) + int(np.count_nonzero(part["op"] == OBJ_ALLOC)))
            self._room_for_folios(int(np.count_nonzero((part["op"] == LRU_CHARGE) & (part["pool"] == POOL_FILE))))
            replay_batch(*part.values(), outcome[start:stop], self.t_first, self.resolution_ns, self.memcg, self.stats,
                         self.knobs, self.per_cpu, self.per_task, self.charged, self.object_slab, self.slabs,
                         self.caches, self.geometry, self.cursor, self.result.bucket_last, self.result.bucket_peak)
        return outcome

    def finish(self) -> EngineResult:
        """Counters, stall and time series of everything fed (outcomes came with each batch)."""
        result, stats = self.result, self.stats
        for name, value in zip(STAT_FIELDS, stats):
            setattr(result, name, int(value))
        result.page_ns_above_high += int(stats[PAGE_NS_ABOVE_HIGH_CARRIES]) * CARRY
        result.failcnt = int(self.memcg[FAILCNT])
        result.stall_ns[:] = self.per_task[:, STALL]
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
        """Grow the memcg array's file LRU (doubling) to hold `more` folios."""
        needed = FILE_LRU + int(self.memcg[LRU_TAIL]) + more
        if needed > len(self.memcg):
            grown = np.zeros(max(needed, 2 * len(self.memcg)), np.int64)
            grown[:len(self.memcg)] = self.memcg
            self.memcg = grown

    def _room_for_slabs(self, needed: int) -> None:
        """Grow the slab table (doubling) to at least `needed` rows."""
        if needed > MAX_SLABS:
            raise UserError(f"{needed} slabs would not fit the fast engine's int32 slab ids")
        if needed > len(self.slabs):
            grown = np.zeros((min(max(needed, 2 * len(self.slabs)), MAX_SLABS), self.slabs.shape[1]), np.int64)
            grown[:len(self.slabs)] = self.slabs
            self.slabs = grown


def knobs_array(policy: Policy, limits: Limits, gfp: GfpBits) -> np.ndarray:
    """The policy, limits and gfp bits as the compiled code reads them."""
    policy.validate()
    knobs = np.zeros(N_KNOBS, np.int64)
    knobs[OBJECT_CHARGING] = policy.charge_unit == "object"
    knobs[NOWAIT_HIGH_ORDER] = policy.slab_growth_gfp == "nowait-high-order"
    knobs[STOCK_BATCH] = policy.stock_batch
    knobs[HIGH_MODE] = HIGH_MODES.index(policy.high_mode)
    knobs[MAX_RECLAIM_RETRIES] = policy.max_reclaim_retries
    knobs[WATERMARK_MARGIN] = policy.watermark_margin_pages
    knobs[SWAP] = limits.swap
    knobs[RECLAIM_NS_PER_PAGE] = limits.reclaim_ns_per_page
    knobs[GFP_DIRECT_RECLAIM], knobs[GFP_NORETRY] = gfp.direct_reclaim, gfp.noretry
    knobs[GFP_RETRY_MAYFAIL], knobs[GFP_NOFAIL], knobs[GFP_HIGH] = gfp.retry_mayfail, gfp.nofail, gfp.high
    return knobs

