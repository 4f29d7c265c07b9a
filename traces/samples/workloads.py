"""The workloads behind the bundled sample traces (run by record.sh under a tight memcg).

Each first writes a file of page cache (reclaimable memory the kernel can take back), then
runs a storm of kernel-memory allocations, so that usage reaches the memcg limit and the
kernel reclaims while slab objects are being charged.

    python3 workloads.py files|sockets|forks|oom [--scale N]
"""
from __future__ import annotations

import argparse
import mmap
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Callable

CACHE_MB = 24


def fill_page_cache(directory: str) -> None:
    with open(os.path.join(directory, "cache"), "wb") as out:
        for _ in range(CACHE_MB):
            out.write(os.urandom(1 << 20))


def file_storm(directory: str, count: int) -> None:
    """Create, write 4 KiB into and remove files: dentries, inodes, page cache, journal."""
    block = b"x" * 4096
    for i in range(count):
        path = os.path.join(directory, f"f{i}")
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, block)
        os.close(fd)
        if i % 2:
            os.unlink(path)


def socket_storm(count: int, progress: Callable[[int], None] = lambda made: None) -> None:
    """Socket pairs that each carry a message: sock inodes, skbs, accounted buffers.
    `progress` is told every hundredth pair made (benchmarks/socket_storm_probe.sh watches it)."""
    alive = []
    for made in range(count):
        left, right = socket.socketpair()
        left.send(b"y" * 2048)
        alive.append((left, right))
        if len(alive) > 256:
            for sock in alive.pop(0):
                sock.close()
        if made % 100 == 0:
            progress(made)


def fork_storm(count: int) -> None:
    """Processes that start and exit: task structs, stacks, page tables, pids."""
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def anon_touch(megabytes: int) -> None:
    """Touch private anonymous memory page by page (no swap: reclaim cannot take it back)."""
    memory = mmap.mmap(-1, megabytes << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for offset in range(0, megabytes << 20, mmap.PAGESIZE):
        memory[offset] = 1


def oom_storm(megabytes: int) -> None:
    """A child holds `megabytes` of anon memory while a second child touches as much
    again: past the limit the memcg OOM-kills the holder (the largest), the toucher goes
    on. The OOM kill is decisive: the charges after it need the victim's memory."""
    holder = os.fork()
    if holder == 0:
        anon_touch(megabytes)
        os.read(os.open("/dev/null", os.O_RDONLY), 1) or signal.pause()  # hold it until killed
        os._exit(0)
    time.sleep(1)  # let the holder fill first
    toucher = os.fork()
    if toucher == 0:
        anon_touch(megabytes)
        os._exit(0)
    os.waitpid(toucher, 0)
    os.kill(holder, signal.SIGKILL)  # if the memcg has not
    os.waitpid(holder, 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("storm", choices=("files", "sockets", "forks", "oom"))
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="chargeplay-workload-", dir="/var/tmp")
    try:
        fill_page_cache(directory)
        if args.storm == "files":
            file_storm(directory, 3000 * args.scale)
        elif args.storm == "sockets":
            socket_storm(6000 * args.scale)
        elif args.storm == "forks":
            fork_storm(200 * args.scale)
        else:
            oom_storm(20 * args.scale)
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
