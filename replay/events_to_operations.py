"""The compiled pass of replay.input: one segment's events, in trace order, to operations.

replay.input says what becomes an operation and prepares each event's columns as codes
(kind, dense task id, cache id, null-free numbers); this pass walks the events once with
what must be remembered from one event to the next: the live charged allocations (by
object slot, replay.object_slots), and per task whether it is inside a memcg reclaim,
whether it was OOM-killed, its last reclaim_begin, and within the current system call its
pinning inode and its dentries, and its last page allocation not (yet) charged with the memcg
reclaims since; and the target memcg's anon pages unmapped and not yet freed.
One event makes at most one operation of its own; before it, a task's first event soon after a
task it made exited makes a TASK_JOIN, and one long after a reclaim of its return to user space
a RECLAIM_TIME (the kernel's throttle sleep). So operations come out in trace order, and a
segment makes at most one more than it has events per exit and per reclaim_end, its own or
those whose join or sleep the segment before left pending (JOINABLE, HIGH_RECLAIM_END).
"""
from __future__ import annotations

from common.jit import njit
from replay.object_slots import ALLOC_OP, BYTES, CACHE, MEMCG, NEVER_CHARGED, OP, PAGES, POOL, give_back_slot, take_slot
from replay.ops import (
    ANON_FREED, ANON_UNMAPPED, FAILED_CHARGE, LRU_CHARGE, LRU_OOM_FREED, LRU_RECLAIMED, LRU_UNCHARGE, OBJ_ALLOC, OOM_CHARGE,
    PAGE_ALLOC, PAGE_SIZE, POOL_ANON, POOL_FILE, POOL_KMEM_PAGES, POOL_OTHER, POOL_SLAB_UNRECLAIMABLE, RECLAIM_TIME, RETRY_FOUND_ROOM, TASK_JOIN,
    TASK_CLONE_VM, TASK_EXEC, TASK_EXIT, TASK_FORK, USER_RETURN,
)
from traces.schema import CLONE_FLAGS, KINDS

KIND = {name: code for code, name in enumerate(KINDS)}
KMALLOC, KMEM_CACHE_ALLOC, PAGE_ALLOC_EVENT = KIND["kmalloc"], KIND["kmem_cache_alloc"], KIND["page_alloc"]
KFREE, KMEM_CACHE_FREE, PAGE_FREE_EVENT = KIND["kfree"], KIND["kmem_cache_free"], KIND["page_free"]
MEMCG_STATE, MEMCG_LRUVEC_STATE, MEMCG_EVENT, CHARGE = (KIND["memcg_state"], KIND["memcg_lruvec_state"], KIND["memcg_event"],
                                                     KIND["charge"])
RECLAIM_BEGIN, RECLAIM_END, USER_RETURN_EVENT, OOM = KIND["reclaim_begin"], KIND["reclaim_end"], KIND["user_return"], KIND["oom"]
TASK_NEW, TASK_EXEC_EVENT, TASK_EXIT_EVENT = KIND["task_new"], KIND["task_exec"], KIND["task_exit"]
CLONE_VM = CLONE_FLAGS["CLONE_VM"]

# The capturing kernel's enum values and gfp masks the pass needs (FACTS columns; -1: not in its tables).
(NR_FILE_PAGES, NR_ANON_MAPPED, NR_KERNEL_STACK_KB, NR_SHMEM, MEMCG_SOCK, GFP_KERNEL, GFP_HIGHUSER_MOVABLE, GFP_ATOMIC,
 NR_INACTIVE_ANON, NR_ACTIVE_ANON, NR_PAGETABLE) = range(11)
N_FACTS = 11
# Per task (TASK columns): across the trace, then within the current segment's system call. FAULT_*: the
# task's last page allocation not charged (FAULT_PAGES 0: none) and its memcg reclaims since; any charge
# of the task, its oom event or its return to user space ends it.
IN_RECLAIM, KILLED, BEGIN_GFP, BEGIN_ORDER, FAULT_OBJ, FAULT_PAGES, FAULT_RECLAIMS = range(7)
PINNED, DENTRIES, LAST_LRU, LAST_LRU_VAL = range(7, 11)
TASK_MEMCG = 11  # the memcg the task charges (an index as stat_memcg's), across the trace
BEGIN_TS = 12  # the time of the task's last reclaim_begin
# The task's last page allocation not charged as kmem (a user folio's, charged when mapped): its pages and gfp,
# which a huge page's charge takes (mem_cgroup_charge with the fault's gfp); others end only FAULT_*.
FOLIO_PAGES, FOLIO_GFP = 13, 14
# The task that made this one (-1: not in the trace), and the last task this one made that exited, with when
# (JOINABLE -1: none since this task's last event).
PARENT, JOINABLE, JOINABLE_EXIT_TS = 15, 16, 17
# Whether the task's last event returned it to user space, from a system call or from a fault that mapped
# an anon page or charged a page table (its reclaims since are memory.high's, in mem_cgroup_handle_over_high),
# and the end of the last such reclaim (-1: none since the task went on).
RETURNING, HIGH_RECLAIM_END = 18, 19
# Whether the task's last kmem page came straight after a return to user space: a fault's (a page table's),
# not a system call's (fork copies page tables after the task_struct and the vmas it allocates).
PAGE_FROM_USER = 20
N_TASK_STATE = 21
# mem_cgroup_handle_over_high sleeps only for a penalty above HZ / 100 jiffies: over 10 ms at any HZ
# (11 ms at HZ 1000, 12 at 250, 20 at 100).
# A task's gap this long after such a reclaim is taken for that sleep (user-space time is in it too).
MIN_THROTTLE_NS = 10_000_000
# A task whose first event comes this soon after a task it made exited was waiting for it (woken by the exit).
JOIN_WINDOW_NS = 5_000_000
# Caches by what their objects pin (CACHE_CLASS values).
ORDINARY, PINNING_INODE, DENTRY = range(3)
KMALLOC_MAX_CACHE_SIZE = 2 * PAGE_SIZE  # larger kmallocs come from the page allocator


@njit
def segment_operations(ts, kind, task, in_task, charged, nbytes, cache, obj, order, gfp, item, val, stat_memcg, named_task,
                       out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                       next_dentry, free_op, tasks, slot_of, free_slots, slot_counts, live, cache_pool, cache_class, facts,
                       unmapped, first_op) -> int:
    """The segment's operations into the out_ arrays (out_src: the event's row in the segment);
    their number. `charged`: a successful accounted allocation in task context; `stat_memcg`:
    for a stat change with an item and a value of the target memcg or one below it, that
    memcg's index (0: the target; -1: any other event); `named_task`: an oom event's
    victim or a task_new's new task, as a task id (-1: none); unmapped[0]: the target's anon pages unmapped and not yet
    freed. `first_op` numbers this segment's first operation. Each operation says which memcg
    it charges (out_memcg, an index as stat_memcg's): a stat change its own; an allocation, its
    task's (the memcg of the task's last charge of a page, 0 before any); a free, its allocation's."""
    n = 0
    for i in range(kind.shape[0]):
        k, t = kind[i], task[i]
        from_user = tasks[t, RETURNING]
        if in_task[i] and not tasks[t, IN_RECLAIM] and _goes_on(k, item[i], val[i], facts):
            if tasks[t, HIGH_RECLAIM_END] >= 0 and ts[i] - tasks[t, HIGH_RECLAIM_END] >= MIN_THROTTLE_NS:
                # the capturing kernel's throttle sleep, a stall the closed loop replaces with the policy's
                _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                      n, i, RECLAIM_TIME, 0, 0, ts[i] - tasks[t, HIGH_RECLAIM_END], -1, -1, POOL_OTHER, tasks[t, TASK_MEMCG])
                n += 1
            tasks[t, HIGH_RECLAIM_END] = -1
            tasks[t, RETURNING] = k == USER_RETURN_EVENT
        if in_task[i] and tasks[t, JOINABLE] >= 0:
            if ts[i] - tasks[t, JOINABLE_EXIT_TS] <= JOIN_WINDOW_NS:
                _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                      n, i, TASK_JOIN, 0, 0, 0, -1, tasks[t, JOINABLE], POOL_OTHER, tasks[t, TASK_MEMCG])
                n += 1
            tasks[t, JOINABLE] = -1
        if k == KMALLOC or k == KMEM_CACHE_ALLOC:
            if charged[i]:
                tasks[t, FAULT_PAGES] = 0
            if not charged[i] or nbytes[i] < 0 or nbytes[i] > KMALLOC_MAX_CACHE_SIZE or cache[i] < 0:
                continue
            c = cache[i]
            pool = cache_pool[c]
            if cache_class[c] == PINNING_INODE:
                pool = POOL_SLAB_UNRECLAIMABLE
                tasks[t, PINNED] = 1
            slot = take_slot(slot_of, free_slots, slot_counts, obj[i]) if obj[i] >= 0 else -1
            _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                  n, i, OBJ_ALLOC, gfp[i], 0, nbytes[i], c, slot, pool, tasks[t, TASK_MEMCG])
            _remember(live, slot, OBJ_ALLOC, c, nbytes[i], 0, pool, first_op + n, tasks[t, TASK_MEMCG])
            if cache_class[c] == DENTRY:  # its pool is known when its system call ends
                next_dentry[n] = tasks[t, DENTRIES]
                tasks[t, DENTRIES] = n
            free_op[n] = -1
            n += 1
        elif k == PAGE_ALLOC_EVENT:
            if not charged[i]:  # a user or page cache folio is charged after its allocation, if at all
                if in_task[i] and obj[i] >= 0 and order[i] >= 0:
                    tasks[t, FAULT_OBJ], tasks[t, FAULT_PAGES], tasks[t, FAULT_RECLAIMS] = obj[i], 1 << order[i], 0
                    tasks[t, FOLIO_PAGES], tasks[t, FOLIO_GFP] = 1 << order[i], gfp[i]
                continue
            tasks[t, FAULT_PAGES] = 0
            tasks[t, PAGE_FROM_USER] = from_user
            pages = 1 << order[i] if order[i] >= 0 else 0
            slot = take_slot(slot_of, free_slots, slot_counts, obj[i]) if obj[i] >= 0 else -1
            _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                  n, i, PAGE_ALLOC, gfp[i], pages, max(nbytes[i], 0), -1, slot, POOL_KMEM_PAGES, tasks[t, TASK_MEMCG])
            _remember(live, slot, PAGE_ALLOC, -1, max(nbytes[i], 0), pages, POOL_KMEM_PAGES, first_op + n,
                      tasks[t, TASK_MEMCG])
            free_op[n] = -1
            n += 1
        elif k == KFREE or k == KMEM_CACHE_FREE or k == PAGE_FREE_EVENT:
            if k == PAGE_FREE_EVENT and tasks[t, FAULT_PAGES] > 0 and obj[i] == tasks[t, FAULT_OBJ]:
                if tasks[t, FAULT_RECLAIMS] > 0:  # its charge failed after memcg reclaim: the allocation is undone
                    _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                          n, i, FAILED_CHARGE, tasks[t, BEGIN_GFP], tasks[t, FAULT_PAGES], max(nbytes[i], 0), -1, -1,
                          POOL_ANON, tasks[t, TASK_MEMCG])
                    n += 1
                tasks[t, FAULT_PAGES] = 0
                continue
            slot = give_back_slot(slot_of, free_slots, slot_counts, obj[i]) if obj[i] >= 0 else NEVER_CHARGED
            if slot == NEVER_CHARGED:
                continue
            _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                  n, i, live[slot, OP] + 1, gfp[i], live[slot, PAGES], live[slot, BYTES], live[slot, CACHE], slot,
                  live[slot, POOL], live[slot, MEMCG])  # OBJ_FREE, PAGE_FREE follow their allocation codes
            allocated = live[slot, ALLOC_OP] - first_op
            if allocated >= 0:  # in this segment: a dentry's pool may still change
                free_op[allocated] = n
            n += 1
        elif k == MEMCG_LRUVEC_STATE:
            it = item[i]
            if stat_memcg[i] < 0 or val[i] == 0:
                continue
            if in_task[i] and val[i] > 0 and (it == facts[NR_FILE_PAGES] or it == facts[NR_ANON_MAPPED]):
                tasks[t, TASK_MEMCG] = stat_memcg[i]  # a page is charged to the memcg of the task that faults it in
            if it == facts[NR_SHMEM]:  # the file pages the task just added or dropped are shmem: swap-backed
                if tasks[t, LAST_LRU] >= 0 and tasks[t, LAST_LRU_VAL] == val[i]:
                    out_pool[tasks[t, LAST_LRU]] = POOL_ANON
                tasks[t, LAST_LRU] = -1
                continue
            if it == facts[NR_INACTIVE_ANON] or it == facts[NR_ACTIVE_ANON]:
                if val[i] < 0 and unmapped[0] > 0:
                    pages = min(-val[i], unmapped[0])
                    unmapped[0] -= pages
                    _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                          n, i, ANON_FREED, facts[GFP_HIGHUSER_MOVABLE], pages, 0, -1, -1, POOL_ANON, stat_memcg[i])
                    n += 1
                continue
            if it == facts[NR_PAGETABLE] and val[i] > 0 and in_task[i] and tasks[t, PAGE_FROM_USER]:
                # A page-table page (charged as kmem, by its page allocation's operation) comes in
                # the fault that first touches its 2 MiB, a read fault too, which maps the shared
                # zero page and charges nothing else.
                n = _fault_returned(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                                    n, i, tasks, t)
                continue
            if not _paged_item(it, facts):
                continue
            stack = it == facts[NR_KERNEL_STACK_KB]
            if val[i] > 0:
                op = LRU_CHARGE
                tasks[t, FAULT_PAGES] = 0
            elif tasks[t, IN_RECLAIM] and not stack:
                op = LRU_RECLAIMED
            elif tasks[t, KILLED] and it == facts[NR_ANON_MAPPED]:
                op = LRU_OOM_FREED
            elif it == facts[NR_ANON_MAPPED] and facts[NR_INACTIVE_ANON] >= 0:
                op = ANON_UNMAPPED  # still charged: the anon LRU says when it is freed
                unmapped[0] -= val[i]
            else:
                op = LRU_UNCHARGE
            pool = POOL_KMEM_PAGES if stack else POOL_ANON if it == facts[NR_ANON_MAPPED] else POOL_FILE
            charge_gfp = facts[GFP_KERNEL] if stack else facts[GFP_HIGHUSER_MOVABLE]
            if op == LRU_CHARGE and pool == POOL_ANON and val[i] > 1 and val[i] == tasks[t, FOLIO_PAGES]:
                charge_gfp = tasks[t, FOLIO_GFP]  # a huge page: its fault's gfp
            _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                  n, i, op, charge_gfp, abs(val[i]), max(nbytes[i], 0), -1, -1, pool, stat_memcg[i])
            tasks[t, LAST_LRU], tasks[t, LAST_LRU_VAL] = n, val[i]
            n += 1
            if op == LRU_CHARGE and pool == POOL_ANON and in_task[i]:
                # A new anon folio is mapped at the end of a page fault (do_anonymous_page,
                # wp_page_copy, a THP's).
                n = _fault_returned(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                                    n, i, tasks, t)
        elif k == MEMCG_STATE:
            if stat_memcg[i] < 0 or val[i] == 0 or item[i] != facts[MEMCG_SOCK]:
                continue
            if val[i] > 0:
                tasks[t, FAULT_PAGES] = 0
            _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                  n, i, LRU_CHARGE if val[i] > 0 else LRU_UNCHARGE, facts[GFP_KERNEL] if in_task[i] else facts[GFP_ATOMIC],
                  abs(val[i]), max(nbytes[i], 0), -1, -1, POOL_KMEM_PAGES, stat_memcg[i])
            n += 1
        elif k == RECLAIM_BEGIN:
            tasks[t, IN_RECLAIM], tasks[t, BEGIN_GFP], tasks[t, BEGIN_ORDER] = 1, gfp[i], order[i]
            tasks[t, BEGIN_TS] = ts[i]
            tasks[t, FAULT_RECLAIMS] += 1
        elif k == RECLAIM_END:
            if tasks[t, IN_RECLAIM]:  # the task's stall, which the closed loop replaces with the policy's
                _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                      n, i, RECLAIM_TIME, 0, 0, ts[i] - tasks[t, BEGIN_TS], -1, -1, POOL_OTHER, tasks[t, TASK_MEMCG])
                n += 1
            tasks[t, IN_RECLAIM] = 0
            if tasks[t, RETURNING]:
                tasks[t, HIGH_RECLAIM_END] = ts[i]
        elif k == OOM:
            tasks[t, FAULT_PAGES] = 0  # OOM_CHARGE replays that charge
            if named_task[i] >= 0:
                tasks[named_task[i], KILLED] = 1
            if tasks[t, BEGIN_ORDER] >= 0:  # the charge the kill was for: the task's last reclaim_begin
                _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                      n, i, OOM_CHARGE, tasks[t, BEGIN_GFP], 1 << tasks[t, BEGIN_ORDER], max(nbytes[i], 0), -1, -1,
                      POOL_ANON, tasks[t, TASK_MEMCG])
                n += 1
        elif k == TASK_NEW or k == TASK_EXEC_EVENT or k == TASK_EXIT_EVENT:
            if k == TASK_NEW:
                if named_task[i] < 0:
                    continue
                op = TASK_CLONE_VM if item[i] & CLONE_VM else TASK_FORK
                tasks[named_task[i], PARENT] = t
            elif k == TASK_EXIT_EVENT and tasks[t, KILLED]:
                continue  # the kernel's OOM victim lives on in the model, holding its memory, until the model kills it
            else:
                op = TASK_EXEC if k == TASK_EXEC_EVENT else TASK_EXIT
                if op == TASK_EXIT and tasks[t, PARENT] >= 0:  # its parent may be waiting for it
                    tasks[tasks[t, PARENT], JOINABLE], tasks[tasks[t, PARENT], JOINABLE_EXIT_TS] = t, ts[i]
            _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                  n, i, op, 0, 0, 0, -1, named_task[i], POOL_OTHER, tasks[t, TASK_MEMCG])
            n += 1
        elif k == USER_RETURN_EVENT:
            tasks[t, FAULT_PAGES] = 0
            _end_system_call(tasks, t, next_dentry, free_op, out_obj, out_pool, live)
            _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
                  n, i, USER_RETURN, gfp[i], 0, max(nbytes[i], 0), -1, -1, POOL_OTHER, tasks[t, TASK_MEMCG])
            n += 1
    for t in range(tasks.shape[0]):  # a system call cut by the segment's end pairs what it has
        _end_system_call(tasks, t, next_dentry, free_op, out_obj, out_pool, live)
        tasks[t, LAST_LRU] = -1
    _retries_that_found_room(n, out_src, out_op, out_obj, task, in_task)
    return n


@njit
def _fault_returned(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg, n, i, tasks,
                    t) -> int:
    """The page fault that made event i's charge returns to user space, where
    resume_user_mode_work may reclaim and throttle: the trace records returns from system calls
    only (raw_syscalls:sys_exit). A fault inside a system call returns at its exit, later."""
    _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
          n, i, USER_RETURN, 0, 0, 0, -1, -1, POOL_OTHER, tasks[t, TASK_MEMCG])
    tasks[t, RETURNING] = 1
    return n + 1


@njit
def _goes_on(k, it, v, facts) -> bool:
    """Whether a task's event (outside a memcg reclaim, whose own frees and stat changes are
    not the task's) is the task going on after its last, not the kernel's bookkeeping of it: a
    count, a call observed, or a stat change that charges nothing (a THP's NR_ANON_THPS and its
    LRU's, after the NR_ANON_MAPPED that charged it). A return to user space lasts until one."""
    if k == MEMCG_EVENT or k == CHARGE or k == RECLAIM_BEGIN or k == RECLAIM_END:
        return False
    if k == MEMCG_LRUVEC_STATE:
        return v > 0 and _paged_item(it, facts)
    if k == MEMCG_STATE:
        return v > 0 and it == facts[MEMCG_SOCK]
    return True


@njit
def _paged_item(it, facts) -> bool:
    """Whether a node stat item counts pages the memcg is charged for, which the pass replays as
    charges and uncharges: file pages, mapped anon pages, kernel stacks."""
    return it == facts[NR_FILE_PAGES] or it == facts[NR_ANON_MAPPED] or it == facts[NR_KERNEL_STACK_KB]


@njit
def _retries_that_found_room(n, out_src, out_op, out_obj, task, in_task) -> None:
    """An OOM_CHARGE whose task's next operation in the segment (in task context) is a charge,
    not the time of a reclaim: the kernel's retry after its kill found room (the other CPUs'
    page stocks were drained meanwhile) and the task went on; its obj says so (RETRY_FOUND_ROOM)."""
    for j in range(n):
        if out_op[j] != OOM_CHARGE:
            continue
        for later in range(j + 1, n):
            if task[out_src[later]] != task[out_src[j]] or not in_task[out_src[later]]:
                continue
            if out_op[later] == LRU_CHARGE or out_op[later] == OBJ_ALLOC or out_op[later] == PAGE_ALLOC:
                out_obj[j] = RETRY_FOUND_ROOM
            break


@njit
def _emit(out_src, out_op, out_gfp, out_pages, out_bytes, out_cache, out_obj, out_pool, out_memcg,
          n, src, op, gfp, pages, nbytes, cache, obj, pool, memcg) -> None:
    out_src[n], out_op[n], out_gfp[n], out_pages[n] = src, op, gfp, pages
    out_bytes[n], out_cache[n], out_obj[n], out_pool[n], out_memcg[n] = nbytes, cache, obj, pool, memcg


@njit
def _remember(live, slot, op, cache, nbytes, pages, pool, number, memcg) -> None:
    if slot >= 0:
        live[slot, OP], live[slot, CACHE], live[slot, BYTES] = op, cache, nbytes
        live[slot, PAGES], live[slot, POOL], live[slot, ALLOC_OP], live[slot, MEMCG] = pages, pool, number, memcg


@njit
def _end_system_call(tasks, t, next_dentry, free_op, out_obj, out_pool, live) -> None:
    """The dentries a task made in a system call that also made a pinning inode (a socket, a
    pipe, a tmpfs file) are pinned with it: unreclaimable, as is their free if it came already."""
    d = tasks[t, DENTRIES]
    while d >= 0:
        if tasks[t, PINNED]:
            out_pool[d] = POOL_SLAB_UNRECLAIMABLE
            if free_op[d] >= 0:
                out_pool[free_op[d]] = POOL_SLAB_UNRECLAIMABLE
            elif out_obj[d] >= 0:
                live[out_obj[d], POOL] = POOL_SLAB_UNRECLAIMABLE
        d = next_dentry[d]
    tasks[t, DENTRIES], tasks[t, PINNED] = -1, 0
