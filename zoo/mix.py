"""Several workloads of the zoo at once, each in a child process of its own: in the one memcg
(mix), or each in a memcg of its own below it (siblings)."""
from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from .support import WORKLOADS, stop, workload

MIX = ("files-disk", "pagecache-read", "sockets-tcp", "pipes", "fork-churn", "anon-touch")
SHARE = 0.4  # of the scale each part runs at, so that the whole stays within tens of MiB
SIBLINGS = ("pagecache-read", "files-tmpfs", "sockets-unix")
SIBLING_SHARE = 0.5
SIBLING_PREFIX = "zoo-"  # the siblings' memcgs: zoo-NAME, and zoo-main for the waiting parent
CGROUP_ROOT = "/sys/fs/cgroup"


def _child(name: str, scale: float, memcg: str | None) -> None:
    """Runs in the forked child: into its memcg, the workload, then exit (never back into the
    parent's code)."""
    status = 1
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # blocked across the fork
        if memcg is not None:
            _enter(memcg)
        WORKLOADS[name].run(scale)
        status = 0
    except SystemExit:  # SIGTERM (zoo.__main__): the workload has cleaned up on the way out
        pass
    except BaseException:  # noqa: BLE001 - reported, and the child's status says it failed
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(status)


def _run_parts(parts: dict[str, str | None], scale: float) -> None:
    """Each workload of `parts` (name -> the memcg it runs in, or None: this one) in a child
    process at `scale`, all at once; waits for every child."""
    children: dict[int, str] = {}
    failed = []
    try:
        for name, memcg in parts.items():
            # A SIGTERM now waits until the child is in _child, and the parent has its pid: one
            # caught during Python's own after-fork code would be lost (and the child run on).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            try:
                pid = os.fork()
                if pid == 0:
                    _child(name, scale, memcg)
                children[pid] = name
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        while children:
            pid, status = os.wait()
            if os.waitstatus_to_exitcode(status) != 0:
                failed.append(children[pid])
            del children[pid]
    finally:
        stop(list(children), signal.SIGTERM)  # interrupted: each child removes what it made
    if failed:
        raise RuntimeError(f"parts failed: {', '.join(failed)}")


@workload("mix")
def mix(scale: float) -> dict:
    """files-disk, pagecache-read, sockets-tcp, pipes, fork-churn and anon-touch at once, each at 0.4 of the scale.

    Six child processes in the one memcg, each charging what its workload's own description
    says, interleaved on the CPUs: reclaimable dentries, inodes and page cache next to
    unreclaimable pipe pages, anon memory, socket and task structures, so that under a limit
    reclaim has to find the reclaimable part among the rest while other tasks keep charging.
    The parent waits for every child; each cleans up after itself.
    """
    _run_parts(dict.fromkeys(MIX), scale * SHARE)
    return {"parts": len(MIX), "each_scale": scale * SHARE}


def own_memcg() -> tuple[str, int]:
    """This process's memory cgroup directory and its cgroup version (v1 where the memory
    controller is on a v1 hierarchy, as on hybrid hosts)."""
    with open("/proc/self/cgroup") as lines:
        entries = [line.rstrip("\n").split(":", 2) for line in lines]
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):
            return os.path.join(CGROUP_ROOT, "memory", path.lstrip("/")), 1
    unified = next(path for hierarchy, _, path in entries if hierarchy == "0")
    return os.path.join(CGROUP_ROOT, unified.lstrip("/")), 2


def _enter(memcg: str) -> None:
    with open(os.path.join(memcg, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))


def _write(path: str, text: str) -> None:
    with open(path, "w") as control:
        control.write(text)


@contextmanager
def sibling_memcgs(names: list[str]) -> Iterator[dict[str, str]]:
    """A memcg below this process's own for each name (no limits of their own), and this
    process moved into the one named "main" until the end; then all of it undone.

    cgroup v2 gives memcgs to the children of a cgroup only while it holds no process, so the
    process waits in a memcg of its own; the memory controller is enabled below and disabled
    again (then a cgroup may hold processes: the process goes back). v1 has no such rule;
    the same steps keep it one path."""
    parent, version = own_memcg()
    made = {name: os.path.join(parent, f"{SIBLING_PREFIX}{name}") for name in names}
    for path in made.values():
        os.mkdir(path)
    try:
        _enter(made["main"])
        if version == 2:
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory")
        try:
            yield made
        finally:
            if version == 2:
                _write(os.path.join(parent, "cgroup.subtree_control"), "-memory")
            _enter(parent)
    finally:
        for path in made.values():
            os.rmdir(path)  # their processes have exited: the parts were waited for


@workload("siblings")
def siblings(scale: float) -> dict:
    """pagecache-read, files-tmpfs and sockets-unix at once, each in a sibling memcg of its own below this one, at 0.5 of the scale.

    Three child processes, each in a memcg made for it below the workload's memcg (zoo-NAME,
    no limit of its own; the parent waits in zoo-main). Page counters are hierarchical: each
    sibling's charges (page cache; dentries, inodes and shmem pages of tmpfs files; socket
    buffers, each as its own workload's description says) count against the shared parent's
    limit, where reclaim walks all of them and takes back only the page cache (and clean
    dentries), wherever the charge that hit the limit came from. Each sibling caches charges
    in the per-CPU stocks under its own memcg: one memcg per CPU before 6.16, so siblings on
    one CPU drain each other's stock, several since. The memcgs are removed at the end.
    """
    with sibling_memcgs([*SIBLINGS, "main"]) as memcgs:
        _run_parts({name: memcgs[name] for name in SIBLINGS}, scale * SIBLING_SHARE)
    return {"parts": len(SIBLINGS), "each_scale": scale * SIBLING_SHARE}
