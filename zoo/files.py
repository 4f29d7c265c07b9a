"""File metadata: directory trees of empty files, on a disk-backed file system and on tmpfs."""
from __future__ import annotations

import json
import os
import shutil
import traceback
from collections.abc import Callable

from .support import DISK, PAGE, TMPFS, reap, scaled, scratch, stop, workload

DIRECTORIES = 40
FILES = 10_000
# Rounds of replacing every other file (those with long names) by one of a new name: tmpfs is
# quick, so it does more of them in about the same time.
DISK_ROUNDS = 2
TMPFS_ROUNDS = 8
# A name this long does not fit in the dentry's inline name (DNAME_INLINE_LEN, 32 or 40 bytes
# on 64-bit kernels): d_alloc kmallocs it separately (struct external_name), GFP_KERNEL_ACCOUNT.
LONG = "a-file-name-too-long-for-the-dentry-inline-name-"


def _create(path: str, data: bytes = b"") -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)


def _tree(root: str, scale: float, rounds: int, data_every: int = 0) -> dict:
    """DIRECTORIES directories holding FILES files between them, every other name LONG; every
    `data_every`-th file (all short-named) gets one page of data. Then `rounds` times: every
    long-named file is removed and another made under a new long name, and each file is
    looked up again (stat)."""
    directories = scaled(DIRECTORIES, scale)
    files = scaled(FILES, scale)
    block = b"z" * PAGE
    paths = {}
    for d in range(directories):
        os.mkdir(os.path.join(root, f"d{d}"))
    for i in range(files):
        name = f"{LONG}{i}" if i % 2 else f"f{i}"
        paths[i] = os.path.join(root, f"d{i % directories}", name)
        _create(paths[i], block if data_every and i % data_every == 0 else b"")
    replaced = 0
    for round_ in range(1, rounds + 1):
        for i in range(1, files, 2):
            os.unlink(paths[i])
            paths[i] = os.path.join(root, f"d{i % directories}", f"{LONG}{i}-{round_}")
            _create(paths[i])
            replaced += 1
        for path in paths.values():
            os.stat(path)
    return {"directories": directories, "files": files, "replaced": replaced, "long_names": files // 2 + replaced,
            "data_pages": len(range(0, files, data_every)) if data_every else 0}


@workload("files-disk")
def files_disk(scale: float) -> dict:
    """dentries, ext4 inodes, long names: 10,000 empty files in 40 directories on /var/tmp, half of them replaced twice.

    Charged (SLAB_ACCOUNT caches): a dentry per name created (`dentry`), an inode per file
    (`ext4_inode_cache`; another file system's own cache if /var/tmp is not ext4), for the
    names too long for the dentry the name (kmalloc, GFP_KERNEL_ACCOUNT), and while each file
    is open to create it, its `filp`. The directory and inode-table blocks are buffer-cache
    pages of the block device, charged with their buffer heads to the memcg that reads them in
    (none, if they are cached already). A replaced file's inode is freed when it is removed;
    its dentry stays, negative. Reclaim can take dentries and inodes back (reclaimable slab,
    through the per-memcg shrinkers) while no file is open, and the block device's clean
    pages. The files are removed at the end, which frees
    the inodes (the dentries stay, negative, until reclaim or the memcg's removal).
    """
    with scratch(DISK) as root:
        return _tree(root, scale, DISK_ROUNDS)


@workload("files-tmpfs")
def files_tmpfs(scale: float) -> dict:
    """dentries, shmem inodes, shmem pages: 10,000 files in 40 directories on /dev/shm, half of them replaced 8 times.

    Charged: a dentry per name created (`dentry`), an inode per file (`shmem_inode_cache`),
    the long names (kmalloc, GFP_KERNEL_ACCOUNT), the `filp` of each file while it is open to
    create it, and one shmem page in every 16th file (NR_SHMEM, NR_FILE_PAGES; swap-backed, on
    the anon LRU). Nothing of it can be reclaimed here: tmpfs pins the dentries and inodes of
    its files while they exist (they are the file system), and without swap shmem pages stay.
    A replaced file's inode is freed when it is removed; removing the files at the end frees
    the rest.
    """
    with scratch(TMPFS) as root:
        return _tree(root, scale, TMPFS_ROUNDS, data_every=16)


def _pinned(cpus: list[int], work: Callable[[int], dict]) -> list[dict]:
    """`work(cpu)` in one child process per CPU of `cpus`, each pinned to its CPU, all at once;
    what each returned (the children report it through a pipe, a line each)."""
    read, write = os.pipe()
    pids: list[int] = []
    with os.fdopen(read) as lines:
        try:
            for cpu in cpus:
                pid = os.fork()
                if pid == 0:
                    status = 1
                    try:
                        os.sched_setaffinity(0, {cpu})
                        os.write(write, json.dumps(work(cpu)).encode() + b"\n")  # under PIPE_BUF: whole
                        status = 0
                    except Exception:  # noqa: BLE001 - said here, counted by the parent
                        traceback.print_exc()
                    finally:  # never back into the parent's code (a SIGTERM unwinds to here too)
                        os._exit(status)
                pids.append(pid)
            os.close(write)
            write = -1
            made = [json.loads(line) for line in lines]  # until EOF: every child has exited
            failed = reap(pids)
        finally:
            if write != -1:
                os.close(write)
            stop(pids)  # interrupted: the caller's scratch directory goes with what they made
    if failed:
        raise RuntimeError(f"{failed} of {len(cpus)} children failed")
    return made


@workload("files-every-cpu")
def files_every_cpu(scale: float) -> dict:
    """files-disk's tree on every CPU at once, a child pinned to each; then each removes another CPU's and builds again.

    A child process per CPU this process may run on, pinned there (sched_setaffinity), builds
    files-disk's tree (10,000 files in 40 directories, half of them replaced twice) in a
    directory of its own, all at the same time: files-disk's charged objects (`dentry`, the
    file system's inode cache, the long names' kmalloc, `filp`) allocated on every CPU, so
    from the slabs of every CPU's NUMA node. Then a second child per CPU removes the tree of
    the CPU before it (dentries and inodes freed on another CPU than they were allocated on;
    on a NUMA machine to slabs of another node, which go partial there) and builds a tree
    again. Of it, reclaim can take back what it takes of files-disk's (dentries and inodes of
    files not open, on a disk; nothing on tmpfs, which pins them while the files exist, as in
    a lab guest, whose /var/tmp is tmpfs). What is left is removed at the end.
    """
    cpus = sorted(os.sched_getaffinity(0))
    with scratch(DISK) as root:
        def build(name: str) -> dict:
            os.mkdir(os.path.join(root, name))
            return _tree(os.path.join(root, name), scale, DISK_ROUNDS)

        def rebuild(cpu: int) -> dict:
            shutil.rmtree(os.path.join(root, f"first-{cpus[cpus.index(cpu) - 1]}"))
            return build(f"second-{cpu}")

        first = _pinned(cpus, lambda cpu: build(f"first-{cpu}"))
        second = _pinned(cpus, rebuild)
    totals = {key: sum(tree[key] for tree in first + second) for key in ("files", "replaced", "long_names")}
    return {"cpus": len(cpus), "trees": len(first + second), **totals,
            "removed_on_another_cpu": sum(tree["files"] for tree in first) if len(cpus) > 1 else 0}
