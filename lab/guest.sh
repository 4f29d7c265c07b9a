#!/bin/sh
# Runs inside a lab VM, as root, before the command: the root file system is this machine's,
# read-only, except the --rwdir paths; /tmp is an in-memory overlay; there is no network.
# usage: guest.sh RUN_DIR CACHE_DIR VENV STDLIB [DISK]; runs the command in RUN_DIR/command
# (shell-quoted); DISK, the image lab/vm.py attached as /dev/vda, is mounted at /var/tmp.
set -eu
run=$1 cache=$2 venv=$3 stdlib=$4 disk=${5:-}
# vng mounts what it shares over 9p without caching: every Python process would read its
# packages from the host again (a minute for numba alone under TCG). The venv and the standard
# library, shared on their own (lab/vm.py), are mounted again with the page cache on; they are
# read-only here, and what the host changes in them during one boot is not the guest's to see.
for tree in "$venv" "$stdlib"; do
  tag=$(awk -v tree="$tree" '$2 == tree && $3 == "9p" {print $1}' /proc/mounts)
  umount "$tree"
  mount -t 9p -o ro,trans=virtio,version=9p2000.L,access=any,msize=524288,cache=loose "$tag" "$tree"
done
# lab run --disk: the image, ext4, at /var/tmp (the zoo's disk) in place of tmpfs, so that what
# the workloads keep there (page cache, dentries, inodes) is reclaimable as on a host's disk.
if [ -n "$disk" ]; then
  modprobe virtio_blk && modprobe ext4
  for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.5; done
  mount -t ext4 /dev/vda /var/tmp
fi
mkdir -p "$run/home" "$cache/numba" /tmp/lab
# Everything a test writes goes where the guest may write: HOME, numba's cache (kept between
# runs; NUMBA_CPU_NAME: the generic code lab/__main__.py compiled into it before booting),
# pytest's temp and no .pytest_cache or __pycache__ in the read-only checkout.
export HOME="$run/home" TMPDIR=/tmp/lab NUMBA_CACHE_DIR="$cache/numba" NUMBA_CPU_NAME=generic PYTHONDONTWRITEBYTECODE=1
export PYTEST_ADDOPTS="-p no:cacheprovider --basetemp=/tmp/lab/pytest ${PYTEST_ADDOPTS:-}"
export PATH="$venv/bin:$PATH" CHARGEPLAY_LAB_KERNEL="$(uname -r)"
# polars's compat runtime, which make lab-packages puts beside the venv (Makefile: LAB_POLARS).
export PYTHONPATH="$venv/polars-compat" POLARS_FORCE_PKG=compat
# Emulated (TCG) the guest runs 10-40x slower than this machine: the tests' timeouts stretch.
export CHARGEPLAY_TEST_SLOWDOWN=20

# A delegated cgroup v2 subtree, as systemd's Delegate=yes gives one on production hosts: the
# command runs in lab/runner, and the workloads' memcgs go under lab/workloads
# (CHARGEPLAY_CGROUP_PARENT), which holds no processes. cgroup v2 lets a cgroup enable a
# controller for its children only while it holds no processes (the root is the exception),
# so lab/runner, which holds the test runner, could not be their parent.
cg=/sys/fs/cgroup
echo +memory > "$cg/cgroup.subtree_control"
mkdir -p "$cg/lab/runner" "$cg/lab/workloads"
echo $$ > "$cg/lab/runner/cgroup.procs"
echo +memory > "$cg/lab/cgroup.subtree_control"
echo +memory > "$cg/lab/workloads/cgroup.subtree_control"
export CHARGEPLAY_CGROUP_PARENT=/lab/workloads
echo "lab: $(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s; running in cgroup $(cut -d: -f3 /proc/self/cgroup)"
eval "set -- $(cat "$run/command")"
exec "$@"
