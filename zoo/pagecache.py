"""Page cache: a file read again and again, and a log written as a stream of segment files."""
from __future__ import annotations

import os

from .support import DISK, scaled, scratch, workload

MIB = 1 << 20
READ_FILE_MB = 24
READ_PASSES = 250
SEGMENT_MB = 8
SEGMENTS = 96  # written in all: 768 MiB
KEPT = 3  # segments kept; the oldest beyond them is removed


@workload("pagecache-read")
def pagecache_read(scale: float) -> dict:
    """page cache read in from disk: a 24 MiB file on /var/tmp, dropped once, then read 250 times.

    The file is written and synced, then its clean pages are dropped (fadvise DONTNEED, which
    uncharges them), so the first pass brings it back through readahead: page-cache folios
    (NR_FILE_PAGES, on the file LRU; ext4 adds large folios, several pages each) charged to the
    memcg as they are added to the mapping, with their xarray nodes (`radix_tree_node`,
    accounted). The write before charged the same folios once already, with a buffer head per
    block (`buffer_head`, accounted, freed with the pages). The later passes hit the cache and
    charge nothing, unless a limit below the file made reclaim evict pages, which the next pass
    reads in (and charges) again: refaults. Clean and unmapped, all of it is reclaimable at any
    time. Removing the file at the end uncharges what is left.
    """
    size_mb = scaled(READ_FILE_MB, scale)
    chunk = b"r" * MIB
    buffer = bytearray(MIB)
    with scratch(DISK) as root:
        fd = os.open(os.path.join(root, "data"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            for _ in range(size_mb):
                os.write(fd, chunk)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            for _ in range(READ_PASSES):
                offset = 0
                while read := os.preadv(fd, [buffer], offset):
                    offset += read
        finally:
            os.close(fd)
    return {"file_mib": size_mb, "passes": READ_PASSES}


@workload("pagecache-write")
def pagecache_write(scale: float) -> dict:
    """page cache written as a stream: 768 MiB of log in 8 MiB segments on /var/tmp, 3 kept.

    Each write charges the page-cache folios it adds (NR_FILE_PAGES, on the file LRU; ext4 adds
    large folios) with their xarray nodes and a buffer head per block (`buffer_head`,
    accounted); they are dirty (NR_FILE_DIRTY) until writeback (NR_WRITEBACK) cleans them. Each
    segment is fdatasync'ed when full, so at most one segment is dirty at a time, and the oldest
    segment beyond three is removed, which uncharges its pages: the cache stays near 32 MiB
    while 768 MiB pass through. Reclaim can take clean pages back at once, dirty ones only
    after writeback (cgroup v1 reclaim waits for it). Nothing is read back; what is left goes
    when the last segments are removed at the end.
    """
    segments = scaled(SEGMENTS, scale)
    chunk = b"w" * MIB
    removed = 0
    with scratch(DISK) as root:
        for segment in range(segments):
            fd = os.open(os.path.join(root, f"log{segment}"), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            try:
                for _ in range(SEGMENT_MB):
                    os.write(fd, chunk)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if segment >= KEPT:
                os.unlink(os.path.join(root, f"log{segment - KEPT}"))
                removed += 1
    return {"written_mib": segments * SEGMENT_MB, "segment_mib": SEGMENT_MB, "removed": removed}
