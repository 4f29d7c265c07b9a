"""Sustained capture rate: a kmalloc storm recorded to disk, per backend.

The workload (benchmarks/open_unlink_storm.py) is two processes that create, open and
unlink files in /dev/shm as fast as they can for --seconds: every iteration allocates and
frees names, dentries, inodes and files. The capture's rate is the events
written to the trace over the span they cover (first to last event: the storm, not the
interpreter's start-up before it); drops are the events the buffers refused; the collector's
peak RSS comes from its manifest. Targets (issue: a production collector): at least 3 million
events/s written with none lost, and a peak RSS of at most 150 MiB (tracefs) or 250 MiB (eBPF,
whose RSS counts its mapped ring buffer). It prints figures; it asserts nothing.

    .venv/bin/python benchmarks/capture_storm.py [--seconds S] [--backend ebpf tracefs] [--bpf-output ringbuf perf]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

from traces.reader import Trace

STORM = Path(__file__).with_name("open_unlink_storm.py")
TARGET_RATE = 3_000_000
TARGET_RSS_MIB = {"tracefs": 150, "ebpf": 250}


def chargeplay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chargeplay.cli", *args], capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--backend", nargs="+", default=["ebpf", "tracefs"])
    parser.add_argument("--bpf-output", nargs="+", default=["ringbuf", "perf"], help="outputs to try with the ebpf backend")
    args = parser.parse_args()
    runs = [(backend, output) for backend in args.backend for output in (args.bpf_output if backend == "ebpf" else ["-"])]
    print(f"{'backend':8} {'output':8} {'events':>12} {'storm s':>8} {'events/s':>12} {'lost':>10} {'skipped':>8} {'bytes/event':>12}"
          f" {'collector peak RSS':>19}  {TARGET_RATE:,}/s, 0 lost   RSS")
    for backend, output in runs:
        with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
            trace = Path(scratch) / "t"
            options = ["--bpf-output", output] if backend == "ebpf" else []
            done = chargeplay("collect", "--backend", backend, *options, "-o", str(trace), "--",
                              sys.executable, str(STORM), shm, str(args.seconds))
            if done.returncode != 0:
                print(f"{backend:8} {output:8} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
                continue
            info = json.loads(chargeplay("info", str(trace), "--json").stdout)
            captured = Trace.open(trace)
            span = captured.events().select(pl.col("ts_ns").max() - pl.col("ts_ns").min()).collect().item() / 1e9
            peak_rss = captured.manifest["collector"]["max_rss_bytes"]
        rate = info["events"] / max(span, 1e-9)
        rate_met = "met" if rate >= TARGET_RATE and info["lost_events"] == 0 and info["skipped_calls"] == 0 else "NOT met"
        rss_met = "met" if peak_rss <= TARGET_RSS_MIB[backend] * 2**20 else "NOT met"
        print(f"{backend:8} {output:8} {info['events']:>12,} {span:>8.2f} {rate:>12,.0f} {info['lost_events']:>10,} {info['skipped_calls']:>8,} "
              f"{info['bytes_per_event']:>12} {peak_rss / 2**20:>15.0f} MiB  {rate_met:20} {rss_met} (<= {TARGET_RSS_MIB[backend]} MiB)")


if __name__ == "__main__":
    main()
