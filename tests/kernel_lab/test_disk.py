"""A lab guest with a disk (python -m lab run --disk MIB): ext4 at /var/tmp, the zoo's disk, so
that page cache read there is reclaimable as on a host's disk (tmpfs, there without it, holds
its pages until the files go)."""
from __future__ import annotations

import re

import pytest

from labtools import lab

pytestmark = pytest.mark.lab

MIB = 1 << 20
# A 16 MiB file written and dropped from the cache, read in from a memcg of its own, whose
# memory.stat says what page cache it holds before and after memory.reclaim asks for 16 MiB
# back (the write succeeds only when reclaim got that much: EAGAIN otherwise).
READ_AND_RECLAIM = """
set -e
grep ' /var/tmp ' /proc/mounts
dd if=/dev/zero of=/var/tmp/data bs=1M count=16 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
cg=/sys/fs/cgroup/lab/workloads/reader
mkdir $cg
sh -c "echo \\$\\$ > $cg/cgroup.procs; cat /var/tmp/data > /dev/null"
echo "before $(awk '$1 == "file" {print $2}' $cg/memory.stat)"
echo 16M > $cg/memory.reclaim
echo "after $(awk '$1 == "file" {print $2}' $cg/memory.stat)"
rmdir $cg
"""


def test_a_disk_guest_has_ext4_at_var_tmp_whose_page_cache_reclaim_takes_back(vng):
    result = lab("run", "--kernel", "6.12", "--disk", "128", "--", "sh", "-c", READ_AND_RECLAIM, timeout=10 * 60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^/dev/vda /var/tmp ext4 ", result.stdout, re.M), result.stdout[-2000:]
    before = int(re.search(r"^before (\d+)$", result.stdout, re.M).group(1))
    after = int(re.search(r"^after (\d+)$", result.stdout, re.M).group(1))
    assert before >= 16 * MIB  # the whole file, charged to the memcg that read it in
    assert after <= before - 16 * MIB


def test_a_disk_too_small_for_ext4_is_refused_before_anything_boots(vng):
    result = lab("run", "--kernel", "all", "--disk", "10", "--", "true", timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == "error: --disk 10: give at least 64 MiB"
