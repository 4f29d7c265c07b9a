"""`chargeplay validate`: capture a workload under a limit, replay its trace under the model
of the kernel it ran on, and compare the prediction with what that kernel did
(analyze.fidelity). The one command that runs every stage, so it lives with the commands.

What the kernel did is not read from the trace's events: an observer of its own
(collect.observer) records the workload's reclaim calls and OOM victims beside the capture,
from before the workload starts until the capture ends."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from analyze.fidelity import compare
from collect.capture import capture
from collect.collector import CaptureOptions, Progress
from collect.observer import Observer
from replay import policy, run
from traces.atomic import check_new_output, make_private_dir, write_json
from traces.errors import UserError
from traces.reader import Trace


@dataclass
class Steps:
    """Progress callbacks: the capture's, then the replay's (step name, steps done)."""

    capturing: Callable[[Progress], None]
    replaying: Callable[[str, int], None]
    say: Callable[[str], None]


def validate(output: Path, command: list[str], memory_max: int | None, memory_high: int | None, buffer_kb: int,
             steps: Steps) -> dict:
    """Capture COMMAND in a fresh limited memcg into OUTPUT/trace (`buffer_kb`: the capture's
    per-CPU trace buffer), replay it under the running kernel's model into OUTPUT/result, and
    write OUTPUT/fidelity.json."""
    if memory_max is None and memory_high is None:
        raise UserError("give --memory-max (or --memory-high on cgroup v2): without a limit the kernel never reclaims")
    check_new_output(output)
    make_private_dir(output)
    with Observer() as observer:
        capture(CaptureOptions(output=output / "trace", command=command, memory_max=memory_max, memory_high=memory_high,
                               buffer_kb=buffer_kb, on_workload=observer.follow), steps.capturing, steps.say)
    trace = Trace.open(output / "trace")
    chosen, model = policy.for_kernel(trace.manifest["kernel"]["release"])
    steps.say(f"model: {model}")
    limits = run.limits_for(trace, None, None, swap=swap_active())
    run.replay(trace, output / "result", [chosen], limits, run.ENGINES["fast"], steps.replaying)
    fidelity = compare(trace, output / "result", chosen.name, model, observer.observation())
    write_json(output / "fidelity.json", fidelity)
    return fidelity


def swap_active() -> bool:
    """Whether reclaim may swap anon pages here: any swap device or file is on."""
    return len(Path("/proc/swaps").read_text().splitlines()) > 1
