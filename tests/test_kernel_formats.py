"""The decoder against each lab kernel's own tracepoint formats, without booting it.

tests/data/kernels/<release>/events/<system>/<event>/format are the format files of Debian's
6.1.0-57 and 6.12.117 kernels (dumped inside the lab's qemu guests) and of the 6.18 the
development machines run. Records are built here byte by byte at the offsets those files
give, so a decoder that assumed another kernel's layout reads wrong values and fails.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from collect.collector import CaptureError, kind_notes, kinds_on_this_kernel
from collect.decode import UNNAMED_CACHE, Decoder, load_formats
from collect.event_format import EventFormat, read_event_format
from collect.ringbuf import RawEvents
from collect.slabs import slab_names_by_size
from collect.tracefs_collector import FREE_EVENTS, MEMCG_EVENTS, TASK_EVENTS
from traces.summary import kinds_from

KERNELS = Path(__file__).parent / "data" / "kernels"
K61, K612, K618 = "6.1.0-57-amd64", "6.12.117+deb12-amd64", "6.18.44-fc-v1045"
WANTED = TASK_EVENTS + MEMCG_EVENTS + FREE_EVENTS
MEMCG_KINDS = ("memcg_state", "memcg_lruvec_state", "memcg_event")
GFP_KERNEL_ACCOUNT = 0xCC0 | 1 << 22  # 6.1 to 6.18: __GFP_ACCOUNT is bit 22 on all three (their kmalloc print fmt)
GFP_ACCOUNT = 1 << 22
TRACE_FLAGS = {"TRACE_FLAG_HARDIRQ": 0x08, "TRACE_FLAG_SOFTIRQ": 0x10, "TRACE_FLAG_NMI": 0x40}  # kernel/trace/trace.h, 6.1 to 6.18
DENTRY_SIZES = (192, 192)  # dentry's object_size and size on these x86-64 builds


def formats(kernel: str) -> dict[int, tuple[str | None, EventFormat]]:
    return load_formats(KERNELS / kernel / "events", WANTED)


def decoder(kernel: str, **kwargs) -> Decoder:
    return Decoder(formats=formats(kernel), gfp_account=GFP_ACCOUNT, trace_flags=TRACE_FLAGS, page_size=4096, t0=0, **kwargs)


def fmt_of(kernel: str, system: str, event: str) -> EventFormat:
    return read_event_format(KERNELS / kernel / "events", system, event)


def record(fmt: EventFormat, task: int, /, **values: int | str) -> bytes:
    """One record as the kernel lays it out for `fmt`: integers at their offsets, `__data_loc`
    strings after the fixed part, char[N] strings in place."""
    fixed = max(f.offset + f.size for f in fmt.fields.values())
    head, tail = bytearray(fixed), bytearray()
    values = {"common_type": fmt.id, "common_pid": task, **values}
    for name, value in values.items():
        spec = fmt.fields[name]
        if spec.data_loc:
            text = str(value).encode() + b"\0"
            struct.pack_into("<I", head, spec.offset, (len(text) << 16) | (fixed + len(tail)))
            tail += text
        elif isinstance(value, str):
            head[spec.offset : spec.offset + spec.size] = value.encode().ljust(spec.size, b"\0")[: spec.size]
        else:
            head[spec.offset : spec.offset + spec.size] = value.to_bytes(spec.size, "little", signed=spec.signed)
    body = bytes(head + tail)
    return body + b"\0" * (-len(body) % 4)


def raw(records: list[bytes]) -> RawEvents:
    lengths = np.array([len(r) for r in records], np.int32)
    start = np.concatenate(([0], np.cumsum(lengths[:-1]))).astype(np.int64)
    type_id = np.array([struct.unpack_from("<H", r)[0] for r in records], np.uint16)
    n = len(records)
    return RawEvents(ts=np.arange(1, n + 1, dtype=np.uint64) * 1000, cpu=np.zeros(n, np.uint16), type_id=type_id,
                     start=start, length=lengths, data=np.frombuffer(b"".join(records), np.uint8).copy(), missed=0)


@pytest.mark.parametrize("kernel", [K61, K612, K618])
def test_every_tracepoint_the_kernel_has_decodes(kernel: str) -> None:
    d = decoder(kernel)
    assert d.unavailable == {}
    have = {(f.system, f.name) for _, f in d.formats.values()}
    kinds, unavailable = kinds_on_this_kernel(d, have, WANTED)
    expected_missing = set(MEMCG_KINDS) if kernel != K618 else set()  # memcg tracepoints came after 6.12
    assert {k for k, e in kinds.items() if "unavailable" in e} == expected_missing
    assert {k for k, e in kinds.items() if "unavailable" not in e} == {
        "kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "page_alloc", "page_free", "reclaim_begin",
        "reclaim_end", "user_return", "oom", "task_new", "task_exec", "task_exit", *(MEMCG_KINDS if kernel == K618 else ())}
    assert set(unavailable) == {f"memcg:{e}" for _, e in MEMCG_EVENTS} if kernel != K618 else unavailable == {}


@pytest.mark.parametrize("kernel", [K61, K612, K618])
def test_slab_allocation_decodes_at_this_kernels_offsets(kernel: str) -> None:
    """6.18 names the cache; 6.1 and 6.12 do not (the fields after it sit 8 bytes earlier), so the
    name is inferred from the sizes: a slab's when one slab has them, else unnamed-SIZE."""
    fmt = fmt_of(kernel, "kmem", "kmem_cache_alloc")
    named = {"name": "dentry"} if "name" in fmt.fields else {}
    fields = dict(call_site=0xFFFFFFFF81234567, bytes_req=192, bytes_alloc=192, gfp_flags=GFP_KERNEL_ACCOUNT, node=-1, accounted=1)
    records = [
        record(fmt, 10, ptr=0xFFFF888000001000, **fields, **named),
        record(fmt, 10, ptr=0, **{**fields, "bytes_req": 200, "bytes_alloc": 256, "accounted": 0, "gfp_flags": 0xCC0},
               **({"name": "other_cache"} if named else {})),
    ]
    d = decoder(kernel, slab_names={DENTRY_SIZES: "dentry"})
    d.workload_pids.add(10)
    first, second = d.decode(raw(records)).to_pylist()
    assert (first["kind"], first["cache"], first["bytes_req"], first["bytes_alloc"], first["gfp"], first["node"],
            first["accounted"], first["failed"], first["obj"], first["pid"]) == \
        ("kmem_cache_alloc", "dentry", 192, 192, GFP_KERNEL_ACCOUNT, -1, True, False, 0, 10)
    assert (second["bytes_req"], second["bytes_alloc"], second["accounted"], second["failed"], second["obj"]) == (200, 256, False, True, None)
    assert second["cache"] == ("other_cache" if named else f"{UNNAMED_CACHE}256")
    sources = d.sources["kmem_cache_alloc"]
    if named:
        assert sources["columns"]["cache"] == "name" and sources["inferred"] == {}
    else:
        assert sources["columns"]["cache"] == "bytes_req, bytes_alloc" and set(sources["inferred"]) == {"cache"}
    assert sources["columns"]["accounted"] == "accounted" and sources["null"] == {}


# The clone flags glibc passes: fork() (SIGCHLD, CLONE_CHILD_SETTID, CLONE_CHILD_CLEARTID) and
# pthread_create() (CLONE_VM, FS, FILES, SIGHAND, THREAD, SYSVSEM, SETTLS, PARENT_SETTID, CHILD_CLEARTID).
FORK_FLAGS, THREAD_FLAGS = 0x01200011, 0x003D0F00


@pytest.mark.parametrize("kernel", [K61, K612, K618])
def test_the_task_tree_and_task_names_from_newtask_exec_exit_and_rename(kernel: str) -> None:
    """A fork, a thread, an exec, a rename and an exit: rows of the task tree (a new task's
    clone flags kept only for what it shares: a thread has CLONE_VM and CLONE_THREAD, a forked
    process neither), and the names of later events."""
    newtask, execve, rename, exit_ = (fmt_of(kernel, *e) for e in (("task", "task_newtask"), ("sched", "sched_process_exec"),
                                                                   ("task", "task_rename"), ("sched", "sched_process_exit")))
    alloc = fmt_of(kernel, "kmem", "kmalloc")
    kmalloc = dict(call_site=0xFFFFFFFF81000000, bytes_req=8, bytes_alloc=8, gfp_flags=GFP_KERNEL_ACCOUNT, node=-1)
    d = decoder(kernel)
    d.workload_pids.add(10)
    rows = d.decode(raw([
        record(newtask, 10, pid=11, comm="sh", clone_flags=FORK_FLAGS, oom_score_adj=0),
        record(alloc, 11, ptr=0xFFFF888000002000, **kmalloc),
        record(execve, 11, filename="/usr/bin/python3", pid=11, old_pid=11),
        record(alloc, 11, ptr=0xFFFF888000003000, **kmalloc),
        record(rename, 11, pid=11, oldcomm="python3", newcomm="worker", oom_score_adj=0),
        record(newtask, 11, pid=12, comm="worker", clone_flags=THREAD_FLAGS, oom_score_adj=0),
        record(alloc, 12, ptr=0xFFFF888000004000, **kmalloc),
        record(exit_, 12, comm="worker", pid=12, prio=120),
    ])).to_pylist()
    assert [(r["kind"], r["pid"], r["comm"], r["val"], r["item"]) for r in rows] == [
        ("task_new", 10, None, 11, 0),
        ("kmalloc", 11, "sh", None, None),
        ("task_exec", 11, "python3", None, None),
        ("kmalloc", 11, "python3", None, None),
        ("task_new", 11, "worker", 12, 0x100 | 0x10000),
        ("kmalloc", 12, "worker", None, None),
        ("task_exit", 12, "worker", None, None),
    ]


@pytest.mark.parametrize("kernel", [K61, K612, K618])
def test_page_free_and_reclaim_fields(kernel: str) -> None:
    d = decoder(kernel)
    d.workload_pids.add(10)
    page_alloc, page_free, begin, end, sys_exit, victim = (fmt_of(kernel, *e) for e in (
        ("kmem", "mm_page_alloc"), ("kmem", "mm_page_free"), ("vmscan", "mm_vmscan_memcg_reclaim_begin"),
        ("vmscan", "mm_vmscan_memcg_reclaim_end"), ("raw_syscalls", "sys_exit"), ("oom", "mark_victim")))
    rows = d.decode(raw([
        record(page_alloc, 10, pfn=0x1234, order=2, gfp_flags=GFP_KERNEL_ACCOUNT, migratetype=0),
        record(begin, 10, order=0, gfp_flags=0xCC0),
        record(end, 10, nr_reclaimed=37),
        record(page_free, 10, pfn=0x1234, order=2, common_flags=0x10),
        record(sys_exit, 10, id=257, ret=3),
        record(victim, 10, pid=10, comm="python3"),
    ])).to_pylist()
    assert [r["ctx"] for r in rows] == ["task"] * 3 + ["softirq"] + ["task"] * 2
    assert [(r["kind"], r["order"], r["bytes_alloc"], r["accounted"], r["obj"], r["val"], r["item"]) for r in rows] == [
        ("page_alloc", 2, 16384, True, 0, None, None), ("reclaim_begin", 0, None, None, None, None, None),
        ("reclaim_end", None, None, None, None, 37, None), ("page_free", 2, 16384, None, 0, None, None),
        ("user_return", None, None, None, None, None, 257), ("oom", None, None, None, None, 10, None)]


def test_memcg_stat_events_on_6_18() -> None:
    d = decoder(K618)
    lruvec = fmt_of(K618, "memcg", "mod_memcg_lruvec_state")
    (row,) = d.decode(raw([record(lruvec, 99, id=77, item=5, val=-3)])).to_pylist()
    assert (row["kind"], row["memcg_id"], row["item"], row["val"]) == ("memcg_lruvec_state", 77, 5, -3)


def without(fmt: EventFormat, field: str) -> EventFormat:
    return EventFormat(fmt.system, fmt.name, fmt.id, {k: v for k, v in fmt.fields.items() if k != field}, fmt.print_fmt)


def test_a_kernel_without_an_essential_field_is_refused_in_one_line() -> None:
    fmts = formats(K612)
    kfree = next(t for t, (kind, _) in fmts.items() if kind == "kfree")
    fmts[kfree] = ("kfree", without(fmts[kfree][1], "ptr"))
    d = Decoder(formats=fmts, gfp_account=GFP_ACCOUNT, trace_flags=TRACE_FLAGS)
    assert d.unavailable == {"kmem:kfree": "kmem:kfree has no ptr field"}
    with pytest.raises(CaptureError, match=r"^cannot capture on this kernel: kmem:kfree has no ptr field \(needed for every kfree event\)"):
        kinds_on_this_kernel(d, {(f.system, f.name) for _, f in fmts.values()}, WANTED)


def test_missing_optional_fields_are_inferred_or_null_and_said_once() -> None:
    """A kmem_cache_alloc without `accounted` (before 6.0) falls back to the gfp bit; one
    without `node` leaves the column null. Each is said once, and so are the memcg kinds."""
    fmts = formats(K61)
    alloc = next(t for t, (kind, _) in fmts.items() if kind == "kmem_cache_alloc")
    fmts[alloc] = ("kmem_cache_alloc", without(without(fmts[alloc][1], "accounted"), "node"))
    d = Decoder(formats=fmts, gfp_account=GFP_ACCOUNT, trace_flags=TRACE_FLAGS)
    sources = d.sources["kmem_cache_alloc"]
    assert sources["columns"]["accounted"].startswith("gfp_flags & __GFP_ACCOUNT")
    assert set(sources["inferred"]) == {"cache", "accounted"} and set(sources["null"]) == {"node"}
    kinds, unavailable = kinds_on_this_kernel(d, {(f.system, f.name) for _, f in fmts.values()}, WANTED)
    notes = kind_notes(kinds, unavailable)
    assert len(notes) == 4  # the memcg kinds (one line), cache, accounted, node
    assert notes[0].startswith("not on this kernel: memcg_state, memcg_lruvec_state, memcg_event events")
    summary = kinds_from(kinds)
    assert summary["kmem_cache_alloc"] == "kmem:kmem_cache_alloc (accounted inferred, cache inferred, node null)"
    assert summary["memcg_state"] == "unavailable: this kernel has no memcg:mod_memcg_state tracepoint"


def test_slab_names_by_size_names_only_what_one_slab_has(tmp_path: Path) -> None:
    """Sizes of one slab name it (a merged slab by the alias /proc/slabinfo lists, the name
    kmem_cache_free prints); sizes two slabs share name neither."""
    sysfs = tmp_path / "slab"

    def slab(name: str, object_size: int, size: int, alias_of: str | None = None) -> None:
        if alias_of:
            (sysfs / name).symlink_to(alias_of)
            return
        (sysfs / name).mkdir(parents=True)
        (sysfs / name / "object_size").write_text(f"{object_size}\n")
        (sysfs / name / "slab_size").write_text(f"{size}\n")

    slab(":0000032", 32, 32)
    slab("blkdev_ioc", 0, 0, alias_of=":0000032")
    slab("lsm_inode_cache", 0, 0, alias_of=":0000032")
    slab("dentry", 192, 192)
    slab("cred_jar", 192, 192)
    slab("names_cache", 4096, 4096)
    slabinfo = tmp_path / "slabinfo"
    slabinfo.write_text("slabinfo - version: 2.1\n# name ...\nlsm_inode_cache 1 1 32 128 1\ndentry 1 1 192 21 1\n"
                        "cred_jar 1 1 192 21 1\nnames_cache 1 1 4096 8 8\n")
    assert slab_names_by_size(sysfs, slabinfo) == {(32, 32): "lsm_inode_cache", (4096, 4096): "names_cache"}
