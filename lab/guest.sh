#!/bin/sh
# Runs inside a lab VM, as root, before the command: the root file system is this machine's,
# read-only, except the --rwdir paths; /tmp is an in-memory overlay; there is no network.
# usage: guest.sh RUN_DIR CACHE_DIR VENV COMMAND...
set -eu
run=$1 cache=$2 venv=$3
shift 3
mkdir -p "$run/home" "$cache/numba" /tmp/lab
# Everything a test writes goes where the guest may write: HOME, numba's cache (kept between
# runs: the guest's CPU model is the same for every lab kernel), pytest's temp and no
# .pytest_cache or __pycache__ in the read-only checkout.
export HOME="$run/home" TMPDIR=/tmp/lab NUMBA_CACHE_DIR="$cache/numba" PYTHONDONTWRITEBYTECODE=1
export PYTEST_ADDOPTS="-p no:cacheprovider --basetemp=/tmp/lab/pytest ${PYTEST_ADDOPTS:-}"
export PATH="$venv/bin:$PATH" CHARGEPLAY_LAB_KERNEL="$(uname -r)"

# A delegated cgroup v2 subtree, as systemd's Delegate=yes gives one on production hosts: the
# command runs in lab/runner with the memory controller enabled down to lab; the guest's root
# cgroup is left without processes of ours. (cgroup v2 lets a cgroup enable a controller for
# its children only while it holds no processes: the root is the exception.)
cg=/sys/fs/cgroup
echo +memory > "$cg/cgroup.subtree_control"
mkdir -p "$cg/lab/runner"
echo $$ > "$cg/lab/runner/cgroup.procs"
echo +memory > "$cg/lab/cgroup.subtree_control"
echo "lab: $(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s; running in cgroup $(cut -d: -f3 /proc/self/cgroup)"
exec "$@"
