"""Tasks that come and go: processes forked, programs executed, threads started."""
from __future__ import annotations

import os
import threading
from typing import Callable

from .support import reap, scaled, stop, workload

FORKS = 2000
EXECS = 1000
THREADS = 10_000
AT_ONCE = 16  # children or threads alive together
PROGRAM = "/bin/true"


def churn(count: int, child: Callable[[], None]) -> int:
    """Fork `count` children, AT_ONCE alive at a time, each running `child` (which may exec)
    and exiting 0; how many failed."""
    done = failed = 0
    batch: list[int] = []
    try:
        while done < count:
            for _ in range(min(AT_ONCE, count - done)):
                pid = os.fork()
                if pid == 0:
                    try:
                        child()
                        os._exit(0)
                    finally:
                        os._exit(127)
                batch.append(pid)
                done += 1
            failed += reap(batch)
    finally:
        stop(batch)
    return failed


@workload("fork-churn")
def fork_churn(scale: float) -> dict:
    """2,000 forked children that exit at once, 16 alive at a time: task structs, stacks, mms, page tables.

    Each fork charges (SLAB_ACCOUNT caches or __GFP_ACCOUNT) the child's `task_struct`, its
    kernel stack (THREAD_SIZE: 16 KiB on x86-64, vmalloc'ed and charged page by page,
    NR_KERNEL_STACK_KB), `mm_struct`, a copy of every VMA (`vm_area_struct`, with
    `anon_vma_chain`/`anon_vma`), the page tables copied for the parent's anon memory
    (NR_PAGETABLE), `signal_cache`, `sighand_cache`, `files_cache`, `fs_cache`, `cred` and
    `pid`. Parent and child share the anon pages copy-on-write, so a write by either while both
    live charges a new anon page (NR_ANON_MAPPED): the Python child writes some (reference
    counts, its exit path) before it exits. None of it is reclaimable; it goes when the child
    exits and is reaped (the stack and task_struct after an RCU grace period).
    """
    forks = scaled(FORKS, scale)
    failed = churn(forks, lambda: None)
    if failed:
        raise RuntimeError(f"{failed} children failed")
    return {"forks": forks}


@workload("exec-churn")
def exec_churn(scale: float) -> dict:
    """1,000 children that exec /bin/true, 16 at a time: what a fork charges, then a new mm built by exec.

    Each child first charges what fork-churn's do, then exec throws the copied mm away and
    builds a new one: `mm_struct`, VMAs for the program, the dynamic loader and libc, their
    page tables (NR_PAGETABLE), the new stack's and the loader's written pages (anon,
    NR_ANON_MAPPED). The programs' own file pages are page cache charged to whoever read them
    in first (normally not this memcg: they are cached already). Nothing is reclaimable while
    the child runs; it all goes when it exits.
    """
    execs = scaled(EXECS, scale)
    failed = churn(execs, lambda: os.execv(PROGRAM, [PROGRAM]))
    if failed:
        raise RuntimeError(f"{failed} of {execs} runs of {PROGRAM} failed")
    return {"execs": execs}


def _work(sink: list) -> None:
    sink.append(sum(range(100)))


@workload("thread-churn")
def thread_churn(scale: float) -> dict:
    """10,000 threads started and joined, 16 alive at a time: task structs and kernel stacks, no mm.

    Each thread (clone with CLONE_VM and friends) charges a `task_struct`, a kernel stack
    (16 KiB on x86-64, NR_KERNEL_STACK_KB) and a `pid`; it shares the mm, files and signal
    handlers, so none of those is copied. Its user stack is an anonymous mapping that glibc
    keeps in a cache for the next thread: the pages a thread touched stay charged (anon, not
    reclaimable without swap) until the cache lets the mapping go. Kernel stacks and task
    structs go when each thread has exited and been joined (after an RCU grace period).
    """
    threads = scaled(THREADS, scale)
    sink: list = []
    done = 0
    while done < threads:
        batch = [threading.Thread(target=_work, args=(sink,)) for _ in range(min(AT_ONCE, threads - done))]
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join()
        done += len(batch)
    return {"threads": threads, "ran": len(sink)}
