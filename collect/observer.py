"""The referee's own eyes: a minimal tracefs observer that `chargeplay validate` runs beside
the capture it judges, so that what the kernel did is not read back from the trace being judged.

Its private instance (chargeplay-PID-observer) records four tracepoints, for every task:
memcg reclaim begin and end, oom:mark_victim and sched:sched_process_fork. Started before the
workload, it sees the workload's root being forked and then every fork after it; it follows the
workload's task tree from the root pid itself (a task forked by a member is one; a pid reused by
a task forked outside the tree leaves it) and counts the tree's reclaim calls (begin events),
pages reclaimed (nr_reclaimed of the end events) and OOM victims (mark_victim's pid).

Nothing is lost unnoticed: overwrite is off, so a full buffer drops new events and the kernel
counts them (per_cpu/cpuN/stats); a thread drains the buffers every tick; the drops are reported
with the figures. A figure whose tracepoint (or field) this kernel lacks is not measured, with why.
A guardian (collect.cleanup) removes the instance if this process is killed; if the guardian is
killed too, the next capture sweeps it (collect.cleanup.OWNED_NAME).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from collect.cleanup import start_guardian
from collect.collector import TRACE_CLOCK
from collect.event_format import EventFormat, read_event_format
from collect.ringbuf import CpuReader, RawEvents, field_values, parse_pages
from collect.tracefs import Instance, remove_instance, tracefs_root

SUFFIX = "-observer"  # collect.cleanup.OWNED_NAME knows it: any capture sweeps a dead observer's instance
# Per CPU: about 80,000 of these events, far more than a CPU forks or reclaims between two drains.
BUFFER_KB = 4096
TICK = 0.1

# The tracepoints, in kind order, and the fields read from each (at most two).
FORK, RECLAIM_BEGIN, RECLAIM_END, MARK_VICTIM = range(4)
TRACEPOINTS = {
    FORK: ("sched", "sched_process_fork", ("parent_pid", "child_pid")),
    RECLAIM_BEGIN: ("vmscan", "mm_vmscan_memcg_reclaim_begin", ("common_pid",)),
    RECLAIM_END: ("vmscan", "mm_vmscan_memcg_reclaim_end", ("common_pid", "nr_reclaimed")),
    MARK_VICTIM: ("oom", "mark_victim", ("pid",)),  # the victim; common_pid is whoever killed it
}
# Each figure, from the events of one kind, among the tasks the fork events follow.
FIGURE_KINDS = {"reclaim_calls": RECLAIM_BEGIN, "pages_reclaimed": RECLAIM_END, "oom_victims": MARK_VICTIM}


@dataclass
class Observation:
    """What the observer saw the workload's tasks do; a figure is None when not measured."""

    reclaim_calls: int | None
    pages_reclaimed: int | None
    oom_victims: int | None
    tasks: int  # the workload's tasks followed, its root included
    lost: int  # events the kernel dropped from the observer's buffers
    unmeasured: dict[str, str] = field(default_factory=dict)  # figure -> why it is not measured


class Observer:
    """`with Observer() as observer:` records from entry to exit; `observer.follow(pid)`
    names the workload's root (once it is forked), `observer.observation()` counts."""

    def __init__(self, buffer_kb: int = BUFFER_KB) -> None:
        self.buffer_kb = buffer_kb
        self.root: int | None = None
        self.readers: list[CpuReader] = []
        self.chunks: list[np.ndarray] = []  # rows of (ts, kind, first field, second field)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.lost = 0

    def follow(self, root: int) -> None:
        self.root = root

    def __enter__(self) -> Observer:
        root = tracefs_root()
        self.path = root / "instances" / f"chargeplay-{os.getpid()}{SUFFIX}"
        self.guardian = start_guardian([self.path], None)
        try:
            self.instance = Instance(root, self.path.name)
            self.formats, self.unavailable = _formats(self.instance.path / "events")
            self.instance.write("trace_clock", TRACE_CLOCK)  # one clock on every CPU: forks order the tree
            self.instance.write("buffer_size_kb", str(self.buffer_kb))
            self.instance.write("options/overwrite", "0")  # a full buffer drops new events and counts them
            for kind in self.formats:
                system, event, _ = TRACEPOINTS[kind]
                self.instance.enable(system, event)
            self.readers = [CpuReader(self.instance.path, cpu) for cpu in range(self.instance.cpu_count())]
            self.instance.write("tracing_on", "1")
        except BaseException:
            self._remove()
            raise
        self.thread = threading.Thread(target=self._drain_every_tick, name="observer", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        try:
            self.instance.write("tracing_on", "0")
            while self._drain():
                pass
            self.lost = sum(self.instance.lost_per_cpu().values())
        finally:
            self._remove()
        if self.error is not None:
            raise self.error

    def observation(self) -> Observation:
        """Count, in time order, the events of the tasks forked from the root (follow)."""
        rows = np.concatenate(self.chunks) if self.chunks else np.zeros((0, 4), np.int64)
        rows = rows[np.argsort(rows[:, 0], kind="stable")]
        tree: set[int] = set()
        followed: set[int] = set()
        counts = dict.fromkeys(FIGURE_KINDS, 0)
        for _, kind, first, second in rows.tolist():
            if kind == FORK:  # first: the parent, second: the child
                if first in tree or second == self.root:
                    tree.add(second)
                    followed.add(second)
                else:
                    tree.discard(second)  # a pid of the tree, reused outside it
            elif first in tree:
                counts["reclaim_calls"] += kind == RECLAIM_BEGIN
                counts["pages_reclaimed"] += second if kind == RECLAIM_END else 0
                counts["oom_victims"] += kind == MARK_VICTIM
        unmeasured = {figure: self.unavailable[need] for figure, kind in FIGURE_KINDS.items()
                      for need in (FORK, kind) if need in self.unavailable}
        if not followed and FORK not in self.unavailable:  # zeros would pass for a workload that did nothing
            unmeasured = dict.fromkeys(FIGURE_KINDS, f"no fork of the workload's root (pid {self.root}) was seen")
        figures = {figure: None if figure in unmeasured else count for figure, count in counts.items()}
        return Observation(**figures, tasks=len(followed), lost=self.lost, unmeasured=unmeasured)

    def _drain_every_tick(self) -> None:
        try:
            while not self.stop.wait(TICK):
                self._drain()
        except BaseException as error:  # re-raised on exit: a referee that stopped looking certifies nothing
            self.error = error

    def _drain(self) -> bool:
        """Read what every CPU's buffer holds; whether anything was read."""
        read = False
        for reader in self.readers:
            pages = reader.read_available()
            if pages:
                self.chunks.append(_rows(parse_pages(pages, reader.cpu, reader.page_size), self.formats))
                read = True
        return read

    def _remove(self) -> None:
        for reader in self.readers:
            reader.close()
        try:
            remove_instance(self.path)
        finally:
            self.guardian.stdin.close()  # nothing is left for it to remove
            self.guardian.wait()


def _formats(events: Path) -> tuple[dict[int, EventFormat], dict[int, str]]:
    """The format of each kind this kernel can record, and why the others cannot be."""
    formats, unavailable = {}, {}
    for kind, (system, event, fields) in TRACEPOINTS.items():
        if not (events / system / event / "format").exists():
            unavailable[kind] = f"this kernel has no {system}:{event} tracepoint"
            continue
        fmt = read_event_format(events, system, event)
        missing = [name for name in fields if name not in fmt.fields]
        if missing:
            unavailable[kind] = f"{system}:{event} has no {', '.join(missing)} field on this kernel"
        else:
            formats[kind] = fmt
    return formats, unavailable


def _rows(raw: RawEvents, formats: dict[int, EventFormat]) -> np.ndarray:
    """(ts, kind, first field, second field or 0) of each event, kind by kind."""
    parts = []
    for kind, fmt in formats.items():
        select = np.flatnonzero(raw.type_id == fmt.id)
        columns = [raw.ts[select].astype(np.int64), np.full(len(select), kind, np.int64)]
        columns += [field_values(raw, select, fmt.fields[name]).astype(np.int64) for name in TRACEPOINTS[kind][2]]
        columns += [np.zeros(len(select), np.int64)] * (4 - len(columns))
        parts.append(np.column_stack(columns))
    return np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
