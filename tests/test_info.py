"""`chargeplay info` on a trace built by hand: the memcg's own counters, and kmem charged by
cache, call site, order and context, each figure worked out from the rows below."""
from __future__ import annotations

import json

import pyarrow as pa

from conftest import chargeplay
from test_report import GFP, write_trace
from traces.atomic import write_parquet
from traces.schema import MEMCG_COLUMNS, SYMBOL_COLUMNS, table_schema

PAGE = 4096
SYMBOLS = ["__d_alloc+0x2d/0x230", "seq_open[bold]+0x12/0x80", "pipe_write+0x1/0x10"]  # [bold]: no markup


def allocation(kind: str, call_site: int | None, nbytes: int, gfp: int, ctx: str = "task", order: int | None = None,
               cache: str | None = None, accounted: bool = True, failed: bool = False) -> dict:
    return {"ts_ns": 1_000, "cpu": 0, "pid": 7, "comm": "worker", "ctx": ctx, "kind": kind, "call_site": call_site,
            "cache": cache, "order": order, "gfp": gfp, "bytes_alloc": nbytes, "accounted": accounted, "failed": failed}


def test_info_says_what_the_memcg_counted_and_what_charged_the_kmem(tmp_path):
    kernel_account = GFP["GFP_KERNEL_ACCOUNT"]
    rows = [
        *[allocation("kmem_cache_alloc", 0, 192, GFP["GFP_KERNEL"], cache="dentry") for _ in range(2)],
        allocation("kmem_cache_alloc", 0, 192, GFP["GFP_ATOMIC"], ctx="softirq", cache="dentry"),
        *[allocation("kmalloc", 1, 64, kernel_account, cache="kmalloc-cg-64") for _ in range(2)],
        allocation("kmalloc", 1, 64, GFP["GFP_KERNEL"], cache="kmalloc-64", accounted=False),  # not charged
        allocation("page_alloc", 2, 4 * PAGE, kernel_account, order=2),
        allocation("page_alloc", 2, PAGE, kernel_account, order=0, failed=True),  # its charge failed
        *[allocation("page_alloc", None, PAGE, GFP["GFP_HIGHUSER_MOVABLE"], order=0, accounted=False) for _ in range(2)],
        *[{"ts_ns": 2_000, "cpu": 0, "pid": 7, "comm": "worker", "ctx": "task", "kind": "reclaim_begin", "gfp": kernel_account,
           "order": 0}] * 2,
    ]
    trace = tmp_path / "trace"
    write_trace(trace, rows, {"max": 400 * PAGE, "high": None, "command": ["worker"], "cgroup_version": 1},
                {"usage": 10 * PAGE}, SYMBOLS[0])
    samples = [{"ts_ns": 0, "usage": 10 * PAGE, "max_usage": 10 * PAGE, "failcnt": 0, "events_oom_kill": 0},
               {"ts_ns": 5_000, "usage": 100 * PAGE, "max_usage": 300 * PAGE, "failcnt": 7, "events_oom_kill": 1}]
    write_parquet(trace / "memcg.parquet", pa.Table.from_pylist(samples, schema=table_schema(MEMCG_COLUMNS)))
    write_parquet(trace / "symbols.parquet", pa.Table.from_pylist([{"id": i, "symbol": s} for i, s in enumerate(SYMBOLS)],
                                                                   schema=table_schema(SYMBOL_COLUMNS)))

    shown = chargeplay("info", str(trace), "--json")
    assert shown.returncode == 0, shown.stderr
    s = json.loads(shown.stdout)
    # The last sample's counters; the two reclaim_begin events.
    assert s["memcg"] == {"usage": 100 * PAGE, "peak": 300 * PAGE, "max_events": 7, "high_events": None, "oom_kills": 1,
                          "reclaims": 2}
    # Charged and not failed: 3 x 192 + 2 x 64 + 16384 (the uncharged kmalloc, the failed page and
    # the user pages add nothing).
    assert s["kmem_bytes"] == 3 * 192 + 2 * 64 + 4 * PAGE
    assert s["top_caches"] == [{"cache": "dentry", "allocations": 3, "kmem_bytes": 576},
                               {"cache": "kmalloc-cg-64", "allocations": 2, "kmem_bytes": 128}]
    assert [(r["symbol"], r["allocations"], r["kmem_bytes"]) for r in s["top_call_sites"]] == [
        (SYMBOLS[2], 1, 4 * PAGE), (SYMBOLS[0], 3, 576), (SYMBOLS[1], 2, 128)]
    assert s["page_orders"] == [{"order": 0, "allocations": 3, "kmem_charged": 1},
                                {"order": 2, "allocations": 1, "kmem_charged": 1}]
    assert s["contexts"] == {"softirq": 1, "task": 9}

    text = chargeplay("info", str(trace)).stdout
    assert "peak 1.2 MiB, usage 400.0 KiB, failcnt 7, OOM kills 1; its tasks' memcg reclaims 2" in text
    assert "kmem charged: 16.7 KiB in all" in text and "frees not subtracted" in text
    assert SYMBOLS[1] in text  # as written, not taken for rich's markup
    assert "softirq 1, task 9" in text and "GFP_HIGHUSER_MOVABLE" in text and "not through __GFP_ACCOUNT" in text


def test_info_counts_the_charged_slab_objects_each_numa_node_is_preferred_by(tmp_path):
    # CPUs 0 and 1 on node 0, CPU 2 on node 1. Node 0: two dentries on CPU 0 and a kmalloc_node
    # naming node 0 from CPU 2; node 1: a kmalloc on CPU 2. Neither the uncharged kmalloc on
    # CPU 1 nor the page counts: pages are not slab objects.
    def on(cpu: int, node: int = -1, **kwargs) -> dict:
        return {**allocation(**kwargs), "cpu": cpu, "node": node}

    kernel_account = GFP["GFP_KERNEL_ACCOUNT"]
    rows = [*[on(0, kind="kmem_cache_alloc", call_site=0, nbytes=192, gfp=kernel_account, cache="dentry")] * 2,
            on(2, 0, kind="kmalloc", call_site=1, nbytes=64, gfp=kernel_account),
            on(2, kind="kmalloc", call_site=1, nbytes=64, gfp=kernel_account),
            on(1, kind="kmalloc", call_site=1, nbytes=64, gfp=GFP["GFP_KERNEL"], accounted=False),
            on(1, kind="page_alloc", call_site=2, nbytes=PAGE, gfp=kernel_account, order=0)]
    trace = tmp_path / "trace"
    write_trace(trace, rows, {"max": 400 * PAGE, "high": None, "cgroup_version": 2}, {"usage": 10 * PAGE}, SYMBOLS[0])
    manifest = json.loads((trace / "manifest.json").read_text())
    manifest["kernel"].update(cpus=3, cpu_nodes=[0, 0, 1])
    (trace / "manifest.json").write_text(json.dumps(manifest))
    s = json.loads(chargeplay("info", str(trace), "--json").stdout)
    assert s["objects_by_node"] == {"0": 3, "1": 1}
    text = chargeplay("info", str(trace)).stdout
    assert ("NUMA: node 0 CPUs 0,1, 3 charged slab objects prefer it; node 1 CPUs 2, 1 charged slab objects prefer it"
            in text)
