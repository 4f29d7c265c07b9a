"""Who charges a workload's page counter, and who gives its per-CPU page stock back.

In a kernel with kprobes (the lab's; this VM's 6.18 has none), as root from the project
directory: a zoo workload runs once to warm the page cache, then unlimited and under memory.high
(--high, bytes), each in a fresh memcg (benchmarks/throttle_check.py's run_alone), with kprobe
events on page_counter_try_charge (a batch charged past the stock) and page_counter_uncharge,
each with its call stack, in a private tracefs instance. Per run it prints the batches charged,
by the function that charged them, and each stock drained whole (drain_stock): when, how many
pages, in which context (the task, or a softirq on the idle CPU: an RCU callback while the task
sleeps) and under which function. Of the uncharges only drains are shown; anon pages go straight
to the counter (uncharge_batch).

The workload's counter is the one charged most often in the run (the runner's own memcg charges
a few batches around it). Kernel addresses stay in this process: nothing is written but the
figures. The kprobe events (group chargeplay_PID) and the instance are removed at the end, and by
a guardian process if this one is killed.

    python -m lab run --kernel 6.12 -- .venv/bin/python benchmarks/stock_drains.py event-fds --high 8011776
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.throttle_check import run_alone, zoo_command
from collect.cgroup import memory_hierarchy
from collect.cleanup import start_guardian, wait_or_kill
from collect.memcg_probes import GROUP_PREFIX, kprobe_events_file, remove_group
from collect.tracefs import Instance, tracefs_root, write_setting

PROBES = {"batch": "page_counter_try_charge", "uncharge": "page_counter_uncharge"}
# The frames the stack trace trigger adds on top of the probed function.
PROBE_FRAMES = {"kprobe_trace_func", "kprobe_dispatcher", "kprobe_ftrace_handler"}
EVENT_LINE = re.compile(r"\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<t>[\d.]+): (?P<event>\w+): "
                        r"\(.*?\) counter=(?P<counter>0x[0-9a-f]+) nr_pages=(?P<nr>0x[0-9a-f]+)")
FRAME_LINE = re.compile(r"\s*=> (\S+)")


@dataclass
class Call:
    """One probed call: its context, time, counter, pages and stack (innermost first)."""

    comm: str
    t: float
    event: str
    counter: str
    pages: int
    stack: list[str] = field(default_factory=list)

    def under(self, function: str) -> str:
        """The function that called `function` in this stack ("?" when it is not in it)."""
        return self.stack[self.stack.index(function) + 1] if function in self.stack[:-1] else "?"


def parse(text: str) -> list[Call]:
    """The calls in an instance's trace file: each event line, then its stack trace's frames."""
    calls: list[Call] = []
    for line in text.splitlines():
        if match := EVENT_LINE.match(line):
            calls.append(Call(match["comm"], float(match["t"]), match["event"], match["counter"], int(match["nr"], 16)))
        elif (frame := FRAME_LINE.match(line)) and calls and frame[1] not in PROBE_FRAMES and not frame[1].startswith("0x"):
            calls[-1].stack.append(frame[1])
    return calls


def describe(name: str, run: dict, calls: list[Call]) -> str:
    """One run's figures: its batches by charging function, then each drain of its stock."""
    batches = [c for c in calls if c.event == "batch"]
    if not batches:
        return f"{name}: no batch charged"
    counter = Counter(c.counter for c in batches).most_common(1)[0][0]
    start = min(c.t for c in batches if c.counter == counter)
    mine = [c for c in calls if c.counter == counter]
    charged = Counter(c.under("try_charge_memcg") for c in mine if c.event == "batch")
    drains = [c for c in mine if c.event == "uncharge" and "drain_stock" in c.stack[:2]]
    lines = [f"{name}: {run['seconds']:.2f} s, {run['high_events']} high events, {sum(charged.values())} batches "
             f"({', '.join(f'{n} {f}' for f, n in charged.most_common())}), {len(drains)} stocks drained:"]
    for c in drains:
        chain = " < ".join(c.stack[c.stack.index("drain_stock") + 1:][:7])
        lines.append(f"  {c.t - start:8.3f} s  {c.pages:3} pages  {c.comm:16} {chain}")
    return "\n".join(lines)


def probed_run(instance: Instance, group: str, workload: list[str], high: int | None) -> tuple[dict, list[Call]]:
    """run_alone with the probes' events and stack traces on, and the calls they recorded."""
    instance.write("trace", "")  # the last run's events cleared
    for event in PROBES:
        instance.write(f"events/{group}/{event}/trigger", "stacktrace")
        instance.enable(group, event)
    instance.write("tracing_on", "1")
    try:
        run = run_alone(workload, high)
    finally:
        instance.write("tracing_on", "0")
        for event in PROBES:
            instance.write(f"events/{group}/{event}/enable", "0")
            instance.write(f"events/{group}/{event}/trigger", "!stacktrace")
    return run, parse((instance.path / "trace").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", help="zoo workload")
    parser.add_argument("--high", type=int, required=True, help="memory.high of the limited runs, bytes")
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--cpu", type=int, default=0, help="run the workload on this CPU only")
    parser.add_argument("--runs", type=int, default=2, help="limited runs")
    args = parser.parse_args()
    if memory_hierarchy()[0] != 2:
        print("stock_drains needs cgroup v2, where memory.high lives: run it in the kernel lab", file=sys.stderr)
        return 2
    root = tracefs_root()
    if not kprobe_events_file(root).exists():
        print("stock_drains needs kprobes (no kprobe_events in tracefs): run it in the kernel lab", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally blocks below remove what it made
    group = f"{GROUP_PREFIX}{os.getpid()}"
    instance = Instance(root, f"chargeplay-drains-{os.getpid()}")
    guardian = start_guardian([instance.path], None, group)
    try:
        for event, function in PROBES.items():
            write_setting(kprobe_events_file(root), f"p:{group}/{event} {function} counter=$arg1:x64 nr_pages=$arg2:x64\n",
                          append=True)
        instance.write("buffer_size_kb", "16384")
        workload = zoo_command(args.workload, args.scale, args.cpu)
        run_alone(workload, None)  # the page cache warm, as after throttle_check's capture
        for name, high in [("unlimited", None)] + [(f"memory.high {args.high}", args.high)] * args.runs:
            print(describe(name, *probed_run(instance, group, workload, high)), flush=True)
    finally:
        instance.remove()
        remove_group(root, group)
        guardian.stdin.close()  # nothing is left for it to remove
        wait_or_kill(guardian, 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
