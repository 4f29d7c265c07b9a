#!/usr/bin/env bash
# Re-record the bundled sample traces on this machine (root, tracefs): each workload of
# workloads.py runs under a 28 MiB memcg limit, tight enough that the kernel reclaims.
#   traces/samples/record.sh [chargeplay]     (default: .venv/bin/chargeplay)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
chargeplay=${1:-$here/../../.venv/bin/chargeplay}
for storm in files sockets forks; do
  out=$here/${storm%s}-storm  # files -> file-storm
  rm -rf "$out"
  "$chargeplay" collect -o "$out" --memory-max 28M -- python3 "$here/workloads.py" "$storm"
  chmod -R a+rX "$out"  # bundled samples are public; captured traces stay owner-only
  "$chargeplay" info "$out"
done
