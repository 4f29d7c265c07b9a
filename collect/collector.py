"""The collector core: run or attach to a workload in a memcg and record its kmem events,
from the event source a subclass opens (collect/tracefs_collector.py: private tracefs
instances; collect/ebpf.py: a BPF object); collect/capture.py picks one.

Every tick the source's buffers are drained, records from all CPUs and buffers are
merged by timestamp (holding back the last few milliseconds, which another CPU may
still be writing), decoded and appended to the current segment.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from collect import cgroup
from collect.cgroup import Memcg
from collect.cleanup import remove_stale, start_guardian, wait_or_kill
from collect.decode import TRACEPOINT_KINDS, Decoder
from collect.flight_recorder import DiskBudget, Trigger
from collect.lost_spans import add_lost
from collect.memcg_samples import SampleLog
from collect.native import walks
from collect.kernel_tables import read_gfp_table, read_kernel_enums
from collect.memcg_probes import stat_units
from collect.ringbuf import RawEvents, compact, concat
from collect.slabs import slab_names_by_size, slab_table
from collect.tracefs import tracefs_root
from traces.atomic import check_new_output, make_private_dir, write_json, write_parquet
from traces.errors import UserError
from traces.gfp import gfp_bit
from traces.manifest import MANIFEST, Manifest, new_manifest, wall_now
from traces.schema import CALL_SITE_ADDRESS_COLUMNS, OBJECT_ADDRESS_COLUMNS, table_schema
from traces.segments import Segment, SegmentWriter

TRACE_CLOCK = "mono"  # the trace clock that equals CLOCK_MONOTONIC, so user space can read it
HOLD_BACK_NS = 5_000_000
# The most a drain takes from one buffer (tracefs: pages of a CPU's buffer; eBPF: records of
# an output): what is left waits for the next drain, which follows at once. This bounds
# the collector's memory and keeps each drain short however fast events come. Measured on
# the storm benchmark (tracefs, 5 s, three runs each, a buffer per CPU and instance): drains of
# 512 pages peaked 10-16 MiB higher than 256 (144-160 MiB against 135-144) at about the same rate
# (1.33-1.45 against 1.31-1.47 M events/s, alternated: 2% fewer at most; with --all-allocations, two
# runs: 6.6-6.7 M events written against 6.8 M); 128 pages wrote 9% fewer.
DRAIN_PAGES = 256
DRAIN_RECORDS = 64 * 1024
DECODE_EVENTS = 32 * 1024  # decoded and written at a time: decoding takes about 400 bytes an event
COLLECTOR_PRIORITY_BOOST = 10  # nice levels: about 9x the workload's CPU share where they compete
# Without these a trace says nothing of kernel memory: a kernel that cannot give one is refused.
# The others are recorded where the kernel has them (6.1 and 6.12 have no memcg tracepoints).
ESSENTIAL_KINDS = ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "page_alloc", "page_free")


class CaptureError(UserError):
    """The capture cannot start or go on; the message says what to do."""


def _comm_of(tid: int) -> str:
    """A task's name; "" once it has exited, which it may do any time after its cgroup listed it."""
    try:
        return Path(f"/proc/{tid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@dataclass
class CaptureOptions:
    output: Path
    command: list[str] | None = None
    cgroup_path: str | None = None
    memory_max: int | None = None
    memory_high: int | None = None
    duration: float | None = None
    tick: float = 0.1
    segment_events: int = 2_000_000
    segment_seconds: float = 30.0
    buffer_kb: int | None = None  # KiB per CPU; None: the backend's DEFAULT_BUFFER_KB
    backend: str = "tracefs"  # tracefs, ebpf, or auto (eBPF when the BPF object loads, else tracefs)
    bpf_output: str = "auto"  # eBPF: ringbuf, perf (buffers), or auto (the ring buffer where the kernel has one)
    keep_addresses: bool = False  # also store raw kernel addresses (addresses/): never by default
    all_allocations: bool = False  # record slab allocations memcg does not charge too (default: the accounted only)
    max_size: int | None = None  # keep the newest closed segments within this many bytes (collect.flight_recorder)
    stop_on: list[Trigger] = field(default_factory=list)  # end the capture when one fires
    on_workload: Callable[[int], None] | None = None  # told the workload's pid once it runs (validate's observer follows it)
    collector_cpus: set[int] | None = None  # the collector's threads run on these CPUs only (the workload on ours)


@dataclass
class Progress:
    events: int = 0
    bytes_written: int = 0
    lost: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Collector(ABC):
    """What every backend shares: target, workload, merge, decode, segments, manifest and
    clean-up. A backend (collect.tracefs_collector.TracefsCollector, collect.ebpf.EbpfCollector)
    is an event source: it implements the hooks under "the event source" below."""

    backend: str  # the manifest's name for it

    def __init__(self, options: CaptureOptions, report: Callable[[Progress], None], say: Callable[[str], None]) -> None:
        self.options = options
        self.report = report
        self.say = say
        self.progress = Progress()
        self.memcg: Memcg | None = None
        self.created_memcg = False
        self.subtree: cgroup.Subtree | None = None  # the target and the memcgs its workload makes below it
        self.workload: subprocess.Popen | None = None
        self.stop_reason: str | None = None
        self.pending: RawEvents | None = None
        self.samples = SampleLog()
        self.first_sample: dict | None = None  # what the triggers measure from
        self.lost_spans: list[dict] = []  # collect.lost_spans
        self.last_drain_ns = 0  # trace time of the last drain
        self.next_sample_at = 0.0  # time.monotonic() of the next tick's sample

    # -- setting up -------------------------------------------------------------------

    def run(self) -> Manifest:
        walks()  # before anything is set up: where the compiled loops were not built, say so
        root = tracefs_root()
        for removed in remove_stale(root):
            self.say(f"removed stale {removed}")
        self._prepare_output()
        try:
            return self._capture(root)
        except BaseException:
            if not any(self.options.output.iterdir()):
                self.options.output.rmdir()  # refused before recording anything: no empty trace is left behind
            raise

    def _capture(self, root: Path) -> Manifest:
        self._open_target()
        self.guardian = start_guardian(self._owned_paths(root), self.memcg.path if self.created_memcg else None,
                                       self._owned_kprobe_group())
        self.gfp_flags, self.enums = read_gfp_table(root), read_kernel_enums()  # for the decoder and the manifest
        try:
            self._open_sources(root)
            self._start_manifest(root)
            self._trace()
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            out = self.options.output
            raise CaptureError(f"{out}: no space left on its device after {self.progress.events:,} events; the trace keeps "
                               f"the segments closed before (chargeplay info {out}); free space or choose another -o") from None
        finally:
            self._tear_down()  # a full disk ends the capture as if killed: closed segments and their manifest stand
        return self.manifest

    def _prepare_output(self) -> None:
        check_new_output(self.options.output)
        make_private_dir(self.options.output)

    def _open_target(self) -> None:
        if self.options.command:
            self.memcg, self.hierarchy_root = cgroup.create_child(f"{cgroup.CHILD_PREFIX}{os.getpid()}")
            self.created_memcg = True
            if self.options.memory_high is not None and self.memcg.version == 1:
                self.say("cgroup v1 has no memory.high: the kernel will not enforce --memory-high; "
                         "it is recorded as high_requested for replay")
            self.memcg.set_limits(self.options.memory_max, self.options.memory_high)
        else:
            self.memcg, self.hierarchy_root = cgroup.existing(self.options.cgroup_path or "")
        for trigger in self.options.stop_on:
            trigger.check_version(self.memcg.version)

    def _new_decoder(self, formats: dict, wanted: list[tuple[str, str]] | None = None) -> Decoder:
        """A decoder of the source's records (`formats`: type id -> (kind, layout)), and what
        each kind is made of on this kernel (`kinds`, for the manifest), said once. A kernel
        without what every trace needs is refused; `wanted`: the tracepoints asked for."""
        found = {(fmt.system, fmt.name) for _, fmt in formats.values()}
        # Cache names from /sys/kernel/slab (57 ms here) only where kmem_cache_alloc lacks its own (before 6.18).
        unnamed = any(kind == "kmem_cache_alloc" and "name" not in fmt.fields for kind, fmt in formats.values())
        decoder = Decoder(formats=formats, gfp_account=gfp_bit(self.gfp_flags, "__GFP_ACCOUNT"),
                          trace_flags=self.enums["trace_flag_type"], slab_names=slab_names_by_size() if unnamed else {},
                          stat_units=stat_units(self.enums))
        self.kinds, unavailable = kinds_on_this_kernel(decoder, found, wanted or [])
        for note in kind_notes(self.kinds, unavailable):
            self.say(note)
        return decoder

    def _start_manifest(self, root: Path) -> None:
        target = self.memcg.describe(self.hierarchy_root)
        target["created"] = self.created_memcg
        target["command"] = self.options.command
        target["high_requested"] = self.options.memory_high
        self.manifest = new_manifest(
            backend=self.backend, clock=TRACE_CLOCK, target=target,
            gfp_flags=self.gfp_flags, enums=self.enums, kinds=self.kinds,
        )
        self.manifest["sample_interval_s"] = self.options.tick
        self.manifest["addresses_kept"] = self.options.keep_addresses
        self.manifest["slab_allocations"] = "all" if self.options.all_allocations else "accounted"
        self.manifest["flight_recorder"] = {"max_size": self.options.max_size, "stop_on": [t.given for t in self.options.stop_on]}
        self._write_manifest()
        self.budget = DiskBudget(self.options.output, self.options.max_size) if self.options.max_size else None
        self.writer = SegmentWriter(
            self.options.output, self._segment_closed, self.options.segment_events, self.options.segment_seconds
        )

    # -- tracing ----------------------------------------------------------------------

    def _trace(self) -> None:
        self._raise_priority()
        self._keep_to_cpus()
        start_ns = time.monotonic_ns()
        self.decoder.t0 = start_ns
        self.decoder.keep_addresses = self.options.keep_addresses
        self.subtree = cgroup.Subtree(self.memcg, self.hierarchy_root)
        self.decoder.in_target = self._in_subtree
        self.manifest["start"]["trace_ns"] = start_ns
        # In before the workload starts: whoever sees it running may already ask us to stop.
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start_sources()
            self._sample(start_ns)  # the memcg as the workload finds it
            self._start_workload()  # turns the task instance on once its pid filter is set
            backlog = False
            while self.stop_reason is None:
                if not backlog:
                    time.sleep(self.options.tick)
                backlog = self._tick(start_ns)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self._stop_sources()
        self._sample(start_ns)  # and as it leaves it
        while self._drain(final=True):
            pass
        self.manifest["end"] = {"wall": wall_now(), "trace_ns": time.monotonic_ns()}
        self.writer.close_segment()

    def _raise_priority(self) -> None:
        """Run at a higher CPU priority than the workload (which keeps ours as we found it):
        when the two share a CPU, the workload waits rather than events being dropped."""
        self.workload_nice = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, max(self.workload_nice - COLLECTOR_PRIORITY_BOOST, -20))

    def _keep_to_cpus(self) -> None:
        """With collector_cpus, every thread of ours runs on those CPUs only (threads made later
        inherit it) and the workload on the CPUs we were given. Before 6.16 a CPU's page stock
        holds one memcg's pages: our own charges on the workload's CPU evict its stock, and its
        next charge takes a new batch, over memory.high a throttled return more (lab kernels, a
        capture under memory.high: up to 7 times the throttles of the run alone)."""
        self.workload_cpus = os.sched_getaffinity(0)
        if self.options.collector_cpus:
            for thread in os.listdir("/proc/self/task"):
                os.sched_setaffinity(int(thread), self.options.collector_cpus)

    def _in_subtree(self, ids: np.ndarray) -> np.ndarray:
        """Which memcg ids are the target's or below it; an id not known yet makes the collector
        look at the subtree again first."""
        inside = np.isin(ids, self.subtree.ids())
        if inside.all():
            return inside
        self.subtree.look()
        return np.isin(ids, self.subtree.ids())

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop_reason = signal.Signals(signum).name

    def _start_workload(self) -> None:
        """An empty set_event_pid traces every task, so the task instance is switched on
        only once the workload's pids are in it."""
        if not self.options.command:
            self._follow_cgroup_tasks()
            self._admit_done()
            return
        procs = self.memcg.path / "cgroup.procs"

        def enter_memcg_and_trace() -> None:  # runs in the child between fork and exec
            pid = os.getpid()
            os.setpriority(os.PRIO_PROCESS, 0, self.workload_nice)
            os.sched_setaffinity(0, self.workload_cpus)
            procs.write_text(str(pid))
            self._admit_in_child(pid)

        try:
            self.workload = subprocess.Popen(self.options.command, preexec_fn=enter_memcg_and_trace)
        except (FileNotFoundError, PermissionError) as err:
            raise CaptureError(f"cannot run {self.options.command[0]!r}: {err.strerror}; check the command") from None
        if self.options.on_workload is not None:
            self.options.on_workload(self.workload.pid)
        self.decoder.workload_pids.add(self.workload.pid)
        self.decoder.comms[self.workload.pid] = Path(self.options.command[0]).name[:15]

    def _follow_cgroup_tasks(self) -> None:
        """Attach mode: trace every task of the cgroup and the cgroups below it, including ones that join later."""
        known = self.decoder.workload_pids
        new = [tid for memcg in [self.memcg, *self.memcg.descendants()] for tid in memcg.threads() if tid not in known]
        for tid in new:
            self._admit(tid)
            self.decoder.comms[tid] = _comm_of(tid)
        known.update(new)

    def _tick(self, start_ns: int) -> bool:
        """Drain; once a tick (drains under a storm follow each other at once), sample the memcg,
        check whether to stop and report. True if a buffer still holds events."""
        sampling = time.monotonic() >= self.next_sample_at
        if sampling:
            self.subtree.look()  # before a memcg made below the target is gone again with its stat events' ids
        backlog = self._drain(final=False)
        if not sampling:
            return backlog
        self.next_sample_at = time.monotonic() + self.options.tick
        fired = self._fired(self._sample(start_ns))
        if fired is not None:
            self.stop_reason = fired
        elif self.workload is not None and self.workload.poll() is not None:
            self.stop_reason = f"workload exited with status {self.workload.returncode}"
        elif self.options.duration is not None and self.progress.seconds >= self.options.duration:
            self.stop_reason = "duration reached"
        elif self.workload is None:
            self._follow_cgroup_tasks()
        self.report(self.progress)
        return backlog

    def _fired(self, sample: dict | None) -> str | None:
        """Why a --stop-on trigger ends the capture at this sample (None: none fired)."""
        for trigger in self.options.stop_on if sample is not None else []:
            why = trigger.fired(self.first_sample, sample, self.memcg.version)
            if why is not None:
                return why
        return None

    def _drain(self, final: bool) -> bool:
        """Read every buffer, merge by time and write what no buffer can still precede;
        True if a buffer was read only up to its limit (then drain again at once)."""
        now = time.monotonic_ns()
        parts, unread_after = self._read_parts(self.pending)
        merged = concat(parts)
        order = np.argsort(merged.ts, kind="stable")
        if final and unread_after is None:
            ready = len(order)
        else:  # a buffer read up to its limit holds events from its last one read on
            horizon = now if unread_after is None else min(now, unread_after)
            ready = int(np.searchsorted(merged.ts[order], np.uint64(horizon - HOLD_BACK_NS)))
        self.pending = compact(_take(merged, order[ready:]))
        for first in range(0, ready, DECODE_EVENTS):
            self._write(self.decoder.decode(_take(merged, order[first:min(first + DECODE_EVENTS, ready)])))
        self.progress.seconds = (now - self.decoder.t0) / 1e9
        lost = self._lost_total()
        if lost > self.progress.lost:
            add_lost(self.lost_spans, self.last_drain_ns, now - self.decoder.t0, lost - self.progress.lost)
        self.progress.lost, self.last_drain_ns = lost, now - self.decoder.t0
        self.progress.bytes_written = _bytes_in(self.options.output / "events")
        return unread_after is not None

    def _write(self, table: pa.Table) -> None:
        self.writer.write(table)
        self.progress.events += table.num_rows

    def _sample(self, start_ns: int) -> dict | None:
        """Sample the memcg's counters (None: it is gone)."""
        try:
            sample = self.memcg.sample()
            if self.memcg.version == 1 and self.subtree is not None:
                sample["events_oom_kill"] = (sample["events_oom_kill"] or 0) + self.subtree.oom_kills_below()
        except OSError:
            return None  # the memcg went away with the workload; its last sample stands
        sample["ts_ns"] = time.monotonic_ns() - start_ns
        self.samples.append(sample)
        self.first_sample = self.first_sample or sample
        return sample

    def _lost_total(self) -> int:
        per_cpu = self._lost_per_cpu()
        return sum(per_cpu.values())

    # -- recording --------------------------------------------------------------------

    def _segment_closed(self, segment: Segment) -> None:
        self.manifest["segments"].append(segment.__dict__)
        self.manifest["events"] += segment.events
        self._write_addresses(Path(segment.file).name)
        gone = self.budget.over_budget(self.manifest, wall_now()) if self.budget else []
        if gone:
            self.samples.keep_from(self.manifest["segments"][0]["first_ts_ns"])
        self._write_samples()
        self._write_manifest()
        for path in gone:  # once the manifest no longer lists them
            path.unlink(missing_ok=True)

    def _write_addresses(self, segment_file: str) -> None:
        """--keep-addresses: the addresses of the objects allocated since the last segment
        closed, beside it (so they stay bounded in memory and survive a crash like it)."""
        if not self.options.keep_addresses:
            return
        pairs, self.decoder.addresses = self.decoder.addresses, []
        objs = np.concatenate([obj for obj, _ in pairs]) if pairs else np.zeros(0, np.int64)
        addresses = np.concatenate([address for _, address in pairs]) if pairs else np.zeros(0, np.uint64)
        make_private_dir(self.options.output / "addresses")
        write_parquet(self.options.output / "addresses" / segment_file,
                      pa.table({"obj": objs, "address": addresses}, schema=table_schema(OBJECT_ADDRESS_COLUMNS)))

    def _write_samples(self) -> None:
        if len(self.samples):
            write_parquet(self.options.output / "memcg.parquet", self.samples.table())

    def _write_manifest(self) -> None:
        per_cpu = self._lost_per_cpu() if self._sources_open() else {}
        self.manifest["lost"] = {"per_cpu": {str(c): n for c, n in per_cpu.items()}, "total": sum(per_cpu.values()),
                                 "spans": self.lost_spans}
        if self.subtree is not None:
            self.manifest["target"]["descendants"] = self.subtree.recorded_below()
        write_json(self.options.output / MANIFEST, self.manifest)

    def _finish_trace(self) -> None:
        out = self.options.output
        self._write_samples()
        write_parquet(out / "slabs.parquet", slab_table())
        write_parquet(out / "symbols.parquet", self.decoder.call_sites.symbol_table())
        if self.options.keep_addresses:
            sites = self.decoder.call_sites.ids
            write_parquet(out / "addresses" / "call_sites.parquet", pa.table(
                {"id": list(sites.values()), "address": list(sites.keys())}, schema=table_schema(CALL_SITE_ADDRESS_COLUMNS)))
        self.manifest["status"] = "complete"
        self.manifest["stop_reason"] = self.stop_reason
        self.manifest["collector"]["max_rss_bytes"] = peak_rss_bytes()
        self._write_manifest()

    def _tear_down(self) -> None:
        """Finish the trace if it got going, then remove everything set up, whatever happened."""
        try:
            if hasattr(self, "writer"):
                if self.stop_reason is not None:
                    self._finish_trace()
                else:
                    self.writer.abort()  # an error stopped the capture: closed segments stand
        finally:
            self._stop_workload()
            self._close_sources()
            if self.created_memcg and self.memcg is not None:
                self.memcg.remove()
            self.guardian.stdin.close()  # nothing is left for it to clean up
            self.guardian.wait()

    def _stop_workload(self) -> None:
        if self.workload is None or self.workload.poll() is not None:
            return
        self.workload.terminate()
        wait_or_kill(self.workload, timeout=5)


    # -- the event source -------------------------------------------------------------

    @abstractmethod
    def _owned_paths(self, root: Path) -> list[Path]:
        """What the guardian removes if this process dies without cleaning up."""

    def _owned_kprobe_group(self) -> str | None:
        """The kprobe event group the guardian removes if this process dies (None: it makes none)."""
        return None

    @abstractmethod
    def _open_sources(self, root: Path) -> None:
        """Set the source up, not yet recording, and self.decoder for its records (_new_decoder)."""

    @abstractmethod
    def _start_sources(self) -> None:
        """Start recording (the workload's tasks once admitted)."""

    @abstractmethod
    def _admit_in_child(self, pid: int) -> None:
        """Trace the workload's first task: called in it, between fork and exec."""

    @abstractmethod
    def _admit(self, tid: int) -> None:
        """Trace one more task (attach mode)."""

    @abstractmethod
    def _admit_done(self) -> None:
        """The tasks found at start are admitted: tracing may begin (attach mode)."""

    @abstractmethod
    def _read_parts(self, pending: RawEvents | None) -> tuple[list[RawEvents], int | None]:
        """The events read from every buffer, and `pending` (those the last drain held back),
        and the earliest timestamp after which a buffer read up to its limit may still hold
        events (None: every buffer was emptied)."""

    @abstractmethod
    def _sources_open(self) -> bool:
        """Whether _open_sources opened anything (whose lost events the manifest then counts)."""

    @abstractmethod
    def _lost_per_cpu(self) -> dict[int, int]:
        """Events the source had to drop, per CPU."""

    @abstractmethod
    def _stop_sources(self) -> None:
        """Stop recording; what the buffers hold is still read."""

    @abstractmethod
    def _close_sources(self) -> None:
        """Undo whatever _open_sources set up."""


def kinds_on_this_kernel(decoder: Decoder, found: set[tuple[str, str]], wanted: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Per kind, where its columns come from or why it has no events (the manifest's kinds),
    and the tracepoints that cannot be recorded, with why; CaptureError if one of them is
    essential. `found`: the tracepoints this kernel has of those `wanted`."""
    unavailable = {f"{s}:{e}": f"this kernel has no {s}:{e} tracepoint" for s, e in wanted if (s, e) not in found}
    unavailable |= decoder.unavailable
    kinds = dict(decoder.sources)
    for tracepoint, why in unavailable.items():
        kind = TRACEPOINT_KINDS[tuple(tracepoint.split(":"))]
        if kind in ESSENTIAL_KINDS:
            raise CaptureError(f"cannot capture on this kernel: {why} (needed for every {kind} event); "
                               f"use a kernel whose {tracepoint} tracepoint has it")
        if kind is not None:
            kinds[kind] = {"tracepoint": tracepoint, "unavailable": why}
    return kinds, unavailable


def kind_notes(kinds: dict[str, dict], unavailable: dict[str, str]) -> list[str]:
    """One line per thing this kernel does not give as 6.18 does: kinds it has no events of,
    columns inferred or left null, tracepoints without which task names may be missing."""
    missing = [kind for kind, entry in kinds.items() if "unavailable" in entry]
    tracepoints = [kinds[kind]["tracepoint"] for kind in missing if unavailable.get(kinds[kind]["tracepoint"], "").startswith("this kernel has no")]
    notes = [f"not on this kernel: {', '.join(missing)} events ("
             + (f"no {', '.join(tracepoints)} tracepoints" if len(tracepoints) == len(missing) else "; ".join(kinds[k]["unavailable"] for k in missing))
             + "); the trace has none (manifest: kinds)"] if missing else []
    for kind, entry in kinds.items():
        notes += [f"{kind}.{column}: {entry['tracepoint']} has no field for it on this kernel; inferred from {entry['columns'][column]} "
                  f"(how: manifest kinds.{kind}.inferred)" for column in entry.get("inferred", {})]
        notes += [f"{kind}.{column} is null: {why}" for column, why in entry.get("null", {}).items()]
    task_names = [why for tracepoint, why in unavailable.items() if TRACEPOINT_KINDS[tuple(tracepoint.split(":"))] is None]
    if task_names:
        notes.append(f"task names may be missing: {'; '.join(task_names)}")
    return notes


def earliest(known: int | None, ts: int) -> int:
    return ts if known is None else min(known, ts)


def _bytes_in(directory: Path) -> int:
    total = 0
    for path in directory.iterdir():
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass  # a segment renamed while we looked
    return total


def _take(raw: RawEvents, index: np.ndarray) -> RawEvents:
    """The events at `index`, in that order, over the same bytes."""
    return RawEvents(
        ts=raw.ts[index], cpu=raw.cpu[index], type_id=raw.type_id[index],
        start=raw.start[index], length=raw.length[index], data=raw.data, missed=0,
    )


def peak_rss_bytes() -> int:
    """This process's peak RSS since its exec (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that across fork and exec, so it counts the memory of whatever started the collector."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) * 1024
