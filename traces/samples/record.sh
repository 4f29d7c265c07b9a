#!/usr/bin/env bash
# Re-record the bundled sample traces (root, tracefs).
#   traces/samples/record.sh [chargeplay]   on this machine: each workload of workloads.py under a
#                                           28 MiB memcg limit, tight enough that the kernel reclaims
#                                           (default: .venv/bin/chargeplay)
#   traces/samples/record.sh --lab          in the kernel lab (make lab-packages): the file storm on
#                                           Debian's 6.1 and 6.12 with cgroup v2, over a 20 MiB
#                                           memory.high under a 28 MiB memory.max; THP past a 24 MiB
#                                           memory.high on 6.12 (thp-6.12); and slab work on both CPUs
#                                           of a 6.12 guest of two NUMA nodes (files-numa-6.12)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/../.." && pwd)
workload=traces/samples/workloads.py  # run from the checkout: the manifests name no path of this machine

publish() {  # bundled samples are public; captured traces stay owner-only
  chmod -R a+rX "$1"
  "$checkout/.venv/bin/chargeplay" info "$1"
}

if [ "${1:-}" = --lab ]; then
  rm -rf "$here"/file-storm-6.1 "$here"/file-storm-6.12
  # both kernels side by side; inside, the series (6.1, 6.12) names the sample
  (cd "$checkout" && .venv/bin/python -m lab run --kernel all --keep "$here" -- sh -c \
    'chargeplay collect -o "$0/out/file-storm-$(uname -r | cut -d. -f1,2)" --memory-max 28M --memory-high 20M -- python3 "$1" files' \
    '{run}' "$workload")
  for series in 6.1 6.12; do
    publish "$here/file-storm-$series"
  done
  # THP under memory.high (the thread's last case): 32 MiB of MADV_HUGEPAGE memory written past
  # a 24 MiB memory.high, on 6.12 (THP defrag=madvise: the faults' gfp is GFP_TRANSHUGE)
  rm -rf "$here"/thp-6.12
  (cd "$checkout" && .venv/bin/python -m lab run --kernel 6.12 --keep "$here" -- sh -c \
    'chargeplay collect -o "$0/out/thp-6.12" --memory-max 64M --memory-high 24M -- python3 -m zoo thp' '{run}')
  publish "$here/thp-6.12"
  # SLAB's node-local charges and their NUMA fallback (issue 17): a guest of two NUMA nodes, a
  # CPU each, and files-every-cpu's trees built on both CPUs at once, each CPU then removing the
  # other's (objects freed on the other node's CPU), past the 20 MiB memory.high on 6.12
  rm -rf "$here"/files-numa-6.12
  (cd "$checkout" && .venv/bin/python -m lab run --kernel 6.12 --numa 2 --keep "$here" -- sh -c \
    'chargeplay collect -o "$0/out/files-numa-6.12" --memory-max 28M --memory-high 20M -- python3 -m zoo files-every-cpu --scale 0.5' '{run}')
  publish "$here/files-numa-6.12"
  exit 0
fi

chargeplay=$(realpath "${1:-$checkout/.venv/bin/chargeplay}")
cd "$checkout"
for storm in files sockets forks; do
  out=$here/${storm%s}-storm  # files -> file-storm
  rm -rf "$out"
  "$chargeplay" collect -o "$out" --memory-max 28M -- python3 "$workload" "$storm"
  publish "$out"
done
