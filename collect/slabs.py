"""Slab cache geometry from /sys/kernel/slab, for the replay's per-slab-page charging.

SLUB merges compatible caches: a merged cache's name is a symlink to a unique id like
":A-0000192", whose letters are the cache's flags (A: SLAB_ACCOUNT, a:
SLAB_RECLAIM_ACCOUNT, see mm/slub.c create_unique_id). An unmerged cache is a plain
directory, and sysfs does not say whether it has SLAB_ACCOUNT: `account` is null there.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pyarrow as pa

from traces.schema import SLAB_COLUMNS, table_schema

SLAB_SYSFS = Path("/sys/kernel/slab")


def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _min_order(slab_size: int, page_size: int) -> int:
    """SLUB's s->min: the smallest order whose pages hold one object."""
    return max(0, math.ceil(math.log2(math.ceil(slab_size / page_size))))


def slab_table(root: Path = SLAB_SYSFS) -> pa.Table:
    page_size = os.sysconf("SC_PAGE_SIZE")
    rows: dict[str, list] = {name: [] for name, _, _ in SLAB_COLUMNS}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(":"):
            continue  # unique ids of merged caches: listed under their names
        unique_id = os.readlink(entry) if entry.is_symlink() else None
        flags = unique_id.split("-", 1)[0] if unique_id and "-" in unique_id else ":"
        slab_size = _read_int(entry / "slab_size")
        rows["name"].append(entry.name)
        rows["object_size"].append(_read_int(entry / "object_size"))
        rows["size"].append(slab_size)
        rows["order"].append(_read_int(entry / "order"))
        rows["min_order"].append(_min_order(slab_size, page_size))
        rows["objs_per_slab"].append(_read_int(entry / "objs_per_slab"))
        rows["account"].append("A" in flags if unique_id else None)
        rows["reclaim_account"].append(_read_int(entry / "reclaim_account") == 1)
    return pa.table(rows, schema=table_schema(SLAB_COLUMNS))


def slab_names_by_size(root: Path = SLAB_SYSFS, slabinfo: Path = Path("/proc/slabinfo")) -> dict[tuple[int, int], str]:
    """(object_size, size) -> the name of the one slab with those sizes, for kernels whose
    kmem_cache_alloc tracepoint gives the sizes but not the name. Sizes two slabs share name
    neither. The aliases of one merged slab share its sizes: the name is the one the slab
    itself has (s->name, what kmem_cache_free prints), the alias /proc/slabinfo lists."""
    try:
        listed = {line.split(None, 1)[0] for line in slabinfo.read_text().splitlines()[2:] if line.strip()}
    except OSError:
        listed = set()  # then the first alias in sorted order: another name of the same slab
    slabs: dict[tuple[int, int], dict[str, list[str]]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(":"):
            continue
        unique_id = os.readlink(entry) if entry.is_symlink() else entry.name
        sizes = (_read_int(entry / "object_size"), _read_int(entry / "slab_size"))
        slabs.setdefault(sizes, {}).setdefault(unique_id, []).append(entry.name)
    return {sizes: next((name for name in names if name in listed), names[0])
            for sizes, by_slab in slabs.items() if len(by_slab) == 1 for names in by_slab.values()}
