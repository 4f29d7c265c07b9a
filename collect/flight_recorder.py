"""The flight recorder: a capture that keeps only its newest event segments within a disk
budget (`collect --max-size`), and triggers that end it when the target memcg's own counters
say something happened (`--stop-on`), so that the trace holds the lead-up to that moment.

Both work on what the collector has anyway: the closed segments the manifest lists, and the
memcg samples it takes every tick (traces.schema.MEMCG_COLUMNS).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from traces.errors import UserError
from traces.manifest import Manifest

TRIGGER_FORMS = "oom-kill, high:N or max:N"
# What each trigger watches: the sample's column, and its name in the kernel per cgroup version.
WATCHED = {
    "oom-kill": ("events_oom_kill", {1: "memory.oom_control oom_kill", 2: "memory.events oom_kill"}),
    "high": ("events_high", {2: "memory.events high"}),
    "max": ("failcnt", {1: "memory.failcnt", 2: "memory.events max"}),
}


@dataclass(frozen=True)
class Trigger:
    """Ends the capture once `column` of the memcg's samples has risen by `rise` since the first."""
    given: str  # as the user wrote it
    column: str
    rise: int
    counters: dict[int, str]  # the kernel's name for it, by cgroup version

    def fired(self, first: dict, now: dict, cgroup_version: int) -> str | None:
        """Why the capture stops, or None."""
        before, after = first.get(self.column), now.get(self.column)
        if before is None or after is None or after - before < self.rise:
            return None
        return f"--stop-on {self.given}: {self.counters[cgroup_version]} rose from {before} to {after}"

    def check_version(self, cgroup_version: int) -> None:
        if cgroup_version not in self.counters:
            raise UserError(f"--stop-on {self.given}: cgroup v{cgroup_version} has no {self.given.split(':')[0]} count; "
                            "use max:N (memory.failcnt) or oom-kill there")


def parse_trigger(text: str) -> Trigger:
    """oom-kill (any OOM kill in the target's subtree), high:N or max:N (memory.events' high or
    max count up by N since the start; cgroup v1 counts max in memory.failcnt)."""
    name, colon, count = text.partition(":")
    if name == "oom-kill" and not colon:
        rise = 1
    elif name in ("high", "max") and count.isdigit() and int(count) > 0:
        rise = int(count)
    else:
        raise UserError(f"--stop-on {text}: not understood; give {TRIGGER_FORMS} (N > 0: how far the count must rise)")
    column, counters = WATCHED[name]
    return Trigger(text, column, rise, counters)


class DiskBudget:
    """Keeps the closed segments a manifest lists within `max_bytes`: the oldest go first, the
    newest always stays. The manifest's `dropped` says how many went, what they held and when."""

    def __init__(self, trace_dir: Path, max_bytes: int) -> None:
        self.trace_dir = trace_dir
        self.max_bytes = max_bytes

    def over_budget(self, manifest: Manifest, wall: str) -> list[Path]:
        """Take the oldest segments off the manifest until the rest fit; the files to remove
        once the manifest saying so is written (a reader skips them meanwhile: `through`)."""
        segments, gone = manifest["segments"], []
        while len(segments) > 1 and sum(s["bytes"] for s in segments) > self.max_bytes:
            oldest = segments.pop(0)
            dropped = manifest.setdefault("dropped", {"segments": 0, "events": 0, "bytes": 0, "first_ts_ns": oldest["first_ts_ns"]})
            dropped["segments"] += 1
            dropped["events"] += oldest["events"]
            dropped["bytes"] += oldest["bytes"]
            dropped["through"] = oldest["file"]
            dropped["last_ts_ns"] = oldest["last_ts_ns"]
            dropped["last_dropped_wall"] = wall
            manifest["events"] -= oldest["events"]
            gone += [self.trace_dir / oldest["file"], self.trace_dir / "addresses" / Path(oldest["file"]).name]
        return gone

