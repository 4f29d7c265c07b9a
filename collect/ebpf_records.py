"""The layouts of collect/kmem.bpf.c's records, described to collect.decode.Decoder.

Records are fixed-size C structs (`struct record`, 56 bytes; `struct named_record`, the
same followed by a name). Each record type is described with a synthetic EventFormat
(field name -> offset in the struct), so pseudonyms, call-site ids, task names and the
kind mapping are the tracefs backend's. Slab records name their cache by a key (the cache's
address); T_CACHE records say what each key stands for (collect.decode.SlabCache).
"""
from __future__ import annotations

import numpy as np

from collect.decode import TRACEPOINT_KINDS, SlabCache
from collect.event_format import EventFormat, Field
from collect.ringbuf import RawEvents, field_values, string_values

RECORD_SIZE = 56  # sizeof(struct record)
NAMED_RECORD_SIZE = 96  # sizeof(struct named_record)
NAME_LOC_OFFSET, NAME_OFFSET, NAME_LEN = 56, 60, 36

# struct record's fields: slot -> (offset, size).
SLOTS = {"ts": (0, 8), "a": (8, 8), "a4": (8, 4), "p": (16, 8), "k": (24, 8), "b": (32, 4), "c": (36, 4),
         "gfp": (40, 4), "pid": (44, 4), "type": (48, 2), "cpu": (50, 2), "s": (52, 2)}
T_CACHE = 17
T_CACHE_FIELDS = {"cache": "a", "object_size": "b", "size": "c", "flags": "gfp", "name": "name"}

# Record type id (T_* in kmem.bpf.c) -> tracepoint, and the tracepoint field each slot holds
# (slot, or (slot, signed)); "cache" is the slab cache key.
RECORD_TYPES: dict[int, tuple[str, str, dict[str, str | tuple[str, bool]]]] = {
    1: ("kmem", "kmalloc", {"call_site": "a", "ptr": "p", "bytes_req": "b", "bytes_alloc": "c", "gfp_flags": "gfp", "node": ("s", True)}),
    2: ("kmem", "kmem_cache_alloc", {"call_site": "a", "ptr": "p", "cache": "k", "gfp_flags": "gfp", "node": ("s", True)}),
    3: ("kmem", "kfree", {"call_site": "a", "ptr": "p"}),
    4: ("kmem", "kmem_cache_free", {"call_site": "a", "ptr": "p", "cache": "k"}),
    5: ("kmem", "mm_page_alloc", {"pfn": "p", "order": "s", "gfp_flags": "gfp"}),
    6: ("kmem", "mm_page_free", {"pfn": "p", "order": "s"}),
    7: ("memcg", "mod_memcg_state", {"id": "a", "item": ("gfp", True), "val": ("b", True)}),
    8: ("memcg", "mod_memcg_lruvec_state", {"id": "a", "item": ("gfp", True), "val": ("b", True)}),
    9: ("memcg", "count_memcg_events", {"id": "a", "item": ("gfp", True), "val": ("b", True)}),
    10: ("vmscan", "mm_vmscan_memcg_reclaim_begin", {"order": ("s", True), "gfp_flags": "gfp"}),
    11: ("vmscan", "mm_vmscan_memcg_reclaim_end", {"nr_reclaimed": "b"}),
    12: ("raw_syscalls", "sys_exit", {"id": ("a", True)}),
    13: ("oom", "mark_victim", {"pid": ("a4", True)}),
    14: ("sched", "sched_process_fork", {"child_pid": ("a4", True), "child_comm": "name", "clone_flags": "b"}),
    15: ("sched", "sched_process_exec", {"pid": ("a4", True), "filename": "name"}),
    16: ("task", "task_rename", {"pid": ("a4", True), "newcomm": "comm"}),
    18: ("kprobes", "memcg_charge", {"function": "a4", "gfp_flags": "gfp", "pages": "b", "result": ("s", True)}),
    19: ("sched", "sched_process_exit", {"pid": ("a4", True)}),
}
_COMMON = {"common_pid": Field("common_pid", *SLOTS["pid"], True, False)}


def _field(name: str, slot: str | tuple[str, bool]) -> Field:
    slot, signed = slot if isinstance(slot, tuple) else (slot, False)
    if slot == "name":
        return Field(name, NAME_LOC_OFFSET, 4, False, True)
    if slot == "comm":
        return Field(name, NAME_OFFSET, 16, False, False)
    return Field(name, *SLOTS[slot], signed, False)


def record_formats() -> dict[int, tuple[str | None, EventFormat]]:
    """Record type id -> (trace kind, an EventFormat saying where the record keeps each field)."""
    formats = {}
    for type_id, (system, name, slots) in RECORD_TYPES.items():
        fields = dict(_COMMON) | {field_name: _field(field_name, slot) for field_name, slot in slots.items()}
        formats[type_id] = (TRACEPOINT_KINDS[(system, name)], EventFormat(system, name, type_id, fields, ""))
    return formats


def raw_events(data: np.ndarray, start: np.ndarray, payload: int) -> RawEvents:
    """Records of `payload` bytes at offsets `start` of `data`, as RawEvents."""
    n = len(start)
    raw = RawEvents(ts=np.zeros(n, np.uint64), cpu=np.zeros(n, np.uint16), type_id=np.zeros(n, np.uint16),
                    start=start, length=np.full(n, payload, np.int32), data=data, missed=0)
    everything = slice(None)
    raw.ts = field_values(raw, everything, _field("ts", "ts"))
    raw.cpu = field_values(raw, everything, _field("cpu", "cpu"))
    raw.type_id = field_values(raw, everything, _field("type", "type"))
    return raw


def slab_caches(named: RawEvents, slab_account: int) -> dict[int, SlabCache]:
    """The caches the T_CACHE records among `named` describe, by key."""
    rows = np.flatnonzero(named.type_id == T_CACHE)
    if not rows.size:
        return {}
    keys = field_values(named, rows, _field("cache", "a")).tolist()
    object_sizes = field_values(named, rows, _field("object_size", "b")).tolist()
    sizes = field_values(named, rows, _field("size", "c")).tolist()
    flags = field_values(named, rows, _field("flags", "gfp")).tolist()
    names = string_values(named, rows, _field("name", "name"))
    return {key: SlabCache(str(name), object_size, size, bool(flag & slab_account))
            for key, object_size, size, flag, name in zip(keys, object_sizes, sizes, flags, names)}
