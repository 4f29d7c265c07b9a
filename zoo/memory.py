"""User memory: anonymous pages touched, page tables over a sparse mapping, transparent huge pages."""
from __future__ import annotations

import ctypes
import mmap

from .support import PAGE, hold, scaled, workload

MIB = 1 << 20
HUGE = 2 * MIB  # a PMD's reach on x86-64: one THP, or one page-table page of 512 PTEs
ANON_MB = 32
SPARSE_GB = 8
WRITE_EVERY = 16  # page-tables: every 16th 2 MiB step is written, the others only read
THP_MB = 32
# MAP_NORESERVE: Python's mmap module names it only from 3.13 on; 0x4000 on x86 and arm64.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


@workload("anon-touch")
def anon_touch(scale: float) -> dict:
    """32 MiB of private anonymous memory written page by page and held: anon pages, unreclaimable.

    Each first write faults in one order-0 anon folio (THP is not asked for: enabled=madvise
    leaves this mapping small-paged) charged to the memcg and counted NR_ANON_MAPPED, on the
    anon LRU, plus a page-table page per 2 MiB (NR_PAGETABLE). Without swap reclaim can take
    none of it back: a limit below it ends in the OOM killer. Held for a second, then unmapped.
    """
    size = scaled(ANON_MB, scale) * MIB
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        for offset in range(0, size, PAGE):
            memory[offset] = 1
        hold()
        touched = sum(memory[offset] for offset in range(0, size, PAGE))
    finally:
        memory.close()
    return {"anon_mib": size // MIB, "pages": touched}


@workload("page-tables")
def page_tables(scale: float) -> dict:
    """one byte read per 2 MiB of an 8 GiB sparse mapping (1 in 16 written): page tables dominate.

    The mapping is anonymous and MAP_NORESERVE, so only what is touched costs memory. Each
    2 MiB step needs its own page-table page (PTE table: order 0, __GFP_ACCOUNT,
    NR_PAGETABLE), plus one PMD table per GiB; a read maps the shared zero page, which charges
    nothing, and only the written steps charge an anon page (NR_ANON_MAPPED). So 4,096 PTE
    pages (16 MiB) against 256 anon pages. Page tables are not reclaimable while mapped (and
    anon is not, without swap): held for a second, then unmapped, which frees the tables.
    """
    size = scaled(SPARSE_GB * 1024, scale) * MIB
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    read = written = 0
    try:
        for step, offset in enumerate(range(0, size, HUGE)):
            if step % WRITE_EVERY == 0:
                memory[offset] = 1
                written += 1
            else:
                read += memory[offset] == 0
        hold()
    finally:
        memory.close()
    return {"mapping_gib": size / (1024 * MIB), "steps_read": read, "steps_written": written}


def _address(memory: mmap.mmap) -> int:
    view = ctypes.c_char.from_buffer(memory)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # an exported buffer would keep the mapping from closing


@workload("thp")
def thp(scale: float) -> dict:
    """32 MiB of 2 MiB-aligned anonymous memory with MADV_HUGEPAGE, written: order-9 folios (THP).

    THP enabled=madvise (or always) makes the first write in each aligned 2 MiB a huge-page
    fault: one order-9 folio (512 pages) allocated and charged as one (NR_ANON_MAPPED and
    NR_ANON_THPS by 512, THP_FAULT_ALLOC), with a page-table page deposited for a later split
    (NR_PAGETABLE).
    When the huge page cannot be had (no free order-9 block and compaction fails) or its charge
    fails at the memcg's limit, the fault falls back to order-0 pages like anon-touch. Every
    page is written, so the bytes charged are the same either way. Unreclaimable without swap
    (a THP is split before it is swapped); held for a second, then unmapped.
    """
    size = scaled(THP_MB // 2, scale) * HUGE
    memory = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        start = -_address(memory) % HUGE
        memory.madvise(mmap.MADV_HUGEPAGE, start, size)
        for offset in range(start, start + size, PAGE):
            memory[offset] = 1
        hold()
    finally:
        memory.close()
    return {"thp_mib": size // MIB, "huge_pages": size // HUGE}
