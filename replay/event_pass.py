"""From a segment's events to replay operations: one compiled pass in event order.

What each event becomes is said in replay.input. What spans events is state carried from one
event to the next, per task (`tasks`: in a reclaim, OOM-killed, its last reclaim's gfp and
order, its last LRU change) and per object (replay.object_slots), so the pass reads every
event once and needs no joins; the state spans segments, except the LRU change a following
NR_SHMEM change marks as swap-backed, which is looked for within a segment.
"""
from __future__ import annotations

import numpy as np

from common.jit import njit
from replay.object_slots import (
    CHARGED_BYTES, CHARGED_CACHE, CHARGED_OP, CHARGED_PAGES, CHARGED_POOL, give_back_slot, take_slot,
)
from replay.ops import (
    LRU_CHARGE, LRU_OOM_FREED, LRU_RECLAIMED, LRU_UNCHARGE, OBJ_ALLOC, OOM_CHARGE, PAGE_ALLOC, POOL_ANON, POOL_FILE,
    POOL_KMEM_PAGES, POOL_OTHER, POOL_SLAB_UNRECLAIMABLE, USER_RETURN,
)
from traces.schema import KINDS

(KMALLOC, KMEM_CACHE_ALLOC, KFREE, KMEM_CACHE_FREE, PAGE_ALLOC_KIND, PAGE_FREE_KIND, LRUVEC_STATE, RECLAIM_BEGIN,
 RECLAIM_END, USER_RETURN_KIND, OOM_KIND) = (KINDS.index(kind) for kind in (
    "kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "page_alloc", "page_free", "memcg_lruvec_state",
    "reclaim_begin", "reclaim_end", "user_return", "oom"))
# tasks columns; RECLAIM_ORDER -1: no reclaim began yet; LAST_LRU: the output index of the task's last LRU
# operation in this segment (-1: none), LAST_LRU_VAL its change
IN_RECLAIM, KILLED, RECLAIM_GFP, RECLAIM_ORDER, LAST_LRU, LAST_LRU_VAL = range(6)
# items: the node_stat_item values of NR_FILE_PAGES, NR_ANON_MAPPED, NR_KERNEL_STACK_KB, NR_SHMEM (-1: unknown)
FILE_ITEM, ANON_ITEM, STACK_ITEM, SHMEM_ITEM = range(4)
# gfp: what LRU pages and kernel stacks are charged with
GFP_HIGHUSER_MOVABLE, GFP_KERNEL = range(2)
OUTPUTS = ("event", "op", "gfp", "pages", "bytes", "cache", "obj", "pool")


def new_tasks(count: int) -> np.ndarray:
    tasks = np.zeros((count, LAST_LRU_VAL + 1), np.int64)
    tasks[:, RECLAIM_ORDER] = tasks[:, LAST_LRU] = -1
    return tasks


@njit
def segment_operations(kind, task, victim, charged_ok, lru, item, val, obj, order, nbytes, gfp, cache, kmalloc_cache,
                       cache_pool, items, lru_gfp, tasks, slot_of, free, counts, charge):
    """The operations of a segment's events: per output, the event's index and the operation.
    `charged_ok`: an accounted, successful allocation of at most KMALLOC_MAX_CACHE_SIZE (pages:
    any size); `lru`: an LRU or kernel-stack change of the target memcg; `victim`: an oom
    event's victim as a task (-1: none with events)."""
    n = kind.shape[0]
    out_event, out_op, out_gfp = np.empty(n, np.int64), np.empty(n, np.int8), np.empty(n, np.int64)
    out_pages, out_bytes, out_cache = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int32)
    out_obj, out_pool = np.empty(n, np.int64), np.empty(n, np.int8)
    tasks[:, LAST_LRU] = -1
    done = 0
    for e in range(n):
        k, t = kind[e], task[e]
        op, pages, pool, size, cache_id, gfp_e, slot = -1, 0, POOL_OTHER, nbytes[e], cache[e], gfp[e], -1
        if (k == KMALLOC or k == KMEM_CACHE_ALLOC) and charged_ok[e]:
            op = OBJ_ALLOC
            if k == KMALLOC:  # accounted kmallocs come from the kmalloc-cg-SIZE caches
                cache_id = kmalloc_cache[size]
            pool = cache_pool[cache_id] if cache_id >= 0 else POOL_SLAB_UNRECLAIMABLE
        elif k == PAGE_ALLOC_KIND and charged_ok[e]:
            op, pages, pool, cache_id = PAGE_ALLOC, (1 << order[e]) if order[e] >= 0 else 0, POOL_KMEM_PAGES, -1
        elif (k == KFREE or k == KMEM_CACHE_FREE or k == PAGE_FREE_KIND) and obj[e] >= 0:
            slot = give_back_slot(slot_of, free, counts, obj[e])
            if slot >= 0:  # its allocation was charged: the free uncharges what it charged
                op = charge[slot, CHARGED_OP] + 1  # OBJ_FREE, PAGE_FREE follow their allocation codes
                size, pages = charge[slot, CHARGED_BYTES], charge[slot, CHARGED_PAGES]
                pool, cache_id = charge[slot, CHARGED_POOL], charge[slot, CHARGED_CACHE]
        elif lru[e]:
            if item[e] == items[SHMEM_ITEM]:  # shmem: the change just before it was swap-backed
                last = tasks[t, LAST_LRU]
                if last >= 0 and tasks[t, LAST_LRU_VAL] == val[e]:
                    out_pool[last] = POOL_ANON
                tasks[t, LAST_LRU] = -1
                continue
            stack = item[e] == items[STACK_ITEM]
            if val[e] > 0:
                op = LRU_CHARGE
            elif tasks[t, IN_RECLAIM] and not stack:
                op = LRU_RECLAIMED
            elif tasks[t, KILLED] and item[e] == items[ANON_ITEM]:
                op = LRU_OOM_FREED
            else:
                op = LRU_UNCHARGE
            pages = abs(val[e])
            pool = POOL_KMEM_PAGES if stack else POOL_ANON if item[e] == items[ANON_ITEM] else POOL_FILE
            gfp_e = lru_gfp[GFP_KERNEL] if stack else lru_gfp[GFP_HIGHUSER_MOVABLE]
            tasks[t, LAST_LRU], tasks[t, LAST_LRU_VAL] = done, val[e]
        elif k == RECLAIM_BEGIN:
            tasks[t, IN_RECLAIM], tasks[t, RECLAIM_GFP], tasks[t, RECLAIM_ORDER] = 1, gfp[e], order[e]
        elif k == RECLAIM_END:
            tasks[t, IN_RECLAIM] = 0
        elif k == OOM_KIND:
            if tasks[t, RECLAIM_ORDER] >= 0:  # the charge the OOM killer ran for: the task's last reclaim's
                op, pool = OOM_CHARGE, POOL_ANON
                pages, gfp_e = 1 << tasks[t, RECLAIM_ORDER], tasks[t, RECLAIM_GFP]
            if victim[e] >= 0:
                tasks[victim[e], KILLED] = 1
        elif k == USER_RETURN_KIND:
            op = USER_RETURN
        if op < 0:
            continue
        if op == OBJ_ALLOC or op == PAGE_ALLOC:
            if obj[e] >= 0:
                slot = take_slot(slot_of, free, counts, obj[e])
                charge[slot, CHARGED_OP], charge[slot, CHARGED_BYTES], charge[slot, CHARGED_PAGES] = op, size, pages
                charge[slot, CHARGED_POOL], charge[slot, CHARGED_CACHE] = pool, cache_id
        out_event[done], out_op[done], out_gfp[done], out_pages[done] = e, op, gfp_e, pages
        out_bytes[done], out_cache[done], out_obj[done], out_pool[done] = size, cache_id, slot, pool
        done += 1
    return (out_event[:done], out_op[:done], out_gfp[:done], out_pages[:done], out_bytes[:done], out_cache[:done],
            out_obj[:done], out_pool[:done])
