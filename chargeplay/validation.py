"""`chargeplay validate`: capture a workload under a limit, replay its trace under the model
of the kernel it ran on, and compare the prediction with what that kernel did
(analyze.fidelity). The one command that runs every stage, so it lives with the commands.

What the kernel did is not read from the trace's events: an observer of its own
(collect.observer) records the workload's reclaim calls and OOM victims beside the capture,
from before the workload starts until the capture ends."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from analyze.fidelity import compare
from collect.capture import capture
from collect.collector import CaptureOptions, Progress
from collect.observer import Observation, Observer
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


def validate(output: Path, command: list[str], memory_max: int | None, memory_high: int | None, buffer_kb: int | None,
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
    fidelity = judge(Trace.open(output / "trace"), output / "result", observer.observation(), steps)
    write_json(output / "fidelity.json", fidelity)
    return fidelity


def judge(trace: Trace, result_dir: Path, observation: Observation, steps: Steps) -> dict:
    """Replay a validate trace under the model of the kernel it ran on into RESULT_DIR, and
    compare with what that kernel did (`observation` and the trace's memcg counters)."""
    chosen, model = policy.for_kernel(trace.manifest["kernel"]["release"])
    steps.say(f"model: {model}")
    limits = run.limits_for(trace, None, None, swap=swap_active())
    run.replay(trace, result_dir, [chosen], limits, run.ENGINES["fast"], steps.replaying)
    return compare(trace, result_dir, chosen.name, model, observation)


def predict_from(source_dir: Path, validated: Path, result_dir: Path, steps: Steps) -> dict:
    """Judge an earlier validate run out of sample: the prediction is another run's trace of the
    same workload (SOURCE_DIR, a validate directory whose limit the workload never reached)
    replayed under the judged run's limits, so nothing the judged run's kernel decided (its
    reclaim, its OOM kills, its reclaim cost) feeds the model; the kernel's side is the judged
    run's own observation and counters."""
    source, judged = Trace.open(source_dir / "trace"), Trace.open(validated / "trace")
    chosen, model = policy.for_kernel(judged.manifest["kernel"]["release"])
    steps.say(f"model: {model}")
    judged_limits = run.limits_for(judged, None, None, swap=swap_active())
    limits = replace(run.limits_for(source, None, None, swap=judged_limits.swap),
                     max_pages=judged_limits.max_pages, high_pages=judged_limits.high_pages)
    run.replay(source, result_dir, [chosen], limits, run.ENGINES["fast"], steps.replaying)
    fidelity = compare(judged, result_dir, chosen.name, model, kept_observation(validated),
                       source_lost=source.manifest["lost"]["total"])
    return {**fidelity, "predicted_from": str(source.path)}


def rejudge(validated: Path, result_dir: Path, steps: Steps) -> dict:
    """Judge an earlier validate run (its directory) again under today's model: the same
    trace, the same observation (kept in its fidelity.json), a new replay into RESULT_DIR."""
    return judge(Trace.open(validated / "trace"), result_dir, kept_observation(validated), steps)


def kept_observation(validated: Path) -> Observation:
    """What the observer saw during an earlier validate run, as its fidelity.json keeps it."""
    return Observation(**json.loads((validated / "fidelity.json").read_text())["observer"])


def swap_active() -> bool:
    """Whether reclaim may swap anon pages here: any swap device or file is on."""
    return len(Path("/proc/swaps").read_text().splitlines()) > 1
