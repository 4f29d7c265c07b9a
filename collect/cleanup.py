"""Leaving nothing behind: a guardian process, and removal of what dead collectors left.

The collector removes its tracefs instances, kprobe events and child memcg itself. If it is
killed (SIGKILL, OOM), its guardian, a small process watching a pipe from the collector,
does it instead. If both are killed, the next `chargeplay collect` finds the leftovers
by name (chargeplay-PID..., kprobe group chargeplay_PID) and removes those whose PID is no
longer a capture (collector_alive).

Run as `python -m collect.cleanup INSTANCE_DIR... [--memcg DIR] [--kprobes GROUP]` it is the guardian.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from collect import cgroup
from collect.cgroup import CgroupError, Memcg
from collect.memcg_probes import owned_groups, remove_group
from collect.tracefs import remove_instance

OWNED_NAME = re.compile(r"^chargeplay-(\d+)(-memcg|-others|-irq|-observer)?$")  # -irq: -others in earlier versions; -observer: collect.observer


def collector_alive(pid: int) -> bool:
    """Whether `pid` is a capture still running: a chargeplay command that captures, or any
    process holding its own chargeplay-PID tracefs instance or BPF objects open (a capture run
    from another program). The arguments are checked one by one: pids come back soon (pid_max is
    often 32768), and a guardian, which is no collector, names the chargeplay-PID instances it
    watches in its own arguments. A live capture taken for a dead one's would lose its workload
    (a stale memcg's tasks are killed)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    is_chargeplay = any(arg.endswith(b"/chargeplay") or arg in (b"chargeplay", b"chargeplay.cli") for arg in argv)
    return (is_chargeplay and any(arg in (b"collect", b"validate") for arg in argv)) or _holds_a_capture_open(pid)


def _holds_a_capture_open(pid: int) -> bool:
    """Whether the process has files of its own chargeplay-PID instances or BPF objects open."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("anon_inode:bpf"):
            return True
        instance = target.partition("/instances/")[2].split("/")[0]
        if (match := OWNED_NAME.match(instance)) and int(match.group(1)) == pid:
            return True
    return False


def _stale(path: Path) -> bool:
    match = OWNED_NAME.match(path.name)
    return match is not None and not collector_alive(int(match.group(1)))


def remove_stale(tracefs: Path) -> list[str]:
    """Remove instances, kprobe events and child memcgs of collectors that are gone; say what went."""
    removed = []
    for path in sorted((tracefs / "instances").iterdir()):
        if _stale(path):
            remove_instance(path)
            removed.append(f"tracefs instance {path}")
    for group, pid in sorted(owned_groups(tracefs).items()):  # after the instances that enabled them
        if not collector_alive(pid):
            remove_group(tracefs, group)
            removed.append(f"kprobe events {group}/* in {tracefs / 'kprobe_events'}")
    try:
        version, _ = cgroup.memory_hierarchy()
        parents = cgroup.child_parents()
    except CgroupError:
        return removed
    for parent in parents:
        for path in sorted(p for p in parent.iterdir() if p.is_dir()):
            if _stale(path):
                Memcg(path, version).remove()
                removed.append(f"memcg {path} (its remaining tasks were killed)")
    return removed


def wait_or_kill(process: subprocess.Popen, timeout: float) -> None:
    """Give a process `timeout` seconds to exit, then SIGKILL it."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_guardian(instances: list[Path], memcg: Path | None, kprobe_group: str | None = None) -> subprocess.Popen:
    """A process that cleans up after this one when its stdin pipe closes without warning.
    Its own session keeps a terminal's Ctrl-C from killing it with the collector."""
    args = [sys.executable, "-m", "collect.cleanup", *map(str, instances)]
    if memcg is not None:
        args += ["--memcg", str(memcg)]
    if kprobe_group is not None:
        args += ["--kprobes", kprobe_group]
    return subprocess.Popen(args, stdin=subprocess.PIPE, start_new_session=True)


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _guard(argv: list[str]) -> None:
    memcg_value, kprobe_group = _option(argv, "--memcg"), _option(argv, "--kprobes")
    memcg = Path(memcg_value) if memcg_value else None
    instances = [Path(a) for a in argv if a not in {"--memcg", "--kprobes", memcg_value, kprobe_group}]
    sys.stdin.buffer.read()  # returns when the collector closes the pipe or dies
    for path in instances:
        remove_instance(path)
    if kprobe_group is not None and instances:  # after the instances that enabled its events
        remove_group(instances[0].parents[1], kprobe_group)  # TRACEFS/instances/NAME
    if memcg is not None and memcg.exists():
        version, _ = cgroup.memory_hierarchy()
        Memcg(memcg, version).remove()


if __name__ == "__main__":
    _guard(sys.argv[1:])
