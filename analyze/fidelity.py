"""Fidelity: a replay's prediction beside what the kernel that ran the workload did
(`chargeplay validate` captures, replays and then compares with this module).

What the kernel did never comes from the events of the trace being judged:
- reclaim calls and pages reclaimed come from validate's own observer (collect/observer.py), a
  second tracefs instance that followed the workload's tasks during the capture;
- peak usage, failcnt (v1), memory.events max and high (v2), OOM kills and final usage are the
  memcg's own counters, as the collector's sampler read them until the workload left
  (memcg.parquet: on v1 failcnt, max usage and oom_control's oom_kill; on v2 memory.events and
  memory.peak; usage on both). OOM kills are checked against the observer's OOM victims.

A trace or an observer that lost events certifies nothing: every row is "not measured".
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import polars as pl

from collect.observer import Observation
from replay.result_format import read_summary, read_timeseries
from replay.run import unseen_charges
from traces.manifest import TraceError
from traces.reader import Trace

# (metric, unit, largest relative error the model should make (None: no target), the error in
# units it may make however small the count (one reclaim call: 10% of fewer than ten calls is
# less than one), the cgroup versions whose counters observe it: failcnt is v1's, memory.events v2's)
METRICS = (
    ("reclaim invocations", "calls", 0.10, 1, (1, 2)),
    ("pages reclaimed", "pages", None, 0, (1, 2)),
    ("peak usage", "bytes", 0.05, 0, (1, 2)),
    ("charge failures (failcnt)", "failures", 0.25, 0, (1,)),
    ("memory.events max", "events", 0.25, 0, (2,)),
    ("memory.events high", "events", 0.10, 0, (2,)),
    ("OOM kills", "kills", 0.0, 0, (1, 2)),
    ("final usage", "bytes", None, 0, (1, 2)),
)
# The metrics the observer measures, by its figure's name.
OBSERVED_BY_OBSERVER = {"reclaim invocations": "reclaim_calls", "pages reclaimed": "pages_reclaimed"}


def observed(trace: Trace, observation: Observation) -> dict[str, int | None]:
    """What the kernel did: the observer's figures (None: not measured) and the memcg's last counters."""
    last = trace.last_memcg_sample()
    if last is None:
        raise TraceError(f"{trace.path}: no memcg counter samples (memcg.parquet); re-capture with chargeplay collect")
    return {
        **{metric: getattr(observation, figure) for metric, figure in OBSERVED_BY_OBSERVER.items()},
        "peak usage": int(last["max_usage"] or 0),
        "charge failures (failcnt)": int(last["failcnt"] or 0),  # v1's failcnt
        "memory.events max": int(last["failcnt"] or 0),  # v2's sampler keeps memory.events max there
        "memory.events high": int(last["events_high"] or 0),
        "OOM kills": int(last["events_oom_kill"] or 0),
        "final usage": int(last["usage"] or 0),
    }


def predicted(summary: dict, timeseries: pl.DataFrame) -> dict[str, int]:
    """What the model predicts, from one policy's replay summary and its usage series."""
    last = timeseries.sort("t_ns").row(-1, named=True) if timeseries.height else {"usage_bytes": 0}
    return {
        "reclaim invocations": sum(summary["reclaim_calls"].values()),
        "pages reclaimed": sum(summary["reclaimed_pages"].values()),
        "peak usage": summary["peak_bytes"],
        "charge failures (failcnt)": summary["failcnt"],
        "memory.events max": summary["max_events"],
        "memory.events high": summary["high_events"],
        "OOM kills": summary["oom_kills"],
        "final usage": int(last["usage_bytes"]),
    }


def relative_error(prediction: int, observation: int) -> float | None:
    """(predicted - observed) / observed; 0 when both are 0, None (infinite) when only observed is."""
    if observation == 0:
        return 0.0 if prediction == 0 else None
    return (prediction - observation) / observation


def uncertified(trace_lost: int, observation: Observation) -> str | None:
    """Why nothing can be certified (events were lost), or None."""
    if not trace_lost and not observation.lost:
        return None
    return (f"{trace_lost:,} events lost by the trace and {observation.lost:,} by the observer: nothing is certified "
            "(run validate again on a quieter machine, or with a larger --buffer-kb)")


def fidelity_table(prediction: dict[str, int], observation: dict[str, int | None], cgroup_version: int,
                   not_measured: dict[str, str]) -> list[dict]:
    """A row per metric of this cgroup version; `not_measured`: metric -> why it is not."""
    rows = []
    for metric, unit, target, slack, versions in METRICS:
        if cgroup_version not in versions:
            continue
        observed_value = observation[metric]
        error = None if observed_value is None else relative_error(prediction[metric], observed_value)
        reason = not_measured.get(metric)
        if reason is not None:
            met, status = None, "not measured"
        elif target is None:
            met, status = None, "no target"
        else:
            met = abs(prediction[metric] - observed_value) <= max(target * observed_value, slack)
            status = "met" if met else "not met"
        rows.append({"metric": metric, "unit": unit, "predicted": prediction[metric], "observed": observed_value,
                     "relative_error": error, "target": target, "slack": slack, "met": met, "status": status, "reason": reason})
    return rows


def compare(trace: Trace, result_dir: Path, policy_name: str, model: str, observation: Observation,
            source_lost: int = 0) -> dict:
    """The fidelity of a replay result (one policy) against what the kernel did while the trace
    was captured (the memcg's counters and the observer's figures). `source_lost`: events lost
    by the trace the result replayed, when that is another run's (validation.predict_from)."""
    summary = read_summary(result_dir)
    series = read_timeseries(result_dir).filter(pl.col("policy") == policy_name)
    target = trace.manifest.get("target", {})
    version = target.get("cgroup_version")
    kernel = observed(trace, observation)
    trace_lost = trace.manifest["lost"]["total"] + source_lost
    unseen = unseen_charges(trace)
    reason = f"{unseen}: nothing is certified" if unseen else uncertified(trace_lost, observation)
    unmeasured = {metric: observation.unmeasured[figure] for metric, figure in OBSERVED_BY_OBSERVER.items()
                  if figure in observation.unmeasured}
    not_measured = dict.fromkeys(kernel, reason) if reason else unmeasured
    return {
        "trace": str(trace.path),
        "kernel": trace.manifest.get("kernel", {}).get("release"),
        "model": model,
        "policy": policy_name,
        "workload": target.get("command"),
        "limits": summary["limits"],
        "cgroup_version": version,
        "measured": reason is None,
        "reason": reason,
        "lost_events": {"trace": trace_lost, "observer": observation.lost},
        "observer": asdict(observation),
        "oom_kills_cross_check": oom_cross_check(kernel["OOM kills"], observation),
        "rows": fidelity_table(predicted(summary["policies"][policy_name], series), kernel, version, not_measured),
    }


def oom_cross_check(memcg_kills: int, observation: Observation) -> dict:
    """The memcg's oom_kill counter beside the observer's mark_victim count. They may differ
    for a reason: the kernel also marks as a victim, without a kill, a task charging at the limit
    that is exiting anyway (out_of_memory's task_will_free_mem(current) path)."""
    victims = observation.oom_victims
    return {"memcg": memcg_kills, "observer": victims, "agree": None if victims is None else victims == memcg_kills}


def format_value(value: int | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value / (1 << 20):.2f} MiB" if unit == "bytes" else f"{value:,}"


def format_error(row: dict) -> str:
    if row["observed"] is None:
        return "-"
    return "inf" if row["relative_error"] is None else f"{row['relative_error']:+.1%}"


def format_target(row: dict) -> str:
    if row["target"] is None:
        return "not measured" if row["status"] == "not measured" else "-"
    if row["target"] == 0:
        return f"exact: {row['status']}"
    slack = f" or {row['slack']} {row['unit'][:-1] if row['slack'] == 1 else row['unit']}" if row.get("slack") else ""
    return f"within {row['target']:.0%}{slack}: {row['status']}"
