"""Several workloads of the zoo at once, each in a child process of its own."""
from __future__ import annotations

import os
import signal
import sys
import traceback

from .support import WORKLOADS, stop, workload

MIX = ("files-disk", "pagecache-read", "sockets-tcp", "pipes", "fork-churn", "anon-touch")
SHARE = 0.4  # of the scale each part runs at, so that the whole stays within tens of MiB


def _child(name: str, scale: float) -> None:
    """Runs in the forked child: the workload, then exit (never back into the parent's code)."""
    status = 1
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # blocked across the fork
        WORKLOADS[name].run(scale)
        status = 0
    except SystemExit:  # SIGTERM (zoo.__main__): the workload has cleaned up on the way out
        pass
    except BaseException:  # noqa: BLE001 - reported, and the child's status says it failed
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(status)


@workload("mix")
def mix(scale: float) -> dict:
    """files-disk, pagecache-read, sockets-tcp, pipes, fork-churn and anon-touch at once, each at 0.4 of the scale.

    Six child processes in the one memcg, each charging what its workload's own description
    says, interleaved on the CPUs: reclaimable dentries, inodes and page cache next to
    unreclaimable pipe pages, anon memory, socket and task structures, so that under a limit
    reclaim has to find the reclaimable part among the rest while other tasks keep charging.
    The parent waits for every child; each cleans up after itself.
    """
    children: dict[int, str] = {}
    failed = []
    try:
        for name in MIX:
            # A SIGTERM now waits until the child is in _child, and the parent has its pid: one
            # caught during Python's own after-fork code would be lost (and the child run on).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            try:
                pid = os.fork()
                if pid == 0:
                    _child(name, scale * SHARE)
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
        raise RuntimeError(f"parts of the mix failed: {', '.join(failed)}")
    return {"parts": len(MIX), "each_scale": scale * SHARE}
