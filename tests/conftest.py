"""Shared fixtures: live-kernel tests skip with a reason naming what is missing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from collect.cgroup import CgroupError, memory_hierarchy
from collect.tracefs import TracefsError, tracefs_root


def _live_kernel_missing() -> str | None:
    if os.geteuid() != 0:
        return "live capture needs root"
    try:
        tracefs_root()
    except TracefsError as err:
        return f"live capture needs tracefs: {err}"
    return None


@pytest.fixture
def tracefs() -> Path:
    """The mounted tracefs; skips the test when it or root is missing."""
    missing = _live_kernel_missing()
    if missing:
        pytest.skip(missing)
    return tracefs_root()


CHARGEPLAY = [sys.executable, "-m", "chargeplay.cli"]
# How much longer than here everything takes: the kernel lab's emulated VMs (lab/guest.sh) set it.
SLOWDOWN = float(os.environ.get("CHARGEPLAY_TEST_SLOWDOWN", "1"))


def chargeplay(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would. One that outlives `timeout` fails the test
    with its Python stacks (faulthandler, on SIGABRT): where it hung, not just that it did."""
    env = {**kwargs.pop("env", os.environ), "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen([*CHARGEPLAY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout * SLOWDOWN)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            stdout, stderr = process.communicate()
            pytest.fail(f"chargeplay {' '.join(args)} still running after {timeout * SLOWDOWN:.0f} s; its stacks:\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# A busy process outside the workload, whose events must not reach a trace: it opens and closes
# a file about 20,000 times a second (each a few allocations and frees, which tracefs's instance
# for other tasks' frees sees), a busy neighbour rather than a storm. Flat out (about 830,000
# frees a second) it filled that instance's buffer during one stall of a loaded CI machine:
# losses under storms are counted, and measured by benchmarks/capture_storm.py.
BUSY_NEIGHBOUR = r"""
import os, time
while True:
    for _ in range(200):
        os.close(os.open("/dev/null", os.O_RDONLY))
    time.sleep(0.01)
"""


# A workload that drives its memcg over memory.max and reports what the memcg itself counted: a
# child touches anonymous memory until the memcg's OOM killer stops it (the biggest task in the
# memcg); the parent, in the same memcg (cgroup v2), then copies memory.events and memory.peak
# ("peak BYTES") to argv[1].
OVER_MAX = r"""
import os, sys
child = os.fork()
if child == 0:
    chunks = []
    while True:
        chunks.append(b"x" * (1 << 20))
os.waitpid(child, 0)
memcg = "/sys/fs/cgroup" + open("/proc/self/cgroup").read().split("::")[-1].strip()
with open(sys.argv[1], "w") as out:
    out.write(open(memcg + "/memory.events").read() + "peak " + open(memcg + "/memory.peak").read())
"""


def trace_reclaims(trace: Path) -> dict[str, int]:
    """The reclaim calls ("calls") and pages reclaimed ("pages") of a trace's reclaim_end events."""
    import polars as pl  # here, not for every test: it takes seconds to import in the kernel lab's VMs

    from traces.reader import Trace

    ends = Trace.open(trace).events().filter(pl.col("kind") == "reclaim_end")
    return ends.select(pl.len().alias("calls"), pl.col("val").sum().alias("pages")).collect().row(0, named=True)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether `predicate` became true within `timeout` seconds (stretched by SLOWDOWN)."""
    deadline = time.monotonic() + timeout * SLOWDOWN
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 2 and one line on stderr, `error: ...` naming `words`; no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture
def memcg_controller(tracefs) -> None:
    """Skips unless a memory cgroup controller (v1 or v2) is mounted (root and tracefs come from `tracefs`)."""
    try:
        memory_hierarchy()
    except CgroupError as err:
        pytest.skip(f"validation needs a memory cgroup controller (v1 or v2): {err}")


@pytest.fixture
def ebpf(tracefs) -> Path:
    """Skips unless the eBPF backend can load here (root and tracefs come from `tracefs`)."""
    from collect import ebpf as backend

    try:
        backend.check_available()
    except backend.Unavailable as why:
        pytest.skip(f"eBPF backend unavailable: {why}")
    return tracefs


@pytest.fixture(scope="session")
def vng() -> Path:
    """virtme-ng's command for the kernel lab (tests/kernel_lab); skips, naming what is missing
    (qemu, busybox, virtme-ng), where the lab cannot run."""
    from lab import kernels

    try:
        return kernels.vng()
    except kernels.LabError as why:
        pytest.skip(str(why))
