"""Kernel charge rules, one small hand-built scenario each, worked out by hand from
shared/KERNEL-MODEL.md and mm/memcontrol.c; every engine must give the same answers."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.engine import knobs_array
from replay.input import ARRAYS, ReplayInput
from replay.model import FILE_LRU, FREED_FOLIOS, HIGH, LRU_HEAD, LRU_TAIL, POOLS, SLAB_COUNT, USAGE
from replay.ops import (
    ANON_FREED, ANON_UNMAPPED, FAILED_CHARGE, PAGE_FREE, TASK_CLONE_VM, TASK_EXIT, TASK_FORK, LRU_CHARGE, LRU_OOM_FREED, LRU_RECLAIMED, LRU_UNCHARGE, OBJ_ALLOC, OBJ_FREE, OOM_CHARGE, OUTCOME, PAGE_ALLOC, POOL_ANON, POOL_FILE, POOL_KMEM_PAGES, POOL_OTHER,
    POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE, RECLAIM_TIME, RETRY_FOUND_ROOM, TASK_JOIN, TRIGGER, UNLIMITED, USER_RETURN, GfpBits,
    Limits,
)
from replay.policy import BUILTIN
from replay.run import ENGINES, replay_whole
from traces.errors import UserError

# The 6.18 gfp bits (include/linux/gfp_types.h), as the capturing kernel's table gives them.
GFP = GfpBits(direct_reclaim=0x400, noretry=0x10000, retry_mayfail=0x4000, nofail=0x8000, high=0x20, fs=0x80, kernel=0xCC0)
GFP_KERNEL = 0xCC0
GFP_NOWAIT = 0x2800
GFP_NOFS = 0xC40
GFP_ATOMIC = 0x820
MAINLINE, SYNC_4X, RETURN_TO_USER = BUILTIN["mainline-6.18"], BUILTIN["nowait-slab-charge"], BUILTIN["return-to-user"]
MS = 1_000_000


def scenario(ops: list[dict], pools: dict[int, int] | None = None, cache: tuple[int, int, int, int] = (0, 0, 1, 1),
             tasks: int = 2, nodes: int = 1) -> ReplayInput:
    """A ReplayInput from operations given as dicts (op, gfp, pages, bytes, obj, task, cpu, irq, pool, memcg, node)."""
    n = len(ops)
    col = lambda key, default, dtype: np.array([o.get(key, default) for o in ops], dtype=dtype)  # noqa: E731
    initial = np.zeros(6, np.int64)
    for pool, pages in (pools or {}).items():
        initial[pool] = pages
    order, min_order, objects, objects_min = cache
    return ReplayInput(
        ts=np.arange(n, dtype=np.int64) * MS, cpu=col("cpu", 0, np.int32), task=col("task", 0, np.int32),
        irq=col("irq", False, bool), op=col("op", 0, np.int8), gfp=col("gfp", GFP_KERNEL, np.int64),
        pages=col("pages", 0, np.int64), bytes=col("bytes", 0, np.int64), cache=col("cache", 0, np.int32),
        obj=col("obj", -1, np.int64), pool=col("pool", POOL_KMEM_PAGES, np.int8), memcg=col("memcg", 0, np.int16),
        row=np.arange(n, dtype=np.int64), node=col("node", 0, np.int16),
        cache_order=np.array([order]), cache_min_order=np.array([min_order]), cache_objects=np.array([objects]),
        cache_objects_min=np.array([objects_min]), cache_names=["test-cache"], task_pids=np.arange(tasks, dtype=np.int32),
        initial_pools=initial, cpus=2, nodes=nodes, t_first=0, t_last=max(n - 1, 0) * MS,
    )


def page(pages: int = 1, gfp: int = GFP_KERNEL, obj: int = -1, **extra) -> dict:
    return {"op": PAGE_ALLOC, "pages": pages, "gfp": gfp, "obj": obj, **extra}


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    return lambda data, policy, limits: replay_whole(ENGINES[request.param], data, policy, limits, GFP, MS)


def test_kmem_pages_uncharged_return_to_the_stock_but_lru_pages_to_the_counter(engine):
    # 6.x: a kernel stack's or a socket buffer's page goes back through refill_stock
    # (obj_cgroup_uncharge_pages, mem_cgroup_uncharge_skmem), so the counter keeps it; an anon
    # page leaves the counter at once (uncharge_batch). Each charge takes a batch of 64
    # (usage 64, 63 stocked); the stocked one comes back (64 in stock: a drain needs more than
    # 64), and the usage stays 64. The anon charge is served from the stock; its uncharge: 63.
    kmem = scenario([{"op": LRU_CHARGE, "pages": 1}, {"op": LRU_UNCHARGE, "pages": 1}])
    r = engine(kmem, MAINLINE, Limits(max_pages=1000))
    assert list(r.outcome) == [OUTCOME["charged"], 0] and list(r.bucket_last) == [64, 64]
    lru = scenario([{"op": LRU_CHARGE, "pages": 1, "pool": POOL_ANON}, {"op": LRU_UNCHARGE, "pages": 1, "pool": POOL_ANON}])
    r = engine(lru, MAINLINE, Limits(max_pages=1000))
    assert list(r.bucket_last) == [64, 63]


def test_memcgs_on_one_cpu_keep_page_stocks_of_their_own_since_6_16_and_evict_each_other_before(engine):
    # One-page charges on CPU 0 by two memcgs below the target, 1, 2, 1 (no limit reached). A
    # charge that misses its memcg's stock charges a batch of 64 and stocks 63. 6.18 (up to 7
    # memcgs per CPU): memcg 2 takes a free slot (usage 128) and memcg 1's second charge is
    # served by its 63. 6.12 (one memcg per CPU): memcg 2's refill first drains memcg 1's 63
    # (128 - 63 = 65); memcg 1's second charge misses and drains memcg 2's 63 (65 + 64 - 63).
    # All three of one memcg: a batch, then two stock hits, on either kernel.
    charged, stock = OUTCOME["charged"], OUTCOME["stock"]
    data = scenario([page(obj=0, memcg=1), page(obj=1, memcg=2), page(obj=2, memcg=1)])
    r = engine(data, MAINLINE, Limits(max_pages=1000))
    assert list(r.bucket_last) == [64, 128, 128] and list(r.outcome) == [charged, charged, stock]
    r = engine(data, BUILTIN["mainline-6.12"], Limits(max_pages=1000))
    assert list(r.bucket_last) == [64, 65, 66] and list(r.outcome) == [charged, charged, charged]
    one_memcg = scenario([page(obj=0), page(obj=1), page(obj=2)])
    for policy in (MAINLINE, BUILTIN["mainline-6.12"]):
        r = engine(one_memcg, policy, Limits(max_pages=1000))
        assert list(r.bucket_last) == [64, 64, 64] and list(r.outcome) == [charged, stock, stock]


def test_a_stock_phase_charges_ahead_the_stock_of_each_cpu_the_trace_uses(engine):
    # Limits.stock_phase 10: a CPU's stock holds 10 pages of the target, charged, from its first
    # operation on. One-page charges on CPUs 0, 0 and 1 all come from those stocks (usage 10,
    # then 20 at CPU 1's first); on CPU 0 alone, 10 (CPU 1's stock stays empty). Phase 0: a
    # batch on each CPU (64, then 128 at CPU 1's first charge).
    stock, charged = OUTCOME["stock"], OUTCOME["charged"]
    both = scenario([page(obj=0), page(obj=1), page(obj=2, cpu=1)])
    r = engine(both, MAINLINE, Limits(max_pages=1000, stock_phase=10))
    assert list(r.bucket_last) == [10, 10, 20] and list(r.outcome) == [stock, stock, stock]
    r = engine(scenario([page(obj=0), page(obj=1), page(obj=2)]), MAINLINE, Limits(max_pages=1000, stock_phase=10))
    assert list(r.bucket_last) == [10, 10, 10]
    r = engine(both, MAINLINE, Limits(max_pages=1000))
    assert list(r.bucket_last) == [64, 64, 128] and list(r.outcome) == [charged, stock, charged]


def test_the_stock_phase_decides_which_charge_crosses_memory_high(engine):
    # Five 16-page charges on one CPU, memory.high 90 pages. Phase 0: the first takes a batch of
    # 64 (48 stocked), three more come from the stock, the fifth takes a batch to 128, over
    # high. Phase 40: two come from the 40 stocked (8 left), the third takes a batch to 104,
    # over high, and the last two come from its 56 stocked.
    stock, charged, above = OUTCOME["stock"], OUTCOME["charged"], OUTCOME["above_high"]
    data = scenario([page(pages=16, obj=i) for i in range(5)])
    r = engine(data, MAINLINE, Limits(high_pages=90))
    assert list(r.bucket_last) == [64, 64, 64, 64, 128] and list(r.outcome) == [charged, stock, stock, stock, above]
    r = engine(data, MAINLINE, Limits(high_pages=90, stock_phase=40))
    assert list(r.bucket_last) == [40, 40, 104, 104, 104] and list(r.outcome) == [stock, stock, above, stock, stock]


@pytest.mark.parametrize("phase", [-1, 64])
def test_a_stock_phase_outside_a_batch_is_refused(phase):
    with pytest.raises(ValueError, match=f"stock phase {phase}: give 0 to 63 pages"):
        Limits(stock_phase=phase)


def test_an_object_takes_the_object_stocks_bytes_only_while_they_are_its_memcgs(engine):
    # 100-byte objects on CPU 0 by memcgs 1, 2, 1 (6.18). The first charges a page (a batch:
    # 64, 63 stocked for memcg 1) and leaves the page's rest in the object stock. Memcg 2's
    # object finds memcg 1's bytes there: it charges its own batch (128), and the object stock
    # becomes memcg 2's (memcg 1's bytes go back to its objcg). Memcg 1's second object finds
    # memcg 2's bytes: a page from memcg 1's page stock (128). One memcg: a batch, then two
    # objects from the object stock (64 throughout).
    obj = lambda n, memcg: {"op": OBJ_ALLOC, "obj": n, "bytes": 100, "memcg": memcg, "pool": POOL_SLAB_UNRECLAIMABLE}  # noqa: E731
    charged, stock = OUTCOME["charged"], OUTCOME["stock"]
    r = engine(scenario([obj(0, 1), obj(1, 2), obj(2, 1)]), MAINLINE, Limits(max_pages=1000))
    assert list(r.bucket_last) == [64, 128, 128] and list(r.outcome) == [charged, charged, stock]
    assert r.stock_hits == 1  # the page stock's; the object stock served nobody
    r = engine(scenario([obj(0, 0), obj(1, 0), obj(2, 0)]), MAINLINE, Limits(max_pages=1000))
    assert list(r.bucket_last) == [64, 64, 64] and list(r.outcome) == [charged, stock, stock]


def test_a_stock_hit_skips_the_high_check(engine):
    # 4.2: the first charge takes a batch of 32 into the counter (usage 10 + 32 > high 20),
    # so it reclaims for memory.high before it returns; the second is served from the 31
    # stocked pages and sees no limit.
    data = scenario([page(obj=0), page(obj=1)], pools={POOL_OTHER: 10})
    r = engine(data, SYNC_4X, Limits(high_pages=20))
    assert list(r.outcome) == [OUTCOME["reclaimed_for_high"], OUTCOME["stock"]]
    assert r.high_events == 1 and r.reclaim_calls[TRIGGER["high_sync"]] == 1


def test_a_charge_that_may_not_block_is_left_above_high_where_a_blocking_one_reclaims(engine):
    # The 2015 thread's case: 4.2 reclaims memory.high only in charges that may block. The
    # same charge (a batch of 32 over usage 10, high 20) with GFP_NOWAIT is charged and left
    # above high, nothing reclaimed; with GFP_KERNEL it reclaims (the test above).
    r = engine(scenario([page(gfp=GFP_NOWAIT, obj=0)], pools={POOL_OTHER: 10}), SYNC_4X, Limits(high_pages=20))
    assert list(r.outcome) == [OUTCOME["above_high"]] and r.reclaim_calls.sum() == 0 and r.high_events == 0
    # Under high, the same charge is just charged.
    r = engine(scenario([page(gfp=GFP_NOWAIT, obj=0)], pools={POOL_OTHER: 10}), SYNC_4X, Limits(high_pages=64))
    assert list(r.outcome) == [OUTCOME["charged"]]


def test_at_max_gfp_nowait_fails_while_gfp_atomic_is_forced(engine):
    # usage 64 = max, nothing reclaimable: neither may reclaim; __GFP_HIGH forces the charge.
    # Each charge misses the stock, tries the batch (64 + 64 > 64: failcnt +1), then its one
    # page (64 + 1 > 64: failcnt +1): 2 per charge, 4 in all. Neither has __GFP_DIRECT_RECLAIM,
    # so no reclaim and no MAX event before nomem; GFP_NOWAIT returns -ENOMEM there, and
    # GFP_ATOMIC goes on to force, which raises the one MAX event (none was raised yet): 65.
    data = scenario([page(gfp=GFP_NOWAIT, obj=0), page(gfp=GFP_ATOMIC, obj=1)], pools={POOL_OTHER: 64})
    r = engine(data, MAINLINE, Limits(max_pages=64))
    assert list(r.outcome) == [OUTCOME["failed"], OUTCOME["forced"]]
    assert r.forced == 1 and r.failcnt == 4 and r.max_events == 1
    assert r.peak_pages == 65 and list(r.bucket_last) == [64, 65]
    assert r.reclaim_calls.sum() == 0


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_the_high_penalty_for_101m_over_100m_with_64_pages_is_6_ms(name):
    # overage = (256 pages << 20) / 25600 = 10485; 10485^2 * 1000 >> 20 >> 14 = 6 jiffies at HZ 1000.
    memcg = np.zeros(FILE_LRU, np.int64)
    memcg[USAGE], memcg[HIGH] = 25856, 25600
    knobs = knobs_array(MAINLINE, Limits(hz=1000), GFP)
    assert ENGINES[name].model.calculate_high_delay(memcg, knobs, 64) == 6


@pytest.mark.parametrize("name", sorted(ENGINES))
@pytest.mark.parametrize(("hz", "now_ms", "timeout", "sleep_ms"), [
    (1000, 1, 19, 20),  # level 0 (below 63 jiffies): expires at jiffy 20, its bucket a jiffy later
    (1000, 1, 102, 103),  # level 1 (63 to 503): expires at 103, rounded up past a multiple of 8: 104
    (1000, 0, 2000, 2048),  # the 2-s clamp, level 2 (504 to 4031): 2000 rounded up past a multiple of 64
    (250, 0, 500, 2016),  # the 2-s clamp at HZ 250, level 1: jiffy 504, of 4 ms
    (250, 3, 25, 101),  # 3 ms is within jiffy 0 (0 to 4 ms): jiffy 26 is at 104 ms
])
def test_a_sleep_ends_at_the_tick_of_its_timer_wheel_bucket(name, hz, now_ms, timeout, sleep_ms):
    knobs = knobs_array(MAINLINE, Limits(hz=hz), GFP)
    assert ENGINES[name].model.schedule_timeout(knobs, now_ms * MS, timeout) == sleep_ms * MS


def test_a_large_overage_is_slept_off_on_return_to_user(engine):
    # usage 104M over high 100M: overage = (1024 << 20) / 25600 = 41943;
    # 41943^2 * 1000 >> 20 >> 14 = 102 jiffies (> HZ/100, under the 2 s clamp). Nothing is
    # reclaimable, so after 16 fruitless retries the task sleeps: schedule_timeout(102) at 1 ms
    # (jiffy 1) expires at jiffy 103, on the timer wheel's level for 63 to 503 jiffies, whose
    # 8-jiffy buckets round it up to 104: it wakes at 104 ms, 103 ms later.
    data = scenario([page(obj=0), {"op": USER_RETURN}], pools={POOL_OTHER: 26624 - 64})
    r = engine(data, MAINLINE, Limits(high_pages=25600))
    assert r.throttle_ns == 103 * MS and r.stall_ns[0] == 103 * MS
    assert r.reclaim_calls[TRIGGER["user_return"]] == 17


def test_the_sleep_starts_in_the_jiffy_its_reclaim_ended_in(engine):
    # As above with each reclaim call taking 1 ms: the 17 calls hold the task from 1 ms to 18 ms
    # (jiffy 18), so schedule_timeout(102) expires at jiffy 120, which the 8-jiffy buckets round up
    # to 128: it sleeps 110 ms, not the 103 it would from jiffy 1. Its stall: 17 + 110 ms.
    data = scenario([page(obj=0), {"op": USER_RETURN}], pools={POOL_OTHER: 26624 - 64})
    r = engine(data, MAINLINE, Limits(high_pages=25600, reclaim_ns_per_call=MS))
    assert r.throttle_ns == 110 * MS and r.stall_ns[0] == 127 * MS


def test_the_penalty_is_counted_in_the_capturing_kernels_jiffies(engine):
    # As above at HZ 250 (Debian's): 41943^2 * 250 >> 20 >> 14 = 25 jiffies of 4 ms, from jiffy 0
    # (1 ms): level 0 of the wheel (below 63 jiffies) wakes it a jiffy after, at jiffy 26 (104 ms).
    data = scenario([page(obj=0), {"op": USER_RETURN}], pools={POOL_OTHER: 26624 - 64})
    assert engine(data, MAINLINE, Limits(high_pages=25600, hz=250)).throttle_ns == 103 * MS
    # Usage 25940 (340 pages over): overage = (340 << 20) // 25600 = 13926; 13926^2 * 1000 >> 34 = 11
    # jiffies at HZ 1000, more than HZ/100 (10): a sleep to jiffy 1 + 11 + 1, 12 ms. At HZ 250,
    # 13926^2 * 250 >> 34 = 2
    # jiffies, not more than HZ/100 (2): no sleep.
    data = scenario([page(obj=0), {"op": USER_RETURN}], pools={POOL_OTHER: 25940 - 64})
    assert engine(data, MAINLINE, Limits(high_pages=25600, hz=1000)).throttle_ns == 12 * MS
    assert engine(data, MAINLINE, Limits(high_pages=25600, hz=250)).throttle_ns == 0


def test_a_child_answers_for_the_pages_its_parent_charged_above_high_before_the_clone(engine):
    # As above, task 0's charge leaves 64 pages over high; it then clones task 1, whose
    # task_struct is a copy of task 0's (memcg_nr_pages_over_high included). Each return to
    # user space, the parent's from clone() at 2 ms and the child's first at 3 ms, reclaims 17
    # times and sleeps 102 jiffies: both timers expire in the wheel's bucket of jiffy 112
    # (104 and 105 rounded up past a multiple of 8), 110 and 109 ms; a child born before the
    # charge would answer for nothing.
    clone = {"op": TASK_CLONE_VM, "obj": 1, "pool": POOL_OTHER}
    data = scenario([page(obj=0), clone, {"op": USER_RETURN}, {"op": USER_RETURN, "task": 1}], pools={POOL_OTHER: 26624 - 64})
    r = engine(data, MAINLINE, Limits(high_pages=25600))
    assert list(r.stall_ns) == [110 * MS, 109 * MS] and r.throttle_ns == 219 * MS
    assert r.reclaim_calls[TRIGGER["user_return"]] == 34
    earlier = scenario([clone, page(obj=0), {"op": USER_RETURN}, {"op": USER_RETURN, "task": 1}], pools={POOL_OTHER: 26624 - 64})
    assert list(engine(earlier, MAINLINE, Limits(high_pages=25600)).stall_ns) == [110 * MS, 0]


def test_only_a_charge_with_gfp_fs_shrinks_reclaimable_slab(engine):
    # usage 128 = max: 100 pages of reclaimable slab (dentries, inodes), nothing else to take;
    # shrunk slab leaves at once here (rcu_grace_ns 0; the next test has the grace period).
    # GFP_KERNEL: the batch and the page fail (failcnt 2), one reclaim call shrinks 32 pages
    # of slab (SWAP_CLUSTER_MAX; usage 96), and the page fits (the batch was given up before
    # the reclaim: try_charge_memcg retries with batch = nr_pages). GFP_NOFS: super_cache_scan stops without __GFP_FS, so every call gets
    # nothing: one call, drain_all_stock, 16 retries (18 calls), no task holds anon pages to
    # kill, and the charge fails.
    pools = {POOL_SLAB_RECLAIMABLE: 100, POOL_OTHER: 28}
    at_once = Limits(max_pages=128, rcu_grace_ns=0)
    kernel = engine(scenario([page(gfp=GFP_KERNEL, obj=0)], pools), MAINLINE, at_once)
    assert list(kernel.outcome) == [OUTCOME["reclaimed"]]
    assert kernel.reclaim_calls[TRIGGER["max"]] == 1 and kernel.reclaimed_pages[TRIGGER["max"]] == 32
    assert kernel.failcnt == 2 and list(kernel.bucket_last) == [97]
    nofs = engine(scenario([page(gfp=GFP_NOFS, obj=0)], pools), MAINLINE, at_once)
    assert list(nofs.outcome) == [OUTCOME["failed"]]
    assert nofs.reclaim_calls[TRIGGER["max"]] == 18 and nofs.reclaimed_pages.sum() == 0
    assert nofs.oom_kills == 0 and list(nofs.bucket_last) == [128]


def test_shrunk_slab_leaves_the_counter_one_rcu_grace_period_later(engine):
    # As above, but shrunk dentries and inodes are freed by RCU callbacks, 1 ms later here.
    # At 0 ms a GFP_KERNEL page: each reclaim call shrinks 32 pages of slab (then the last 4)
    # that stay charged, so every retry finds the counter full: 18 calls as for GFP_NOFS
    # above, all 100 pages shrunk (32 waiting for the grace period the first call started,
    # the 68 shrunk during it for the next), failcnt 19 (2 + one per call but the last), no
    # anon to kill: the charge fails at usage 128. At 1 ms the first grace period ends: 32
    # pages leave (96), and a GFP_NOFS page fits once its batch of 64 has failed (97; failcnt
    # 20). At 2 ms the second ends: 68 leave (29), and a page charges its batch (93).
    pools = {POOL_SLAB_RECLAIMABLE: 100, POOL_OTHER: 28}
    ops = [page(gfp=GFP_KERNEL, obj=0), page(gfp=GFP_NOFS, obj=1), page(gfp=GFP_NOFS, obj=2)]
    r = engine(scenario(ops, pools), MAINLINE, Limits(max_pages=128, rcu_grace_ns=MS))
    assert list(r.outcome) == [OUTCOME["failed"], OUTCOME["charged"], OUTCOME["charged"]]
    assert r.reclaim_calls[TRIGGER["max"]] == 18 and r.reclaimed_pages[TRIGGER["max"]] == 100
    assert r.failcnt == 20 and r.oom_kills == 0 and list(r.bucket_last) == [128, 97, 93]


def test_shrunk_slab_is_reclaim_progress_up_to_6_4_and_not_since_6_5(engine):
    # 64 pages over memory.high 25600 on return to user, 1000 pages of reclaimable slab and
    # nothing else reclaimable. Each call frees slab: 64 pages, then 32 per retry. The
    # penalty at usage U is ((U - 25600) << 20) // 25600 = o; o * o * 1000 >> 34 jiffies.
    # Shrunk slab leaves at once (rcu_grace_ns 0).
    # 6.1 counts the slab as progress, so no retry is used up and it reclaims until the
    # penalty is at most HZ/100: 20 calls later (usage 25920, 9 jiffies), no sleep. 6.5+
    # counts nothing: 16 retries, then it sleeps off the overage left at usage 26048
    # (o = 18350, 19 jiffies: from jiffy 1 to 21, the wheel's level 0 waking it a jiffy after),
    # having reclaimed from 1 ms for 576 us (576 pages at the default 1 us): 21 - 1.576 ms.
    ops = [page(obj=0), {"op": USER_RETURN}]
    pools = {POOL_OTHER: 26624 - 64 - 1000, POOL_SLAB_RECLAIMABLE: 1000}
    counted = engine(scenario(ops, pools), BUILTIN["mainline-6.1"], Limits(high_pages=25600, rcu_grace_ns=0))
    assert counted.reclaim_calls[TRIGGER["user_return"]] == 21 and counted.reclaimed_pages[TRIGGER["user_return"]] == 704
    assert counted.throttle_ns == 0
    uncounted = engine(scenario(ops, pools), MAINLINE, Limits(high_pages=25600, rcu_grace_ns=0))
    assert uncounted.reclaim_calls[TRIGGER["user_return"]] == 17 and uncounted.reclaimed_pages[TRIGGER["user_return"]] == 576
    assert uncounted.throttle_ns == 21 * MS - 1_576_000
    assert counted.reclaimed_file_pages == uncounted.reclaimed_file_pages == 0  # slab only: no page cache to refault


def test_the_second_charge_over_high_reclaims_synchronously_in_mainline_only(engine):
    # Usage starts just under high. Charge 1 misses the stock: +64 in mainline (over_high 64,
    # not > 64), +32 in 4.4. Charge 2 asks for more than the stock holds: +64 more makes
    # over_high 128 > 64, so mainline reclaims in the charge path; 4.4 only counts, and
    # reclaims when the task returns to user space. Reclaim's priority windows over the
    # 1000 file pages (size >> 12, >> 11, ... as the pool shrinks: 0, 0, 0, 1, 3, 7, 15, 30,
    # then 59 in rounds of 32 and 27) free 115 pages for a 96-page request.
    ops = [page(obj=0), page(pages=64, obj=1), {"op": USER_RETURN}]
    pools = {POOL_OTHER: 1000, POOL_FILE: 1000}
    mainline = engine(scenario(ops, pools), MAINLINE, Limits(high_pages=1999))
    assert mainline.reclaim_calls[TRIGGER["high_sync"]] == 1
    assert mainline.reclaim_calls[TRIGGER["user_return"]] == 0  # the sync pass used up the overage
    deferred = engine(scenario(ops, pools), RETURN_TO_USER, Limits(high_pages=1999))
    assert deferred.reclaim_calls[TRIGGER["high_sync"]] == 0
    assert deferred.reclaim_calls[TRIGGER["user_return"]] == 1
    assert deferred.reclaimed_pages[TRIGGER["user_return"]] == 115  # asked for the overage: 32 + 64 pages
    assert deferred.reclaimed_file_pages == 115  # all of it page cache


def test_gfp_nowait_escapes_memory_high_in_4_2_while_gfp_kernel_does_not(engine):
    # The seed thread's bug: 4.2 checks memory.high only for charges that may block.
    pools = {POOL_OTHER: 100, POOL_FILE: 100}
    nowait = engine(scenario([page(gfp=GFP_NOWAIT, obj=0)], pools), SYNC_4X, Limits(high_pages=150))
    kernel = engine(scenario([page(gfp=GFP_KERNEL, obj=0)], pools), SYNC_4X, Limits(high_pages=150))
    assert nowait.high_events == 0 and nowait.reclaim_calls.sum() == 0
    # Asked for SWAP_CLUSTER_MAX; the windows over 100 file pages free 1, 3, 6, 11, then 19: 40.
    assert kernel.high_events == 1 and kernel.reclaimed_pages[TRIGGER["high_sync"]] == 40


def test_fail_nowait_above_high_fails_non_blocking_charges(engine):
    policy = BUILTIN["fail-nowait-above-high"]
    data = scenario([page(gfp=GFP_NOWAIT, obj=0), page(gfp=GFP_ATOMIC, obj=1)], pools={POOL_OTHER: 200})
    r = engine(data, policy, Limits(high_pages=150))
    assert list(r.outcome) == [OUTCOME["failed"], OUTCOME["forced"]]


def test_a_high_order_slab_falls_back_to_the_minimum_order_without_reclaim(engine):
    # Cache of order-3 slabs (8 pages, 16 objects), minimum order 0 (1 page, 2 objects).
    # usage 60 of max 64, 100 file pages reclaimable. The 4.3 charge of 8 pages may not
    # reclaim: it fails, and the 1-page minimum slab is charged with the caller's gfp.
    # Davydov's caller-gfp reclaims (windows over 60 file pages: 1, 3, 7, 12, then 18: 41
    # pages for 32 asked) and gets the order-3 slab.
    obj = {"op": OBJ_ALLOC, "obj": 0, "bytes": 2048, "cache": 0, "pool": POOL_SLAB_UNRECLAIMABLE}
    pools = {POOL_OTHER: 0, POOL_FILE: 60}
    limits = Limits(max_pages=64)
    nowait = engine(scenario([obj], pools, cache=(3, 0, 16, 2)), replace(SYNC_4X, stock_batch=1), limits)
    caller = engine(scenario([obj], pools, cache=(3, 0, 16, 2)), replace(BUILTIN["caller-gfp"], stock_batch=1), limits)
    assert nowait.outcome[0] == OUTCOME["fallback"] and nowait.fallbacks == 1 and nowait.peak_pages == 61
    assert caller.outcome[0] == OUTCOME["reclaimed"] and caller.fallbacks == 0
    assert caller.reclaimed_pages[TRIGGER["max"]] == 41


def test_a_failed_node_local_charge_takes_an_object_from_another_node_in_4_2_slab(engine):
    # Two nodes, CPU n on node n; 1-page slabs of 2 objects; usage 19 of max 20 (10 file pages
    # reclaimable), one page per charge (stock_batch 1). Object a on node 1 charges node 1's
    # first slab: usage 20, max reached, one free slot left there. Object b on node 0 needs a
    # slab of node 0. Davydov's caller-gfp charges it with GFP_KERNEL: it reclaims, and b stays
    # on node 0 (1 failed try: failcnt 1). 4.2 SLAB charges it without reclaim: that fails
    # twice (the model's slab growth is SLUB's, which tries again at the minimum order, here
    # the same: failcnt 2), and fallback_alloc takes node 1's free slot. Object c on node 0:
    # caller-gfp has node 0's free slot (no charge); SLAB's no-wait charge fails twice more (4),
    # node 1's slab is full, so it charges with the caller's gfp: fails (5), reclaims, and gets
    # node 0's slab.
    # One node, a slab per object: no other node to fall back to, so b is charged after reclaim as
    # with caller-gfp (which reclaims room for c and d too), after two failed no-wait tries.
    obj = lambda n, node: {"op": OBJ_ALLOC, "obj": n, "bytes": 2048, "cpu": node, "node": node,  # noqa: E731
                           "pool": POOL_SLAB_UNRECLAIMABLE}
    pools, limits = {POOL_OTHER: 9, POOL_FILE: 10}, Limits(max_pages=20)
    two_nodes = scenario([obj(0, 1), obj(1, 0), obj(2, 0)], pools, cache=(0, 0, 2, 2), nodes=2)
    caller = engine(two_nodes, replace(BUILTIN["caller-gfp"], stock_batch=1), limits)
    slab = engine(two_nodes, replace(BUILTIN["nowait-node-charge"], stock_batch=1), limits)
    charged, reclaimed = OUTCOME["charged"], OUTCOME["reclaimed"]
    assert list(caller.outcome) == [charged, reclaimed, OUTCOME["no_charge"]]
    assert caller.other_node == 0 and caller.failcnt == 1 and caller.reclaim_calls[TRIGGER["max"]] == 1
    assert list(slab.outcome) == [charged, OUTCOME["other_node"], reclaimed]
    assert slab.other_node == 1 and slab.failcnt == 5 and slab.reclaim_calls[TRIGGER["max"]] == 1
    one_node = scenario([obj(0, 0), obj(1, 0), obj(2, 0), obj(3, 0)], pools, cache=(0, 0, 1, 1))
    caller = engine(one_node, replace(BUILTIN["caller-gfp"], stock_batch=1), limits)
    slab = engine(one_node, replace(BUILTIN["nowait-node-charge"], stock_batch=1), limits)
    assert list(slab.outcome) == list(caller.outcome) == [charged, reclaimed, charged, charged]
    assert list(slab.bucket_last) == list(caller.bucket_last) and slab.failcnt == caller.failcnt + 2


def test_object_stock_serves_the_rest_of_a_charged_page(engine):
    # 6.x: a 100-byte object costs 108 bytes; its page charge leaves 3988 bytes in the
    # CPU's object stock, so the next object is a stock hit; on another CPU it is not.
    obj = lambda n, cpu: {"op": OBJ_ALLOC, "obj": n, "bytes": 100, "cpu": cpu, "pool": POOL_SLAB_UNRECLAIMABLE}  # noqa: E731
    r = engine(scenario([obj(0, 0), obj(1, 0), obj(2, 1)]), MAINLINE, Limits(max_pages=UNLIMITED, high_pages=1000))
    assert list(r.outcome) == [OUTCOME["charged"], OUTCOME["stock"], OUTCOME["charged"]]
    assert r.charges == 2 and r.peak_pages == 128  # two batches of 64


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_a_discarded_slabs_row_is_reused(name):
    # Two objects per 1-page slab; each cycle allocates a, b (slab A full), c (a new slab B
    # becomes current), then frees a (A partial: onto the list), b (A empty and not current:
    # discarded, its page uncharged, still on the list) and c (B empty but current: kept).
    # The next cycle's a, b fill B, and c pops A off the list: its row is free, so the new
    # slab takes it. 50 cycles: 2 rows, and the one page of the current slab still charged.
    slab_obj = lambda op, n: {"op": op, "obj": n, "bytes": 1024, "pool": POOL_SLAB_UNRECLAIMABLE}  # noqa: E731
    ops = []
    for cycle in range(50):
        a, b, c = 3 * cycle, 3 * cycle + 1, 3 * cycle + 2
        ops += [slab_obj(OBJ_ALLOC, a), slab_obj(OBJ_ALLOC, b), slab_obj(OBJ_ALLOC, c),
                slab_obj(OBJ_FREE, a), slab_obj(OBJ_FREE, b), slab_obj(OBJ_FREE, c)]
    session = ENGINES[name](scenario(ops, cache=(0, 0, 2, 2)), replace(SYNC_4X, stock_batch=1), Limits(max_pages=UNLIMITED),
                            GFP, MS)
    session.feed(scenario(ops, cache=(0, 0, 2, 2)))
    assert session.cursor[SLAB_COUNT] == 2
    assert session.memcg[POOLS + POOL_SLAB_UNRECLAIMABLE] == 1 and session.finish().charges == 51


@given(folios=st.lists(st.sampled_from([1, 2, 4, 16, 512]), max_size=40), head=st.integers(0, 40),
       freed=st.lists(st.integers(0, 6), min_size=10, max_size=10))
@settings(max_examples=300, deadline=None)
def test_compacting_the_file_lru_leaves_what_reclaim_takes_unchanged(folios, head, freed):
    # oldest_folio skips, per order, as many of the oldest folios as the trace has freed;
    # compact_file_lru drops those at once. Reclaim must then take the same folios in the
    # same order, on either engine.
    for engine in ENGINES.values():
        lazy = np.zeros(FILE_LRU + len(folios), np.int64)
        lazy[FILE_LRU:], lazy[LRU_HEAD], lazy[LRU_TAIL] = folios, min(head, len(folios)), len(folios)
        lazy[FREED_FOLIOS:FREED_FOLIOS + len(freed)] = freed
        compacted = lazy.copy()
        engine.model.compact_file_lru(compacted)
        assert compacted[LRU_HEAD] == 0
        taken = [[folio for folio in iter(lambda: engine.model.oldest_folio(memcg), 0)] for memcg in (lazy, compacted)]
        assert taken[0] == taken[1]


def anon(pages: int, task: int, op: int = LRU_CHARGE) -> dict:
    return {"op": op, "pages": pages, "pool": POOL_ANON, "task": task}


def test_an_oom_kill_frees_the_largest_tasks_anon_pages_and_the_charge_goes_through(engine):
    # max 64, 24 pages held from the start. Task 1 charges 32 anon pages (the batch of 64
    # fails: failcnt 1; usage 56), task 0 charges 8 (failcnt 2; usage 64). Task 0's 1-page
    # charge: the batch fails, then 1 page fails before each of 18 reclaim calls (the first
    # followed by the drain, 16 retries, the 18th exhausts them): failcnt 2 + 1 + 18 = 21.
    # The OOM killer takes the task with the most anon pages, task 1 (32 > 8), whose memory
    # goes at once: usage 32, and the charge fits (33). The trace's own frees of task 1's
    # pages then pay off what the kill took: usage stays 33.
    ops = [anon(32, task=1), anon(8, task=0), page(obj=0), anon(32, task=1, op=LRU_UNCHARGE)]
    r = engine(scenario(ops, pools={POOL_OTHER: 24}), MAINLINE, Limits(max_pages=64))
    assert r.outcome[2] == OUTCOME["oom"] and r.oom_kills == 1
    assert r.reclaim_calls[TRIGGER["max"]] == 18 and r.max_events == 18 and r.failcnt == 21
    assert list(r.bucket_last) == [56, 64, 33, 33]


def test_an_oom_kill_frees_only_what_no_forked_child_maps_and_the_last_of_a_family_frees_the_rest(engine):
    # max 64, 4 pages held. Process 0 charges 20 anon pages (the batch of 64 fails first), forks
    # process 1, which maps those 20 copy-on-write (in its rss too), and charges 20 more: 44.
    # Process 1 charges 2 of its own (46); task 2 charges 18 kmem pages (64), then a page: the OOM
    # killer weighs process 0 at 40 anon pages and process 1 at 2 + 20, and kills process 0. Its
    # exit frees what it maps alone, 40 - 20 = 20 (the 20 process 1 still maps stay charged):
    # 44, and the page fits (45). Task 2 charges 19 more (64) and a page: process 1 (22) is
    # killed, the last process mapping the 20, which go with its own 2: 64 - 22 + 1 = 43.
    fork = {"op": TASK_FORK, "task": 0, "obj": 1, "pool": POOL_OTHER}
    ops = [anon(20, task=0), fork, anon(20, task=0), anon(2, task=1), page(18, task=2, obj=0), page(1, task=2, obj=1),
           page(19, task=2, obj=2), page(1, task=2, obj=3)]
    r = engine(scenario(ops, pools={POOL_OTHER: 4}, tasks=3), MAINLINE, Limits(max_pages=64))
    assert [r.outcome[5], r.outcome[7]] == [OUTCOME["oom"], OUTCOME["oom"]] and r.oom_kills == 2
    assert list(r.bucket_last) == [24, 24, 44, 46, 64, 45, 64, 43]


def test_a_threads_anon_pages_are_its_processs_and_go_with_it(engine):
    # max 64, 4 pages held. Task 0 charges 30 anon pages and makes a thread, task 1 (its mm
    # shared: CLONE_VM), which charges 20: the process maps 50. Task 2 charges 10 (64), then
    # one more: the OOM killer weighs the process at 50 (not 30 and 20 apart) and task 2 at 10,
    # and the process's 50 go: 14, then the page: 15.
    thread = {"op": TASK_CLONE_VM, "task": 0, "obj": 1, "pool": POOL_OTHER}
    ops = [anon(30, task=0), thread, anon(20, task=1), anon(10, task=2), anon(1, task=2)]
    r = engine(scenario(ops, pools={POOL_OTHER: 4}, tasks=3), MAINLINE, Limits(max_pages=64))
    assert r.outcome[4] == OUTCOME["oom"] and r.oom_kills == 1
    assert list(r.bucket_last) == [34, 34, 54, 64, 15]


def test_a_charging_task_that_is_its_own_oom_victim_retries_then_fails_and_exits(engine):
    # Task 0 holds the only anon pages (40; usage 64 = max). Its next page: 18 reclaim calls,
    # then the OOM killer picks task 0 itself. A dying task's memory is not freed while it
    # charges: the retries start over, 16 more fruitless calls and a 17th that ends them;
    # then passed_oom && task_is_dying() fails the charge (35 calls in all, the kernel's
    # 18 + 17) and the task exits: its 40 pages go (usage 24). Its frees in the trace after
    # the kill (LRU_OOM_FREED) pay off what the kill took.
    ops = [anon(40, task=0), anon(1, task=0), anon(40, task=0, op=LRU_OOM_FREED)]
    r = engine(scenario(ops, pools={POOL_OTHER: 24}), MAINLINE, Limits(max_pages=64))
    assert r.outcome[1] == OUTCOME["failed"] and r.oom_kills == 1
    assert r.reclaim_calls[TRIGGER["max"]] == 35
    assert list(r.bucket_last) == [64, 24, 24]


def test_a_dying_tasks_next_charge_kills_nobody_and_fails(engine):
    # max 64, 4 pages held. Task 0 charges 40 anon pages, task 1 20 (each batch of 64 fails
    # first: failcnt 2): usage 64. Task 0's page: 18 reclaim calls, the OOM killer picks task
    # 0 (40 > 20), 17 more calls, the charge fails and task 0's 40 pages go: 24 (35 calls).
    # Then the kernel failed another charge of the dying task 0 (FAILED_CHARGE; its exit
    # faults): the model's room (40 of margin) is held, being no more than the other CPU's
    # stock could hold unseen (64). 18 calls; out_of_memory picks the dying task itself
    # (task_will_free_mem) and kills nobody, so task 1 keeps its 20; 17 more calls; the
    # charge fails (task_is_dying) and the held pages go: 24. 70 calls, one kill.
    ops = [anon(40, task=0), anon(20, task=1), page(obj=0), {"op": FAILED_CHARGE, "pages": 1, "pool": POOL_ANON, "task": 0}]
    r = engine(scenario(ops, pools={POOL_OTHER: 4}), MAINLINE, Limits(max_pages=64))
    assert [r.outcome[2], r.outcome[3]] == [OUTCOME["failed"], OUTCOME["failed"]] and r.oom_kills == 1
    assert r.reclaim_calls[TRIGGER["max"]] == 70
    assert list(r.bucket_last) == [44, 64, 24, 24]


def test_a_thp_charge_the_kernel_failed_is_failed_or_cancelled_and_kills_nobody(engine):
    # Task 0 holds 200 anon pages (a charge above the batch takes itself: no stock) over 100
    # held. The kernel failed a THP's charge (512 pages, GFP_TRANSHUGE: direct reclaim, no
    # __GFP_NORETRY). Under max 600 the margin is 300 and nothing is reclaimable, so nothing
    # is held: the charge fails before each of 18 reclaim calls (the first, then the drain,
    # then 16 retries; no batch above the charge: failcnt 18), and mem_cgroup_oom refuses an order above
    # PAGE_ALLOC_COSTLY_ORDER: no kill, failed, usage 300. Under max 1000 the margin is 700:
    # a batch of 64 is held (what the other CPU's stock could hide), the 512 fit (876) and
    # are cancelled with the held pages, as the trace charges the fallback's small pages
    # itself: 300.
    thp = 0x1824CA
    ops = [anon(200, task=0), {"op": FAILED_CHARGE, "pages": 512, "pool": POOL_ANON, "task": 0, "gfp": thp}]
    r = engine(scenario(ops, pools={POOL_OTHER: 100}), MAINLINE, Limits(max_pages=600))
    assert r.outcome[1] == OUTCOME["failed"] and r.oom_kills == 0
    assert r.reclaim_calls[TRIGGER["max"]] == 18 and r.failcnt == 18
    assert list(r.bucket_last) == [300, 300]
    r = engine(scenario(ops, pools={POOL_OTHER: 100}), MAINLINE, Limits(max_pages=1000))
    assert r.outcome[1] == OUTCOME["charged"] and r.reclaim_calls[TRIGGER["max"]] == 0
    assert list(r.bucket_last) == [300, 300]


def test_the_kernels_oom_kill_is_left_to_the_model_when_its_room_is_more_than_stocks_explain(engine):
    # max 200, 24 pages held. Task 1 charges 100 anon pages (the batch is the charge: usage
    # 124, no stock). The kernel OOM-killed task 1 (an oom event: OOM_CHARGE, then task 1's
    # frees as LRU_OOM_FREED), but the model has 76 pages of room, more than the other CPU's
    # stock could hold unseen (MEMCG_CHARGE_BATCH = 64 on 1 other CPU): 64 are held, the
    # 1-page charge still fits (the batch fails: failcnt 1) and is cancelled; the 64 go
    # (124). Nobody is killed. Of task 1's 110 freed pages the model keeps its own 100 until
    # it kills task 1 itself; 10 it never charged (COW originals of another task) are
    # uncharged: 114. When the model runs out itself (task 0's page at usage 200), it kills
    # task 1 (100 pages > task 0's 86): usage 100 + 1.
    ops = [anon(100, task=1), {"op": OOM_CHARGE, "pages": 1, "pool": POOL_ANON, "task": 0},
           anon(110, task=1, op=LRU_OOM_FREED), anon(86, task=0), page(obj=0)]
    r = engine(scenario(ops, pools={POOL_OTHER: 24}), MAINLINE, Limits(max_pages=200))
    assert r.outcome[1] == OUTCOME["charged"] and r.outcome[4] == OUTCOME["oom"] and r.oom_kills == 1
    assert list(r.bucket_last) == [124, 124, 114, 200, 101]


def test_an_oom_charge_the_model_cannot_make_kills_like_the_kernel(engine):
    # usage 64 = max: the OOM_CHARGE of task 0 goes through reclaim to the OOM killer, which
    # kills task 1 (32 anon pages, usage 32); the charge then fits and is cancelled: 32.
    # Task 1's 40 frees after the kernel's kill pay off the 32 the model's kill took; the 8
    # others were charged by another task (COW originals task 1 mapped last): uncharged, 24.
    ops = [anon(32, task=1), anon(8, task=0), {"op": OOM_CHARGE, "pages": 1, "pool": POOL_ANON, "task": 0},
           anon(40, task=1, op=LRU_OOM_FREED)]
    r = engine(scenario(ops, pools={POOL_OTHER: 24}), MAINLINE, Limits(max_pages=64))
    assert r.outcome[2] == OUTCOME["oom"] and r.oom_kills == 1
    assert list(r.bucket_last) == [56, 64, 32, 24]


def test_an_oom_charge_kills_when_the_models_room_is_what_other_cpus_stocks_may_hold(engine):
    # Task 1 charges 32 anon pages (the batch of 64 fails: failcnt 1; usage 56). The kernel
    # OOM-killed for task 0's 1-page charge; the model has 8 pages of room, which the other
    # CPU's stock may hold in the kernel (drain_all_stock only schedules work to drain it):
    # they are held (64). The batch fails, then 1 page before each of 18 reclaim calls
    # (failcnt 1 + 1 + 18); the OOM killer takes task 1 (usage 32), the charge fits (33) and
    # is cancelled, and the drain work runs: 24. Task 1's frees pay off what the kill took.
    ops = [anon(32, task=1), {"op": OOM_CHARGE, "pages": 1, "pool": POOL_ANON, "task": 0},
           anon(32, task=1, op=LRU_OOM_FREED)]
    r = engine(scenario(ops, pools={POOL_OTHER: 24}), MAINLINE, Limits(max_pages=64))
    assert r.outcome[1] == OUTCOME["oom"] and r.oom_kills == 1
    assert r.reclaim_calls[TRIGGER["max"]] == 18 and r.failcnt == 20
    assert list(r.bucket_last) == [56, 24, 24]


def test_an_oom_charge_finds_its_cpus_stock_drained_and_what_the_other_cpus_may_hold_goes_if_the_kernels_retry_went_through(engine):
    # max 200, 24 pages held. Task 0 charges 112 anon pages (136), then 1 (a batch of 64: 200,
    # 63 stocked on CPU 0). The kernel OOM-killed task 0 itself for its next page on CPU 0, so
    # its CPU's stock was empty there (drain_all_stock drains the charging CPU at once): the
    # model drains it (137), and its 63 pages of room are what the other CPU's stock could
    # hold while its drain work waits: held (200). The batch and then 1 page fail before each
    # of 18 reclaim calls (failcnt 1 + 18); the OOM killer takes task 0 itself (the only anon
    # pages), whose memory stays while it charges.
    # The trace then shows task 0's page charged (RETRY_FOUND_ROOM): the kernel's retry after
    # the kill went through, the drain work having run during it. So the held pages go (137),
    # the retry fits (138) and is cancelled (137). Task 0's exit frees its 113 pages
    # (LRU_OOM_FREED): the model's kill took none of them, so all go: 24.
    # Where the trace shows more reclaim instead, the held pages stay: 17 more fruitless calls
    # (failcnt 17 more), the dying task's charge fails and its 113 pages go, then the held
    # ones: 24 at once, 35 calls, and its frees pay off what the kill took.
    # Served from CPU 0's stock, the page would have killed nobody and the 113 stayed charged.
    def ops(retry: int) -> list[dict]:
        return [anon(112, task=0), anon(1, task=0), {"op": OOM_CHARGE, "pages": 1, "pool": POOL_ANON, "task": 0, "obj": retry},
                anon(113, task=0, op=LRU_OOM_FREED)]
    went_through = engine(scenario(ops(RETRY_FOUND_ROOM), pools={POOL_OTHER: 24}), MAINLINE, Limits(max_pages=200))
    assert went_through.outcome[2] == OUTCOME["oom"] and went_through.oom_kills == 1
    assert went_through.reclaim_calls[TRIGGER["max"]] == 18 and went_through.failcnt == 19
    assert list(went_through.bucket_last) == [136, 200, 137, 24]
    reclaimed_again = engine(scenario(ops(-1), pools={POOL_OTHER: 24}), MAINLINE, Limits(max_pages=200))
    assert reclaimed_again.outcome[2] == OUTCOME["failed"] and reclaimed_again.oom_kills == 1
    assert reclaimed_again.reclaim_calls[TRIGGER["max"]] == 35 and reclaimed_again.failcnt == 36
    assert list(reclaimed_again.bucket_last) == [136, 200, 24, 24]


def test_unmapped_anon_pages_stay_charged_until_freed_but_leave_the_tasks_rss(engine):
    # max 70. Task 0 charges 40 anon pages (a batch of 64: 24 stocked), task 1 24 from the
    # stock: usage 64. Task 0 unmaps 30: zap_pte_range drops its rss to 10, the pages stay
    # charged until mmu_gather frees them. Task 0's 8 kernel pages then fail (64 + 8 > 70;
    # reclaim finds no file pages, no swap) through 18 reclaim calls to the OOM killer, whose
    # victim is the larger rss, task 1 (24 > 10): usage 40, then the charge fits (48). The
    # unmapped 30 are freed (36 asked: only 30 were unmapped): 18. Were they uncharged at
    # unmap, the 8 pages would have fitted (34 + 8) and nobody would have been killed.
    ops = [anon(40, task=0), anon(24, task=1), anon(30, task=0, op=ANON_UNMAPPED), page(8), anon(36, task=0, op=ANON_FREED)]
    r = engine(scenario(ops), MAINLINE, Limits(max_pages=70))
    assert r.outcome[3] == OUTCOME["oom"] and r.oom_kills == 1 and r.reclaim_calls[TRIGGER["max"]] == 18
    assert list(r.bucket_last) == [64, 64, 64, 48, 18]


def file_folio(pages: int, op: int = LRU_CHARGE) -> dict:
    return {"op": op, "pages": pages, "pool": POOL_FILE}


def test_reclaim_evicts_whole_folios_and_a_freed_folio_leaves_the_lru(engine):
    # Folios charged: 1 page (batch 64: usage 64, stock 63), 256 pages (more than the
    # stock: usage 320), 1 page (stock hit). The trace frees a 1-page folio: the oldest of
    # that order leaves the LRU (usage 319). The 200-page charge does not fit under max 500
    # (failcnt 1) and reclaims at least 200 pages: the LRU's oldest folio, the 256-page one,
    # goes whole (not 200 pages, not 1 + 256). Usage 63 + 200 = 263.
    ops = [file_folio(1), file_folio(256), file_folio(1), file_folio(1, LRU_UNCHARGE), page(pages=200, obj=0)]
    r = engine(scenario(ops), MAINLINE, Limits(max_pages=500))
    assert r.reclaim_calls[TRIGGER["max"]] == 1 and r.reclaimed_pages[TRIGGER["max"]] == 256
    assert r.outcome[4] == OUTCOME["reclaimed"] and r.failcnt == 1
    assert list(r.bucket_last) == [64, 320, 320, 319, 263]


def test_the_capturing_kernels_reclaim_is_not_replayed_as_a_free(engine):
    # A 256-page folio (usage 256, the batch is the charge: no stock); the kernel reclaims
    # it in the trace, which the model does not replay: usage stays 256, and the model owes
    # the trace 256 pages of credit. The 64-page charge does not fit under max 300, so the
    # model reclaims the folio itself (usage 0 + 64), which settles the credit. A later
    # 1-page folio (batch 64: usage 128) freed by the trace is uncharged for real: 127.
    ops = [file_folio(256), file_folio(256, LRU_RECLAIMED), page(pages=64, obj=0), file_folio(1), file_folio(1, LRU_UNCHARGE)]
    r = engine(scenario(ops), MAINLINE, Limits(max_pages=300))
    assert list(r.bucket_last) == [256, 256, 64, 128, 127]
    assert r.reclaim_calls[TRIGGER["max"]] == 1 and r.reclaimed_pages[TRIGGER["max"]] == 256


def test_watermark_reclaims_asynchronously_below_the_margin(engine):
    # max 1000, margin 100: wmark_high 900, wmark_low 900 - 900 // 256 = 897: 8 pages asked.
    # In the charge the 10 new pages are not on the LRU yet: the windows over the 895 file
    # pages are 895 >> 9 = 1, 894 >> 8 = 3, 891 >> 7 = 6: 10 freed.
    policy = replace(BUILTIN["watermark"], watermark_margin_pages=100, stock_batch=1)
    data = scenario([{"op": LRU_CHARGE, "pages": 10, "pool": POOL_FILE}], pools={POOL_FILE: 895})
    r = engine(data, policy, Limits(max_pages=1000))
    assert r.reclaim_calls[TRIGGER["async"]] == 1 and r.reclaimed_pages[TRIGGER["async"]] == 10
    assert r.stall_ns.sum() == 0


# Closed loop: a task's stall delays its later operations. In each scenario below, task 0
# charges 64 anon pages at 0 ms over memory.high 100M (usage 104M: 26560 pages held by
# nobody, nothing reclaimable) and returns to user space at 1 ms: 17 fruitless reclaim
# calls, then it sleeps off the overage, 103 ms as in the test above (102 jiffies at HZ 1000,
# to the wheel's bucket of 104 ms).
THROTTLED = [{"op": LRU_CHARGE, "pages": 64, "pool": POOL_ANON}, {"op": USER_RETURN}]
OVER_HIGH = {POOL_OTHER: 26624 - 64}


def test_a_throttled_task_runs_103_ms_late_and_only_it(engine):
    # At 2 ms task 0 frees its 64 pages: in closed loop at 105 ms. Task 1's charge of 64 file
    # pages at 3 ms keeps its time (26688 pages; its over_high, 64, is not over a batch). So
    # the series has 26624 at 0 and 1 ms, nothing at 2 ms, 26688 at 3 ms and 26624 at 105 ms.
    ops = [*THROTTLED, {"op": LRU_UNCHARGE, "pages": 64, "pool": POOL_ANON},
           {"op": LRU_CHARGE, "pages": 64, "pool": POOL_FILE, "task": 1}]
    closed = engine(scenario(ops, OVER_HIGH), MAINLINE, Limits(high_pages=25600))
    assert closed.throttle_ns == 103 * MS and list(closed.stall_ns) == [103 * MS, 0]
    assert list(closed.delay_ns) == [103 * MS, 0] and closed.end_ns == 105 * MS
    assert {t: int(u) for t, u in enumerate(closed.bucket_last) if u >= 0} == {0: 26624, 1: 26624, 3: 26688, 105: 26624}
    # Open loop: the same stall, added up; every operation at its trace time.
    opened = engine(scenario(ops, OVER_HIGH), MAINLINE, Limits(high_pages=25600, closed_loop=False))
    assert opened.throttle_ns == 103 * MS and list(opened.delay_ns) == [0, 0] and opened.end_ns == 3 * MS
    assert list(opened.bucket_last) == [26624, 26624, 26560, 26624]


def test_a_forked_task_starts_on_its_parents_clock_less_the_capturing_kernels_reclaim(engine):
    # At 2 ms the trace shows task 0 spent 40 ms in the capturing kernel's reclaim: that stall
    # is in the trace's timeline already, so task 0 runs 103 - 40 = 63 ms late. At 3 ms it
    # forks task 1 (at 66 ms), which charges 64 file pages at 4 ms: at 67 ms.
    ops = [*THROTTLED, {"op": RECLAIM_TIME, "bytes": 40 * MS}, {"op": TASK_FORK, "obj": 1, "pool": POOL_OTHER},
           {"op": LRU_CHARGE, "pages": 64, "pool": POOL_FILE, "task": 1}]
    r = engine(scenario(ops, OVER_HIGH), MAINLINE, Limits(high_pages=25600))
    assert list(r.delay_ns) == [63 * MS, 63 * MS] and r.end_ns == 67 * MS
    assert {t: int(u) for t, u in enumerate(r.bucket_last) if u >= 0} == {0: 26624, 1: 26624, 65: 26624, 66: 26624, 67: 26688}


def test_a_task_that_waited_for_its_child_goes_on_as_late_as_the_child_ended(engine):
    # Task 0 forks task 1 at 0 ms; task 1 charges 64 anon pages at 1 ms and is throttled 102
    # jiffies on its return to user space at 2 ms (as above; to the wheel's bucket of 112 ms: 110
    # ms), so its exit at 3 ms comes at 113 ms.
    # Task 0's first event after it, at 4 ms, is a wait for it (TASK_JOIN, replayed then): task
    # 0 is held until task 1's exit is replayed, and goes on 110 ms late: its 64 file pages at 5 ms come
    # at 115 ms (usage 26688). Without the wait (the operations a millisecond apart, so the file
    # pages at 4 ms) they come at their time.
    ops = [{"op": TASK_FORK, "obj": 1, "pool": POOL_OTHER}, *[{**op, "task": 1} for op in THROTTLED],
           {"op": TASK_EXIT, "task": 1, "pool": POOL_OTHER}, {"op": TASK_JOIN, "obj": 1, "pool": POOL_OTHER},
           {"op": LRU_CHARGE, "pages": 64, "pool": POOL_FILE}]
    r = engine(scenario(ops, OVER_HIGH), MAINLINE, Limits(high_pages=25600))
    assert list(r.delay_ns) == [110 * MS, 110 * MS] and r.end_ns == 115 * MS
    assert {t: int(u) for t, u in enumerate(r.bucket_last) if u >= 0} == {0: 26560, 1: 26624, 2: 26624, 4: 26624, 113: 26624, 115: 26688}
    unwaited = engine(scenario([op for op in ops if op["op"] != TASK_JOIN], OVER_HIGH), MAINLINE, Limits(high_pages=25600))
    assert list(unwaited.delay_ns) == [0, 110 * MS] and unwaited.bucket_last[4] == 26688


def test_an_interrupt_keeps_its_time_but_its_free_follows_the_task_that_allocated(engine):
    # Task 0 allocates a page at 2 ms: at 105 ms (no stock: a batch of 64, 63 stocked). A
    # softirq charges 64 socket pages at 3 ms and keeps that time (GFP_ATOMIC; over high in
    # interrupt context: high_work's reclaim, which finds nothing). An RCU callback frees task
    # 0's page at 4 ms: on task 0's clock, at 107 ms (it goes back to the stock: the counter
    # keeps it). So: 26624 until 1 ms, 26688 at 3 ms, 26752 at 105 and 107 ms.
    ops = [*THROTTLED, page(obj=5), {"op": LRU_CHARGE, "pages": 64, "gfp": GFP_ATOMIC, "irq": True, "task": 1},
           page(obj=5, op=PAGE_FREE, irq=True, task=1)]
    r = engine(scenario(ops, OVER_HIGH), MAINLINE, Limits(high_pages=25600))
    assert {t: int(u) for t, u in enumerate(r.bucket_last) if u >= 0} == {0: 26624, 1: 26624, 3: 26688, 105: 26752, 107: 26752}
    assert r.reclaim_calls[TRIGGER["async"]] == 1 and r.end_ns == 107 * MS


def test_an_interrupts_free_comes_as_late_as_its_task_ran_when_it_set_it_off(engine):
    # Task 0 allocates 64 pages at 0 ms (a batch of 64: no stock; usage 26624), returns to
    # user space at 1 ms (throttled 103 ms, as above) and charges 1 anon page at 2 ms (its
    # close, say). An RCU callback frees the 64 pages at 3 ms, taken to be set off a grace
    # period earlier. Grace 3 ms: set off at the allocation (0 ms), before the sleep, so it
    # runs during it, at 3 ms (back to the stock: 64, not more than a batch, stays); the
    # anon page at 105 ms takes 1 of them. Grace 1 ms: set off at 2 ms, after the sleep, so it
    # waits for task 0's 2 ms step (105 ms: no stock, a batch of 64, 26688, 63 stocked) and
    # comes at 3 + 103 = 106 ms (63 + 64 stocked is more than a batch: drained, 26561).
    ops = [page(pages=64, obj=5), {"op": USER_RETURN}, {"op": LRU_CHARGE, "pages": 1, "pool": POOL_ANON},
           page(pages=64, obj=5, op=PAGE_FREE, irq=True, task=1)]
    during = engine(scenario(ops, {POOL_OTHER: 26560}), MAINLINE, Limits(high_pages=25600, rcu_grace_ns=3 * MS))
    assert {t: int(u) for t, u in enumerate(during.bucket_last) if u >= 0} == {0: 26624, 1: 26624, 3: 26624, 105: 26624}
    after = engine(scenario(ops, {POOL_OTHER: 26560}), MAINLINE, Limits(high_pages=25600, rcu_grace_ns=1 * MS))
    assert {t: int(u) for t, u in enumerate(after.bucket_last) if u >= 0} == {0: 26624, 1: 26624, 105: 26688, 106: 26561}
    assert (during.end_ns, after.end_ns) == (105 * MS, 106 * MS)


def test_an_interrupts_free_of_what_a_late_task_made_comes_during_the_sleep_after_its_set_off(engine):
    # Task 0 is throttled 103 ms (as above), so it allocates 64 pages at 2 ms at 105 ms (no
    # stock: a batch of 64, 26688, over high again) and sleeps again on its return to user
    # space at 3 ms (106 ms): overage (1088 << 20) // 25600 = 44564, 44564^2 * 1000 >> 34 =
    # 115 jiffies, from jiffy 106 to the wheel's bucket of 224 (221 rounded up): 118 ms. An RCU callback frees the 64 pages at 5 ms, set off at the allocation (2
    # ms: grace 3 ms): when the loop reaches 5 ms, the allocation still waits on task 0's
    # clock, and the free waits for task 0 to get past its set-off, then comes as late as task 0
    # ran then: at 108 ms, during the second sleep (back to the stock: 64, kept). Task 0's
    # anon page at 4 ms comes at 4 + 103 + 118 = 225 ms and takes one of them: usage stays
    # 26688. (Behind the 4 ms step instead, the free would come at 226 ms, after a new batch
    # for the anon page: 26752, then 63 + 64 stocked, drained: 26625.)
    ops = [*THROTTLED, page(pages=64, obj=5), {"op": USER_RETURN}, {"op": LRU_CHARGE, "pages": 1, "pool": POOL_ANON},
           page(pages=64, obj=5, op=PAGE_FREE, irq=True, task=1)]
    r = engine(scenario(ops, OVER_HIGH), MAINLINE, Limits(high_pages=25600, rcu_grace_ns=3 * MS))
    assert r.throttle_ns == (103 + 118) * MS and r.end_ns == 225 * MS
    assert {t: int(u) for t, u in enumerate(r.bucket_last) if u >= 0} == {0: 26624, 1: 26624, 105: 26688, 106: 26688,
                                                                        108: 26688, 225: 26688}


def test_another_tasks_free_follows_the_task_that_allocated(engine):
    # Task 1 frees at 3 ms the page task 0 allocates at 2 ms, which comes at 105 ms (a batch of
    # 64 charged, 63 stocked): the free comes at 106 ms, as long after the allocation as in the
    # trace (back to the stock: the counter keeps it). Both charges leave usage above high, 64
    # pages over at most: no more than a batch, so the throttling waits for the return to user.
    ops = [*THROTTLED, page(obj=5), page(obj=5, op=PAGE_FREE, task=1)]
    r = engine(scenario(ops, OVER_HIGH), MAINLINE, Limits(high_pages=25600))
    assert list(r.outcome) == [OUTCOME["above_high"], OUTCOME["none"], OUTCOME["above_high"], OUTCOME["none"]]
    assert {t: int(u) for t, u in enumerate(r.bucket_last) if u >= 0} == {0: 26624, 1: 26624, 105: 26688, 106: 26688}
    assert r.end_ns == 106 * MS


def test_a_free_of_what_another_task_made_comes_when_its_own_task_gets_there(engine):
    # The allocation was replayed already, so the free is its own task's operation. Task 0 is
    # throttled 103 ms (as above) and allocates 64 pages at 2 ms: at 105 ms (no stock: a batch
    # of 64 charged, 26688). Task 1, on time, frees them at 200 ms: at 200 ms, not 103 ms later
    # (back to the stock: the counter keeps them).
    made_late = scenario([*THROTTLED, page(pages=64, obj=5), page(pages=64, obj=5, op=PAGE_FREE, task=1)], OVER_HIGH)
    made_late = replace(made_late, ts=np.array([0, 1, 2, 200]) * MS, t_last=200 * MS)
    r = engine(made_late, MAINLINE, Limits(high_pages=25600))
    assert {t: int(u) for t, u in enumerate(r.bucket_last) if u >= 0} == {0: 26624, 1: 26624, 105: 26688, 200: 26688}
    assert r.end_ns == 200 * MS
    # Task 1 is the throttled one (its 64 anon pages at 0 ms, its return to user space at 1 ms)
    # and frees at 3 ms the 64 pages task 0 allocates on time at 2 ms (26688): at 106 ms.
    freed_late = [*[{**op, "task": 1} for op in THROTTLED], page(pages=64, obj=5),
                  page(pages=64, obj=5, op=PAGE_FREE, task=1)]
    r = engine(scenario(freed_late, OVER_HIGH), MAINLINE, Limits(high_pages=25600))
    assert list(r.delay_ns) == [0, 103 * MS] and r.end_ns == 106 * MS
    assert {t: int(u) for t, u in enumerate(r.bucket_last) if u >= 0} == {0: 26624, 1: 26624, 2: 26688, 106: 26688}


def test_a_reader_frees_what_a_throttled_writer_sent_on_time_an_interrupt_after_the_sleep(engine):
    # Task 0 allocates 128 pages at 0 ms: a batch of 128, usage 26496 + 128 = 26624 over high
    # 25600, and 128 pages over high is more than a batch: it is throttled at once, 102 jiffies
    # (as above) * 128 / 64 = 204, from jiffy 0 to the wheel's bucket of 208: 208 ms. Task 1 frees them at 1 ms: the allocation ran on time,
    # so the free does too, though its allocator sleeps (128 pages back to the stock are
    # more than a batch: drained to the counter, 26496). Task 0's own next step, at 2 ms,
    # comes at 210 ms. Freed in interrupt context instead (deferred work of task 0's, set off
    # no earlier than the allocation, after which task 0 slept), the free comes as late as task
    # 0 ran then: at 209 ms.
    reader = [page(pages=128, obj=5), page(pages=128, obj=5, op=PAGE_FREE, task=1), {"op": USER_RETURN}]
    r = engine(scenario(reader, {POOL_OTHER: 26496}), MAINLINE, Limits(high_pages=25600))
    assert r.throttle_ns == 208 * MS and list(r.delay_ns) == [208 * MS, 0]
    assert r.outcome[0] == OUTCOME["reclaimed_for_high"]  # throttled in the charge, before the allocation returned
    assert {t: int(u) for t, u in enumerate(r.bucket_last) if u >= 0} == {0: 26624, 1: 26496, 210: 26496}
    interrupt = [reader[0], {**reader[1], "irq": True}, reader[2]]
    r = engine(scenario(interrupt, {POOL_OTHER: 26496}), MAINLINE, Limits(high_pages=25600))
    assert {t: int(u) for t, u in enumerate(r.bucket_last) if u >= 0} == {0: 26624, 209: 26496, 210: 26496}


def test_a_delay_across_batches_is_not_counted_twice():
    # Batch 1: task 0 is throttled 103 ms (at 1 ms) and uncharges at 2 ms: at 105 ms, replayed
    # by the batch's end. Batch 2: task 1, on time, charges at 3 ms and uncharges at 4 ms,
    # earlier than what batch 1 ran last. Usage is above high all along: 105 ms above it, and
    # the run ends at 105 ms, not at 4 ms nor 106 ms.
    ops = [*THROTTLED, {"op": LRU_UNCHARGE, "pages": 64, "pool": POOL_ANON},
           {"op": LRU_CHARGE, "pages": 64, "pool": POOL_FILE, "task": 1},
           {"op": LRU_UNCHARGE, "pages": 64, "pool": POOL_FILE, "task": 1}]
    data = scenario(ops, OVER_HIGH)
    for name, replay_class in ENGINES.items():
        session = replay_class(data, MAINLINE, Limits(high_pages=25600), GFP, MS)
        for lo, hi in ((0, 3), (3, 5)):
            session.feed(replace(data, **{k: getattr(data, k)[lo:hi] for k in ARRAYS}))
        r = session.finish()
        assert (r.ns_above_high, r.end_ns) == (105 * MS, 105 * MS), name


def test_which_tasks_wait_with_a_throttled_one_is_the_clock_knob(engine):
    # Task 0 makes task 1 at 0 ms and is throttled 110 ms (its charge at 1 ms, its return to
    # user space at 2 ms: 102 jiffies, to the wheel's bucket of 112 ms); task 1 charges 64 file pages at 3 ms (26624 + 64 pages). On clocks
    # of their own (the default) task 1 keeps its time; on a process's clock a thread (made
    # with CLONE_VM) waits with its creator, at 113 ms, and a forked process does not; on the
    # workload's clock every task waits. The stall stays the throttled task's own.
    def run(make: int, clock: str) -> tuple:
        ops = [{"op": make, "obj": 1, "pool": POOL_OTHER}, *THROTTLED,
               {"op": LRU_CHARGE, "pages": 64, "pool": POOL_FILE, "task": 1}]
        r = engine(scenario(ops, OVER_HIGH), MAINLINE, Limits(high_pages=25600, clock=clock))
        charged = [t for t, u in enumerate(r.bucket_last) if u == 26688]
        return list(r.stall_ns), list(r.delay_ns), charged, r.end_ns

    on_time = ([110 * MS, 0], [110 * MS, 0], [3], 3 * MS)
    waited = ([110 * MS, 0], [110 * MS, 110 * MS], [113], 113 * MS)
    assert run(TASK_CLONE_VM, "task") == on_time
    assert run(TASK_CLONE_VM, "process") == waited
    assert run(TASK_FORK, "process") == on_time
    assert run(TASK_FORK, "workload") == waited


def test_on_the_workloads_clock_any_tasks_stall_delays_all(engine):
    # No fork in the trace: task 1 is throttled (103 ms), task 0 charges 64 file pages at 3 ms.
    ops = [{**op, "task": 1} for op in THROTTLED] + [{"op": LRU_CHARGE, "pages": 64, "pool": POOL_FILE}]
    alone = engine(scenario(ops, OVER_HIGH), MAINLINE, Limits(high_pages=25600))
    shared = engine(scenario(ops, OVER_HIGH), MAINLINE, Limits(high_pages=25600, clock="workload"))
    assert list(alone.delay_ns) == [0, 103 * MS] and alone.end_ns == 2 * MS
    assert list(shared.delay_ns) == [103 * MS, 103 * MS] and shared.end_ns == 105 * MS
    assert list(shared.stall_ns) == [0, 103 * MS]


def test_a_clock_the_model_does_not_know_is_refused():
    with pytest.raises(ValueError, match="clock 'thread': choose one of task, process, workload"):
        Limits(clock="thread")


def test_toml_policies_are_validated(tmp_path):
    from replay.policy import load_toml

    good = tmp_path / "good.toml"
    good.write_text('[policy.big-stock]\nbase = "mainline-6.18"\nstock_batch = 128\n')
    assert load_toml(good)["big-stock"] == replace(MAINLINE, name="big-stock", stock_batch=128)
    for text, message in (
        ('[policy.x]\nhigh_mode = "lazy"\n', 'high_mode = "lazy"'),
        ("[policy.x]\nstock_batch = 0\n", "stock_batch = 0"),
        ("[policy.x]\nshrunk_slab_counts = 1\n", "shrunk_slab_counts = 1; give true or false"),
        ("[policy.x]\nstock_batch = true\n", "stock_batch = true; give a whole number"),
        ("[policy.x]\ncolour = 1\n", "unknown keys colour"),
        ('[policy.x]\nbase = "nope"\n', "no policy 'nope'"),
        ("[policy.x]\ndescription = 5\n", "description = 5; give a string in quotes"),
        ('[policy.mainline-6.18]\nstock_batch = 8\n', '[policy.mainline-6.18] is a table inside a table: quote a name with dots, '
                                                      '[policy."mainline-6.18"]'),
        ('[policy."mainline-6.18"]\nstock_batch = 8\n', "a built-in policy's name"),
        ("[policy.x\n", "not valid TOML"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(UserError) as raised:
            load_toml(bad)
        assert str(raised.value).startswith(f"{bad}: ") and message in str(raised.value), str(raised.value)


@pytest.mark.parametrize("release, expected", [
    ("4.2.0", "caller-gfp"), ("4.3.5", "nowait-slab-charge"), ("5.15.0-91-generic", "return-to-user"),
    ("6.1.0-57-amd64", "mainline-6.1"), ("6.4.16", "mainline-6.1"), ("6.5.0", "mainline-6.12"),
    ("6.12.117+deb12-amd64", "mainline-6.12"), ("6.15.11", "mainline-6.12"), ("6.16.0", "mainline-6.18"),
    ("6.18.44-fc-v1098", "mainline-6.18"), ("7.1.3", "mainline-6.18"),
])
def test_validate_models_each_kernel_with_the_policy_of_its_era(release, expected):
    # 583c27a167c2 (6.5) is the first change among the mainline eras that the model follows.
    from replay.policy import for_kernel

    chosen, why = for_kernel(release)
    assert chosen.name == expected and release in why


# A THP fault's gfp (vma_thp_gfp_mask, 6.18): GFP_TRANSHUGE_LIGHT (no __GFP_DIRECT_RECLAIM: THP defrag off for
# the VMA) and GFP_TRANSHUGE (defrag=madvise on a MADV_HUGEPAGE range: the fault may reclaim and compact).
GFP_TRANSHUGE_LIGHT, GFP_TRANSHUGE = 0x152802, 0x152C02
THP_NO_RECLAIM, THP_RECLAIM = BUILTIN["thp-no-reclaim"], BUILTIN["thp-reclaim"]


def huge_page(gfp: int, task: int = 0) -> dict:
    return {"op": LRU_CHARGE, "pages": 512, "pool": POOL_ANON, "task": task, "gfp": gfp}


def test_a_huge_page_charge_that_may_reclaim_evicts_2_mb_at_once_one_that_may_not_falls_back_to_small_pages(engine):
    # max 900; 24 pages held and 464 file pages (one-page folios): usage 488, room 412 < 512.
    # Reclaiming (thp-reclaim; mainline with a GFP_TRANSHUGE fault): one reclaim call for
    # max(512, 32) takes the 464 file pages (24), and the huge page fits: 536.
    # Not reclaiming (thp-no-reclaim; mainline with a GFP_TRANSHUGE_LIGHT fault): the charge
    # fails, and the fault falls back to 512 small pages charged with GFP_KERNEL: six batches of
    # 64 (872), 28 single pages (900), then the other 100 need room. A reclaim call for 32 scans
    # the file LRU's size >> priority from priority 12 down, and stops after the round that
    # reaches 32: of 464 pages 1 + 3 + 7 + 14 + 27 = 52 (pages 413-464), of 412 then
    # 1 + 3 + 6 + 12 + 24 = 46 (465-510), of 366 then 1 + 2 + 5 + 11 + 21 = 40 (the last 2):
    # 3 calls, 138 pages, 24 + 326 + 512 = 862 at the end.
    ops = lambda gfp: [huge_page(gfp)]  # noqa: E731
    pools = {POOL_OTHER: 24, POOL_FILE: 464}
    for policy, gfp in ((THP_RECLAIM, GFP_TRANSHUGE_LIGHT), (MAINLINE, GFP_TRANSHUGE)):
        r = engine(scenario(ops(gfp), pools=pools), policy, Limits(max_pages=900))
        assert r.outcome[0] == OUTCOME["reclaimed"] and r.reclaim_calls[TRIGGER["max"]] == 1, policy.name
        assert r.reclaimed_pages[TRIGGER["max"]] == 464 and list(r.bucket_last) == [536], policy.name
    for policy, gfp in ((THP_NO_RECLAIM, GFP_TRANSHUGE), (MAINLINE, GFP_TRANSHUGE_LIGHT)):
        r = engine(scenario(ops(gfp), pools=pools), policy, Limits(max_pages=900))
        assert r.outcome[0] == OUTCOME["fallback"] and r.reclaim_calls[TRIGGER["max"]] == 3, policy.name
        assert r.reclaimed_pages[TRIGGER["max"]] == 138 and list(r.bucket_last) == [862], policy.name


def test_a_huge_page_charge_that_may_not_reclaim_overshoots_high_one_that_may_stalls_instead(engine):
    # The 2015 thread's prediction. memory.high 600, no max; 24 pages held. Two huge pages
    # (536, then 1048: 448 over high). Mainline adds each charge's batch (512) to the task's
    # overage; past 64 pages a charge that may block reclaims and throttles itself at once
    # (reclaimed_for_high: it stalls in the fault), one that may not leaves it for the return
    # to user space (above_high: no stall in the fault; the usage stays over high meanwhile).
    ops = [huge_page(GFP_TRANSHUGE_LIGHT), huge_page(GFP_TRANSHUGE_LIGHT)]
    data = scenario(ops, pools={POOL_OTHER: 24})
    light = engine(data, THP_NO_RECLAIM, Limits(high_pages=600))
    assert [light.outcome[0], light.outcome[1]] == [OUTCOME["charged"], OUTCOME["above_high"]]
    assert light.reclaim_calls[TRIGGER["high_sync"]] == 0 and light.stall_ns.sum() == 0
    assert list(light.bucket_last) == [536, 1048]
    reclaiming = engine(data, THP_RECLAIM, Limits(high_pages=600))
    assert [reclaiming.outcome[0], reclaiming.outcome[1]] == [OUTCOME["charged"], OUTCOME["reclaimed_for_high"]]
    assert reclaiming.reclaim_calls[TRIGGER["high_sync"]] >= 1 and reclaiming.stall_ns[0] > 0
    assert engine(data, MAINLINE, Limits(high_pages=600)).outcome[1] == OUTCOME["above_high"]  # the fault's own: light
