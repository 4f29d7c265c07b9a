"""Small kernel objects: epoll registrations, inotify watches, event/timer/signal fds, xattrs."""
from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import struct

from .support import DISK, TMPFS, close_all, fd_room, hold, scaled, scratch, workload

EPOLLS = 100
EPOLL_FDS = 500  # registered in every epoll instance
WATCHED = 3000
ANON_FDS = 2000  # of each kind: eventfd, timerfd, signalfd
XATTR_FILES = 2000  # on each file system
SMALL_VALUE = 48  # fits in an ext4 inode's own xattr space (256-byte inodes)
BIG_VALUE = 1024  # does not: an xattr block of its own (values differ, so none is shared)

IN_NONBLOCK = os.O_NONBLOCK
IN_ALL_EVENTS = 0x00000FFF
INOTIFY_EVENT = struct.Struct("iIII")  # struct inotify_event without its name
TFD_NONBLOCK = os.O_NONBLOCK
CLOCK_MONOTONIC = 1
SFD_NONBLOCK = os.O_NONBLOCK


def _libc() -> ctypes.CDLL:
    """libc's functions, as the interpreter itself links them (ctypes.util.find_library would
    run ldconfig in a child process, inside the memcg)."""
    return ctypes.CDLL(None, use_errno=True)


def _checked(result: int, what: str) -> int:
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")
    return result


@workload("epoll")
def epoll(scale: float) -> dict:
    """100 epoll instances with the same 500 eventfds registered in each: epitems and wait-queue entries.

    Each registration (EPOLL_CTL_ADD) charges an `epitem` (`eventpoll_epi`, SLAB_ACCOUNT) and,
    for each wait queue the file's poll adds it to, an `eppoll_entry` (`eventpoll_pwq`,
    SLAB_ACCOUNT), and a file's first registration an `epitems_head` (`ep_head`, SLAB_ACCOUNT);
    each instance is a file (`filp`, with a dentry) and a `struct eventpoll` (kzalloc,
    GFP_KERNEL: not charged), each eventfd a file with its context. Half the eventfds are
    signalled, so every instance's ready list holds them (the list links the epitems, no new
    memory). Nothing is reclaimable: held for a second, then all closed, which unregisters
    everything.
    """
    instances = scaled(EPOLLS, scale)
    fd_room(instances + EPOLL_FDS)
    eventfds: list[int] = []
    polls: list[select.epoll] = []
    ready = 0
    try:
        eventfds += [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(EPOLL_FDS)]
        for fd in eventfds[::2]:
            os.eventfd_write(fd, 1)
        for _ in range(instances):
            poll = select.epoll()
            polls.append(poll)
            for fd in eventfds:
                poll.register(fd, select.EPOLLIN)
        for poll in polls:
            ready += len(poll.poll(0, EPOLL_FDS))
        hold()
    finally:
        for poll in polls:
            poll.close()
        close_all(eventfds)
    return {"instances": instances, "registered_each": EPOLL_FDS, "ready": ready}


@workload("inotify")
def inotify(scale: float) -> dict:
    """inotify watches on 3,000 files in /var/tmp, and the events they queue: marks, events, pinned inodes.

    The group is charged when inotify_init makes it (kmalloc, GFP_KERNEL_ACCOUNT). Each watch
    charges an `inotify_inode_mark` (SLAB_ACCOUNT) and pins the file's inode, which reclaim then
    cannot take back while it is watched (its dentry it can). Then each file is opened, written
    one byte and closed, which queues events (IN_OPEN, IN_MODIFY, IN_CLOSE_WRITE, ...): each a
    kmalloc'ed event, GFP_KERNEL_ACCOUNT, charged to the memcg of the task that made the group
    (set_active_memcg), up to 16,384 queued (then one overflow event). The files' dentries and
    ext4 inodes are charged as in files-disk, and each one-byte write dirties a page-cache page
    (NR_FILE_PAGES, reclaimable once written back). Held for a second, then the events are read
    (freed) and the instance closed (marks freed after an SRCU grace period).
    """
    files = scaled(WATCHED, scale)
    libc = _libc()
    with scratch(DISK) as root:
        fd = _checked(libc.inotify_init1(IN_NONBLOCK), "inotify_init1")
        try:
            paths = [os.path.join(root, f"w{i}") for i in range(files)]
            for path in paths:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
                _checked(libc.inotify_add_watch(fd, os.fsencode(path), IN_ALL_EVENTS), "inotify_add_watch")
            for path in paths:
                with open(path, "ab") as file:
                    file.write(b"i")
            hold()
            events = 0
            while True:
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                offset = 0
                while offset < len(data):
                    _, _, _, name_len = INOTIFY_EVENT.unpack_from(data, offset)
                    offset += INOTIFY_EVENT.size + name_len
                    events += 1
        finally:
            os.close(fd)
    return {"watches": files, "events_read": events}


@workload("event-fds")
def event_fds(scale: float) -> dict:
    """2,000 each of eventfd, timerfd (armed) and signalfd: a file and a dentry each, contexts not charged.

    Each is a file on the one shared anon inode: a `filp` and a pseudo dentry of its own
    (`dentry`), both SLAB_ACCOUNT, and no inode. Its context (`eventfd_ctx`, `timerfd_ctx`,
    `signalfd_ctx`) is kmalloc'ed GFP_KERNEL, which no memcg is charged for. A timerfd's hrtimer
    lives in its context; arming it (10 minutes, so none fires) allocates nothing. Nothing is
    reclaimable: held for a second, then closed.
    """
    count = scaled(ANON_FDS, scale)
    fd_room(3 * count)
    libc = _libc()
    fds: list[int] = []
    mask = ctypes.create_string_buffer(128)  # sigset_t (glibc: 1024 bits) with SIGUSR1 set
    mask[(signal.SIGUSR1 - 1) // 8] = 1 << ((signal.SIGUSR1 - 1) % 8)
    spec = (ctypes.c_long * 4)(0, 0, 600, 0)  # struct itimerspec: no interval, 600 s
    try:
        for _ in range(count):
            fds.append(os.eventfd(0, os.EFD_NONBLOCK))
            timer = _checked(libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), "timerfd_create")
            fds.append(timer)
            _checked(libc.timerfd_settime(timer, 0, spec, None), "timerfd_settime")
            fds.append(_checked(libc.signalfd(-1, mask, SFD_NONBLOCK), "signalfd"))
        hold()
    finally:
        close_all(fds)
    return {"eventfds": count, "timerfds": count, "signalfds": count}


@workload("xattrs")
def xattrs(scale: float) -> dict:
    """user xattrs on 2,000 files in /var/tmp (ext4) and 2,000 in /dev/shm: in-inode, xattr blocks, simple_xattr.

    On tmpfs each value is a `simple_xattr` (kvmalloc, GFP_KERNEL_ACCOUNT) kept until the file
    goes, unreclaimable like the tmpfs inode itself (tmpfs has user xattrs since Linux 6.6;
    before, only the ext4 half runs). On ext4 a 48-byte value fits in the inode's own extra
    space: nothing is charged beyond the file's dentry and inode (SLAB_ACCOUNT). Half the files
    also get a 1 KiB value, different on each, which needs an xattr block of its own: a new
    block (`ext4_allocation_context`, not charged), indexed in the mbcache (`mb_cache_entry`,
    not charged), held in a buffer-cache page of the block device that is charged only to the
    memcg that adds the page (often none: a page of that block may still be cached); it is
    reclaimable once written back and released by the journal. The kernel's copy of each value
    on the way in is a temporary kvmalloc, freed before the call returns. All of it goes when
    the files are removed at the end.
    """
    files = scaled(XATTR_FILES, scale)
    made = {}
    with scratch(DISK) as disk, scratch(TMPFS) as shm:
        for kind, root in (("disk", disk), ("tmpfs", shm)):
            made[kind] = 0
            for i in range(files):
                path = os.path.join(root, f"x{i}")
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
                try:
                    os.setxattr(path, "user.zoo.small", b"%-*d" % (SMALL_VALUE, i))
                except OSError as error:
                    if error.errno == errno.EOPNOTSUPP and i == 0:
                        break  # no user xattrs on this file system (tmpfs before 6.6)
                    raise
                made[kind] += 1
                if i % 2:
                    os.setxattr(path, "user.zoo.big", ((b"%d-" % i) * BIG_VALUE)[:BIG_VALUE])
                    made[kind] += 1
        hold()
    return {"files_each": files, "disk_xattrs": made["disk"], "tmpfs_xattrs": made["tmpfs"]}
