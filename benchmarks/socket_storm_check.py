"""The closed-loop issue's own case against a lab kernel, like for like: the bundled socket storm
(traces/samples/workloads.py sockets) under memory.max 8M and memory.high 4M.

In a cgroup v2 kernel (the lab's), as root from the project directory:

1. set up a zram swap device of --swap SIZE (without swap the storm's interpreter alone does not
   fit under the 4M memory.high and the limited run never ends: README, "Closed loop"); it is
   removed at the end, also on SIGTERM;
2. capture the storm under a roomy memory.max and no memory.high (`chargeplay collect`);
3. run it alone without limits (wall time T0, the best of --runs) and under 8M/4M (--runs):
   wall time T1, memory.events high, usage every 5 ms (benchmarks/throttle_check.py's sampler),
   and the anon pages refaulted from swap (workingset_refault_anon);
4. replay the capture in closed loop under the model of the running kernel with the same
   limits and swap, with `--spread`: the time it adds to the trace's run, high events, and
   usage percentiles on its own timeline (each bucket's last usage held until the next bucket).

Stretch: T1 / T0 - 1 observed, the added time over T0 predicted (as in throttle_check).
Usage percentiles are time-weighted: the median, 75th and 95th percentile of memory.current
over the run. It prints both sides, writes them with --json FILE, and asserts nothing.

    python -m lab run --kernel 6.12 --keep DIR -- .venv/bin/python benchmarks/socket_storm_check.py --swap 64M \\
        --json {run}/out/storm.json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

from benchmarks.throttle_check import add_stretch, capture, predict as predict_throttling, run_alone, usage_percentiles
from collect.cgroup import memory_hierarchy
from traces.reader import Trace

MAX, HIGH = 8 << 20, 4 << 20
STORM = [sys.executable, "traces/samples/workloads.py", "sockets"]
ZRAM = Path("/sys/block/zram0")


class ZramSwap:
    """A zram swap device of `size` (e.g. "64M") while the block runs; swapped off and reset after."""

    def __init__(self, size: str) -> None:
        self.size = size

    def __enter__(self) -> "ZramSwap":
        subprocess.run(["modprobe", "zram", "num_devices=1"], check=True)
        (ZRAM / "disksize").write_text(self.size)
        subprocess.run(["mkswap", "/dev/zram0"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["swapon", "/dev/zram0"], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["swapoff", "/dev/zram0"], check=False)
        (ZRAM / "reset").write_text("1")


def predict(trace: Trace, result: Path) -> dict:
    """throttle_check's prediction under 8M/4M with swap, at every stock phase, and the usage
    percentiles on the replay's own timeline."""
    predicted = predict_throttling(trace, HIGH, result, "task", spread=True, memory_max=MAX, swap=True)
    series = pl.read_parquet(result / "task" / "timeseries.parquet").filter(pl.col("policy") == predicted["policy"]).sort("t_ns")
    held = series["t_ns"].diff().shift(-1).fill_null(series["bucket_ns"][-1])  # each bucket's usage until the next's
    return {**predicted, "usage_mib": usage_percentiles(series["usage_bytes"].to_list(), held.to_list())}


def describe(side: str, figures: dict) -> str:
    usage = " / ".join(f"{mib:.2f}" for mib in figures["usage_mib"])
    return (f"{side:9} stretch {figures['stretch']:+7.1%}, {figures['high_events']:6,} high events, usage {usage} MiB "
            "(median / p75 / p95)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swap", required=True, help="a zram swap device of this size (e.g. 64M) for the whole check")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the trace and the replay result under this directory")
    args = parser.parse_args()
    if memory_hierarchy()[0] != 2:
        print("socket_storm_check needs cgroup v2, where memory.high lives: run it in the kernel lab", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the swap device goes too
    with tempfile.TemporaryDirectory(prefix="chargeplay-storm-") as scratch, ZramSwap(args.swap):
        work = args.keep or Path(scratch)
        capture(STORM, work / "trace")
        alone = min((run_alone(STORM, None) for _ in range(args.runs)), key=lambda r: r["seconds"])
        limited = [run_alone(STORM, HIGH, MAX) for _ in range(args.runs)]
        predicted = predict(Trace.open(work / "trace"), work / "result")
    for r in limited:
        r["stretch"] = r["seconds"] / alone["seconds"] - 1
    add_stretch(predicted, alone["seconds"])
    out = {"kernel": os.uname().release, "swap": args.swap, "alone_seconds": alone["seconds"], "limited": limited,
           "predicted": predicted}
    print(f"{out['kernel']}, swap {args.swap}, alone {alone['seconds']:.2f} s; model {predicted['model']}")
    for n, r in enumerate(limited):
        # what the model cannot see: anon pages reclaimed to swap and touched again, charged anew
        print(describe(f"kernel {n + 1}", r) + f"; {r['stat'].get('workingset_refault_anon', 0):,} anon pages refaulted")
    print(describe("predicted", predicted) + f" (stock phases: stretch {predicted['stretch_range'][0]:+.1%} to "
          f"{predicted['stretch_range'][1]:+.1%}, {predicted['high_events_range'][0]:,} to {predicted['high_events_range'][1]:,} high events)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
