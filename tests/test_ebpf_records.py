"""The eBPF backend's fixed-size records decode to the same rows as tracefs records would
(no kernel needed: records are built here byte by byte as kmem.bpf.c lays them out, and
perf buffer records as the kernel frames them)."""
from __future__ import annotations

import struct

import numpy as np

from collect.bpf_outputs import PERF_RECORD_SAMPLE, _perf_samples
from collect.decode import Decoder
from collect.ebpf_records import NAMED_RECORD_SIZE, RECORD_SIZE, raw_events, record_formats, slab_caches
from collect.ringbuf import concat

T_KMEM_CACHE_ALLOC, T_KMEM_CACHE_FREE, T_PAGE_ALLOC, T_MEMCG_STATE, T_FORK, T_CACHE, T_EXIT = 2, 4, 5, 7, 14, 17, 19
CLONE_VM, CLONE_THREAD = 0x100, 0x10000
GFP_ACCOUNT, SLAB_ACCOUNT = 1 << 22, 1 << 13
DENTRY, NAMES = 0xFFFF888000A00000, 0xFFFF888000B00000  # cache keys (their addresses)


def record(ts: int, type_id: int, pid: int, a: int = 0, p: int = 0, k: int = 0, b: int = 0, c: int = 0, gfp: int = 0,
           cpu: int = 0, s: int = 0, name: bytes | None = None) -> bytes:
    """struct record (and struct named_record when `name` is given), as kmem.bpf.c declares them."""
    head = struct.pack("<QQQQIIIiHHhH", ts, a, p, k, b & 0xFFFFFFFF, c, gfp, pid, type_id, cpu, s, 0)
    assert len(head) == RECORD_SIZE
    if name is None:
        return head
    named = head + struct.pack("<I", (36 << 16) | 60) + name.ljust(36, b"\0")
    assert len(named) == NAMED_RECORD_SIZE
    return named


def as_raw(records: list[bytes], size: int):
    data = np.frombuffer(b"".join(records), np.uint8)
    return raw_events(data, np.arange(len(records), dtype=np.int64) * size, size)


def test_records_decode_to_event_rows():
    named = as_raw([
        record(1_000, T_FORK, pid=10, a=11, b=CLONE_VM | CLONE_THREAD, name=b"child"),
        record(1_500, T_CACHE, pid=11, a=DENTRY, b=192, c=192, gfp=SLAB_ACCOUNT | 1, name=b"dentry"),
        record(1_600, T_CACHE, pid=11, a=NAMES, b=4096, c=4096, gfp=0, name=b"names_cache"),
    ], NAMED_RECORD_SIZE)
    records = as_raw([
        record(2_000, T_KMEM_CACHE_ALLOC, pid=11, cpu=1, a=0xFFFFFFFF81000000, p=0xFFFF888000001000, k=DENTRY, gfp=0, s=-1),
        record(2_100, T_KMEM_CACHE_ALLOC, pid=11, a=0xFFFFFFFF81000020, p=0xFFFF888000002000, k=NAMES, gfp=GFP_ACCOUNT, s=-1),
        record(2_200, T_KMEM_CACHE_ALLOC, pid=11, a=0xFFFFFFFF81000020, p=0xFFFF888000003000, k=NAMES, gfp=0, s=-1),
        record(2_300, T_KMEM_CACHE_ALLOC, pid=11, a=0xFFFFFFFF81000020, p=0xFFFF888000004000, k=0xFFFF8880DEAD0000, s=-1),
        record(3_000, T_PAGE_ALLOC, pid=11, p=1234, s=1, gfp=GFP_ACCOUNT),
        record(4_000, T_MEMCG_STATE, pid=99, a=77, gfp=5, b=-3),
        record(5_000, T_KMEM_CACHE_FREE, pid=99, a=0xFFFFFFFF81000010, p=0xFFFF888000001000, k=DENTRY),
        record(6_000, T_EXIT, pid=11, a=11),
    ], RECORD_SIZE)
    decoder = Decoder(formats=record_formats(), gfp_account=GFP_ACCOUNT, trace_flags={}, page_size=4096, t0=0)
    decoder.workload_pids.add(10)
    decoder.slab_caches.update(slab_caches(named, SLAB_ACCOUNT))
    rows = decoder.decode(concat([named, records])).to_pylist()
    kinds = [r["kind"] for r in rows]
    assert kinds == ["task_new"] + ["kmem_cache_alloc"] * 4 + ["page_alloc", "memcg_state", "kmem_cache_free", "task_exit"]
    new_thread, dentry, names_accounted, names_plain, unknown, page, memcg, free, exit_ = rows
    # A thread (the BPF program compares the two tasks' mm and tgid), named as its parent was.
    assert (new_thread["pid"], new_thread["val"], new_thread["item"]) == (10, 11, CLONE_VM | CLONE_THREAD)
    assert (exit_["pid"], exit_["comm"]) == (11, "child")
    # The cache's facts stand in for the tracepoint's fields: SLAB_ACCOUNT or __GFP_ACCOUNT charges.
    assert (dentry["pid"], dentry["comm"], dentry["cpu"], dentry["cache"], dentry["bytes_req"], dentry["bytes_alloc"], dentry["node"]) \
        == (11, "child", 1, "dentry", 192, 192, -1)
    assert dentry["accounted"] and not dentry["failed"] and dentry["ctx"] is None
    assert (names_accounted["cache"], names_accounted["bytes_alloc"], names_accounted["accounted"]) == ("names_cache", 4096, True)
    assert (names_plain["cache"], names_plain["accounted"]) == ("names_cache", False)
    assert (unknown["cache"], unknown["bytes_alloc"], unknown["accounted"]) == (None, 0, False)  # its T_CACHE never came
    assert (page["order"], page["bytes_alloc"], page["accounted"]) == (1, 8192, True)
    assert (memcg["memcg_id"], memcg["item"], memcg["val"], memcg["comm"]) == (77, 5, -3, None)
    # The free by another task (an RCU callback) carries the allocation's pseudonym.
    assert free["obj"] == dentry["obj"] is not None and free["cache"] == "dentry"
    assert dentry["call_site"] != free["call_site"]


def perf_sample(payload: bytes) -> bytes:
    """A PERF_RECORD_SAMPLE of PERF_SAMPLE_RAW, framed as the kernel frames it: the raw size
    word and payload padded so the record is a multiple of 8 bytes."""
    raw = payload + b"\0" * ((-(4 + len(payload))) % 8)
    return struct.pack("<IHHI", PERF_RECORD_SAMPLE, 0, 8 + 4 + len(raw), len(raw)) + raw


def test_perf_buffer_walk_finds_samples_and_skips_lost_records():
    lost = struct.pack("<IHHQQ", 2, 0, 24, 7, 1000)  # PERF_RECORD_LOST: id, lost
    a, b = record(1, T_PAGE_ALLOC, pid=5, p=1), record(2, T_PAGE_ALLOC, pid=5, p=2)
    chunk = np.frombuffer(perf_sample(a) + lost + perf_sample(b), np.uint8)
    # 56-byte payload: 8 header + 4 size + 60 (56 padded) = 72 bytes per sample, then 24 for LOST.
    assert chunk.size == 72 + 24 + 72
    offsets = np.empty(chunk.size // 16, np.int64)
    n, whole = _perf_samples(chunk.view(np.uint64), offsets)
    assert offsets[:n].tolist() == [12, 72 + 24 + 12] and whole == chunk.size
    raw = raw_events(chunk.copy(), offsets[:n], RECORD_SIZE)
    assert raw.ts.tolist() == [1, 2] and raw.type_id.tolist() == [T_PAGE_ALLOC, T_PAGE_ALLOC]
    # A read limit that cuts the second sample: it is left for the next read.
    n, whole = _perf_samples(chunk[: 72 + 24 + 40].view(np.uint64), offsets)
    assert (n, whole) == (1, 72 + 24)


def test_charge_probe_records_decode_to_charge_rows():
    T_CHARGE, TRY, OVER_HIGH, OOM, ENOMEM = 18, 0, 1, 2, 12
    records = as_raw([
        record(1, T_CHARGE, pid=7, a=TRY, gfp=GFP_ACCOUNT, b=4, s=0),
        record(2, T_CHARGE, pid=7, a=TRY, gfp=GFP_ACCOUNT, b=1, s=-ENOMEM),
        record(3, T_CHARGE, pid=7, a=OVER_HIGH, gfp=GFP_ACCOUNT, s=0),
        record(4, T_CHARGE, pid=7, a=OOM, gfp=GFP_ACCOUNT, b=0, s=1),
        record(5, T_CHARGE, pid=7, a=OOM, gfp=GFP_ACCOUNT, b=3, s=0),
    ], RECORD_SIZE)
    decoder = Decoder(formats=record_formats(), gfp_account=GFP_ACCOUNT, trace_flags={}, page_size=4096, t0=0)
    rows = decoder.decode(records).to_pylist()
    assert [(r["kind"], r["item"], r["gfp"], r["val"], r["failed"]) for r in rows] == [
        ("charge", TRY, GFP_ACCOUNT, 4, False),
        ("charge", TRY, GFP_ACCOUNT, 1, True),  # -ENOMEM
        ("charge", OVER_HIGH, GFP_ACCOUNT, 0, False),
        ("charge", OOM, GFP_ACCOUNT, 0, False),  # out_of_memory returned true: it killed
        ("charge", OOM, GFP_ACCOUNT, 3, True),
    ]
