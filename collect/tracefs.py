"""tracefs: finding (and if need be mounting) it, and private trace instances."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from collect.rmdir import rmdir_patiently
from traces.errors import UserError

TRACEFS_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


class TracefsError(UserError):
    """tracefs is missing or refused an operation."""


def tracefs_root() -> Path:
    """The tracefs mount point, mounting it at /sys/kernel/tracing when the kernel has it but nobody mounted it."""
    for root in TRACEFS_MOUNTS:
        if (root / "instances").is_dir():
            return root
    if "tracefs" not in Path("/proc/filesystems").read_text():
        raise TracefsError("this kernel has no tracefs (CONFIG_TRACING); use a kernel with tracing enabled")
    mount = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(TRACEFS_MOUNTS[0])], capture_output=True, text=True
    )
    if mount.returncode != 0 or not (TRACEFS_MOUNTS[0] / "instances").is_dir():
        reason = (mount.stderr.strip().splitlines() or ["mount failed"])[0]
        raise TracefsError(f"cannot mount tracefs at {TRACEFS_MOUNTS[0]} ({reason}); mount it as root")
    return TRACEFS_MOUNTS[0]


def write_setting(path: Path, value: str, append: bool = False) -> None:
    """tracefs lists grow by writing without O_TRUNC; O_APPEND (Python's "a") is refused."""
    fd = os.open(path, os.O_WRONLY | (0 if append else os.O_TRUNC))
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class Instance:
    """A private tracefs instance (instances/NAME): its own buffers, events, filters and pids,
    so chargeplay never touches the global trace buffer or another tool's settings."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.path = root / "instances" / name
        try:
            self.path.mkdir()
        except FileExistsError:
            raise TracefsError(f"tracefs instance {self.path} exists already") from None
        self.write("tracing_on", "0")  # new instances start on; nothing is recorded until asked

    def write(self, relative: str, value: str, append: bool = False) -> None:
        """Write a setting; with `append`, add to a list (set_event_pid) instead of replacing it."""
        try:
            write_setting(self.path / relative, value, append)
        except OSError as err:
            raise TracefsError(f"writing {value!r} to {self.path / relative}: {err.strerror}") from None

    def has_event(self, system: str, event: str) -> bool:
        return (self.path / "events" / system / event / "enable").exists()

    def enable(self, system: str, event: str, event_filter: str | None = None) -> None:
        if event_filter:
            self.write(f"events/{system}/{event}/filter", event_filter)
        self.write(f"events/{system}/{event}/enable", "1")

    def cpu_count(self) -> int:
        return len(list((self.path / "per_cpu").glob("cpu[0-9]*")))

    def lost_per_cpu(self) -> dict[int, int]:
        """Events each CPU's buffer lost: overwritten (overrun), lost mid-write (commit_overrun),
        dropped while full with overwrite off (dropped_events)."""
        return {cpu: stats.get("overrun", 0) + stats.get("commit_overrun", 0) + stats.get("dropped_events", 0)
                for cpu, stats in self.stats().items()}

    def stats(self) -> dict[int, dict[str, int]]:
        """Per-CPU ring-buffer counters (lost_per_cpu adds up the lost ones)."""
        result = {}
        for cpu_dir in sorted((self.path / "per_cpu").glob("cpu[0-9]*")):
            fields = {}
            for line in (cpu_dir / "stats").read_text().splitlines():
                key, _, value = line.partition(":")
                if value.strip().split(" ")[0].isdigit():
                    fields[key.strip().replace(" ", "_")] = int(value.split()[0])
            result[int(cpu_dir.name[3:])] = fields
        return result

    def remove(self) -> None:
        """Stop tracing and remove the instance; its readers must be closed first."""
        remove_instance(self.path)


def remove_instance(path: Path, timeout: float = 5.0) -> None:
    """Stop and remove a tracefs instance; waits while a dying reader still holds it open."""
    for name, value in (("tracing_on", "0"), ("events/enable", "0"), ("set_event_pid", "")):
        try:
            (path / name).write_text(value)
        except OSError:
            pass  # removal below frees everything anyway
    try:
        rmdir_patiently(path, timeout)
    except OSError as err:
        raise TracefsError(f"cannot remove {path}: {err.strerror}; remove it with rmdir") from None
