"""The trace format: segments, manifest, reader and summary, on traces built by hand."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from traces.atomic import write_json
from traces.checks import TraceError
from traces.manifest import MANIFEST, cpu_list, new_manifest, process_start_ticks
from traces.reader import Trace
from traces.schema import EVENT_SCHEMA, SCHEMA_VERSION, SCHEMA_VERSION_KEY, schema_markdown
from traces.segments import SegmentWriter
from traces.samples import sample_names, sample_path
from traces.summary import summarize

GFP = {"GFP_KERNEL_ACCOUNT": 0xCC0 | 1 << 22, "GFP_KERNEL": 0xCC0, "GFP_ATOMIC": 0x820, "GFP_NOWAIT": 0x2800, "__GFP_ACCOUNT": 1 << 22,
       "__GFP_HIGH": 0x20, "__GFP_FS": 0x80, "__GFP_DIRECT_RECLAIM": 0x400, "__GFP_RETRY_MAYFAIL": 0x4000, "__GFP_NOFAIL": 0x8000, "__GFP_NORETRY": 0x10000}


def events(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{"cpu": 0, "pid": 1, **row} for row in rows], schema=EVENT_SCHEMA)


def write_trace(path, rows: list[dict], max_events: int = 1000) -> list:
    manifest = new_manifest(backend="test", clock="mono", target={"memcg_id": 1}, gfp_flags=GFP, enums={})
    closed = []
    writer = SegmentWriter(path, closed.append, max_events=max_events)
    writer.write(events(rows))
    writer.close_segment()
    manifest["segments"] = [segment.__dict__ for segment in closed]
    manifest["status"] = "complete"
    write_json(path / MANIFEST, manifest)
    return closed


def test_segments_roll_by_event_count_and_read_back_unchanged(tmp_path):
    rows = [{"ts_ns": i, "kind": "kmalloc", "obj": i, "bytes_alloc": 64} for i in range(2500)]
    closed = write_trace(tmp_path, rows, max_events=1000)
    assert [s.events for s in closed] == [1000, 1000, 500]
    assert [(s.first_ts_ns, s.last_ts_ns) for s in closed] == [(0, 999), (1000, 1999), (2000, 2499)]
    trace = Trace.open(tmp_path)
    assert trace.events().collect().equals(pl.from_arrow(events(rows)))
    for segment in trace.segment_paths:
        assert pq.read_schema(segment).metadata[SCHEMA_VERSION_KEY] == str(SCHEMA_VERSION).encode()
        assert stat.S_IMODE(segment.stat().st_mode) == 0o600


def test_an_open_segment_is_not_under_its_final_name(tmp_path):
    writer = SegmentWriter(tmp_path, lambda segment: None, max_events=10)
    writer.write(events([{"ts_ns": i, "kind": "kfree"} for i in range(25)]))  # 2 closed, 5 rows pending
    writer._flush_pending()  # the 5 rows reach the open segment's file
    names = sorted(p.name for p in (tmp_path / "events").iterdir())
    assert names == [".part-000002.parquet.tmp", "part-000000.parquet", "part-000001.parquet"]
    writer.abort()
    assert sorted(p.name for p in (tmp_path / "events").iterdir()) == ["part-000000.parquet", "part-000001.parquet"]


def test_a_trace_whose_collector_died_reads_as_interrupted(tmp_path):
    write_trace(tmp_path, [{"ts_ns": 0, "kind": "kfree"}])
    manifest = Trace.open(tmp_path).manifest
    manifest["status"] = "recording"
    manifest["collector"] = {"pid": os.getpid(), "boot_id": manifest["collector"]["boot_id"],
                             "start_ticks": process_start_ticks(os.getpid())}
    write_json(tmp_path / MANIFEST, manifest)
    assert Trace.open(tmp_path).status == "recording"  # this process is alive
    dead = subprocess.Popen(["true"])
    dead.wait()
    manifest["collector"].update(pid=dead.pid, start_ticks=12345)
    write_json(tmp_path / MANIFEST, manifest)
    assert Trace.open(tmp_path).status == "interrupted"
    assert Trace.open(tmp_path).events().collect().height == 1


def test_summary_counts_by_hand(tmp_path):
    rows = [
        {"ts_ns": 0, "kind": "kmalloc", "gfp": GFP["GFP_KERNEL_ACCOUNT"], "accounted": True, "failed": False, "bytes_alloc": 64},
        {"ts_ns": 1, "kind": "kmem_cache_alloc", "gfp": GFP["GFP_KERNEL"], "accounted": True, "failed": False, "bytes_alloc": 192},
        {"ts_ns": 2, "kind": "kmem_cache_alloc", "gfp": GFP["GFP_KERNEL"], "accounted": False, "failed": False, "bytes_alloc": 512},
        {"ts_ns": 3, "kind": "kmalloc", "gfp": GFP["GFP_NOWAIT"], "accounted": True, "failed": True, "bytes_alloc": 128},
        {"ts_ns": 4, "kind": "page_alloc", "gfp": GFP["GFP_ATOMIC"] | 1 << 22, "accounted": True, "failed": False, "bytes_alloc": 8192},
        {"ts_ns": 5, "kind": "kfree"},
        {"ts_ns": 6, "kind": "user_return"},
    ]
    write_trace(tmp_path, rows)
    summary = summarize(Trace.open(tmp_path))
    assert summary["events"] == 7
    assert summary["events_by_kind"] == {"kmalloc": 2, "kmem_cache_alloc": 2, "page_alloc": 1, "kfree": 1, "user_return": 1}
    # 64 + 192 + 8192: the failed NOWAIT allocation and the unaccounted 512 bytes do not count.
    assert summary["kmem_bytes"] == 8448
    classes = {row["gfp_class"]: row for row in summary["gfp_classes"]}
    assert classes["GFP_KERNEL"]["allocations"] == 2 and classes["GFP_KERNEL"]["accounted"] == 1
    assert classes["GFP_NOWAIT"]["failed"] == 1 and classes["GFP_NOWAIT"]["kmem_bytes"] == 0
    assert classes["GFP_ATOMIC"]["kmem_bytes"] == 8192
    assert summary["status"] == "complete"


def test_a_segment_missing_columns_is_refused(tmp_path):
    write_trace(tmp_path, [{"ts_ns": 0, "kind": "kfree"}])
    segment = next((tmp_path / "events").glob("part-*.parquet"))
    table = pq.read_table(segment).drop_columns(["gfp"])
    pq.write_table(table.replace_schema_metadata(EVENT_SCHEMA.metadata), segment)
    with pytest.raises(TraceError, match="no column .gfp."):
        _ = Trace.open(tmp_path).segment_paths


def test_readme_summarises_the_schema_as_defined():
    assert schema_markdown() in (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", sample_names())
def test_a_bundled_samples_command_names_no_path_of_the_machine_that_recorded_it(name):
    """record.sh runs the workload from the checkout: a script or module it names is relative to
    the repository, which exists wherever the sample is read."""
    command = Trace.open(sample_path(name)).manifest["target"]["command"]
    checkout = Path(__file__).resolve().parent.parent
    assert command[0] == "python3" and not any(Path(word).is_absolute() for word in command), command
    assert (checkout / command[1]).is_file() or (command[1] == "-m" and (checkout / command[2]).is_dir()), command


def test_cpu_lists_read_as_the_kernel_writes_them():
    assert cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert cpu_list("5") == [5] and cpu_list("\n") == []  # a node with no CPUs: an empty line


def test_the_manifest_maps_each_cpu_to_the_numa_node_sysfs_gives_it():
    nodes = new_manifest(backend="tracefs", clock="mono", target={"memcg_id": 1}, gfp_flags={}, enums={})["kernel"]["cpu_nodes"]
    assert len(nodes) >= os.cpu_count()
    for node_dir in Path("/sys/devices/system/node").glob("node[0-9]*"):
        for cpu in cpu_list((node_dir / "cpulist").read_text()):
            assert nodes[cpu] == int(node_dir.name[4:])


def jiffies_and_now() -> tuple[int, int]:
    """The first CPU's jiffies and the clock's ns at one read of /proc/timer_list."""
    text = Path("/proc/timer_list").read_text()
    now = int(re.search(r"^now at (\d+) nsecs$", text, re.MULTILINE).group(1))
    return int(re.search(r"^jiffies: (\d+)$", text, re.MULTILINE).group(1)), now


def test_the_manifest_records_the_tick_rate_the_running_kernel_keeps():
    """kernel.hz (read from the kernel's config) against the jiffies the kernel counts over half
    a second of its own clock: within 2 jiffies (the reads' own timing)."""
    if not os.access("/proc/timer_list", os.R_OK):
        pytest.skip("/proc/timer_list is unreadable (needs root): no tick rate to measure")
    hz = new_manifest(backend="tracefs", clock="mono", target={"memcg_id": 1}, gfp_flags={}, enums={})["kernel"]["hz"]
    first_jiffies, first_ns = jiffies_and_now()
    time.sleep(0.5)
    last_jiffies, last_ns = jiffies_and_now()
    assert hz is not None and abs(last_jiffies - first_jiffies - hz * (last_ns - first_ns) / 1e9) <= 2
