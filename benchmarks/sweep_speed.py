"""Sweep speed: `chargeplay sweep` of --limits memory.high values x all built-in policies over a
large trace, as a command, with its wall time, replays per second and peak memory.

Makes (once, cached beside replay_speed.py's) a trace of --events events from a bundled sample
with `chargeplay synth`, then sweeps memory.high from 4 MiB up in 2 MiB steps with memory.max
64 MiB. It prints figures; it asserts nothing.

    .venv/bin/python benchmarks/sweep_speed.py [--events N] [--limits N] [--like SAMPLE] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import child_peak
from replay import policy
from traces.reader import Trace
from traces.samples import sample_path
from traces.synth import synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--limits", type=int, default=20)
    parser.add_argument("--like", default="file-storm")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "chargeplay-bench")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
