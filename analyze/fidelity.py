"""Fidelity: a replay's prediction beside what the kernel that ran the workload did
(`chargeplay validate` captures, replays and then compares with this module).

What the kernel did comes from the trace itself: its memcg reclaim begin/end events (the
workload's tasks only) and the memcg's counters, sampled until the workload left
(memcg.parquet: on cgroup v1 failcnt, max usage and oom_control's oom_kill; on v2
memory.events max, high and oom_kill, and memory.peak; usage on both).
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from replay.result_format import read_summary, read_timeseries
from traces.manifest import TraceError
from traces.reader import Trace

# (metric, unit, largest relative error the model should make (None: no target), the cgroup
# versions whose counters observe it: failcnt is v1's, memory.events v2's)
METRICS = (
    ("reclaim invocations", "calls", 0.10, (1, 2)),
    ("pages reclaimed", "pages", None, (1, 2)),
    ("peak usage", "bytes", 0.05, (1, 2)),
    ("charge failures (failcnt)", "failures", None, (1,)),
    ("memory.events max", "events", None, (2,)),
    ("memory.events high", "events", 0.10, (2,)),
    ("OOM kills", "kills", 0.0, (1, 2)),
    ("final usage", "bytes", None, (1, 2)),
)


def observed(trace: Trace) -> dict[str, int]:
    """What the kernel did, from the trace's reclaim events and the memcg's last counters."""
    reclaims = (
        trace.events().filter(pl.col("kind") == "reclaim_end").select(pl.len().alias("calls"), pl.col("val").sum().alias("pages"))
        .collect().row(0, named=True)
    )
    samples = trace.side_table("memcg")
    if samples is None or samples.select(pl.len()).collect().item() == 0:
        raise TraceError(f"{trace.path}: no memcg counter samples (memcg.parquet); re-capture with chargeplay collect")
    last = samples.sort("ts_ns").collect().row(-1, named=True)
    return {
        "reclaim invocations": int(reclaims["calls"]),
        "pages reclaimed": int(reclaims["pages"] or 0),
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


def fidelity_table(prediction: dict[str, int], observation: dict[str, int], cgroup_version: int) -> list[dict]:
    rows = []
    for metric, unit, target, versions in METRICS:
        if cgroup_version not in versions:
            continue
        error = relative_error(prediction[metric], observation[metric])
        met = None if target is None else error is not None and abs(error) <= target
        rows.append({"metric": metric, "unit": unit, "predicted": prediction[metric], "observed": observation[metric],
                     "relative_error": error, "target": target, "met": met})
    return rows


def compare(trace: Trace, result_dir: Path, policy_name: str, model: str) -> dict:
    """The fidelity of a replay result (one policy) against the trace it replayed."""
    summary = read_summary(result_dir)
    series = read_timeseries(result_dir).filter(pl.col("policy") == policy_name)
    target = trace.manifest.get("target", {})
    version = target.get("cgroup_version")
    return {
        "trace": str(trace.path),
        "kernel": trace.manifest.get("kernel", {}).get("release"),
        "model": model,
        "policy": policy_name,
        "workload": target.get("command"),
        "limits": summary["limits"],
        "cgroup_version": version,
        "rows": fidelity_table(predicted(summary["policies"][policy_name], series), observed(trace), version),
    }


def format_value(value: int, unit: str) -> str:
    return f"{value / (1 << 20):.2f} MiB" if unit == "bytes" else f"{value:,}"


def format_error(error: float | None) -> str:
    return "inf" if error is None else f"{error:+.1%}"


def format_target(row: dict) -> str:
    if row["target"] is None:
        return "-"
    verdict = "met" if row["met"] else "not met"
    return f"exact: {verdict}" if row["target"] == 0 else f"within {row['target']:.0%}: {verdict}"

