"""What every workload of the zoo uses: the registry, scratch directories, holding, fd room.

Standard library only: the zoo runs under the system python3 of a bare machine or a lab guest.
"""
from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

PREFIX = "chargeplay-zoo-"
# The `python3 -m zoo` process (its forked children inherit the value): scratch directories are
# named PREFIX + RUN + "-...", so that what a killed run left can be told from a running one's.
RUN = os.getpid()
SCRATCH_NAME = re.compile(rf"^{PREFIX}(\d+)-")
DISK = "/var/tmp"  # a disk-backed file system (ext4 on the development machine)
TMPFS = "/dev/shm"
PAGE = os.sysconf("SC_PAGE_SIZE")
# How long a workload that holds memory (queued data, pipe pages, anon) keeps it before it lets
# go: long enough for a memory limit to bite while everything is held, whatever the scale.
HOLD_SECONDS = 1.0


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable[[float], dict]  # scale -> what it made, e.g. {"files": 12000}

    @property
    def summary(self) -> str:
        """The docstring's first line: what it charges."""
        return (self.run.__doc__ or "").strip().splitlines()[0]


WORKLOADS: dict[str, Workload] = {}


def workload(name: str) -> Callable:
    """Registers a function `f(scale) -> dict` under `name`."""
    def register(function: Callable[[float], dict]) -> Callable[[float], dict]:
        if name in WORKLOADS:
            raise ValueError(f"workload {name} registered twice")
        WORKLOADS[name] = Workload(name, function)
        return function
    return register


def scaled(count: int, scale: float) -> int:
    """`count` times the scale, at least one."""
    return max(1, round(count * scale))


@contextlib.contextmanager
def scratch(where: str = DISK) -> Iterator[str]:
    """A fresh directory under `where`, removed with everything in it at the end."""
    directory = tempfile.mkdtemp(prefix=f"{PREFIX}{RUN}-", dir=where)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> list[str]:
    """Removes the scratch directories no running zoo will remove: this run's own that are
    left (a child killed by SIGKILL, as the OOM killer kills, cannot clean up) and those of
    runs that are gone. The run's last act, so that leftovers do not pile up; which it removed."""
    removed = []
    for where in (DISK, TMPFS):
        try:
            names = os.listdir(where)
        except OSError:
            continue
        for name in names:
            match = SCRATCH_NAME.match(name)
            if match and (int(match.group(1)) == RUN or not _alive(int(match.group(1)))):
                shutil.rmtree(os.path.join(where, name), ignore_errors=True)
                removed.append(os.path.join(where, name))
    return removed


def hold(seconds: float = HOLD_SECONDS) -> None:
    """Keep what the workload made for a while (nothing is allocated meanwhile)."""
    time.sleep(seconds)


def fd_room(needed: int) -> None:
    """Raises the soft RLIMIT_NOFILE so that `needed` more descriptors fit (up to the hard
    limit); one line of error if they cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 64 + len(os.listdir("/proc/self/fd"))
    if want <= soft:
        return
    if hard != resource.RLIM_INFINITY and want > hard:
        raise SystemExit(f"error: needs {want} file descriptors, the hard limit is {hard} (lower --scale)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def reap(pids: list[int]) -> int:
    """Waits for every child in `pids`, removing each from the list as it is reaped; how many
    did not exit with status 0."""
    bad = 0
    while pids:
        _, status = os.waitpid(pids[0], 0)
        pids.pop(0)
        bad += os.waitstatus_to_exitcode(status) != 0
    return bad


def stop(pids: list[int], signum: int = signal.SIGKILL) -> None:
    """Ends the children still in `pids` and reaps them: for the way out of a workload that was
    interrupted. SIGKILL for children that hold nothing to clean up, SIGTERM for those that do."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    pids.clear()
