"""From raw tracepoint records to rows of the trace format (traces.schema.EVENT_SCHEMA).

Works on whole batches with numpy: per event type, the fields are gathered for all
its records at once. Raw pointers and call-site addresses are replaced here, before
anything is written: objects by pseudonyms, call sites by ids.

Record layouts differ between kernels (6.1's kmem_cache_alloc has no cache name; 6.18's
fork event keeps task names as __data_loc strings where 6.12's has char[16]). `_fill` reads
what the running kernel's format has, and a Decoder says, per kind, which field each column
came from (`sources`, written to the manifest): a column filled by inference says how, one
left null because the field is missing says why, and a record type missing a field it cannot
do without is not decoded at all (`unavailable`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from collect.event_format import EventFormat, Field, read_event_format
from collect.memcg_probes import PROBE_IP, VAL_IN_PAGES
from collect.pseudonyms import ALLOC, FREE, PAGE_TAG, Pseudonyms
from collect.ringbuf import RawEvents, concat, field_values, string_values
from collect.symbols import CallSites
from traces.schema import ALLOC_KINDS, CHARGE_FUNCTIONS, CLONE_FLAGS, CONTEXTS, EVENT_SCHEMA, FREE_KINDS, KINDS

# Tracepoint -> trace kind. Events mapped to None only update task names.
TRACEPOINT_KINDS: dict[tuple[str, str], str | None] = {
    ("kmem", "kmalloc"): "kmalloc",
    ("kmem", "kmem_cache_alloc"): "kmem_cache_alloc",
    ("kmem", "kfree"): "kfree",
    ("kmem", "kmem_cache_free"): "kmem_cache_free",
    ("kmem", "mm_page_alloc"): "page_alloc",
    ("kmem", "mm_page_free"): "page_free",
    ("memcg", "mod_memcg_state"): "memcg_state",
    ("memcg", "mod_memcg_lruvec_state"): "memcg_lruvec_state",
    ("memcg", "count_memcg_events"): "memcg_event",
    ("vmscan", "mm_vmscan_memcg_reclaim_begin"): "reclaim_begin",
    ("vmscan", "mm_vmscan_memcg_reclaim_end"): "reclaim_end",
    ("raw_syscalls", "sys_exit"): "user_return",
    ("oom", "mark_victim"): "oom",
    ("task", "task_newtask"): "task_new",
    ("sched", "sched_process_fork"): "task_new",  # eBPF: the raw tracepoint, with clone flags read off the tasks
    ("sched", "sched_process_exec"): "task_exec",
    ("sched", "sched_process_exit"): "task_exit",
    ("task", "task_rename"): None,
    ("kprobes", "memcg_charge"): "charge",  # no tracepoint: the eBPF backend's charge probes
}
# Kinds whose events also name a task (the new one, the one that executes a file).
NAMING_KINDS = ("task_new", "task_exec")
# Kinds recorded without a pid filter: their pids say nothing of who the workload is.
STAT_KINDS = ("memcg_state", "memcg_lruvec_state", "memcg_event")
UNFILTERED_KINDS = FREE_KINDS + STAT_KINDS
NO_PFN = np.uint64(0xFFFFFFFFFFFFFFFF)
CLONE_SHARING = sum(CLONE_FLAGS.values())
RAW_ADDRESS = "_address"  # a column that never leaves the decoder
KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}
# kmem_cache_alloc names its cache only since 6.18 (before, kmem_cache_free alone does). The
# replay groups objects by cache (slab geometry, reclaimable or not), so the name is inferred
# from the sizes the record has: bytes_req and bytes_alloc are the cache's object_size and size.
UNNAMED_CACHE = "unnamed-"
CACHE_INFERENCE = (
    "the name of the one slab in /sys/kernel/slab at capture start whose object_size and size are "
    "bytes_req and bytes_alloc (of a merged slab, the alias /proc/slabinfo lists, as kmem_cache_free names it); "
    f"where none or several are, {UNNAMED_CACHE}BYTES_ALLOC, a name no kernel cache has"
)


def memcg_state_val_in_pages(item: np.ndarray, val: np.ndarray, units: dict[int, int], page_size: int) -> np.ndarray:
    """mm/memcontrol.c's memcg_state_val_in_pages, in C's arithmetic: val * unit is an int, the
    division by PAGE_SIZE (unsigned long) makes it unsigned, max(..., 1UL) rounds a positive
    sub-page change up to 1, and the int result keeps the low 32 bits, so a negative change
    rounds away from zero (-64 bytes: -1 page). Items counted in pages pass unchanged."""
    out = val.astype(np.int64)
    for code, unit in units.items():
        rows = (item == code) & (val != 0)
        product = (val[rows].astype(np.int64) * unit).astype(np.int32).astype(np.int64)  # int * int
        pages = np.maximum(product.astype(np.uint64) // np.uint64(page_size), np.uint64(1))
        out[rows] = pages.astype(np.uint32).astype(np.int32)  # the int the function returns
    return out


class MissingField(Exception):
    """A record type lacks a field its kind cannot be decoded without."""

    def __init__(self, fmt: EventFormat, name: str) -> None:
        super().__init__(f"{fmt.system}:{fmt.name} has no {name} field")


class FieldReader:
    """The fields of one record type's selected records, read when first asked for (a record
    type's fields differ between kernels: only what `_fill` uses is read). Values set by the
    decoder (the eBPF backend's slab caches) stand in for fields, with their own source."""

    def __init__(self, fmt: EventFormat, raw: RawEvents, rows: np.ndarray) -> None:
        self.fmt, self.raw, self.rows = fmt, raw, rows
        self.values: dict[str, np.ndarray] = {}
        self.sources: dict[str, str] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.values or name in self.fmt.fields

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.values:
            spec = self.fmt.fields.get(name)
            if spec is None:
                raise MissingField(self.fmt, name)
            self.values[name] = field_values(self.raw, self.rows, spec)
        return self.values[name]

    def text(self, name: str) -> np.ndarray:
        if name not in self.fmt.fields:
            raise MissingField(self.fmt, name)
        return text_values(self.raw, self.rows, self.fmt.fields[name])

    def set(self, name: str, values: np.ndarray, source: str) -> None:
        self.values[name], self.sources[name] = values, source

    def source(self, name: str) -> str:
        return self.sources.get(name, name)


def text_values(raw: RawEvents, rows: np.ndarray, spec: Field) -> np.ndarray:
    """A string field: `__data_loc char[]` (6.18's task names) or a fixed `char[N]` (6.12's)."""
    if spec.data_loc:
        return string_values(raw, rows, spec)
    return np.array([bytes(raw.data[s + spec.offset : s + spec.offset + spec.size]).split(b"\0", 1)[0].decode(errors="replace")
                     for s in raw.start[rows].tolist()], dtype=object)


def load_formats(events_dir: Path, wanted: list[tuple[str, str]]) -> dict[int, tuple[str | None, EventFormat]]:
    """Event id -> (kind, format) for the tracepoints this kernel has."""
    formats = {}
    for system, name in wanted:
        if (events_dir / system / name / "format").exists():
            fmt = read_event_format(events_dir, system, name)
            formats[fmt.id] = (TRACEPOINT_KINDS[(system, name)], fmt)
    return formats


def source_entry(fmt: EventFormat, cols: Columns) -> dict:
    """What the manifest says of one kind: its tracepoint (or the function a kprobe event named
    after it stands on), each column's field or rule (a column not listed is null for the
    kind), which were inferred and which are null on this kernel only because a field is missing."""
    columns = {("obj" if name == RAW_ADDRESS else name): source for name, source in cols.sources.items()}
    source = f"kprobe on {fmt.name}" if PROBE_IP in fmt.fields else f"{fmt.system}:{fmt.name}"
    return {"tracepoint": source, "columns": columns, "inferred": dict(cols.inferred), "null": dict(cols.nulls)}


@dataclass
class Columns:
    """Full-length column arrays for one batch, filled kind by kind; `valid` marks non-nulls."""

    n: int
    values: dict[str, np.ndarray] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    strings: dict[str, np.ndarray] = field(default_factory=dict)  # object arrays, None = null
    # Where the columns of the kind being filled came from (what the manifest records).
    sources: dict[str, str] = field(default_factory=dict)  # column -> the field, or how it was computed
    inferred: dict[str, str] = field(default_factory=dict)  # column -> how it was inferred (no field holds it)
    nulls: dict[str, str] = field(default_factory=dict)  # column -> why it is null on this kernel

    def _from(self, name: str, source: str, inferred: str | None) -> None:
        self.sources[name] = source
        if inferred:
            self.inferred[name] = inferred

    def put(self, name: str, rows: np.ndarray, data: np.ndarray, source: str, inferred: str | None = None) -> None:
        self._from(name, source, inferred)
        if name not in self.values:
            dtype = np.uint64 if name == RAW_ADDRESS else EVENT_SCHEMA.field(name).type.to_pandas_dtype()
            self.values[name] = np.zeros(self.n, dtype=dtype)
            self.valid[name] = np.zeros(self.n, dtype=bool)
        self.values[name][rows] = data
        self.valid[name][rows] = True

    def put_strings(self, name: str, rows: np.ndarray, data: np.ndarray, source: str, inferred: str | None = None) -> None:
        self._from(name, source, inferred)
        self.strings.setdefault(name, np.full(self.n, None, dtype=object))[rows] = data

    def array(self, name: str, keep: np.ndarray) -> pa.Array:
        """The column's kept rows (filtering numpy arrays is cheaper than filtering the table)."""
        dtype = EVENT_SCHEMA.field(name).type
        if name in self.strings:
            return pa.array(self.strings[name][keep], dtype)
        if name not in self.values:
            return pa.nulls(int(np.count_nonzero(keep)), dtype)
        return pa.array(self.values[name][keep], type=dtype, mask=~self.valid[name][keep])


@dataclass(frozen=True)
class SlabCache:
    """What a slab cache key stands for (the eBPF backend names caches by key, not by string)."""

    name: str
    object_size: int  # bytes_req of its allocations
    size: int  # bytes_alloc
    account: bool  # SLAB_ACCOUNT: all its allocations are charged


@dataclass
class Decoder:
    """Turns merged, time-ordered RawEvents batches into EVENT_SCHEMA tables.

    Holds the state that spans batches: task names, object pseudonyms, call-site ids,
    and the pids of the workload (for keeping frees seen outside the pid filter).
    """

    formats: dict[int, tuple[str | None, EventFormat]]
    gfp_account: int
    trace_flags: dict[str, int]
    page_size: int = os.sysconf("SC_PAGE_SIZE")
    t0: int | None = None
    comms: dict[int, str] = field(default_factory=dict)
    workload_pids: set[int] = field(default_factory=set)
    pseudonyms: Pseudonyms = field(default_factory=Pseudonyms)
    call_sites: CallSites = field(default_factory=CallSites)
    slab_caches: dict[int, SlabCache] = field(default_factory=dict)  # by key, for records with a "cache" field
    slab_names: dict[tuple[int, int], str] = field(default_factory=dict)  # (object_size, size) -> the one slab's name
    stat_units: dict[int, int] = field(default_factory=dict)  # memcg stat item -> its unit in bytes, if not pages (kprobe events)
    # Which memcg ids are the target's or below it; None: every stat event recorded is the target's.
    in_target: Callable[[np.ndarray], np.ndarray] | None = None
    keep_addresses: bool = False  # then `addresses` collects (obj, raw address) of allocations
    addresses: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Work out what each record type gives on this kernel by decoding none of its records;
        a record type that lacks a field its kind needs is left out (`unavailable`)."""
        self.sources: dict[str, dict] = {}  # kind -> where its columns come from (the manifest's "kinds")
        self.unavailable: dict[str, str] = {}  # "system:event" -> why it cannot be decoded
        nothing, none = concat([]), np.zeros(0, np.int64)
        for type_id, (kind, fmt) in list(self.formats.items()):
            cols = Columns(0)
            try:
                if kind is None or kind in NAMING_KINDS:
                    self._comm_changes(nothing, none, fmt)
                if kind is not None:
                    self._fill(kind, fmt, nothing, none, cols)
            except MissingField as missing:
                self.unavailable[f"{fmt.system}:{fmt.name}"] = str(missing)
                del self.formats[type_id]
                continue
            if kind is not None:
                self.sources[kind] = source_entry(fmt, cols)

    def decode(self, raw: RawEvents) -> pa.Table:
        """Frees by other tasks come from an instance without the workload's pid filter: a
        free is kept only when it frees a workload object or was done by a workload task."""
        if self.t0 is None and len(raw):
            self.t0 = int(raw.ts[0])
        kind = np.full(len(raw), -1, dtype=np.int16)
        cols = Columns(len(raw))
        comm_changes: list[tuple[int, int, str]] = []
        for type_id in np.unique(raw.type_id):
            if int(type_id) not in self.formats:
                continue
            name, fmt = self.formats[int(type_id)]
            rows = np.flatnonzero(raw.type_id == type_id)
            if name is None or name in NAMING_KINDS:
                comm_changes += self._comm_changes(raw, rows, fmt)
            if name is None:
                continue
            kind[rows] = KIND_CODE[name]
            self._fill(name, fmt, raw, rows, cols)
        self._assign_objects(kind, cols)
        is_free = np.isin(kind, [KIND_CODE[k] for k in FREE_KINDS])
        unfiltered = np.isin(kind, [KIND_CODE[k] for k in UNFILTERED_KINDS])
        self.workload_pids.update(np.unique(self._pids(raw)[(kind >= 0) & ~unfiltered]).tolist())
        keep = (kind >= 0) & ~(is_free & self._unwanted(raw, cols)) & ~self._elsewhere(kind, cols)
        return self._table(raw, kind, cols, comm_changes, keep)

    def _elsewhere(self, kind: np.ndarray, cols: Columns) -> np.ndarray:
        """Stat events of memcgs outside the target's subtree: the kernel's filter (an id at
        least the target's) also passes memcgs made after it elsewhere."""
        elsewhere = np.zeros(len(kind), dtype=bool)
        rows = np.flatnonzero(np.isin(kind, [KIND_CODE[k] for k in STAT_KINDS]))
        if self.in_target is not None and len(rows):
            elsewhere[rows] = ~self.in_target(cols.values["memcg_id"][rows])
        return elsewhere

    def _pids(self, raw: RawEvents) -> np.ndarray:
        return self._common(raw, "common_pid", np.arange(len(raw)))

    def _common(self, raw: RawEvents, name: str, rows: np.ndarray) -> np.ndarray:
        # common_* fields sit at the same offsets in every record; any format describes them.
        any_format = next(iter(self.formats.values()))[1]
        return field_values(raw, rows, any_format.fields[name])

    def _fill(self, kind: str, fmt: EventFormat, raw: RawEvents, rows: np.ndarray, cols: Columns) -> None:
        f = FieldReader(fmt, raw, rows)

        def missing(name: str) -> str:
            return f"{fmt.system}:{fmt.name} has no {name} field on this kernel"

        def copy(column: str, name: str, optional: bool = False) -> None:
            if optional and name not in f:
                cols.nulls[column] = missing(name)
            else:
                cols.put(column, rows, f[name], f.source(name))

        cache_names = self._from_slab_caches(f) if "cache" in f else None
        if kind in ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free"):
            if "call_site" in f:
                cols.put("call_site", rows, self.call_sites.ids_for(f["call_site"]), "call_site (an id into symbols.parquet)")
            else:
                cols.nulls["call_site"] = missing("call_site")
        if kind in ("kmalloc", "kmem_cache_alloc"):
            copy("bytes_req", "bytes_req", optional=True)
            copy("bytes_alloc", "bytes_alloc")
            copy("gfp", "gfp_flags")
            copy("node", "node", optional=True)
            if "accounted" in f:
                copy("accounted", "accounted")
            else:  # kmalloc has never had the field; kmem_cache_alloc before 6.0 had not
                how = "gfp_flags & __GFP_ACCOUNT" + ("" if kind == "kmalloc" else ": misses caches created with SLAB_ACCOUNT")
                cols.put("accounted", rows, (f["gfp_flags"] & self.gfp_account) != 0, how, None if kind == "kmalloc" else how)
            cols.put("failed", rows, f["ptr"] == 0, "ptr == 0")
        if kind in ("kmem_cache_alloc", "kmem_cache_free"):
            if cache_names is not None:
                cols.put_strings("cache", rows, cache_names, f.source("cache"))
            elif "name" in f:
                cols.put_strings("cache", rows, f.text("name"), "name")
            else:  # before 6.18 (5.x and 6.1-6.17: no name; the replay groups objects by cache)
                cols.put_strings("cache", rows, self._infer_cache_names(f["bytes_req"], f["bytes_alloc"]),
                                 "bytes_req, bytes_alloc", CACHE_INFERENCE)
        if kind == "page_alloc":
            order = f["order"].astype(np.int64)
            copy("order", "order")
            copy("gfp", "gfp_flags")
            cols.put("bytes_alloc", rows, self.page_size << order, "PAGE_SIZE << order")
            cols.put("accounted", rows, (f["gfp_flags"] & self.gfp_account) != 0, "gfp_flags & __GFP_ACCOUNT")
            cols.put("failed", rows, f["pfn"] == NO_PFN, "pfn == -1")
        if kind == "page_free":
            copy("order", "order")
            cols.put("bytes_alloc", rows, self.page_size << f["order"].astype(np.int64), "PAGE_SIZE << order")
        if kind in ("memcg_state", "memcg_lruvec_state", "memcg_event"):
            copy("memcg_id", "id")
            copy("item", "item")
            if PROBE_IP in f and kind != "memcg_event":  # a kprobe on the function (collect.memcg_probes)
                cols.put("val", rows, memcg_state_val_in_pages(f["item"], f["val"], self.stat_units, self.page_size), VAL_IN_PAGES)
            else:
                cols.put("val", rows, f["val"].astype(np.int64), "val")
        if kind == "reclaim_begin":
            copy("order", "order")
            copy("gfp", "gfp_flags")
        if kind == "reclaim_end":
            cols.put("val", rows, f["nr_reclaimed"].astype(np.int64), "nr_reclaimed")
        if kind == "user_return":
            copy("item", "id")
        if kind == "oom":
            copy("val", "pid")
        if kind == "task_new":
            new_pid = "pid" if "pid" in f else "child_pid"
            cols.put("val", rows, f[new_pid].astype(np.int64), new_pid)
            cols.put("item", rows, (f["clone_flags"] & CLONE_SHARING).astype(np.int32), "clone_flags & (CLONE_VM | CLONE_THREAD)")
        if kind == "charge":
            copy("item", "function")
            copy("gfp", "gfp_flags")
            copy("val", "pages")
            oom = f["function"] == CHARGE_FUNCTIONS.index("mem_cgroup_out_of_memory")
            cols.put("failed", rows, np.where(oom, f["result"] == 0, f["result"] != 0),
                     "result != 0 (mem_cgroup_out_of_memory: result == 0)")  # OOM: nothing killed
        # Raw addresses, kept only until pseudonyms are assigned in time order.
        if kind in ("page_alloc", "page_free"):
            cols.put(RAW_ADDRESS, rows, np.where(f["pfn"] == NO_PFN, 0, f["pfn"] | PAGE_TAG), "pfn (as a pseudonym)")
        elif kind in ALLOC_KINDS + FREE_KINDS:
            cols.put(RAW_ADDRESS, rows, f["ptr"], "ptr (as a pseudonym)")

    def _from_slab_caches(self, f: FieldReader) -> np.ndarray:
        """Records that name their cache by key: the cache's sizes and SLAB_ACCOUNT stand in
        for the tracepoint's bytes_req, bytes_alloc and accounted fields (as the kernel
        fills them in); returns the cache names (None for a key no record described)."""
        keys, inverse = np.unique(f["cache"], return_inverse=True)
        caches = [self.slab_caches.get(int(key)) for key in keys.tolist()]
        inverse = inverse.reshape(-1)
        f.set("cache", np.array([c.name if c else None for c in caches], object)[inverse], "the kmem_cache's name, by its key")
        f.set("bytes_req", np.array([c.object_size if c else 0 for c in caches], np.uint64)[inverse], "the kmem_cache's object_size")
        f.set("bytes_alloc", np.array([c.size if c else 0 for c in caches], np.uint64)[inverse], "the kmem_cache's size")
        if "gfp_flags" in f:
            account = np.array([c is not None and c.account for c in caches], bool)[inverse]
            f.set("accounted", account | ((f["gfp_flags"] & self.gfp_account) != 0), "SLAB_ACCOUNT or gfp_flags & __GFP_ACCOUNT")
        return f["cache"]

    def _infer_cache_names(self, bytes_req: np.ndarray, bytes_alloc: np.ndarray) -> np.ndarray:
        """CACHE_INFERENCE: the cache's name where its sizes are one slab's, else unnamed-SIZE."""
        pairs, inverse = np.unique(np.stack([bytes_req, bytes_alloc], axis=1), axis=0, return_inverse=True)
        names = [self.slab_names.get((int(req), int(size)), f"{UNNAMED_CACHE}{int(size)}") for req, size in pairs.tolist()]
        return np.array(names, dtype=object)[inverse.reshape(-1)]

    def _assign_objects(self, kind: np.ndarray, cols: Columns) -> None:
        if RAW_ADDRESS not in cols.values:
            return
        op = np.zeros(kind.size, dtype=np.int8)
        op[np.isin(kind, [KIND_CODE[k] for k in ALLOC_KINDS])] = ALLOC
        op[np.isin(kind, [KIND_CODE[k] for k in FREE_KINDS])] = FREE
        key = np.where(cols.valid[RAW_ADDRESS], cols.values[RAW_ADDRESS], 0).astype(np.uint64)
        obj = self.pseudonyms.assign(key, op)
        cols.put("obj", np.flatnonzero(obj >= 0), obj[obj >= 0], cols.sources[RAW_ADDRESS])
        if self.keep_addresses:
            allocated = (op == ALLOC) & (obj >= 0)
            pages = kind[allocated] == KIND_CODE["page_alloc"]  # their keys are tagged page frame numbers
            self.addresses.append((obj[allocated], np.where(pages, key[allocated] & ~PAGE_TAG, key[allocated])))
        del cols.values[RAW_ADDRESS], cols.valid[RAW_ADDRESS]

    def _unwanted(self, raw: RawEvents, cols: Columns) -> np.ndarray:
        """Events neither of a workload object nor by a workload task: other processes' business."""
        matched = cols.valid["obj"] if "obj" in cols.valid else np.zeros(len(raw), dtype=bool)
        by_workload = np.isin(self._pids(raw), np.fromiter(self.workload_pids, dtype=np.int64))
        return ~matched & ~by_workload

    def _comm_changes(self, raw: RawEvents, rows: np.ndarray, fmt: EventFormat) -> list[tuple[int, int, str]]:
        """(ts, pid, new name) for fork, exec and rename records."""
        ts = raw.ts[rows]
        f = FieldReader(fmt, raw, rows)
        if fmt.name in ("task_newtask", "sched_process_fork"):  # the new task has its parent's name
            pids, names = (f["pid"], f.text("comm")) if fmt.name == "task_newtask" else (f["child_pid"], f.text("child_comm"))
            self.workload_pids.update(pids.tolist())
        elif fmt.name == "sched_process_exec":
            # The kernel names the task after the file it executes (kbasename, 15 chars).
            pids, names = f["pid"], [path.rsplit("/", 1)[-1][:15] for path in f.text("filename")]
        else:  # task_rename
            pids, names = f["pid"], f.text("newcomm")
        return list(zip(ts.tolist(), pids.tolist(), names))

    def _comm_column(self, raw: RawEvents, pids: np.ndarray, changes: list[tuple[int, int, str]], keep: np.ndarray) -> pa.Array:
        """Each event's task name: the name known before the batch, then changes in time order.
        Tasks outside the workload (a kworker or an RCU callback freeing its objects) stay
        unnamed: their names are not the workload's business."""
        distinct, inverse = np.unique(pids, return_inverse=True)
        names: list[str | None] = [self.comms.get(int(pid)) if int(pid) in self.workload_pids else None for pid in distinct]
        codes = inverse.astype(np.int32)
        for ts, pid, name in sorted(changes):
            later = (pids == pid) & (raw.ts >= ts)
            names.append(name)
            codes[later] = len(names) - 1
            self.comms[pid] = name
        return pa.DictionaryArray.from_arrays(codes[keep], pa.array(names, pa.string())).cast(pa.string())

    def _ctx_column(self, raw: RawEvents, keep: np.ndarray) -> pa.Array:
        """task, softirq, hardirq or nmi from common_flags; null where records have none (eBPF)."""
        if "common_flags" not in next(iter(self.formats.values()))[1].fields:
            return pa.nulls(int(np.count_nonzero(keep)), pa.string())
        flags = self._common(raw, "common_flags", keep)
        ctx = np.zeros(len(flags), dtype=np.int32)  # task
        for code, flag in ((1, "TRACE_FLAG_SOFTIRQ"), (2, "TRACE_FLAG_HARDIRQ"), (3, "TRACE_FLAG_NMI")):
            ctx[(flags & self.trace_flags[flag]) != 0] = code
        return pa.DictionaryArray.from_arrays(ctx, pa.array(CONTEXTS)).cast(pa.string())

    def _table(self, raw: RawEvents, kind: np.ndarray, cols: Columns, comm_changes, keep: np.ndarray) -> pa.Table:
        pids = self._pids(raw).astype(np.int32)
        arrays = {
            "ts_ns": pa.array((raw.ts[keep] - np.uint64(self.t0)).astype(np.int64)),
            "cpu": pa.array(raw.cpu[keep], pa.uint16()),
            "pid": pa.array(pids[keep]),
            "comm": self._comm_column(raw, pids, comm_changes, keep),
            "ctx": self._ctx_column(raw, keep),
            "kind": pa.DictionaryArray.from_arrays(kind[keep].astype(np.int32), pa.array(KINDS)).cast(pa.string()),
        }
        return pa.table(
            {name: arrays[name] if name in arrays else cols.array(name, keep) for name in EVENT_SCHEMA.names},
            schema=EVENT_SCHEMA,
        )
