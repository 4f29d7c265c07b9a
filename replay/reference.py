"""The reference engine: a small, readable model of memcg charging, one function per kernel
function (mm/memcontrol.c, mm/page_counter.c, mm/slub.c), applied to a trace's operations.

It is the specification the fast engine (replay.fast) must match event by event. Kernel
rules are from shared/KERNEL-MODEL.md; the approximations are said where they are made:

- One memcg: the target. Its ancestors' limits are folded into its own (their usage in
  the model is the workload's, so the tightest limit is the one that acts).
- Open loop: the trace's timeline is fixed. Reclaim and throttling become stall time of
  the task, they do not delay its later events. Async reclaim (high_work, watermarks) is
  instantaneous and stalls nobody.
- Reclaim takes file pages, then reclaimable slab, then anon pages if swap is on, at
  `reclaim_ns_per_page` each. File pages go as whole folios, oldest first (the LRU's
  tail), so one large folio can satisfy a call; a freed folio leaves the LRU as the
  oldest one of its order (the trace does not say which). What reclaim takes is owed: the
  trace later frees some of those pages or objects itself, and such frees first pay off
  the debt instead of uncharging twice. The capturing kernel's own reclaim (LRU pages
  gone inside its reclaim_begin/end) is not replayed: it cancels the model's debt, and
  where the model has not reclaimed as much it leaves a credit.
- An OOM kill picks the task holding the most anon pages (oom_badness, per task rather
  than per process) and frees those pages; with no such task, the charge fails. A victim
  that is the charging task itself keeps its memory until its charge has failed (it exits
  then); another victim's memory goes at once. The trace's later frees of a victim's anon
  pages pay off what the kill took. The kernel's own kills are not replayed: an oom event
  replays the charge the kernel could not make (OOM_CHARGE), and the anon pages the
  kernel's victim frees after it (LRU_OOM_FREED) only pay off what the model's own kill of
  that task took; a task the model has not killed keeps its own, until the model kills it
  (pages beyond its own, COW originals another task charged, are uncharged). Through an
  OOM_CHARGE, as much of the model's room as the other CPUs' page stocks could hold
  unseen is held (drain_all_stock only schedules their drain): up to a batch per CPU.
- Page stocks serve only this memcg, so their slot count never runs out. drain_all_stock
  empties the page stocks only; the object stocks keep their bytes.
- The charge path is 6.x's for every policy: a __GFP_HIGH charge at max is forced (4.2
  failed it) and an OOM kill happens in the charge (4.2 deferred it to the end of the page
  fault and failed the charge meanwhile).
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from replay.input import ReplayInput
from replay.ops import (
    HZ, LRU_CHARGE, LRU_OOM_FREED, LRU_RECLAIMED, LRU_UNCHARGE, MEMCG_CHARGE_BATCH_6X, MEMCG_DELAY_PRECISION_SHIFT,
    MEMCG_DELAY_SCALING_SHIFT, MEMCG_MAX_HIGH_DELAY_JIFFIES, OBJ_ALLOC, OBJ_EXT_BYTES, OBJ_FREE, OOM_CHARGE, OUTCOME,
    PAGE_ALLOC, PAGE_ALLOC_COSTLY_ORDER,
    PAGE_FREE, PAGE_SHIFT, PAGE_SIZE, POOL_ANON, POOL_FILE, POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE,
    SWAP_CLUSTER_MAX, TRIGGER, USER_RETURN, GfpBits, Limits,
)
from replay.policy import Policy
from replay.result import EngineResult


class ChargeFailed(Exception):
    """try_charge_memcg returned -ENOMEM."""


@dataclass
class Slab:
    cache: int
    capacity: int
    pages: int
    pool: int
    used: int = 0


@dataclass
class Memcg:
    """The page counter (usage, max, high, failcnt) and what the usage is made of."""

    max: int
    high: int
    usage: int = 0
    failcnt: int = 0
    pools: list[int] = field(default_factory=lambda: [0] * 6)  # pages
    # pages reclaimed that the trace has yet to free; below 0: pages the capturing kernel
    # reclaimed and the model still holds
    debt: list[int] = field(default_factory=lambda: [0] * 6)
    file_lru: deque[int] = field(default_factory=deque)  # file folio sizes (pages), oldest first
    freed_folios: Counter[int] = field(default_factory=Counter)  # per order: freed, still to leave file_lru


class Reference:
    def __init__(self, data: ReplayInput, policy: Policy, limits: Limits, gfp: GfpBits, resolution_ns: int) -> None:
        self.data, self.policy, self.limits, self.gfp = data, policy, limits, gfp
        self.memcg = Memcg(max=limits.max_pages, high=limits.high_pages)
        self.memcg.pools = [int(p) for p in data.initial_pools]
        self.memcg.usage = sum(self.memcg.pools)
        self.memcg.file_lru.extend([1] * self.memcg.pools[POOL_FILE])  # held before the trace: the oldest, folio sizes unknown
        self.stock = [0] * data.cpus  # per-CPU pre-charged pages (memcg_stock_pcp)
        self.obj_stock = [0] * data.cpus  # per-CPU pre-charged bytes (obj_stock_pcp)
        self.over_high = [0] * data.tasks  # current->memcg_nr_pages_over_high
        self.anon = [0] * data.tasks  # anon pages each task charged and still holds: what killing it frees
        self.oom_debt = [0] * data.tasks  # anon pages an OOM kill took from each task that the trace has yet to free
        self.oom_kept = [0] * data.tasks  # anon pages the kernel's OOM victim freed that the model holds until it kills it
        self.charged: set[int] = set()  # objects and pages whose charge succeeded in this replay
        self.objects: dict[int, Slab] = {}  # slab charging: which slab an object sits in
        self.current_slab: dict[int, Slab] = {}  # the slab each cache allocates from
        self.partial: dict[int, list[Slab]] = {}  # slabs with free slots
        self.result = EngineResult.empty(0, data.tasks, data.n_buckets(resolution_ns), resolution_ns)
        self.task = 0
        self.now = self.last_ts = data.t_first

    # -- the loop ------------------------------------------------------------------------

    def feed(self, batch: ReplayInput) -> np.ndarray:
        """Replay the next operations (batches of one trace, in order); their outcomes."""
        self.data = d = batch
        outcome = np.zeros(len(d), np.uint8)
        for i in range(len(d)):
            self.now = int(d.ts[i])
            self.account_time(self.last_ts, self.now)
            self.last_ts = self.now
            self.task, cpu, irq, gfp = int(d.task[i]), int(d.cpu[i]), bool(d.irq[i]), int(d.gfp[i])
            op, obj = int(d.op[i]), int(d.obj[i])
            if op in (OBJ_FREE, PAGE_FREE) and obj not in self.charged:
                pass  # the replay failed its allocation: nothing to uncharge
            elif op == OBJ_ALLOC:
                outcome[i] = self.slab_post_alloc_hook(i, cpu, irq, gfp)
            elif op == OBJ_FREE:
                self.slab_free_hook(i, cpu)
            elif op == PAGE_ALLOC:
                outcome[i] = self.charge(int(d.pages[i]), gfp, cpu, irq, int(d.pool[i]))
            elif op == PAGE_FREE:
                self.uncharge_kmem_pages(int(d.pages[i]), cpu, int(d.pool[i]))
            elif op == LRU_CHARGE:
                outcome[i] = self.charge(int(d.pages[i]), gfp, cpu, irq, int(d.pool[i]))
                if outcome[i] != OUTCOME["failed"]:
                    self.lru_charged(int(d.pages[i]), int(d.pool[i]))
            elif op == LRU_UNCHARGE:
                self.uncharge_lru(int(d.pages[i]), int(d.pool[i]))
            elif op == OOM_CHARGE:
                outcome[i] = self.charge_that_ended_in_oom(int(d.pages[i]), gfp, cpu, irq)
            elif op == LRU_RECLAIMED:
                self.memcg.debt[int(d.pool[i])] -= int(d.pages[i])
            elif op == LRU_OOM_FREED:
                self.free_oom_victim_anon(int(d.pages[i]))
            elif op == USER_RETURN:
                self.resume_user_mode_work()
            if op in (OBJ_ALLOC, PAGE_ALLOC) and outcome[i] != OUTCOME["failed"]:
                self.charged.add(obj)
            elif op in (OBJ_FREE, PAGE_FREE):
                self.charged.discard(obj)
            self.record_usage()
        return outcome

    def finish(self) -> EngineResult:
        """Counters, stall and time series of everything fed (outcomes came with each batch)."""
        self.result.failcnt = self.memcg.failcnt
        return self.result

    def charge(self, nr_pages: int, gfp: int, cpu: int, irq: bool, pool: int) -> int:
        """A page charge; the outcome code."""
        try:
            outcome = self.try_charge_memcg(gfp, nr_pages, cpu, irq)
        except ChargeFailed:
            return OUTCOME["failed"]
        self.memcg.pools[pool] += nr_pages
        return outcome

    # -- page_counter.c --------------------------------------------------------------------

    def page_counter_try_charge(self, nr_pages: int) -> bool:
        if self.memcg.usage + nr_pages > self.memcg.max:
            self.memcg.failcnt += 1
            return False
        self.memcg.usage += nr_pages
        return True

    def page_counter_uncharge(self, nr_pages: int) -> None:
        self.memcg.usage -= nr_pages

    def margin(self) -> int:
        return max(self.memcg.max - self.memcg.usage, 0)

    # -- per-CPU page stock ------------------------------------------------------------------

    def consume_stock(self, nr_pages: int, cpu: int) -> bool:
        if nr_pages > self.policy.stock_batch or self.stock[cpu] < nr_pages:
            return False
        self.stock[cpu] -= nr_pages
        return True

    def refill_stock(self, nr_pages: int, cpu: int) -> None:
        self.stock[cpu] += nr_pages
        if self.stock[cpu] > self.policy.stock_batch:
            self.drain_stock(cpu)

    def drain_stock(self, cpu: int) -> None:
        self.page_counter_uncharge(self.stock[cpu])
        self.stock[cpu] = 0

    def drain_all_stock(self) -> None:
        for cpu in range(len(self.stock)):
            self.drain_stock(cpu)

    # -- try_charge_memcg (KERNEL-MODEL §2) and memory.high (§3) ----------------------------------

    def try_charge_memcg(self, gfp: int, nr_pages: int, cpu: int, irq: bool) -> int:
        """Charge nr_pages; the outcome code, or ChargeFailed for -ENOMEM."""
        g, policy = self.gfp, self.policy
        batch = max(policy.stock_batch, nr_pages)
        retries = policy.max_reclaim_retries
        drained = reclaimed_once = oom_killed = False
        victim = -1
        while True:
            if self.consume_stock(nr_pages, cpu):
                self.result.stock_hits += 1
                return OUTCOME["stock"]
            if policy.high_mode == "fail-nowait" and not gfp & g.direct_reclaim and self.memcg.usage > self.memcg.high:
                return self.nomem(gfp, nr_pages, reclaimed_once)
            if self.page_counter_try_charge(batch):
                break
            if batch > nr_pages:
                batch = nr_pages
                continue
            if not gfp & g.direct_reclaim:
                return self.nomem(gfp, nr_pages, reclaimed_once)
            self.result.max_events += 1
            reclaimed = self.try_to_free_mem_cgroup_pages(nr_pages, "max")
            reclaimed_once = True
            if self.margin() >= nr_pages:
                continue
            if not drained:
                self.drain_all_stock()
                drained = True
                continue
            if gfp & g.noretry:
                return self.nomem(gfp, nr_pages, reclaimed_once)
            if reclaimed and nr_pages <= 1 << PAGE_ALLOC_COSTLY_ORDER:
                continue
            if retries > 0:
                retries -= 1
                continue
            if gfp & g.retry_mayfail:
                return self.nomem(gfp, nr_pages, reclaimed_once)
            if oom_killed and victim == self.task:  # passed_oom && task_is_dying(): the charge fails, the victim exits
                self.exit_mmap(victim)
                return self.nomem(gfp, nr_pages, reclaimed_once)
            victim = self.mem_cgroup_oom(nr_pages)
            if victim >= 0:
                oom_killed = True
                retries = policy.max_reclaim_retries
                continue
            return self.nomem(gfp, nr_pages, reclaimed_once)
        self.result.charges += 1
        if batch > nr_pages:
            self.refill_stock(batch - nr_pages, cpu)
        self.handle_high_after_charge(gfp, nr_pages, batch, irq)
        return OUTCOME["oom"] if oom_killed else OUTCOME["reclaimed"] if reclaimed_once else OUTCOME["charged"]

    def nomem(self, gfp: int, nr_pages: int, raised_max_event: bool) -> int:
        """Fail, unless __GFP_NOFAIL or __GFP_HIGH force the charge past max (raising the MAX
        event if reclaim has not already)."""
        if not gfp & (self.gfp.nofail | self.gfp.high):
            raise ChargeFailed
        self.memcg.usage += nr_pages  # page_counter_charge: no limit check
        self.result.forced += 1
        if not raised_max_event:
            self.result.max_events += 1
        return OUTCOME["forced"]

    def handle_high_after_charge(self, gfp: int, nr_pages: int, batch: int, irq: bool) -> None:
        """What each era does once a charge has reached the page counter."""
        mode, over = self.policy.high_mode, self.memcg.usage > self.memcg.high
        if mode in ("sync", "fail-nowait", "watermark"):
            if over and gfp & self.gfp.direct_reclaim:  # 4.2: only charges that may block
                self.result.high_events += 1
                self.try_to_free_mem_cgroup_pages(nr_pages, "high_sync")
            if mode == "watermark":
                self.watermark_reclaim()
        elif mode == "return-to-user":
            if over:
                self.over_high[self.task] += batch
        elif mode == "mainline":
            if over and irq:
                self.reclaim_high(MEMCG_CHARGE_BATCH_6X, "async")  # high_work
            elif over:
                self.over_high[self.task] += batch
            if self.over_high[self.task] > MEMCG_CHARGE_BATCH_6X and gfp & self.gfp.direct_reclaim:
                self.mem_cgroup_handle_over_high("high_sync")

    def watermark_reclaim(self) -> None:
        """Async reclaim once free space under max drops below the margin, down to the low
        watermark (wmark_low = wmark_high - wmark_high / 256, as memory.wmark_ratio does)."""
        wmark_high = self.memcg.max - self.policy.watermark_margin_pages
        if self.memcg.usage > wmark_high:
            wmark_low = wmark_high - wmark_high // 256
            self.try_to_free_mem_cgroup_pages(self.memcg.usage - wmark_low, "async", exact=True)

    def resume_user_mode_work(self) -> None:
        """Return to user space: 4.4 reclaims the overage once; 6.x may also throttle."""
        if self.policy.high_mode == "return-to-user" and self.over_high[self.task]:
            nr_pages, self.over_high[self.task] = self.over_high[self.task], 0
            self.reclaim_high(nr_pages, "user_return")
        elif self.policy.high_mode == "mainline":
            self.mem_cgroup_handle_over_high("user_return")

    def reclaim_high(self, nr_pages: int, trigger: str) -> int:
        if self.memcg.usage <= self.memcg.high:
            return 0
        self.result.high_events += 1
        return self.try_to_free_mem_cgroup_pages(nr_pages, trigger)

    def mem_cgroup_handle_over_high(self, trigger: str) -> None:
        """__mem_cgroup_handle_over_high: reclaim, then sleep off the remaining overage."""
        nr_pages = self.over_high[self.task]
        if not nr_pages:
            return
        self.over_high[self.task] = 0
        retries = self.policy.max_reclaim_retries
        in_retry = False
        while True:
            reclaimed = self.reclaim_high(SWAP_CLUSTER_MAX if in_retry else nr_pages, trigger)
            penalty = min(self.calculate_high_delay(nr_pages), MEMCG_MAX_HIGH_DELAY_JIFFIES)
            if penalty <= HZ // 100:
                return
            if reclaimed or retries > 0:
                if not reclaimed:
                    retries -= 1
                in_retry = True
                continue
            self.stall(penalty * (1_000_000_000 // HZ))
            self.result.throttle_ns += penalty * (1_000_000_000 // HZ)
            return

    def calculate_high_delay(self, nr_pages: int) -> int:
        """Penalty jiffies: about HZ * r^2 * nr / 64 with r = (usage - high) / high."""
        usage, high = self.memcg.usage, self.memcg.high
        if usage <= high:
            return 0
        high = max(high, 1)  # calculate_overage: a threshold of 1 page when high is 0
        overage = ((usage - high) << 20) // high
        penalty = (overage * overage * HZ) >> MEMCG_DELAY_PRECISION_SHIFT >> MEMCG_DELAY_SCALING_SHIFT
        return penalty * nr_pages // MEMCG_CHARGE_BATCH_6X

    # -- reclaim and OOM ---------------------------------------------------------------------

    def try_to_free_mem_cgroup_pages(self, nr_pages: int, trigger: str, exact: bool = False) -> int:
        """Reclaim at least max(nr_pages, SWAP_CLUSTER_MAX): whole file folios, then
        reclaimable slab, then anon pages."""
        want = nr_pages if exact else max(nr_pages, SWAP_CLUSTER_MAX)
        got = self.shrink_file_lru(want)
        for pool in (POOL_SLAB_RECLAIMABLE, POOL_ANON) if self.limits.swap else (POOL_SLAB_RECLAIMABLE,):
            got = self.reclaim_pages(pool, min(max(want - got, 0), self.memcg.pools[pool]), got)
        self.page_counter_uncharge(got)
        t = TRIGGER[trigger]
        self.result.reclaim_calls[t] += 1
        self.result.reclaimed_pages[t] += got
        if trigger != "async":
            self.stall(got * self.limits.reclaim_ns_per_page)
        return got

    def shrink_file_lru(self, want: int) -> int:
        """shrink_lruvec's file lists: evict the oldest folios, each whole, until `want`
        pages are freed (a 256-page folio satisfies a 32-page call); page by page should
        the pool hold more than its folios."""
        got = 0
        while got < want and self.memcg.pools[POOL_FILE]:
            folio = self.oldest_folio() or want - got
            got = self.reclaim_pages(POOL_FILE, min(folio, self.memcg.pools[POOL_FILE]), got)
        return got

    def oldest_folio(self) -> int:
        """Take the LRU's oldest folio that is still charged; its size, 0 if none."""
        while self.memcg.file_lru:
            folio = self.memcg.file_lru.popleft()
            if self.memcg.freed_folios[folio_order(folio)]:
                self.memcg.freed_folios[folio_order(folio)] -= 1  # the trace freed it already
            else:
                return folio
        return 0

    def reclaim_pages(self, pool: int, nr_pages: int, got: int) -> int:
        """Reclaim nr_pages of a pool (owed until the trace frees them); what is got so far."""
        self.memcg.pools[pool] -= nr_pages
        self.memcg.debt[pool] += nr_pages
        return got + nr_pages

    def mem_cgroup_oom(self, nr_pages: int) -> int:
        """mem_cgroup_oom -> mem_cgroup_out_of_memory -> out_of_memory: for charges up to
        PAGE_ALLOC_COSTLY_ORDER, kill the task with the most anon pages (select_bad_process).
        The victim's task id; -1 when no task holds any (the charge then fails). Another
        task's memory goes at once (it exits, or the OOM reaper takes it); the charging
        task's own goes when its charge has failed."""
        if nr_pages > 1 << PAGE_ALLOC_COSTLY_ORDER:
            return -1
        victim = max(range(len(self.anon)), key=lambda t: self.anon[t], default=-1)
        if victim < 0 or not self.anon[victim]:
            return -1
        self.result.oom_kills += 1
        if victim != self.task:
            self.exit_mmap(victim)
        return victim

    def exit_mmap(self, victim: int) -> None:
        """An OOM victim's anon pages are uncharged; owed until the trace frees them (those
        it freed already, after the kernel's own kill of it, are not)."""
        pages = min(self.anon[victim], self.memcg.pools[POOL_ANON])
        self.anon[victim] = 0
        self.oom_debt[victim] += max(pages - self.oom_kept[victim], 0)
        self.oom_kept[victim] = 0
        self.memcg.pools[POOL_ANON] -= pages
        self.page_counter_uncharge(pages)

    def charge_that_ended_in_oom(self, nr_pages: int, gfp: int, cpu: int, irq: bool) -> int:
        """The charge the capturing kernel OOM-killed for (the trace has no other record of
        it when it failed): try it; if the model can make it, cancel it
        (mem_cgroup_cancel_charge), since where the kernel's retry succeeded the trace
        charges the pages itself.

        The kernel's margin stayed below nr_pages through its reclaim and drain_all_stock,
        but the kernel may hold pages there the trace cannot show: drain_all_stock drains
        only the charging CPU's stock itself and schedules work to drain the others
        (schedule_work_on), which the charge does not wait for, so up to
        MEMCG_CHARGE_BATCH pages on each other CPU can still be charged when the OOM killer
        runs. So much of the model's room as those stocks explain is held through the
        charge, and uncharged after it, when the drain work has run."""
        held = min(max(self.room() - nr_pages + 1, 0), self.policy.stock_batch * (len(self.stock) - 1))
        self.memcg.usage += held
        try:
            outcome = self.try_charge_memcg(gfp, nr_pages, cpu, irq)
            self.page_counter_uncharge(nr_pages)
        except ChargeFailed:
            outcome = OUTCOME["failed"]
        self.page_counter_uncharge(held)
        return outcome

    def room(self) -> int:
        """What a charge could get: the margin, the page stocks and what reclaim can take."""
        reclaimable = self.memcg.pools[POOL_FILE] + self.memcg.pools[POOL_SLAB_RECLAIMABLE]
        if self.limits.swap:
            reclaimable += self.memcg.pools[POOL_ANON]
        return self.margin() + sum(self.stock) + reclaimable

    def stall(self, ns: int) -> None:
        self.result.stall_ns[self.task] += ns

    # -- uncharging --------------------------------------------------------------------------

    def pay_debt(self, pool: int, nr_pages: int) -> int:
        """Pages of a free that reclaim already took; the rest is uncharged for real."""
        paid = min(max(self.memcg.debt[pool], 0), nr_pages)
        self.memcg.debt[pool] -= paid
        return nr_pages - paid

    def lru_charged(self, nr_pages: int, pool: int) -> None:
        """A file folio joins the LRU's young end; anon pages count for the charging task."""
        if pool == POOL_FILE:
            self.memcg.file_lru.append(nr_pages)
        elif pool == POOL_ANON:
            self.anon[self.task] += nr_pages

    def pay_oom_debt(self, nr_pages: int) -> int:
        """Anon pages the task frees that the model's OOM kill of it took already; the rest."""
        paid = min(self.oom_debt[self.task], nr_pages)
        self.oom_debt[self.task] -= paid
        return nr_pages - paid

    def free_oom_victim_anon(self, nr_pages: int) -> None:
        """Anon pages the kernel's OOM victim frees after its oom:mark_victim: those the model's
        kill of it took are paid off; those it charged itself stay charged until the model kills
        it (the model decides its own kills). Pages beyond both were charged by another task:
        COW originals its parent wrote to after the fork, which the victim mapped last. Its exit
        frees them whoever killed it, so they are uncharged."""
        unpaid = self.pay_oom_debt(nr_pages)
        kept = min(unpaid, max(self.anon[self.task] - self.oom_kept[self.task], 0))
        self.oom_kept[self.task] += kept
        self.uncharge_folios(unpaid - kept, POOL_ANON)

    def uncharge_lru(self, nr_pages: int, pool: int) -> None:
        if pool == POOL_ANON:
            nr_pages = self.pay_oom_debt(nr_pages)
            self.anon[self.task] = max(self.anon[self.task] - nr_pages, 0)
        self.uncharge_folios(nr_pages, pool)

    def uncharge_folios(self, nr_pages: int, pool: int) -> None:
        """Uncharge LRU pages of a pool, those reclaim took already excepted."""
        unpaid = self.pay_debt(pool, nr_pages)
        if pool == POOL_FILE and unpaid == nr_pages:  # a folio the model holds: it leaves the LRU
            self.memcg.freed_folios[folio_order(nr_pages)] += 1
        nr_pages = min(unpaid, self.memcg.pools[pool])  # never below what the model holds
        self.memcg.pools[pool] -= nr_pages
        self.page_counter_uncharge(nr_pages)

    def uncharge_kmem_pages(self, nr_pages: int, cpu: int, pool: int) -> None:
        nr_pages = min(self.pay_debt(pool, nr_pages), self.memcg.pools[pool])
        self.memcg.pools[pool] -= nr_pages
        if self.policy.charge_unit == "object":
            self.refill_stock(nr_pages, cpu)  # obj_cgroup_uncharge_pages goes through the stock
        else:
            self.page_counter_uncharge(nr_pages)

    # -- object charging (6.x obj_cgroup) ------------------------------------------------------

    def obj_cgroup_charge(self, size: int, gfp: int, cpu: int, irq: bool, pool: int) -> int:
        if self.obj_stock[cpu] >= size:  # consume_obj_stock
            self.obj_stock[cpu] -= size
            self.result.stock_hits += 1
            return OUTCOME["stock"]
        nr_pages, nr_bytes = size >> PAGE_SHIFT, size & (PAGE_SIZE - 1)
        if nr_bytes:
            nr_pages += 1
        outcome = self.charge(nr_pages, gfp, cpu, irq, pool)
        if outcome != OUTCOME["failed"] and nr_bytes:
            self.obj_stock[cpu] += PAGE_SIZE - nr_bytes
        return outcome

    def obj_cgroup_uncharge(self, size: int, cpu: int, pool: int) -> None:
        """refill_obj_stock(allow_uncharge): whole pages above one go back to the page stock."""
        self.obj_stock[cpu] += size
        if self.obj_stock[cpu] > PAGE_SIZE:
            nr_pages = self.obj_stock[cpu] >> PAGE_SHIFT
            self.obj_stock[cpu] &= PAGE_SIZE - 1
            own = min(nr_pages, self.memcg.pools[pool] + self.memcg.debt[pool])
            self.uncharge_kmem_pages(own, cpu, pool)
            if nr_pages > own:  # the byte stock is shared by both slab pools
                self.uncharge_kmem_pages(nr_pages - own, cpu, POOL_SLAB_RECLAIMABLE + POOL_SLAB_UNRECLAIMABLE - pool)

    # -- slab hooks -----------------------------------------------------------------------------

    def slab_post_alloc_hook(self, i: int, cpu: int, irq: bool, gfp: int) -> int:
        d = self.data
        if self.policy.charge_unit == "object":
            size = int(d.bytes[i]) + OBJ_EXT_BYTES
            return self.obj_cgroup_charge(size, gfp, cpu, irq, int(d.pool[i]))
        return self.slab_alloc_object(int(d.obj[i]), int(d.cache[i]), gfp, cpu, irq, int(d.pool[i]))

    def slab_free_hook(self, i: int, cpu: int) -> None:
        d = self.data
        if self.policy.charge_unit == "object":
            self.obj_cgroup_uncharge(int(d.bytes[i]) + OBJ_EXT_BYTES, cpu, int(d.pool[i]))
        else:
            self.slab_free_object(int(d.obj[i]))

    # -- slab charging (4.x per-memcg caches): slabs of each cache, charged whole ------------------

    def slab_alloc_object(self, obj: int, cache: int, gfp: int, cpu: int, irq: bool, pool: int) -> int:
        outcome = OUTCOME["no_charge"]
        slab = self.current_slab.get(cache)
        if slab is None or slab.used == slab.capacity:
            slab = self.take_partial(cache)
        if slab is None:
            slab, outcome = self.allocate_slab(cache, gfp, cpu, irq, pool)
            if slab is None:
                return outcome
        self.current_slab[cache] = slab
        slab.used += 1
        self.objects[obj] = slab
        return outcome

    def take_partial(self, cache: int) -> Slab | None:
        partial = self.partial.get(cache, [])
        while partial:
            slab = partial.pop()
            if 0 < slab.used < slab.capacity:
                return slab
        return None

    def allocate_slab(self, cache: int, gfp: int, cpu: int, irq: bool, pool: int) -> tuple[Slab | None, int]:
        """SLUB allocate_slab: try the cache's order with a no-retry gfp (and, in 4.3, without
        direct reclaim above the minimum order), then fall back to the minimum order with the
        caller's gfp."""
        d, g = self.data, self.gfp
        order, min_order = int(d.cache_order[cache]), int(d.cache_min_order[cache])
        first_gfp = (gfp | g.noretry) & ~g.nofail
        if order > min_order:
            self.result.high_order_attempts += 1
            if self.policy.slab_growth_gfp == "nowait-high-order":
                first_gfp &= ~g.direct_reclaim
        outcome = self.charge(1 << order, first_gfp, cpu, irq, pool)
        if outcome != OUTCOME["failed"]:
            return Slab(cache, int(d.cache_objects[cache]), 1 << order, pool), outcome
        outcome = self.charge(1 << min_order, gfp, cpu, irq, pool)
        if outcome == OUTCOME["failed"]:
            return None, outcome
        if order > min_order:
            self.result.fallbacks += 1
            outcome = OUTCOME["fallback"]
        return Slab(cache, int(d.cache_objects_min[cache]), 1 << min_order, pool), outcome

    def slab_free_object(self, obj: int) -> None:
        slab = self.objects.pop(obj)
        slab.used -= 1
        if slab.used == 0 and self.current_slab.get(slab.cache) is not slab:
            self.uncharge_kmem_pages(slab.pages, 0, slab.pool)  # discard_slab
        elif slab.used == slab.capacity - 1 and self.current_slab.get(slab.cache) is not slab:
            self.partial.setdefault(slab.cache, []).append(slab)  # a full slab became partial

    # -- bookkeeping -----------------------------------------------------------------------------

    def account_time(self, start: int, end: int) -> None:
        if self.memcg.usage > self.memcg.high and end > start:
            self.result.ns_above_high += end - start
            self.result.page_ns_above_high += (self.memcg.usage - self.memcg.high) * (end - start)

    def record_usage(self) -> None:
        self.result.record(self.now - self.data.t_first, self.memcg.usage)


def folio_order(nr_pages: int) -> int:
    """A folio's order (sizes that are not a power of two count as the order below)."""
    return nr_pages.bit_length() - 1
