"""Capture overhead of the tracefs collector on a kmem-heavy workload.

What it measures
----------------
The workload creates N files (default 30,000) in a fresh directory under /dev/shm
(open(O_CREAT|O_EXCL) + close) and then unlinks them all: every file costs a dentry,
an inode, a file struct and their frees, so the run is dominated by kernel slab
allocation and memcg charging. It is a tight loop in Python (os.open/os.close/os.unlink,
names built before the clock starts); the table shows the share of its CPU time spent
in the kernel (about 90% on the development VMs), i.e. it is kernel-bound.

The workload times itself with CLOCK_MONOTONIC from just before its loop to just after
and prints the figure, so neither Python start-up nor the collector's start-up and
finalisation are counted. Alone, the workload runs in the benchmark's own memcg;
traced, in the collector's new child of it (a control run in a bare child memcg showed
no difference beyond noise, so the ratio is the tracing). Runs are interleaved: alone, traced, alone, traced, ...
(one untimed warm-up run first), and the figures reported are:

1. median wall time of the workload alone, under `chargeplay collect` and under `perf record`
   of the same kmem events (each round runs all three, interleaved), and the ratios to alone
   (target <= 1.35 for the collector); beside them each one's whole-process time (from the
   command's start to its exit) and peak RSS (the collector's from its manifest, perf record's
   through child_peak's small Python in between: the larger of perf and the workload it runs);
2. bytes per event on disk: the size of events/*.parquet over the events in them
   (target <= 12; perf.data is about 127);
3. lost events, from the manifest via `chargeplay info --json`, and for the eBPF backend the
   calls of its programs the kernel skipped (target 0);
4. events captured per run, events inside the workload's timed window and the
   capture rate during that window (events/s).

It also checks, and lists under "problems": tracefs instances or memcgs a collector
that exited 0 left behind; frees of an object the trace had already freed (another
task's free of a reused address, wrongly kept); and runs during which another
chargeplay capture was running (its CPU use and system-wide frees disturb the timing;
such runs are marked * and the ratio is also given over the undisturbed pairs).

Run it as root from the project directory (it needs tracefs and cgroups, and perf for the perf
record runs: Debian's linux-perf; without it those runs are left out, saying so):

    .venv/bin/python benchmarks/capture_overhead.py [--files N] [--runs N] [--keep DIR]

It prints figures and says whether each target is met; it asserts nothing. Traces go to
a temporary directory that is removed at the end (`--keep DIR` copies one trace to DIR
first); workload files in /dev/shm are removed even if a run fails.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from rich import box
from rich.console import Console
from rich.table import Table

import child_peak
from collect.cleanup import OWNED_NAME, collector_alive

# Argument 1: number of files; argument 2: directory to create them in. Prints one JSON
# line: the timed window (CLOCK_MONOTONIC ns, the collector's trace clock) and CPU times.
WORKLOAD = r"""
import json, os, sys, time
n, d = int(sys.argv[1]), sys.argv[2]
names = [f"{d}/f{i}" for i in range(n)]
op, cl, ul = os.open, os.close, os.unlink
flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
c0 = os.times()
t0 = time.monotonic_ns()
for p in names:
    cl(op(p, flags, 0o600))
for p in names:
    ul(p)
t1 = time.monotonic_ns()
c1 = os.times()
print(json.dumps({"start_ns": t0, "end_ns": t1, "user_s": c1.user - c0.user, "sys_s": c1.system - c0.system,
                  "total_cpu_s": c1.user + c1.system}))
"""

TARGET_RATIO = 1.35
TARGET_BYTES_PER_EVENT = 12.0
PERF_BYTES_PER_EVENT = 127
# What perf record records: the slab and page allocator events the collector records too.
PERF_EVENTS = ["kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:kfree", "kmem:kmem_cache_free",
               "kmem:mm_page_alloc", "kmem:mm_page_free"]
FREE_KINDS = ["kfree", "kmem_cache_free", "page_free"]


@dataclass
class Run:
    index: int
    seconds: float
    user_s: float
    sys_s: float
    disturbed_by: set[int] = field(default_factory=set)  # pids of other chargeplay captures seen meanwhile


@dataclass
class TracedRun(Run):
    events: int = 0
    window_events: int = 0
    bytes_on_disk: int = 0
    lost: int = 0
    refreed: int = 0
    status: str = ""
    collect_wall_s: float = 0.0
    collector_cpu_s: float = 0.0
    max_rss_bytes: int = 0

    @property
    def bytes_per_event(self) -> float:
        return self.bytes_on_disk / self.events if self.events else float("nan")

    @property
    def events_per_s(self) -> float:
        return self.window_events / self.seconds if self.seconds else float("nan")


@dataclass
class PerfRun(Run):
    wall_s: float = 0.0  # perf record's whole process, start-up and writing perf.data included
    max_rss_bytes: int = 0
    bytes_on_disk: int = 0


@dataclass
class Results:
    alone: dict[int, Run] = field(default_factory=dict)
    traced: dict[int, TracedRun] = field(default_factory=dict)
    perf: dict[int, PerfRun] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


INSTANCES = Path("/sys/kernel/tracing/instances")


class CaptureWatch:
    """Notes other chargeplay captures (tracefs instances chargeplay-PID...) alive during a
    run: another capture on these 2-CPU machines disturbs the timing of this one."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "CaptureWatch":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while True:
            try:
                names = [p.name for p in INSTANCES.iterdir()]
            except OSError:
                names = []
            for name in names:
                match = OWNED_NAME.match(name)
                if match and collector_alive(int(match.group(1))):
                    self.pids.add(int(match.group(1)))
            if self._stop.wait(0.02):
                return


def chargeplay_command() -> list[str]:
    script = Path(sys.executable).with_name("chargeplay")
    return [str(script)] if script.exists() else [sys.executable, "-m", "chargeplay.cli"]


def workload_command(files: int, directory: Path) -> list[str]:
    # sys.executable is the interpreter itself (no pyenv shim or shell in between).
    return [sys.executable, "-c", WORKLOAD, str(files), str(directory)]


def parse_workload(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"the workload printed no timing line: {stdout[-200:]!r}")


def empty(directory: Path) -> None:
    """Remove whatever a failed run left in the workload directory."""
    for path in directory.iterdir():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_alone(index: int, files: int, shm: Path) -> Run:
    with CaptureWatch() as watch:
        done = subprocess.run(workload_command(files, shm), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"workload failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    w = parse_workload(done.stdout)
    return Run(index, (w["end_ns"] - w["start_ns"]) / 1e9, w["user_s"], w["sys_s"], watch.pids)


def run_traced(index: int, files: int, shm: Path, trace: Path) -> TracedRun:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with CaptureWatch() as watch:
        collector = subprocess.Popen(
            chargeplay_command() + ["collect", "-o", str(trace), "--", *workload_command(files, shm)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            stdout, stderr = collector.communicate()
        except BaseException:  # Ctrl-C: let the collector stop and clean up before its files go
            collector.send_signal(signal.SIGINT)
            try:
                collector.wait(timeout=30)
            except subprocess.TimeoutExpired:
                collector.kill()
                collector.wait()
            raise
    collect_wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if collector.returncode != 0:
        raise RuntimeError(f"chargeplay collect failed ({collector.returncode}): {stderr.strip()[-500:]}")
    left = [str(p) for p in INSTANCES.glob(f"chargeplay-{collector.pid}*")]
    left += [str(p) for p in _memcg_parents() if (p / f"chargeplay-{collector.pid}").exists()]
    if left:
        raise RuntimeError(f"the collector exited 0 but left behind {', '.join(left)}")
    w = parse_workload(stdout)
    info = subprocess.run(chargeplay_command() + ["info", str(trace), "--json"], capture_output=True, text=True)
    if info.returncode != 0:
        raise RuntimeError(f"chargeplay info failed ({info.returncode}): {info.stderr.strip()[-500:]}")
    summary = json.loads(info.stdout)
    manifest = json.loads((trace / "manifest.json").read_text())
    segments = sorted((trace / "events").glob("*.parquet"))
    on_disk = sum(p.stat().st_size for p in segments)
    t0 = manifest["start"]["trace_ns"]
    window = refreed = 0
    if segments:
        events = pl.scan_parquet(segments)
        window = (
            events.filter(pl.col("ts_ns").is_between(w["start_ns"] - t0, w["end_ns"] - t0))
            .select(pl.len()).collect().item()
        )
        # A sanity check of the collector: an object is freed once, so a second free of
        # the same pseudonym is someone else's free of a reused address.
        refreed = (
            events.filter(pl.col("kind").is_in(FREE_KINDS) & pl.col("obj").is_not_null())
            .group_by("obj").agg(pl.len().alias("n")).select((pl.col("n") - 1).sum()).collect().item()
        ) or 0
    # RUSAGE_CHILDREN takes in the collector and, through it, the workload (whole process,
    # start-up included): take the workload out.
    children_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return TracedRun(
        index=index, seconds=(w["end_ns"] - w["start_ns"]) / 1e9, user_s=w["user_s"], sys_s=w["sys_s"],
        disturbed_by=watch.pids - {collector.pid},
        events=int(summary["events"]), window_events=int(window), bytes_on_disk=on_disk,
        lost=int(summary["lost_events"]) + int(summary["skipped_calls"]), refreed=int(refreed), status=str(summary["status"]),
        collect_wall_s=collect_wall, collector_cpu_s=children_cpu - w["total_cpu_s"],
        max_rss_bytes=int(manifest["collector"]["max_rss_bytes"]),
    )


def run_perf(index: int, files: int, shm: Path, data: Path) -> PerfRun:
    """The workload under `perf record` of PERF_EVENTS, writing perf.data to `data`."""
    started = time.monotonic()
    with CaptureWatch() as watch:
        # through child_peak's small Python: the larger of perf's and the workload's peak RSS, not
        # this benchmark's (a child's max RSS counts the process that forked it)
        done = subprocess.run(child_peak.between(["perf", "record", "-q", *(f"-e{e}" for e in PERF_EVENTS), "-o", str(data),
                                                  "--", *workload_command(files, shm)], keep_stdout=True),
                              capture_output=True, text=True)
    _, peak_bytes, code = child_peak.peak_of(done.stderr)
    if code != 0:
        raise RuntimeError(f"perf record failed ({code})")
    w = parse_workload(done.stdout)
    return PerfRun(index, (w["end_ns"] - w["start_ns"]) / 1e9, w["user_s"], w["sys_s"], watch.pids,
                   wall_s=time.monotonic() - started, max_rss_bytes=peak_bytes, bytes_on_disk=data.stat().st_size)


def _memcg_parents() -> list[Path]:
    try:
        from collect.cgroup import child_parents

        return child_parents()
    except Exception:  # the check is a courtesy; a missing memcg hierarchy shows up elsewhere
        return []


def benchmark(files: int, runs: int, keep: Path | None, out: Console) -> Results:
    results = Results()
    shm = Path(tempfile.mkdtemp(prefix="chargeplay-bench-", dir="/dev/shm"))
    traces = Path(tempfile.mkdtemp(prefix="chargeplay-bench-traces-"))
    kept = False
    try:
        out.print(f"warm-up run ({files:,} files) ...", highlight=False)
        run_alone(0, files, shm)
        modes = ("alone", "traced", "perf") if shutil.which("perf") else ("alone", "traced")
        if "perf" not in modes:
            out.print("perf is not installed (Debian: linux-perf): no perf record runs", highlight=False)
        for i in range(1, runs + 1):
            for mode in modes:
                empty(shm)
                try:
                    if mode == "alone":
                        a = results.alone[i] = run_alone(i, files, shm)
                        out.print(f"run {i}/{runs} alone   {a.seconds:.3f} s", highlight=False)
                    elif mode == "perf":
                        p = results.perf[i] = run_perf(i, files, shm, traces / f"perf-{i}.data")
                        out.print(f"run {i}/{runs} perf    {p.seconds:.3f} s, perf record {p.wall_s:.2f} s wall", highlight=False)
                        (traces / f"perf-{i}.data").unlink()
                    else:
                        trace = traces / f"run-{i}"
                        t = results.traced[i] = run_traced(i, files, shm, trace)
                        out.print(f"run {i}/{runs} traced  {t.seconds:.3f} s, {t.events:,} events, {t.lost:,} lost, "
                                  f"collector {t.collect_wall_s:.2f} s wall", highlight=False)
                        if t.lost:
                            results.problems.append(f"run {i}: {t.lost:,} events lost")
                        if t.refreed:
                            results.problems.append(
                                f"run {i}: {t.refreed:,} frees of objects the trace had already freed "
                                "(other tasks' frees of reused addresses kept as the workload's)")
                        if t.status != "complete":
                            results.problems.append(f"run {i}: trace status {t.status!r}")
                        if keep is not None and not kept:
                            shutil.copytree(trace, keep, dirs_exist_ok=True)
                            kept = True
                        shutil.rmtree(trace, ignore_errors=True)
                except (RuntimeError, ValueError, OSError) as error:
                    results.problems.append(f"run {i} {mode}: {error}")
                    out.print(f"run {i}/{runs} {mode}: FAILED: {error}", markup=False, highlight=False)
                    continue
                run = {"alone": results.alone, "traced": results.traced, "perf": results.perf}[mode][i]
                if run.disturbed_by:
                    results.problems.append(
                        f"run {i} {mode}: another chargeplay capture ran meanwhile "
                        f"(pid {', '.join(map(str, sorted(run.disturbed_by)))}); its timing is disturbed")
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(traces, ignore_errors=True)
    if kept:
        out.print(f"kept the first traced run's trace in {keep}", highlight=False)
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)  # NaN: no runs to take it from


def report(results: Results, files: int, out: Console) -> None:
    alone, traced = results.alone, results.traced
    per_run = Table(
        "run", "alone s", "traced s", "traced/alone", "events", "in window", "events/s",
        "bytes/event", "lost", "refreed", "collect wall s", "collect CPU s",
        title=f"per run ({files:,} files created and removed in /dev/shm; * = another capture ran meanwhile)",
        title_justify="left", box=box.ASCII,
    )
    for i in sorted(set(alone) | set(traced)):
        a, t = alone.get(i), traced.get(i)
        mark = "*" if (a and a.disturbed_by) or (t and t.disturbed_by) else ""
        per_run.add_row(
            f"{i}{mark}",
            f"{a.seconds:.3f}" if a else "-",
            f"{t.seconds:.3f}" if t else "-",
            f"{t.seconds / a.seconds:.2f}" if a and t else "-",
            f"{t.events:,}" if t else "-",
            f"{t.window_events:,}" if t else "-",
            f"{t.events_per_s:,.0f}" if t else "-",
            f"{t.bytes_per_event:.2f}" if t else "-",
            f"{t.lost:,}" if t else "-",
            f"{t.refreed:,}" if t else "-",
            f"{t.collect_wall_s:.2f}" if t else "-",
            f"{t.collector_cpu_s:.2f}" if t else "-",
        )
    out.print(per_run)

    alone_runs, traced_runs = list(alone.values()), list(traced.values())
    alone_s = _median([r.seconds for r in alone_runs])
    traced_s = _median([r.seconds for r in traced_runs])
    ratio = traced_s / alone_s if alone_runs and traced_runs else float("nan")
    on_disk = sum(r.bytes_on_disk for r in traced_runs)
    events = sum(r.events for r in traced_runs)
    bpe = on_disk / events if events else float("nan")
    lost = sum(r.lost for r in traced_runs)
    cpu = sum(r.user_s + r.sys_s for r in alone_runs)
    kernel_share = sum(r.sys_s for r in alone_runs) / cpu if cpu else float("nan")

    def met(ok: bool, have: bool) -> str:
        return "-" if not have else "yes" if ok else "NO"

    summary = Table("figure", "value", "target", "met", title="summary (medians over runs)", title_justify="left", box=box.ASCII)
    summary.add_row("workload alone, median", f"{_fmt(alone_s, '.3f')} s ({len(alone_runs)} runs)", "", "")
    summary.add_row("workload traced, median", f"{_fmt(traced_s, '.3f')} s ({len(traced_runs)} runs)", "", "")
    perf_runs = list(results.perf.values())
    perf_ratio = _median([r.seconds for r in perf_runs]) / alone_s if perf_runs and alone_runs else float("nan")
    summary.add_row("traced / alone", f"{_fmt(ratio, '.2f')}x", f"<= {TARGET_RATIO}",
                    met(ratio <= TARGET_RATIO, bool(alone_runs and traced_runs)))
    summary.add_row("perf record / alone, the same rounds", f"{_fmt(perf_ratio, '.2f')}x ({len(perf_runs)} runs)", "", "")
    summary.add_row("whole process: chargeplay collect, perf record (median)",
                    f"{_fmt(_median([r.collect_wall_s for r in traced_runs]), '.2f')} s, "
                    f"{_fmt(_median([r.wall_s for r in perf_runs]), '.2f')} s", "", "")
    summary.add_row("peak RSS: chargeplay collect, perf record (median)",
                    f"{_fmt(_median([r.max_rss_bytes / 2**20 for r in traced_runs]), '.0f')} MiB, "
                    f"{_fmt(_median([r.max_rss_bytes / 2**20 for r in perf_runs]), '.0f')} MiB", "", "")
    summary.add_row("on disk: trace, perf.data (median per run)",
                    f"{_fmt(_median([r.bytes_on_disk / 2**20 for r in traced_runs]), '.1f')} MiB, "
                    f"{_fmt(_median([r.bytes_on_disk / 2**20 for r in perf_runs]), '.1f')} MiB", "", "")
    clean = [i for i in sorted(set(alone) & set(traced)) if not alone[i].disturbed_by and not traced[i].disturbed_by]
    if len(clean) < len(set(alone) & set(traced)) and clean:
        clean_ratio = _median([traced[i].seconds for i in clean]) / _median([alone[i].seconds for i in clean])
        summary.add_row("traced / alone, undisturbed runs only", f"{clean_ratio:.2f}x ({len(clean)} pairs)",
                        f"<= {TARGET_RATIO}", met(clean_ratio <= TARGET_RATIO, True))
    summary.add_row("bytes/event on disk", f"{_fmt(bpe, '.2f')} ({on_disk:,} B / {events:,})",
                    f"<= {TARGET_BYTES_PER_EVENT:g} (perf.data: ~{PERF_BYTES_PER_EVENT})",
                    met(bpe <= TARGET_BYTES_PER_EVENT, events > 0))
    summary.add_row("lost events (eBPF: and calls the kernel skipped), all traced runs", f"{lost:,}", "0", met(lost == 0, bool(traced_runs)))
    summary.add_row("events per traced run, median", _fmt(_median([r.events for r in traced_runs]), ",.0f"), "", "")
    summary.add_row("events in the timed window, median", _fmt(_median([r.window_events for r in traced_runs]), ",.0f"), "", "")
    summary.add_row("capture rate in the window, median",
                    f"{_fmt(_median([r.events_per_s for r in traced_runs]), ',.0f')} events/s", "", "")
    summary.add_row("collect CPU per run (start-up to exit, workload excluded), median",
                    f"{_fmt(_median([r.collector_cpu_s for r in traced_runs]), '.2f')} s", "", "")
    summary.add_row("workload CPU time in the kernel (alone)", _fmt(kernel_share, ".0%"), "kernel-bound", "")
    out.print(summary)
    out.print("workload: a Python loop of os.open(O_CREAT|O_EXCL)+os.close, then os.unlink, over "
              f"{files:,} files in /dev/shm; timed inside the workload (CLOCK_MONOTONIC), "
              "collector start-up and finalisation excluded", highlight=False, soft_wrap=True)
    if results.problems:
        out.print("problems:", highlight=False)
        for problem in results.problems:
            out.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=30_000, help="files to create and remove per run (default 30000)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved alone/traced pairs (default 5)")
    parser.add_argument("--keep", type=Path, help="copy the first traced run's trace to this directory")
    args = parser.parse_args()
    out = Console(width=max(Console().width, 160))  # the per-run table is wide; never wrap it
    if args.files < 1 or args.runs < 1:
        parser.error("--files and --runs must be at least 1")
    if os.geteuid() != 0:
        out.print("capture needs root (tracefs and cgroups): run it with sudo", highlight=False)
        return 2
    if args.keep is not None and args.keep.exists() and (not args.keep.is_dir() or any(args.keep.iterdir())):
        parser.error(f"--keep {args.keep}: exists and is not an empty directory")
    signal.signal(signal.SIGTERM, _terminated)  # clean up as after Ctrl-C
    try:
        results = benchmark(args.files, args.runs, args.keep, out)
    except KeyboardInterrupt:
        out.print("interrupted: temporary traces and /dev/shm files removed", highlight=False)
        return 130
    report(results, args.files, out)
    return 0


def _terminated(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
