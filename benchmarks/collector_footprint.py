"""The collector's footprint when nothing storms: how long from the command's start to the
workload's, its peak RSS on a workload that does nothing, and its RSS over an idle capture.

1. start-up: `chargeplay collect -o T -- date +%s.%N` --runs times per backend; the workload
   prints the wall clock as it starts, against the wall clock just before the command began
   (median and worst of the runs);
2. peak RSS of those captures (the manifest's collector.max_rss_bytes);
3. an idle capture (`-- sleep S`, tracefs): the collector's RSS every 10 s, with its anonymous
   part (the rest is pages of files mapped, libraries mostly: shared, clean, dropped under
   pressure), and the growth of each per hour after the first minute (by then the first segment
   and sample table have been written).

Targets (issue: a production collector): start-up at most 1 s for tracefs; peak RSS at most
150 MiB for tracefs and 250 MiB for eBPF; RSS flat over an idle capture. It prints figures; it
asserts nothing. Run it as root from the project directory:

    .venv/bin/python benchmarks/collector_footprint.py [--runs N] [--idle-seconds S]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
TARGETS = {"start-up s": {"tracefs": 1.0}, "peak RSS MiB": {"tracefs": 150, "ebpf": 250}}
CHARGEPLAY = [sys.executable, "-m", "chargeplay.cli"]
WARM_UP_S = 60


def start_up(backend: str, scratch: Path) -> tuple[float, int]:
    """Seconds from the command's start to its workload's, and the collector's peak RSS."""
    trace = scratch / f"t-{time.monotonic_ns()}"
    began = time.time()
    done = subprocess.run([*CHARGEPLAY, "collect", "--backend", backend, "-o", str(trace), "--", "date", "+%s.%N"],
                          capture_output=True, text=True, check=True)
    manifest = json.loads((trace / "manifest.json").read_text())
    return float(done.stdout.split()[0]) - began, manifest["collector"]["max_rss_bytes"]


def idle_rss(seconds: float, scratch: Path) -> list[tuple[float, int, int]]:
    """The collector's RSS and its anonymous part every 10 s of an idle capture (tracefs)."""
    collector = subprocess.Popen([*CHARGEPLAY, "collect", "-o", str(scratch / "idle"), "--", "sleep", str(seconds)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    began, samples = time.monotonic(), []
    while collector.poll() is None:
        time.sleep(10)
        try:
            status = Path(f"/proc/{collector.pid}/status").read_text()
        except FileNotFoundError:
            break
        size = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith(("VmRSS:", "RssAnon:"))}
        if "VmRSS" not in size:  # it has exited (a zombie has no memory)
            break
        samples.append((time.monotonic() - began, size["VmRSS"], size["RssAnon"]))
    collector.wait()
    return samples


def verdict(name: str, backend: str, value: float) -> str:
    target = TARGETS[name].get(backend)
    return "" if target is None else f"target {target}: {'met' if value <= target else 'NOT met'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=120)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for backend in ("tracefs", "ebpf"):
            runs = [start_up(backend, Path(scratch)) for _ in range(args.runs)]
            seconds, peaks = [s for s, _ in runs], [p / MiB for _, p in runs]
            print(f"{backend:8} start-up median {statistics.median(seconds):.2f} s, worst {max(seconds):.2f} s  "
                  f"{verdict('start-up s', backend, statistics.median(seconds))}")
            print(f"{backend:8} peak RSS median {statistics.median(peaks):.0f} MiB, worst {max(peaks):.0f} MiB  "
                  f"{verdict('peak RSS MiB', backend, statistics.median(peaks))}")
        samples = idle_rss(args.idle_seconds, Path(scratch))
    print("idle capture (tracefs), RSS (anonymous): "
          + ", ".join(f"{t:.0f} s {rss / MiB:.1f} MiB ({anon / MiB:.1f})" for t, rss, anon in samples))
    settled = [sample for sample in samples if sample[0] >= WARM_UP_S]  # after the first segments and samples are written
    if len(settled) >= 2:
        (t0, rss0, anon0), (t1, rss1, anon1) = settled[0], settled[-1]
        per_hour = 3600 / (t1 - t0) / MiB
        print(f"growth after the first {WARM_UP_S} s: RSS {(rss1 - rss0) * per_hour:.1f} MiB per hour, anonymous "
              f"{(anon1 - anon0) * per_hour:.1f} (flat: about 0)")


if __name__ == "__main__":
    main()
