"""The eBPF backend's fixed-size records decode to the same rows as tracefs records would
(no kernel needed: records are built here as kmem_bpf.c lays them out)."""
from __future__ import annotations

import numpy as np

from collect.ebpf import RECORD_DTYPE, RECORD_SIZE, record_formats, raw_events
from collect.decode import Decoder

T_KMEM_CACHE_ALLOC, T_KMEM_CACHE_FREE, T_PAGE_ALLOC, T_MEMCG_STATE, T_FORK = 2, 4, 5, 7, 14
GFP_ACCOUNT = 1 << 22


def _records(rows: list[dict]) -> np.ndarray:
    records = np.zeros(len(rows), RECORD_DTYPE)
    for i, row in enumerate(rows):
        records[i]["len"] = RECORD_SIZE - 8
        records[i]["name_loc"] = (36 << 16) | 60
        for key, value in row.items():
            records[i][key] = value
    return records


def test_records_decode_to_event_rows():
    records = _records([
        {"ts": 1_000, "type": T_FORK, "pid": 10, "a": 11, "name": b"child"},
        {"ts": 2_000, "type": T_KMEM_CACHE_ALLOC, "pid": 11, "cpu": 1, "a": 0xFFFFFFFF81000000, "p": 0xFFFF888000001000,
         "b": 192, "c": 192, "gfp": GFP_ACCOUNT, "s": -1, "accounted": 1, "name": b"dentry"},
        {"ts": 3_000, "type": T_PAGE_ALLOC, "pid": 11, "p": 1234, "s": 1, "gfp": GFP_ACCOUNT},
        {"ts": 4_000, "type": T_MEMCG_STATE, "pid": 99, "a": 77, "gfp": 5, "b": np.uint64(2**64 - 3)},
        {"ts": 5_000, "type": T_KMEM_CACHE_FREE, "pid": 99, "a": 0xFFFFFFFF81000010, "p": 0xFFFF888000001000, "name": b"dentry"},
    ])
    decoder = Decoder(formats=record_formats(), gfp_account=GFP_ACCOUNT, trace_flags={}, page_size=4096, t0=0)
    decoder.workload_pids.add(10)
    rows = decoder.decode(raw_events(records)).to_pylist()
    assert [r["kind"] for r in rows] == ["kmem_cache_alloc", "page_alloc", "memcg_state", "kmem_cache_free"]
    alloc, page, memcg, free = rows
    assert (alloc["pid"], alloc["comm"], alloc["cpu"], alloc["cache"], alloc["bytes_alloc"], alloc["node"]) == (11, "child", 1, "dentry", 192, -1)
    assert alloc["accounted"] and not alloc["failed"] and alloc["ctx"] is None
    assert (page["order"], page["bytes_alloc"], page["accounted"]) == (1, 8192, True)
    assert (memcg["memcg_id"], memcg["item"], memcg["val"], memcg["comm"]) == (77, 5, -3, None)
    # The free by another task (an RCU callback) carries the allocation's pseudonym.
    assert free["obj"] == alloc["obj"] is not None and free["cache"] == "dentry"
    assert alloc["call_site"] != free["call_site"]
