"""Trace format v1: the columns of every table in a trace directory, with types and units.

A trace is a directory:

    manifest.json               what was captured, how, and with which kernel tables
    events/part-NNNNNN.parquet  time-ordered events in rolling, self-describing segments
    memcg.parquet               the target memcg's counters, sampled at a fixed interval
    slabs.parquet               slab cache geometry from /sys/kernel/slab
    symbols.parquet             call-site id -> symbol+offset, resolved at capture time
    addresses/                  only with --keep-addresses: pseudonym and call-site id -> raw address

No column holds a raw kernel address: call sites are ids into symbols.parquet and
objects are pseudonyms (sequence numbers given at allocation, carried to the free:
nothing of the address is in them, so no secret is needed to keep it out). Only
`--keep-addresses` writes the addresses, in addresses/ apart from the events.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# The key under which each Parquet file records the schema version it was written with.
SCHEMA_VERSION_KEY = b"chargeplay.schema_version"

KINDS = (
    "kmalloc",  # kmem:kmalloc
    "kmem_cache_alloc",  # kmem:kmem_cache_alloc
    "kfree",  # kmem:kfree (frees of NULL are not recorded)
    "kmem_cache_free",  # kmem:kmem_cache_free
    "page_alloc",  # kmem:mm_page_alloc
    "page_free",  # kmem:mm_page_free
    # The memcg stat kinds: the memcg tracepoints (6.14+), or before them kprobe events on the
    # functions they sit in, decoded to the same columns and units (collect.memcg_probes).
    "memcg_state",  # memcg:mod_memcg_state (item: enum memcg_stat_item; val: pages)
    "memcg_lruvec_state",  # memcg:mod_memcg_lruvec_state (item: enum node_stat_item; val: pages)
    "memcg_event",  # memcg:count_memcg_events (item: enum vm_event_item; val: a count)
    "reclaim_begin",  # vmscan:mm_vmscan_memcg_reclaim_begin
    "reclaim_end",  # vmscan:mm_vmscan_memcg_reclaim_end (val: pages reclaimed)
    "user_return",  # raw_syscalls:sys_exit: the task returns to user space
    "oom",  # oom:mark_victim (val: the victim's pid)
    "charge",  # a call of a memcg charge function (CHARGE_FUNCTIONS), where a backend can observe one
    # The workload's task tree (what a fork shares, whose memory an exit frees):
    "task_new",  # task:task_newtask (eBPF: sched:sched_process_fork) by the parent (val: the new task's pid; item: CLONE_FLAGS)
    "task_exec",  # sched:sched_process_exec (the task gets a new mm)
    "task_exit",  # sched:sched_process_exit (the task exits; its mm goes with the last task using it)
)

# task_new: the clone flags kept in item, those that say what the new task shares with its
# parent (include/uapi/linux/sched.h); the others are masked off.
CLONE_FLAGS = {"CLONE_VM": 0x100, "CLONE_THREAD": 0x10000}

ALLOC_KINDS = ("kmalloc", "kmem_cache_alloc", "page_alloc")
FREE_KINDS = ("kfree", "kmem_cache_free", "page_free")

# kind "charge": the function called (item is its index here). Only the eBPF backend, on
# kernels that allow kprobes, records them.
CHARGE_FUNCTIONS = ("try_charge_memcg", "__mem_cgroup_handle_over_high", "mem_cgroup_out_of_memory")

CONTEXTS = ("task", "softirq", "hardirq", "nmi")

# (name, type, unit and meaning). Nullable unless said otherwise; a column that does not
# apply to an event's kind is null.
EVENT_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("ts_ns", pa.int64(), "ns since capture start, trace clock; never null; non-decreasing"),
    ("cpu", pa.uint16(), "CPU the event fired on; never null"),
    ("pid", pa.int32(), "kernel task id (thread id) current when the event fired; never null"),
    ("comm", pa.string(), "task name at that time, from exec/fork/rename events"),
    ("ctx", pa.string(), "task, softirq, hardirq or nmi, from the event's common_flags"),
    ("kind", pa.string(), "one of KINDS; never null"),
    ("memcg_id", pa.uint64(), "memcg events: cgroup id (the cgroup directory's inode)"),
    ("call_site", pa.int32(), "id into symbols.parquet"),
    ("cache", pa.string(), "kmem_cache_alloc/free: slab cache name"),
    ("obj", pa.int64(), "pseudonym shared by an allocation and its free; null for a free of an object allocated before the capture"),
    ("bytes_req", pa.int64(), "bytes requested"),
    ("bytes_alloc", pa.int64(), "bytes allocated (object size, or PAGE_SIZE << order for pages)"),
    ("order", pa.int16(), "page order (page_alloc, page_free, reclaim_begin)"),
    ("gfp", pa.uint32(), "gfp flags, raw bits of the capturing kernel: decode with the manifest's gfp_flags table"),
    ("node", pa.int16(), "NUMA node asked for (-1: any)"),
    ("accounted", pa.bool_(), "allocation charged to a memcg: __GFP_ACCOUNT or a SLAB_ACCOUNT cache"),
    ("item", pa.int32(), "memcg events: enum index (manifest enums); user_return: syscall number; charge: index into CHARGE_FUNCTIONS; "
                         "task_new: its clone flags CLONE_VM (0x100) and CLONE_THREAD (0x10000), others masked off"),
    ("val", pa.int64(), "memcg events: delta (pages or events); reclaim_end: pages reclaimed; oom: victim pid; "
                        "charge: pages asked for (the order, for the OOM); task_new: the new task's pid"),
    ("failed", pa.bool_(), "allocation returned NULL (ptr 0) or no page (pfn -1); charge: the charge failed, or the OOM killed nothing"),
)

NOT_NULL = frozenset({"ts_ns", "cpu", "pid", "kind"})

EVENT_SCHEMA = pa.schema(
    [pa.field(name, dtype, nullable=name not in NOT_NULL) for name, dtype, _ in EVENT_COLUMNS],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)

MEMCG_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("ts_ns", pa.int64(), "ns since capture start, same clock as events"),
    ("usage", pa.int64(), "bytes charged: v1 memory.usage_in_bytes, v2 memory.current"),
    ("max_usage", pa.int64(), "v1 memory.max_usage_in_bytes; v2 memory.peak where present"),
    ("max", pa.int64(), "bytes: v1 memory.limit_in_bytes, v2 memory.max (null: unlimited)"),
    ("high", pa.int64(), "bytes: v2 memory.high (null: unlimited, or v1 which has none)"),
    ("failcnt", pa.int64(), "v1 memory.failcnt; v2 memory.events max"),
    ("kmem_usage", pa.int64(), "v1 memory.kmem.usage_in_bytes; v2 memory.stat kernel"),
    ("events_high", pa.int64(), "v2 memory.events high"),
    ("events_oom_kill", pa.int64(), "v2 memory.events oom_kill; v1 memory.oom_control oom_kill, with the memcgs' below it"),
    ("file", pa.int64(), "bytes of page cache (v1 cache, v2 file)"),
    ("anon", pa.int64(), "bytes of anonymous memory (v1 rss, v2 anon)"),
    ("shmem", pa.int64(), "bytes of shmem/tmpfs"),
    ("slab_reclaimable", pa.int64(), "v2 memory.stat slab_reclaimable"),
    ("slab_unreclaimable", pa.int64(), "v2 memory.stat slab_unreclaimable"),
)

SLAB_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("name", pa.string(), "cache name as tracepoints show it"),
    ("object_size", pa.int32(), "bytes the caller asked the cache for"),
    ("size", pa.int32(), "bytes per object slot, with metadata and alignment"),
    ("order", pa.int16(), "page order SLUB tries first for a new slab"),
    ("min_order", pa.int16(), "smallest order that holds one object: SLUB's fallback (s->min)"),
    ("objs_per_slab", pa.int32(), "objects in a slab of the preferred order"),
    ("account", pa.bool_(), "SLAB_ACCOUNT; null when sysfs does not say (unmerged caches)"),
    ("reclaim_account", pa.bool_(), "SLAB_RECLAIM_ACCOUNT: counted as reclaimable slab"),
)

# addresses/part-NNNNNN.parquet and addresses/call_sites.parquet: written only by
# `chargeplay collect --keep-addresses` (raw kernel addresses reveal the KASLR offset).
OBJECT_ADDRESS_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("obj", pa.int64(), "the pseudonym in events"),
    ("address", pa.uint64(), "the object's kernel address (slab objects) or page frame number (pages)"),
)
CALL_SITE_ADDRESS_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("id", pa.int32(), "call_site value in events"),
    ("address", pa.uint64(), "the call site's kernel text address"),
)

SYMBOL_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("id", pa.int32(), "call_site value in events"),
    ("symbol", pa.string(), "function+0xoffset/0xsize [module], as the kernel's %pS prints it; ? when unresolved"),
)


def table_schema(columns: tuple[tuple[str, pa.DataType, str], ...]) -> pa.Schema:
    """An Arrow schema for one of the column tables above, tagged with the schema version."""
    return pa.schema(
        [pa.field(name, dtype) for name, dtype, _ in columns],
        metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
    )


def schema_markdown() -> str:
    """The event columns as a Markdown table (the README's summary is generated from this)."""
    rows = ["| column | type | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {dtype} | {doc} |" for name, dtype, doc in EVENT_COLUMNS]
    return "\n".join(rows)
