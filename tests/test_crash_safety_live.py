"""Crash safety, live: a collector killed at any point, or stopped by a full disk, leaves a
readable trace, and whatever it set up in the kernel is removed; so is the tracefs instance of
validate's observer, however validate ends.

Skips with a reason naming what is missing (root, tracefs). Run them while no other
capture starts on the machine: any `chargeplay collect` removes a dead collector's leftovers
first, and the kill tests check that the next one they start does.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from collect import cgroup
from collect.memcg_probes import GROUP_PREFIX
from conftest import CHARGEPLAY, SLOWDOWN, chargeplay, wait_until
from test_ebpf_live import our_bpf_programs
from test_cli_errors import assert_user_error
from traces.reader import Trace

# Seconds after `chargeplay collect` starts: through start-up (imports), setting up
# (tracefs instances, memcg, guardian), the workload's start and the tracing, with a
# segment closed every 0.3 s.
KILL_POINTS = [round(0.2 * i, 1) for i in range(1, 25)]


def owned_by(pid: int, tracefs: Path) -> list[Path]:
    """The tracefs instances, kprobe groups (events/chargeplay_PID, on kernels where kprobes stand
    in for the memcg tracepoints) and child memcgs of collector `pid` (or validate's observer)
    that exist now."""
    names = {f"chargeplay-{pid}", f"chargeplay-{pid}-memcg", f"chargeplay-{pid}-others", f"chargeplay-{pid}-observer"}
    paths = [p for p in (tracefs / "instances").iterdir() if p.name in names]
    paths += [p for p in [tracefs / "events" / f"{GROUP_PREFIX}{pid}"] if p.is_dir()]
    return paths + [p for parent in cgroup.child_parents() for p in parent.iterdir() if p.name in names]


def removal_said(path: Path, tracefs: Path) -> str:
    """What the next capture says when it removes `path` (an owned_by path)."""
    if path.parent.name == "instances":
        return f"removed stale tracefs instance {path}"
    if path.parent == tracefs / "events":
        return f"removed stale kprobe events {path.name}/* in {tracefs / 'kprobe_events'}"
    return f"removed stale memcg {path}"


def guardians_of(pid: int) -> list[int]:
    """Pids of collector `pid`'s children that are its guardian (python -m collect.cleanup),
    or may yet become it (forked, not yet exec'd: a copy of the collector)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            args = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and (b"collect.cleanup" in args or b"chargeplay.cli" in args):
            found.append(int(entry.name))
    return found


def long_capture(output: Path, workdir: Path, backend: str = "tracefs") -> subprocess.Popen:
    return subprocess.Popen(
        [*CHARGEPLAY, "collect", "-o", str(output), "--backend", backend, "--segment-seconds", "0.3", "--",
         "sh", "-c", f"while :; do touch {workdir}/x; rm {workdir}/x; done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def assert_readable(trace: Path) -> None:
    """Every file under its final name is whole; the trace reads as interrupted."""
    if not (trace / "manifest.json").exists():
        assert_user_error(chargeplay("info", str(trace)), "manifest")
        return
    manifest = json.loads((trace / "manifest.json").read_text())
    rows = {p.name: pq.read_table(p).num_rows for p in sorted((trace / "events").glob("part-*.parquet"))}
    listed = [segment["file"].removeprefix("events/") for segment in manifest["segments"]]
    assert set(listed) <= set(rows)  # a segment renamed just before the kill may not be listed yet
    assert sum(rows[name] for name in listed) == manifest["events"]
    info = chargeplay("info", str(trace), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["status"] == "interrupted"


def kill_and_check(tracefs: Path, tmp_path: Path, seconds: float, backend: str) -> None:
    collector = long_capture(tmp_path / "t", tmp_path, backend)
    time.sleep(seconds * SLOWDOWN)  # the same phase of the capture where everything runs slower
    collector.send_signal(signal.SIGSTOP)  # no new children while we look for its guardian
    for pid in guardians_of(collector.pid):  # both die, as in an OOM kill of the whole service
        os.kill(pid, signal.SIGKILL)
    collector.kill()
    collector.wait(timeout=30 * SLOWDOWN)
    collector.stderr.close()  # not read: the orphaned workload holds the pipe open
    if (tmp_path / "t").exists():
        assert_readable(tmp_path / "t")
    left = owned_by(collector.pid, tracefs)
    # The next capture removes what the dead collector left, its workload included.
    result = chargeplay("collect", "-o", str(tmp_path / "next"), "--", "true")
    assert result.returncode == 0, result.stderr
    for path in left:
        assert removal_said(path, tracefs) in result.stderr
    assert owned_by(collector.pid, tracefs) == []


@pytest.mark.parametrize("seconds", KILL_POINTS)
def test_sigkill_of_collector_and_guardian_at_any_point(tracefs, tmp_path, seconds):
    kill_and_check(tracefs, tmp_path, seconds, "tracefs")


@pytest.mark.parametrize("seconds", [1.0, 2.0, 3.0, 4.0])
def test_sigkill_of_an_ebpf_collector_leaves_no_bpf_program(ebpf, tmp_path, seconds):
    before = our_bpf_programs()
    kill_and_check(ebpf, tmp_path, seconds, "ebpf")
    assert wait_until(lambda: our_bpf_programs() == before, timeout=15)  # its file descriptors held them


@pytest.fixture
def small_disk(tracefs, tmp_path):
    """A 4 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_ends_the_capture_with_a_clear_error_and_a_readable_trace(tracefs, small_disk, tmp_path):
    collector = long_capture(small_disk / "t", tmp_path)
    _, stderr = collector.communicate(timeout=120 * SLOWDOWN)
    last = stderr.strip().splitlines()[-1]
    assert collector.returncode == 2 and "Traceback" not in stderr
    assert last.startswith("error: ") and "no space left" in last and "choose another -o" in last
    assert_readable(small_disk / "t")
    assert Trace.open(small_disk / "t").manifest["events"] > 0
    assert [p.name for p in (small_disk / "t" / "events").iterdir() if p.name.startswith(".")] == []  # no half-written segment
    assert wait_until(lambda: owned_by(collector.pid, tracefs) == [], timeout=15)


def validate_capturing(tmp_path: Path, tracefs: Path, seconds: int) -> subprocess.Popen:
    """`chargeplay validate` of a `sleep SECONDS` workload, once its observer runs and its capture
    runs the workload (its SIGTERM handler goes in before the workload starts)."""
    with (tmp_path / "validate.log").open("w") as log:
        validate = subprocess.Popen([*CHARGEPLAY, "validate", "-o", str(tmp_path / "v"), "--memory-max", "64M", "--",
                                     "sleep", str(seconds)], stdout=log, stderr=log)
    observer = tracefs / "instances" / f"chargeplay-{validate.pid}-observer"
    assert wait_until(lambda: observer.is_dir() and any(b"sleep" in args for args in children_args(validate.pid)), timeout=60)
    time.sleep(0.5 * SLOWDOWN)
    return validate


def children_args(pid: int) -> list[bytes]:
    """The command lines of the children of `pid`'s main thread."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    args = []
    for child in children:
        try:
            args.append(Path(f"/proc/{child}/cmdline").read_bytes())
        except OSError:
            pass  # it exited meanwhile
    return args


@pytest.mark.parametrize("how", ["exit", "SIGTERM", "SIGKILL"])
def test_validate_leaves_no_observer_instance(memcg_controller, tracefs, tmp_path, how):
    """Whether validate ends by itself, is asked to stop (SIGTERM ends the capture early, as in
    collect, and validate goes on) or is killed (its guardians remove what it set up), its
    observer's tracefs instance goes with the capture's instances and memcg."""
    validate = validate_capturing(tmp_path, tracefs, 3 if how == "exit" else 60)
    if how != "exit":
        validate.send_signal(getattr(signal, how))
    validate.wait(timeout=120 * SLOWDOWN)
    if how != "SIGKILL":
        assert validate.returncode == 0, (tmp_path / "validate.log").read_text()
        assert json.loads((tmp_path / "v" / "fidelity.json").read_text())["measured"]
    assert wait_until(lambda: owned_by(validate.pid, tracefs) == [], timeout=15)


def test_the_next_validate_removes_what_a_killed_validate_and_its_guardians_left(memcg_controller, tracefs, tmp_path):
    validate = validate_capturing(tmp_path, tracefs, 60)
    validate.send_signal(signal.SIGSTOP)  # no new children while we look for its guardians
    guardians = guardians_of(validate.pid)
    assert len(guardians) == 2  # the observer's and the capture's
    for pid in guardians:
        os.kill(pid, signal.SIGKILL)
    validate.kill()
    validate.wait(timeout=30 * SLOWDOWN)
    left = owned_by(validate.pid, tracefs)
    assert tracefs / "instances" / f"chargeplay-{validate.pid}-observer" in left
    result = chargeplay("validate", "-o", str(tmp_path / "next"), "--memory-max", "28M", "--", "true")
    assert result.returncode == 0, result.stderr
    for path in left:
        assert removal_said(path, tracefs) in result.stderr
    assert owned_by(validate.pid, tracefs) == []
