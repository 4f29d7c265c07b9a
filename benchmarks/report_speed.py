"""Report speed and memory for a large replay result.

Makes (once, cached) a trace of --events events like a bundled sample and its replay under
all built-in policies, then times `chargeplay report` on it in a child process and reads
the child's peak memory. Targets: 60 s and 1.5 GiB for a 50-million-event result. It prints
figures; it asserts nothing.

    .venv/bin/python benchmarks/report_speed.py [--events N] [--like SAMPLE] [--cache DIR]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import child_peak

from replay import policy
from replay.result_format import read_summary
from replay.run import ENGINES, limits_for, replay
from traces.checks import TraceError
from traces.reader import Trace
from traces.samples import sample_path
from traces.synth import synthesize

TARGET_SECONDS = 60
TARGET_BYTES = 3 << 29  # 1.5 GiB


def _readable(result_dir: Path) -> bool:
    """A whole result of this chargeplay's format (not none, half one, or an older one)."""
    try:
        read_summary(result_dir)
    except TraceError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000_000)
    parser.add_argument("--like", default="file-storm")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "chargeplay-bench")
    args = parser.parse_args()
    trace_dir = args.cache / f"{args.like}-{args.events}"
    result_dir = args.cache / f"{args.like}-{args.events}-result"
    if not (trace_dir / "manifest.json").exists():
        print(f"synthesizing {args.events:,} events like {args.like} into {trace_dir} (once)")
        synthesize(Trace.open(sample_path(args.like)), trace_dir, args.events)
    trace = Trace.open(trace_dir)
    if not _readable(result_dir):
        print(f"replaying it under all built-in policies into {result_dir} (once)")
        shutil.rmtree(result_dir, ignore_errors=True)
        replay(trace, result_dir, list(policy.BUILTIN.values()), limits_for(trace, 16 << 20, 15 << 20, False), ENGINES["fast"])
    with tempfile.TemporaryDirectory() as scratch:
        page = Path(scratch) / "report.html"
        done = child_peak.run([sys.executable, "-m", "chargeplay.cli", "report", str(result_dir), "-o", str(page)])
        size = page.stat().st_size if page.exists() else 0
    seconds, peak = done.seconds, done.peak_bytes
    events = trace.manifest["events"]
    print(f"report of a {events:,}-event replay result ({len(policy.BUILTIN)} policies): exit {done.returncode}")
    if done.returncode:
        print(done.stderr)
    print(f"  time        {seconds:8.1f} s     target <= {TARGET_SECONDS} s: {'met' if seconds <= TARGET_SECONDS else 'NOT met'}")
    print(f"  peak memory {peak / (1 << 20):8,.0f} MiB   target <= {TARGET_BYTES >> 20} MiB: {'met' if peak <= TARGET_BYTES else 'NOT met'}")
    print(f"  report size {size / (1 << 20):8.1f} MiB")


if __name__ == "__main__":
    main()
