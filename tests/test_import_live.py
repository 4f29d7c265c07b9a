"""Importing what perf and trace-cmd recorded of a run that chargeplay's own collector recorded
too, on the running kernel: the same events, counted by kind, slab cache, gfp, context and call
site, and the imported trace replays."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from collect.importer import TRACEPOINTS
from collect.tracefs import Instance
from conftest import chargeplay
from traces.reader import Trace

SAMPLES = Path(__file__).resolve().parent.parent / "traces" / "samples"  # workloads.py: the sample traces' workloads
GETSID = 124  # x86-64 syscall number: user_return's item for getsid, which the workload calls to mark its storm
# Creates and removes 300 files (the file-storm sample's workload) between two getsid calls. With
# a tracefs instance as its third argument, it first has the instance trace it (and its children).
MARKED_FILE_STORM = r"""
import os, sys
directory, samples, instance = sys.argv[1], sys.argv[2], sys.argv[3:]
for name, value in (("set_event_pid", str(os.getpid())), ("tracing_on", "1")) if instance else ():
    with open(os.path.join(instance[0], name), "w") as setting:
        setting.write(value)
sys.path.insert(0, samples)
from workloads import file_storm
os.getsid(0)
file_storm(directory, 300)
os.getsid(0)
"""
TIMEOUT = 60  # each capture, import and replay


def marked_storm(tmp_path: Path, *instance: str) -> list[str]:
    (tmp_path / "files").mkdir()
    return [sys.executable, "-c", MARKED_FILE_STORM, str(tmp_path / "files"), str(SAMPLES), *instance]


@pytest.fixture
def perf(memcg_controller, tmp_path) -> None:
    """Skips unless perf can record tracepoints here."""
    if shutil.which("perf") is None:
        pytest.skip("needs perf (Debian package linux-perf)")
    probe = subprocess.run(["perf", "record", "-q", "-e", "kmem:kmalloc", "-o", str(tmp_path / "probe.data"), "--", "true"],
                           capture_output=True, text=True, timeout=TIMEOUT)
    if probe.returncode != 0:
        pytest.skip(f"perf cannot record tracepoints here: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")


@pytest.fixture
def trace_cmd_instance(memcg_controller, tracefs) -> Iterator[Instance]:
    """A tracefs instance set up as `trace-cmd record -e ... -F` sets the top one up (every
    tracepoint the collector records, the traced task's children followed, overwrite off), for
    `trace-cmd extract` to read; removed however the test ends. Not trace-cmd record itself: it
    also switches function tracing off and on (options/function-trace, ftrace_enabled,
    set_ftrace_filter), which a kernel that locks function tracing down refuses, as this test's
    VM does."""
    if shutil.which("trace-cmd") is None:
        pytest.skip("needs trace-cmd (Debian package trace-cmd)")
    instance = Instance(tracefs, f"import-test-{os.getpid()}")
    try:
        for setting, value in (("trace_clock", "mono"), ("buffer_size_kb", "16384"), ("options/overwrite", "0"),
                               ("options/event-fork", "1")):
            instance.write(setting, value)
        for system, event in TRACEPOINTS:
            if instance.has_event(system, event):
                instance.enable(system, event)
        yield instance
    finally:
        instance.remove()


def collect_while(tmp_path: Path, command: list[str]) -> Trace:
    """chargeplay's own capture of `command` (every slab allocation, as perf and trace-cmd see them),
    run in a new child memcg of this process's memcg, which the collector removes."""
    collected = chargeplay("collect", "-o", str(tmp_path / "collected"), "--all-allocations", "--", *command, timeout=TIMEOUT)
    assert collected.returncode == 0, collected.stderr
    trace = Trace.open(tmp_path / "collected")
    assert trace.manifest["stop_reason"] == "workload exited with status 0", collected.stderr  # perf or the storm failed
    assert trace.manifest["lost"]["total"] == 0
    return trace


def import_(tmp_path: Path, tool: str, data: Path) -> Trace:
    result = chargeplay("import", "--from", tool, str(data), "-o", str(tmp_path / "imported"), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return Trace.open(tmp_path / "imported")


def storm(trace: Trace) -> pl.DataFrame:
    """The workload task's events from its first getsid's return to its second's, with their
    call sites' symbols as function+offset (the collector's %pS adds /size, perf's does not)."""
    events = trace.events().collect().with_row_index("row")
    marks = events.filter((pl.col("kind") == "user_return") & (pl.col("item") == GETSID))
    assert marks.height == 2 and marks["pid"].n_unique() == 1, marks
    symbols = trace.side_table("symbols").collect().select(
        pl.col("id").alias("call_site"), pl.col("symbol").str.replace(r"/0x[0-9a-f]+( \[.+\])?$", ""))
    return (events.filter(pl.col("row").is_between(marks["row"][0], marks["row"][1]) & (pl.col("pid") == marks["pid"][0]))
            .join(symbols, on="call_site", how="left"))


def counts(events: pl.DataFrame, *by: str) -> dict[tuple, int]:
    return {row[:-1]: row[-1] for row in events.group_by(*by).len().iter_rows()}


def assert_the_same_events(collected: Trace, imported: Trace, *contexts: str) -> None:
    """Exact: from one getsid to the other, the workload's one task is the only one whose events
    either trace keeps (the comparison drops the others': frees of its objects by RCU callbacks
    and the next task on its CPU, which only the collector follows). Both record its every
    event in every context while it runs (perf and the instance by task, the collector by
    task and its memcg's stat events by memcg, which the import chooses as the one most stat
    events name), and both decode them with collect.decode."""
    assert imported.manifest["lost"]["total"] == 0
    assert imported.manifest["target"]["memcg_id"] == collected.manifest["target"]["memcg_id"]
    ours, theirs = storm(collected), storm(imported)
    assert counts(ours, "kind")[("kmem_cache_alloc",)] > 300  # the storm is in the window: a dentry and an inode a file at least
    for by in (("kind",), ("kind", "cache"), ("kind", "gfp", "accounted"), ("kind", "symbol"), ("kind", "item", "val"), *contexts):
        assert counts(theirs, *by) == counts(ours, *by), by
    assert theirs["bytes_alloc"].sum() == ours["bytes_alloc"].sum()


def assert_replays(tmp_path: Path) -> None:
    replayed = chargeplay("replay", str(tmp_path / "imported"), "-o", str(tmp_path / "replayed"), "--memory-max", "64M",
                          timeout=TIMEOUT)
    assert replayed.returncode == 0, replayed.stderr


def test_perf_record_imports_as_the_collector_recorded_the_same_run(perf, tmp_path):
    data = tmp_path / "perf.data"
    events = [option for system, event in TRACEPOINTS for option in ("-e", f"{system}:{event}")]
    # perf follows the workload from its exec (per task, children inherited), inside the collector's memcg
    collected = collect_while(tmp_path, ["perf", "record", "-q", "-m", "8M", *events, "-o", str(data), "--", *marked_storm(tmp_path)])
    assert_the_same_events(collected, import_(tmp_path, "perf-script", data))  # perf script shows no context
    assert_replays(tmp_path)


def test_trace_cmd_imports_as_the_collector_recorded_the_same_run(trace_cmd_instance, tmp_path):
    collected = collect_while(tmp_path, marked_storm(tmp_path, str(trace_cmd_instance.path)))
    trace_cmd_instance.write("tracing_on", "0")
    assert sum(trace_cmd_instance.lost_per_cpu().values()) == 0  # overwrite off: drops are not in trace.dat, only here
    data = tmp_path / "trace.dat"
    extracted = subprocess.run(["trace-cmd", "extract", "-k", "-B", trace_cmd_instance.path.name, "-o", str(data)],
                               capture_output=True, text=True, timeout=TIMEOUT)
    assert extracted.returncode == 0, extracted.stderr
    assert_the_same_events(collected, import_(tmp_path, "trace-cmd", data), ("kind", "ctx"))  # report -l shows the context
    assert_replays(tmp_path)
