"""Sweep speed: `chargeplay sweep` of --limits memory.high values x all built-in policies over a
large trace, as a command, with its wall time, replays per second and peak memory; and with
--fleet N, a sweep of N traces (the bundled samples, copied round) in this process and on a
local Dask cluster of two worker processes, with each worker's peak memory.

Makes (once, cached beside replay_speed.py's) a trace of --events events from a bundled sample
with `chargeplay synth`, then sweeps memory.high from 4 MiB up in 2 MiB steps with memory.max
64 MiB. It prints figures; it asserts nothing.

    .venv/bin/python benchmarks/sweep_speed.py [--events N] [--limits N] [--like SAMPLE] [--cache DIR] [--fleet N]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import child_peak
from replay import policy
from traces.reader import Trace
from traces.samples import SAMPLES_DIR, sample_path
from traces.synth import synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--limits", type=int, default=20)
    parser.add_argument("--like", default="file-storm")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "chargeplay-bench")
    parser.add_argument("--fleet", type=int, default=0, help="also sweep this many traces, here and on a local Dask cluster")
    args = parser.parse_args()
    if args.fleet:
        fleet(args.fleet, args.cache, args.limits)
        return
    path = args.cache / f"{args.like}-{args.events}"
    if not (path / "manifest.json").exists():
        print(f"synthesizing {args.events:,} events like {args.like} into {path} (once)")
        synthesize(Trace.open(sample_path(args.like)), path, args.events)
    events = Trace.open(path).facts.events
    policies = len(policy.BUILTIN)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "sweep"
        highs = f"4M:{4 + 2 * (args.limits - 1)}M:2M"
        run = child_peak.run([sys.executable, "-m", "chargeplay.cli", "sweep", str(path), "-o", str(out),
                              "--memory-high", highs, "--memory-max", "64M"])
        if run.returncode != 0:
            sys.exit(f"sweep failed: {run.stderr.strip()}")
        recommended = json.loads((out / "sweep.json").read_text())["recommended"]
    replays = args.limits * policies
    print(f"sweep of {events:,} events ({path}), memory.high {highs}, memory.max 64M: {args.limits} limits x {policies} policies")
    print(f"wall {run.seconds:.1f} s, {replays / run.seconds:.1f} replays/s, {events * replays / run.seconds / 1e6:.1f} M "
          f"policy-events/s, peak RSS {run.peak_bytes / (1 << 20):.0f} MiB")
    print("recommended: " + ", ".join(f"{name} {'-' if limit is None else f'{limit >> 20} MiB'}" for name, limit in recommended.items()))


def _worker_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fleet(count: int, cache: Path, limits: int) -> None:
    """N traces swept here, then on a local cluster this process starts (so that it can ask each
    worker its peak), with the limits of a single sweep."""
    from distributed import Client, LocalCluster

    root = cache / f"fleet-{count}"
    samples = sorted(path.name for path in SAMPLES_DIR.iterdir() if (path / "manifest.json").exists())
    if not root.exists():
        for n in range(count):
            name = samples[n % len(samples)]
            shutil.copytree(sample_path(name), root / f"{n:03d}-{name}")
    highs = f"4M:{4 + 2 * (limits - 1)}M:2M"
    sweep = [sys.executable, "-m", "chargeplay.cli", "sweep", str(root), "--memory-high", highs]
    with tempfile.TemporaryDirectory() as scratch:
        local = child_peak.run([*sweep, "-o", str(Path(scratch) / "local")])
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
            dask = child_peak.run([*sweep, "-o", str(Path(scratch) / "dask"), "--executor", f"dask={cluster.scheduler_address}"])
            workers = client.run(_worker_peak)
        local_doc, dask_doc = (json.loads((Path(scratch) / run / "sweep.json").read_text()) for run in ("local", "dask"))
        same = all(local_doc[key] == dask_doc[key] for key in ("recommended", "fleet"))
    print(f"fleet of {count} traces ({root}), memory.high {highs}, each trace's own memory.max, {len(policy.BUILTIN)} policies")
    for label, run in (("local", local), ("dask, 2 workers", dask)):
        print(f"{label:16} wall {run.seconds:.1f} s, {count / run.seconds:.2f} traces/s, command peak RSS {run.peak_bytes >> 20} MiB, "
              f"exit {run.returncode}")
    print("worker peak RSS: " + ", ".join(f"{peak >> 20} MiB" for peak in workers.values()) +
          f"; the cluster's recommendations {'equal' if same else 'DIFFER from'} the local run's")


if __name__ == "__main__":
    main()
