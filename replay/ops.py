"""The replay's vocabulary, shared by both engines: operations, outcomes, gfp bits, constants.

A trace becomes a stream of operations (replay.input); each engine applies them to a
model memcg under one policy and gives every operation an outcome.
"""
from __future__ import annotations

from dataclasses import dataclass

# Operations, one per replayed event.
OBJ_ALLOC = 1  # an accounted slab object is allocated (kmalloc, kmem_cache_alloc)
OBJ_FREE = 2  # such an object is freed
PAGE_ALLOC = 3  # __GFP_ACCOUNT pages are allocated (kmalloc_large, page tables, stacks...)
PAGE_FREE = 4
LRU_CHARGE = 5  # file or anon pages join the memcg (memcg stat NR_FILE_PAGES, NR_ANON_MAPPED), or kernel stack pages
LRU_UNCHARGE = 6
USER_RETURN = 7  # the task returns to user space (syscall exit)
LRU_RECLAIMED = 8  # the capturing kernel's own reclaim took file or anon pages (inside its reclaim_begin/end)
OOM_CHARGE = 9  # the charge the capturing kernel OOM-killed for (oom:mark_victim, sized by the task's last reclaim_begin)
RETRY_FOUND_ROOM = 1  # an OOM_CHARGE's obj: the kernel's retry after its kill went through (else -1)
LRU_OOM_FREED = 10  # the capturing kernel's OOM kill freed a victim's anon pages (its frees after its oom:mark_victim)
ANON_UNMAPPED = 11  # a task unmapped anon pages (NR_ANON_MAPPED): they leave its rss, not yet the memcg
ANON_FREED = 12  # unmapped anon pages are freed (they leave the anon LRU): uncharged
FAILED_CHARGE = 13  # a charge the capturing kernel failed after memcg reclaim, without an OOM kill (a THP that fell
# back to small pages, a dying task's fault): its page allocation is freed uncharged
TASK_FORK = 14  # a task is made with a copy-on-write copy of its parent's mm (task_new without CLONE_VM); obj: the new task
TASK_CLONE_VM = 15  # a task is made sharing its parent's mm (a thread, a vfork child); obj: the new task
TASK_EXEC = 16  # the task executes a file: a new mm
TASK_EXIT = 17  # the task exits: it leaves its mm
RECLAIM_TIME = 18  # the capturing kernel held the task `bytes` ns in memcg reclaim (reclaim_begin to end) or asleep for memory.high
TASK_JOIN = 19  # the task waited for a task it made to exit (wait4, pthread_join); obj: that task

# Pools the memcg's usage is split into; reclaim takes from some of them.
POOL_FILE, POOL_ANON, POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE, POOL_KMEM_PAGES, POOL_OTHER = range(6)
POOL_NAMES = ("file", "anon", "slab_reclaimable", "slab_unreclaimable", "kmem_pages", "other")

# Outcomes of an operation under a policy.
OUTCOMES = (
    "none",  # not a charge (a free, a return to user space)
    "stock",  # charged from a per-CPU stock: no page counter, no limit checks
    "no_charge",  # an object that fit in an already charged slab (slab charging)
    "charged",  # the page counter was charged without reclaim
    "above_high",  # charged without reclaim, leaving usage above memory.high: its high work deferred or not done
    "reclaimed_for_high",  # charged, then the task reclaimed or was throttled for memory.high before it returned
    "reclaimed",  # charged after memcg reclaim (at memory.max)
    "fallback",  # a high-order slab charge failed; the minimum order was charged instead
    "other_node",  # a node-local slab charge failed; a free object was taken from another NUMA node's slab
    "forced",  # charged past memory.max (__GFP_HIGH or __GFP_NOFAIL)
    "oom",  # charged after a memcg OOM kill
    "failed",  # the charge failed: the allocation returns NULL
)
OUTCOME = {name: code for code, name in enumerate(OUTCOMES)}

RECLAIM_TRIGGERS = ("max", "high_sync", "user_return", "async")
# Which tasks run on one clock in closed loop (replay.model, "the closed loop"): each its own, a
# process's threads one, or the whole workload one.
CLOCK_SHARING = ("task", "process", "workload")
TRIGGER = {name: code for code, name in enumerate(RECLAIM_TRIGGERS)}

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
OBJ_EXT_BYTES = 8  # obj_full_size(): the object plus its obj_cgroup pointer
SWAP_CLUSTER_MAX = 32
PAGE_ALLOC_COSTLY_ORDER = 3
MEMCG_CHARGE_BATCH_6X = 64  # threshold for synchronous over-high handling in 6.x
NR_MEMCG_STOCK = 7  # memcgs a CPU's page stock caches since 6.16 (f735eebe55f8); 1 before
MEMCG_DELAY_PRECISION_SHIFT = 20
MEMCG_DELAY_SCALING_SHIFT = 14
DEFAULT_HZ = 1000  # the kernel's CONFIG_HZ where a trace does not record it (manifest kernel.hz)
UNLIMITED = 1 << 62  # pages


@dataclass(frozen=True)
class GfpBits:
    """The gfp bits the charge path tests, from the capturing kernel's own table."""

    direct_reclaim: int
    noretry: int
    retry_mayfail: int
    nofail: int
    high: int
    fs: int  # __GFP_FS: without it, reclaim shrinks no file system caches (dentries, inodes)
    kernel: int  # GFP_KERNEL: the gfp of the reclaim a task does on its own behalf (memory.high work)

    @classmethod
    def from_table(cls, table: dict[str, int]) -> "GfpBits":
        return cls(
            direct_reclaim=table["__GFP_DIRECT_RECLAIM"], noretry=table["__GFP_NORETRY"],
            retry_mayfail=table["__GFP_RETRY_MAYFAIL"], nofail=table["__GFP_NOFAIL"], high=table["__GFP_HIGH"],
            fs=table["__GFP_FS"], kernel=table["GFP_KERNEL"],
        )


@dataclass(frozen=True)
class Limits:
    max_pages: int = UNLIMITED
    high_pages: int = UNLIMITED
    swap: bool = False  # whether reclaim may take anon pages
    # The cost of a memcg reclaim call, charged to the reclaiming task as stall (replay.run.reclaim_cost)
    reclaim_ns_per_call: int = 0
    reclaim_ns_per_page: int = 1000
    # Where the cost came from: "trace" (its own reclaim), "default" (it has no batch reclaimed to measure a
    # page by), or the path of another trace (replay --reclaim-cost-from)
    reclaim_cost_from: str = "default"
    # How long slab that reclaim shrank stays charged: an RCU grace period. 20 ms is what the development VM's
    # traces show from a memcg reclaim to the softirq frees of the dentries and inodes it pruned (14 to 40 ms).
    rcu_grace_ns: int = 20_000_000
    # The capturing kernel's CONFIG_HZ (manifest kernel.hz): the memory.high penalty is counted in its jiffies.
    hz: int = DEFAULT_HZ
    # Closed loop: a task's stall delays its later operations (replay.model, "the closed loop"); open loop keeps
    # the trace's timeline and only adds the stall up.
    closed_loop: bool = True
    clock: str = "task"  # which tasks share a clock in closed loop: one of CLOCK_SHARING
    # Pages charged ahead in each CPU's page stock, for the memcg of the CPU's first operation, from that
    # operation on: where in a batch the replay's charging begins (0: a new memcg's empty stock). Which batch crosses
    # memory.high, and so how many throttles a run takes, turns on it, and a few dozen pages charged or not
    # (a file read the first time, a stock another memcg evicted) move it from one run to the next.
    stock_phase: int = 0

    def __post_init__(self) -> None:
        if self.clock not in CLOCK_SHARING:
            raise ValueError(f"clock {self.clock!r}: choose one of {', '.join(CLOCK_SHARING)}")
        if not 0 <= self.stock_phase < MEMCG_CHARGE_BATCH_6X:
            raise ValueError(f"stock phase {self.stock_phase}: give 0 to {MEMCG_CHARGE_BATCH_6X - 1} pages")
