#!/usr/bin/env bash
# Re-record the bundled sample traces (root, tracefs).
#   traces/samples/record.sh [chargeplay]   on this machine: each workload of workloads.py under a
#                                           28 MiB memcg limit, tight enough that the kernel reclaims
#                                           (default: .venv/bin/chargeplay)
#   traces/samples/record.sh --lab          in the kernel lab (make lab-packages): the file storm on
#                                           Debian's 6.1 and 6.12 with cgroup v2, over a 20 MiB
#                                           memory.high under a 28 MiB memory.max
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
checkout=$here/../..

publish() {  # bundled samples are public; captured traces stay owner-only
  chmod -R a+rX "$1"
  "$checkout/.venv/bin/chargeplay" info "$1"
}

if [ "${1:-}" = --lab ]; then
  for series in 6.1 6.12; do
    out=$here/file-storm-$series
    rm -rf "$out"
    (cd "$checkout" && .venv/bin/python -m lab run --kernel "$series" --keep "$here" -- \
      chargeplay collect -o "{run}/out/file-storm-$series" --memory-max 28M --memory-high 20M -- \
      python3 "$here/workloads.py" files)
    publish "$out"
  done
  exit 0
fi

chargeplay=${1:-$checkout/.venv/bin/chargeplay}
for storm in files sockets forks; do
  out=$here/${storm%s}-storm  # files -> file-storm
  rm -rf "$out"
  "$chargeplay" collect -o "$out" --memory-max 28M -- python3 "$here/workloads.py" "$storm"
  publish "$out"
done
