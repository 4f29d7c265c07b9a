"""Closed-loop replay against the kernel: how much memory.high throttling slows a workload.

For each zoo workload, on a cgroup v2 kernel (the lab's), as root from the project directory:

1. capture it under a roomy memory.max and no memory.high (`chargeplay collect`): the trace,
   and its peak P from the memcg's own counter;
2. run it alone (no capture) in a memcg with that memory.max: wall time T0 (the best of --runs;
   how far they spread is printed too: an observed stretch within it is the machine's noise);
3. run it alone with memory.high H = --high-fraction x P as well: wall time T1 (the median of
   --runs; of two, the slower), memory.events high, and the time memory.current spent above H
   (sampled every 5 ms, from the root memcg);
4. replay the trace in closed loop under the model of the running kernel with memory.high H:
   the time the policy adds (its run on its own clock less the trace's), high events, and
   seconds above high, and the range of the first two over eight phases of the page stock's
   batch at the start (`replay --spread`); with each task on its own clock (the prediction) and, as
   bounds, with the threads of a process and then all tasks on one (`--clock`);
5. with --reclaim-capture, capture it once more under memory.high H: the kernel's own reclaim
   calls there (how many, their pages and time) and the cost a call and a page they give (the
   replay's calibration, run.reclaim_cost), against the defaults step 4 replays with (its
   capture holds no reclaim), and the prediction again at the kernel's cost; and that capture
   replayed under its own memory.high, its high events against the kernel's in it: the model's
   rules checked on the kernel's own timeline. With --reclaim-capture N (2 or more), N such
   captures, each replayed on its own timeline at its own cost and at the next one's: whether the
   cost one run gives holds for another run (the first check is in-sample: the cost comes from
   the very calls it is checked against).

Observed stretch: T1 / T0 - 1. Predicted: the added time over T0. The targets (closed-loop
issue): stretch within 15%, memory.events high within 10%. It prints every figure and the
targets met, writes them with --json FILE, and asserts nothing.

    .venv/bin/python benchmarks/throttle_check.py [--workload NAME ...] [--scale S] [--runs N] [--cpu N] [--reclaim-capture [N]] [--buffer-kb KB] [--json FILE] [--keep DIR]

With --cpu the workload runs on one CPU, in the capture and in every timed run, and the collector
on the others (`collect --collector-cpus`), so the capture's own charges leave the workload's
per-CPU page stock alone: on two CPUs, which one a throttled task wakes on after its sleep decides
whether its stock is still there, and the kernel's own runs spread with it. The usage sampler of
step 3 is not pinned (it runs in the root memcg: its reads charge nothing to the workload).

Inside a lab kernel: python -m lab run --kernel 6.12 --keep DIR -- .venv/bin/python
benchmarks/throttle_check.py --scale 0.25 --json {run}/out/throttle.json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import polars as pl

from collect.cgroup import create_child, memory_hierarchy, read_keyed
from replay import policy, result_format, run
from replay.ops import CLOCK_SHARING
from traces.reader import Trace

ROOMY = 1 << 30
DEFAULT_WORKLOADS = ["sockets-unix", "pipes", "epoll", "files-tmpfs"]
TARGETS = {"stretch": 0.15, "high events": 0.10}


def collector_flags(cpu: int | None, buffer_kb: int | None) -> list[str]:
    """`collect`'s flags: the collector off the workload's `cpu` (if given), with `buffer_kb`."""
    others = sorted(os.sched_getaffinity(0) - {cpu}) if cpu is not None else []
    pinned = ["--collector-cpus", ",".join(map(str, others))] if others else []
    return pinned + (["--buffer-kb", str(buffer_kb)] if buffer_kb else [])


def capture(workload: list[str], trace: Path, high: int | None = None, collector: Sequence[str] = ()) -> None:
    """Capture WORKLOAD with `collect`'s `collector` flags."""
    limits = ["--memory-max", str(ROOMY)] + (["--memory-high", str(high)] if high else [])
    subprocess.run([sys.executable, "-m", "chargeplay.cli", "collect", "-o", str(trace), *limits, *collector, "--", *workload],
                   check=True, stdout=subprocess.DEVNULL)


def zoo_command(workload: str, scale: float, cpu: int | None) -> list[str]:
    """The zoo workload's command line; on one CPU with `cpu` (its page stock then stays on it)."""
    pinned = ["taskset", "--cpu-list", str(cpu)] if cpu is not None else []
    return [*pinned, sys.executable, "-m", "zoo", workload, "--scale", str(scale)]


# What a limited run may charge that its unlimited capture did not: file pages its reclaim took and
# it read again (workingset_refault_file), and what reclaim scanned and took.
RUN_STATS = ("file", "file_mapped", "shmem", "anon", "kernel", "slab", "sock", "workingset_refault_file",
             "workingset_refault_anon", "pgscan", "pgsteal", "pgfault", "thp_fault_alloc", "thp_collapse_alloc")


def run_alone(workload: list[str], high: int | None, memory_max: int = ROOMY) -> dict:
    """The workload in a fresh memcg (memory.max `memory_max`, memory.high `high`): its wall
    time, its memory.events high, how long memory.current stayed above `high` and its usage
    percentiles over time (USAGE_PERCENTILES, MiB), memory.peak, and the memory.stat items that
    say what it charged beyond its trace (RUN_STATS)."""
    memcg, root = create_child(f"chargeplay-throttle-{os.getpid()}")
    try:
        memcg.set_limits(memory_max, high)
        sampler = in_cgroup(root, [sys.executable, "-c", SAMPLER, str(memcg.path / "memory.current")], stdout=subprocess.PIPE, text=True)
        start = time.monotonic()
        child = in_cgroup(memcg.path, workload, stdout=subprocess.DEVNULL)
        child.wait()
        seconds = time.monotonic() - start
        sampler.send_signal(signal.SIGINT)
        held = json.loads(sampler.communicate()[0])  # [usage, seconds at it]
        return {"seconds": seconds, "high_events": read_keyed(memcg.path / "memory.events").get("high", 0),
                "seconds_above_high": sum(at for usage, at in held if usage > (high or memory_max)),
                "usage_mib": usage_percentiles([usage for usage, _ in held], [at for _, at in held]),
                "peak_bytes": int((memcg.path / "memory.peak").read_text()),
                "stat": {k: v for k, v in read_keyed(memcg.path / "memory.stat").items() if k in RUN_STATS},
                "exit": child.returncode}
    finally:
        memcg.remove()


USAGE_PERCENTILES = (50, 75, 95)


def usage_percentiles(usage: list[int], seconds: list[float]) -> list[float]:
    """USAGE_PERCENTILES of usage in bytes, each value weighted by how long it held; in MiB."""
    order = sorted(range(len(usage)), key=usage.__getitem__)
    total, at, found = sum(seconds), 0.0, []
    for n in order:
        at += seconds[n]
        while len(found) < len(USAGE_PERCENTILES) and at >= total * USAGE_PERCENTILES[len(found)] / 100:
            found.append(usage[n] / (1 << 20))
    return found


def in_cgroup(cgroup: Path, command: list[str], **popen) -> subprocess.Popen:
    procs = str(cgroup / "cgroup.procs")
    return subprocess.Popen(command, preexec_fn=lambda: Path(procs).write_text(str(os.getpid())), **popen)


# The sampler of memory.current runs in the root memcg: reading a cgroup file allocates an
# accounted buffer, and a charge of another memcg on the workload's CPU evicts the workload's
# page stock (one memcg per CPU before 6.16), which costs it a new batch over memory.high.
# Sampled from the runner's memcg every 5 ms, that doubled the workload's memory.events high.
SAMPLER = """
import json, sys, time
current = sys.argv[1]
held, last = {}, time.monotonic()
try:
    while True:
        time.sleep(0.005)
        now = time.monotonic()
        with open(current) as f:
            usage = int(f.read())
        held[usage] = held.get(usage, 0.0) + now - last
        last = now
except KeyboardInterrupt:
    print(json.dumps(sorted(held.items())))
"""


def predict(trace: Trace, high: int, result: Path, clock: str, spread: bool, memory_max: int = ROOMY, swap: bool = False,
            reclaim_cost: dict[str, int] | None = None) -> dict:
    """The closed-loop replay's figures under memory.high `high` (and `memory_max`, `swap`) at the
    trace's own stock phase, its result in RESULT/CLOCK, and, with `spread`, the range of high
    events and added seconds over run.STOCK_PHASES: which batch crosses memory.high decides
    whether a run takes one or two more throttles, each up to a 2-s sleep (one capture of pipes:
    171 to 205 high events; the kernel's runs 187 to 205). The reclaim cost is the trace's own
    (run.reclaim_cost) unless given."""
    chosen, model = policy.for_kernel(trace.manifest["kernel"]["release"])
    limits = replace(run.limits_for(trace, memory_max, high, swap=swap, clock=clock), **(reclaim_cost or {}))
    summary = run.replay(trace, result / clock, [chosen], limits, run.ENGINES["fast"], spread=spread)
    figures = summary["policies"][chosen.name]
    trace_seconds = figures["run_seconds"] / (1 + figures["stretch"])
    at_phases = summary["spread"]["policies"][chosen.name] if spread else {name: [figures[name]] for name in result_format.SPREAD_FIGURES}
    added = [seconds - trace_seconds for seconds in at_phases["run_seconds"]]
    return {"model": model, "policy": chosen.name, "added_seconds": added[0], "high_events": figures["high_events"],
            "seconds_above_high": figures["seconds_above_high"], "peak_bytes": figures["peak_bytes"], "trace_seconds": trace_seconds,
            "reclaim_seconds": (figures["stall_ns_total"] - figures["throttle_ns"]) / 1e9,
            "reclaim_calls": sum(figures["reclaim_calls"].values()), "reclaimed_pages": sum(figures["reclaimed_pages"].values()),
            "reclaimed_file_pages": figures["reclaimed_file_pages"],
            "reclaim_ns_per_call": limits.reclaim_ns_per_call, "reclaim_ns_per_page": limits.reclaim_ns_per_page,
            "high_events_range": [min(at_phases["high_events"]), max(at_phases["high_events"])],
            "added_seconds_range": [min(added), max(added)]}


def add_stretch(predicted: dict, alone_seconds: float) -> dict:
    """A prediction's stretch, and its range over the stock phases: the time it adds over the run alone."""
    predicted["stretch"] = predicted["added_seconds"] / alone_seconds
    predicted["stretch_range"] = [added / alone_seconds for added in predicted["added_seconds_range"]]
    return predicted


def check(workload: str, command: list[str], collector: list[str], runs: int, fraction: float, scratch: Path,
          reclaim_captures: int) -> dict:
    trace_dir = scratch / workload / "trace"
    capture(command, trace_dir, collector=collector)
    trace = Trace.open(trace_dir)
    peak = trace.side_table("memcg").select(pl.max_horizontal("usage", "max_usage").max()).collect().item()
    high = int(peak * fraction)
    alone_runs = sorted((run_alone(command, None) for _ in range(runs)), key=lambda r: r["seconds"])
    alone = alone_runs[0]
    limited = [run_alone(command, high) for _ in range(runs)]
    median = sorted(limited, key=lambda r: r["seconds"])[len(limited) // 2]
    # The prediction is the default clock's; the other two bound it (tasks that wait for their
    # process's threads, for every task), at the trace's own stock phase.
    by_clock = {clock: predict(trace, high, scratch / workload / "result", clock, spread=clock == "task")
                for clock in CLOCK_SHARING}
    for figures in by_clock.values():
        add_stretch(figures, alone["seconds"])
    predicted = by_clock["task"]
    for r in limited:
        r["stretch"] = r["seconds"] / alone["seconds"] - 1
        r["met"] = judge(predicted, r)
    row = {
        "workload": workload, "peak": peak, "high": high, "alone_seconds": alone["seconds"],
        # How far the runs alone spread: an observed stretch within it is the machine's noise.
        "alone_seconds_runs": [r["seconds"] for r in alone_runs],
        "limited": limited, "observed": median, "predicted": predicted, "by_clock": by_clock, "met": judge(predicted, median),
    }
    if reclaim_captures:
        row["reclaim"] = kernel_reclaim(command, collector, high, trace, scratch / workload, alone["seconds"], reclaim_captures)
        row["reclaim"]["met"] = judge(row["reclaim"]["predicted"], median)
    return row


def kernel_reclaim(command: list[str], collector: list[str], high: int, trace: Trace, scratch: Path, alone_seconds: float,
                   captures: int) -> dict:
    """The reclaim-time model against the running kernel. The unlimited capture has no reclaim,
    so its replay costs a reclaim call and a page at run.reclaim_cost's defaults; `captures` more,
    under memory.high, hold the kernel's own reclaim calls: the first one's count, pages and time,
    and the cost they give (as a trace captured under its limits gives its own replay); the
    unlimited capture is replayed with that cost as well. With two or more, how each one's cost
    carries to the next (cost_transfer)."""
    for n in range(1, captures + 1):
        capture(command, scratch / f"limited-trace-{n}", high, collector)
    limited_runs = [Trace.open(scratch / f"limited-trace-{n}") for n in range(1, captures + 1)]
    costs = [run.reclaim_cost(each) for each in limited_runs]
    limited = limited_runs[0]
    took, pages = run.reclaim_calls(limited)
    predicted = add_stretch(predict(trace, high, scratch / "result-kernel-cost", "task", spread=False,
                                    reclaim_cost=costs[0]), alone_seconds)
    # The limited capture replayed under its own memory.high: the model's rules on the kernel's
    # own timeline, which the unlimited capture's slower one cannot blur; over the stock phases,
    # as the trace cannot show which batch the stocks were at when it began.
    # Its reclaim at the cost it gives (run.reclaim_cost) checks that cost against the kernel's time.
    own = predict(limited, high, scratch / "result-own-limit", "task", spread=True)
    return {"calls": len(took), "pages": int(pages.sum()), "seconds": int(took.sum()) / 1e9, "predicted": predicted,
            "own_timeline": {"high_events": own["high_events"], "high_events_range": own["high_events_range"],
                             "kernel_high_events": limited.last_memcg_sample()["events_high"],
                             **{name: own[name] for name in ("reclaim_calls", "reclaimed_pages", "reclaim_seconds")}},
            "transfer": cost_transfer(limited_runs, costs, high, scratch) if captures > 1 else []}


def cost_transfer(limited_runs: list[Trace], costs: list[dict], high: int, scratch: Path) -> list[dict]:
    """Whether the reclaim cost one run gives holds for another: each capture under memory.high
    replayed on its own timeline at its own cost (`costs`, run.reclaim_cost) and at the next
    capture's, against the kernel's reclaim time in it."""
    rows = []
    for n, limited in enumerate(limited_runs):
        other = (n + 1) % len(limited_runs)
        took, pages = run.reclaim_calls(limited)
        at = {name: predict(limited, high, scratch / f"result-transfer-{n + 1}-{name}", "task", spread=False,
                            reclaim_cost=costs[k])["reclaim_seconds"] for name, k in (("own", n), ("other", other))}
        rows.append({"capture": n + 1, "calls": len(took), "pages": int(pages.sum()), "kernel_seconds": int(took.sum()) / 1e9,
                     "ns_per_page": costs[n]["reclaim_ns_per_page"], "own_cost_seconds": at["own"],
                     "other_capture": other + 1, "other_ns_per_page": costs[other]["reclaim_ns_per_page"],
                     "other_cost_seconds": at["other"]})
    return rows


def judge(predicted: dict, observed: dict) -> dict[str, bool]:
    return {"stretch": within(predicted["stretch"], observed["stretch"], TARGETS["stretch"]),
            "high events": within(predicted["high_events"], observed["high_events"], TARGETS["high events"])}


def within(predicted: float, observed: float, share: float) -> bool:
    return abs(predicted - observed) <= share * abs(observed)


def cell(row: dict) -> str:
    """The fidelity matrix's cell: memory.high, limited runs meeting both targets / runs, then
    how many missed each target they missed."""
    runs = row["limited"]
    met = sum(all(r["met"].values()) for r in runs)
    misses = {name: sum(not r["met"][name] for r in runs) for name in TARGETS}
    missed = ", ".join(f"{name} {n}" for name, n in misses.items() if n)
    return f"{row['high'] / (1 << 20):.1f}M: {met}/{len(runs)}" + (f" ({missed})" if missed else "")


def markdown(rows: list[dict], fraction: float) -> str:
    lines = [f"| workload | memory.high {fraction:g} P on {os.uname().release}: stretch, high events |", "|---|---|"]
    return "\n".join(lines + [f"| {row['workload']} | {cell(row)} |" for row in rows]) + "\n"


def describe(row: dict) -> str:
    o, p = row["observed"], row["predicted"]
    return (f"{row['workload']:14} high {row['high'] / (1 << 20):.1f}M (peak {row['peak'] / (1 << 20):.1f}M): "
            f"stretch {p['stretch']:+.1%} (stock phases {p['stretch_range'][0]:+.0%} to {p['stretch_range'][1]:+.0%}) predicted / "
            f"{o['stretch']:+.1%} observed ({row['alone_seconds']:.2f} s alone, its runs spreading {alone_spread(row):+.1%}; "
            f"{o['seconds']:.2f} s limited); high events "
            f"{p['high_events']:,} ({p['high_events_range'][0]:,} to {p['high_events_range'][1]:,})/{o['high_events']:,}; "
            f"s above high {p['seconds_above_high']:.2f}/{o['seconds_above_high']:.2f}; "
            f"peak {p['peak_bytes'] / (1 << 20):.2f}M/{o['peak_bytes'] / (1 << 20):.2f}M; "
            f"page cache reclaimed {p['reclaimed_file_pages']:,} pages predicted / refaulted {o['stat'].get('workingset_refault_file', 0):,} "
            "observed (no trace shows a refault); "
            f"stretch on shared clocks: " + ", ".join(f"{clock} {figures['stretch']:+.1%}" for clock, figures in
                                                      row["by_clock"].items() if clock != "task") + "; "
            + verdicts(row["met"]) + (describe_reclaim(row) if "reclaim" in row else ""))


def alone_spread(row: dict) -> float:
    """How much longer the slowest run alone took than the fastest."""
    seconds = row["alone_seconds_runs"]
    return seconds[-1] / seconds[0] - 1


def verdicts(met: dict[str, bool]) -> str:
    return ", ".join(f"{name} {'met' if hit else 'MISSED'}" for name, hit in met.items())


def describe_reclaim(row: dict) -> str:
    k, p, default = row["reclaim"], row["reclaim"]["predicted"], row["predicted"]
    return (f"\n{'':14} reclaim under memory.high: kernel {k['calls']:,} calls, {k['pages']:,} pages, {k['seconds']:.3f} s "
            f"(a call {p['reclaim_ns_per_call'] / 1000:.0f} us, a page {p['reclaim_ns_per_page'] / 1000:.1f} us); model "
            f"{default['reclaim_seconds']:.3f} s at the defaults ({default['reclaim_ns_per_call'] / 1000:.0f} us, "
            f"{default['reclaim_ns_per_page'] / 1000:.1f} us), {p['reclaim_seconds']:.3f} s at the kernel's: stretch {p['stretch']:+.1%}, "
            f"high events {p['high_events']:,}; " + verdicts(k["met"])
            + "; that capture replayed under its own memory.high: {high_events:,} high events ({high_events_range[0]:,} to "
            "{high_events_range[1]:,} over the stock phases), the kernel {kernel_high_events:,}; reclaim {reclaim_calls:,} calls, "
            "{reclaimed_pages:,} pages, {reclaim_seconds:.3f} s".format(**k["own_timeline"])
            + "".join(describe_transfer(t) for t in k["transfer"]))


def describe_transfer(t: dict) -> str:
    def against_kernel(seconds: float) -> str:
        return f"{seconds:.3f} s ({seconds / t['kernel_seconds'] - 1:+.0%})" if t["kernel_seconds"] else f"{seconds:.3f} s"
    return (f"\n{'':14} capture {t['capture']} under memory.high: kernel {t['calls']:,} calls, {t['pages']:,} pages, "
            f"{t['kernel_seconds']:.3f} s; model on its timeline at its own cost ({t['ns_per_page'] / 1000:.1f} us a page) "
            f"{against_kernel(t['own_cost_seconds'])}, at capture {t['other_capture']}'s ({t['other_ns_per_page'] / 1000:.1f} us) "
            f"{against_kernel(t['other_cost_seconds'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append", help=f"zoo workload (repeatable; default: {', '.join(DEFAULT_WORKLOADS)})")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--high-fraction", type=float, default=0.5, help="memory.high as a share of the workload's peak")
    parser.add_argument("--cpu", type=int, help="run each workload on this CPU only (captured and timed alike): the kernel's "
                        "runs then repeat themselves; on two CPUs which one a throttled task wakes on decides its page stock")
    parser.add_argument("--buffer-kb", type=int, help="the captures' trace buffer per CPU, KiB (collect --buffer-kb): "
                        "a capture that loses events undercounts the kernel's reclaim")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path, help="write the fidelity matrix's cells (each limited run judged) here")
    parser.add_argument("--keep", type=Path, help="keep each workload's trace and replay result under this directory")
    parser.add_argument("--reclaim-capture", type=int, nargs="?", const=1, default=0, metavar="N",
                        help="capture each workload once more (N times) under memory.high and replay it with the reclaim "
                        "cost the kernel showed there as well (the defaults' check); with N >= 2, each capture's "
                        "reclaim at the next one's cost too (does the cost carry from run to run?)")
    args = parser.parse_args()
    if memory_hierarchy()[0] != 2:
        print("throttle_check needs cgroup v2, where memory.high lives: run it in the kernel lab", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="chargeplay-throttle-") as scratch:
        for workload in args.workload or DEFAULT_WORKLOADS:
            command = zoo_command(workload, args.scale, args.cpu)
            rows.append(check(workload, command, collector_flags(args.cpu, args.buffer_kb), args.runs, args.high_fraction, args.keep or Path(scratch),
                              args.reclaim_capture))
            print(describe(rows[-1]), flush=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"kernel": os.uname().release, "cpu": args.cpu, "rows": rows}, indent=1))
            if args.markdown:
                args.markdown.parent.mkdir(parents=True, exist_ok=True)
                args.markdown.write_text(markdown(rows, args.high_fraction))
    met = {name: sum(row["met"][name] for row in rows) for name in TARGETS}
    print(f"{os.uname().release}: " + ", ".join(f"{name} met in {n} of {len(rows)}" for name, n in met.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
