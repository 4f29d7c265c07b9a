"""The tracefs backend: the collector core (collect/collector.py) fed by tracefs instances.

Three private tracefs instances, so that each can be filtered in the kernel:

  chargeplay-PID        kmem allocations and frees, reclaim, syscall exits, OOM victims
                        and task names, for the workload's tasks only (set_event_pid +
                        event-fork: other tasks cost a pid check, no more)
  chargeplay-PID-memcg  memcg stat events of the target memcg and the memcgs its workload makes
                        below it (filter id >= ID, as cgroup ids only grow; user space keeps
                        the target's subtree, collect.cgroup.Subtree): the memcg
                        tracepoints, or on kernels without them (before 6.14) kprobe events
                        in group chargeplay_PID on the functions they sit in
                        (collect.memcg_probes)
  chargeplay-PID-others frees while any other task is current (set_event_notrace_pid +
                        event-fork with the workload's tasks, the task instance's complement):
                        RCU callbacks free the workload's objects in softirq whichever task is
                        current, and an exited task's mm_struct and page tables are freed by
                        whichever task runs next on its CPU (finish_task_switch); the
                        collector's own frees are filtered out in task context only (the
                        interrupts that come while it runs free the workload's objects too),
                        and not its mm_struct frees: an exited task's mm is freed by the
                        collector when it runs next on that CPU (the page tables freed with
                        it stay unseen).
                        Only frees of objects the workload allocated are kept (tracefs cannot
                        filter by object: user space does)
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from collect.collector import DRAIN_PAGES, TRACE_CLOCK, CaptureOptions, Collector, Progress, earliest
from collect.decode import load_formats
from collect.memcg_probes import GROUP_PREFIX, STAT_FUNCTIONS, MemcgProbes, plan_probes, read_probe_facts
from collect.ringbuf import CpuReader, RawEvents, joined_in, parse_pages
from collect.tracefs import Instance, write_setting

INSTANCE_SUFFIXES = ("", "-memcg", "-others")  # the task, memcg and other tasks' frees instances
DEFAULT_BUFFER_KB = 32 * 1024  # each CPU's buffer in each instance: kernel memory, in no RSS
TASK_EVENTS = [
    ("kmem", "kmalloc"), ("kmem", "kmem_cache_alloc"), ("kmem", "mm_page_alloc"),
    ("vmscan", "mm_vmscan_memcg_reclaim_begin"), ("vmscan", "mm_vmscan_memcg_reclaim_end"),
    ("raw_syscalls", "sys_exit"), ("oom", "mark_victim"),
    ("task", "task_newtask"), ("sched", "sched_process_exec"), ("sched", "sched_process_exit"), ("task", "task_rename"),
]
MEMCG_EVENTS = [("memcg", "mod_memcg_state"), ("memcg", "mod_memcg_lruvec_state"), ("memcg", "count_memcg_events")]
FREE_EVENTS = [("kmem", "kfree"), ("kmem", "kmem_cache_free"), ("kmem", "mm_page_free")]

IRQ_FLAGS = ("TRACE_FLAG_SOFTIRQ", "TRACE_FLAG_HARDIRQ", "TRACE_FLAG_NMI")


def free_filter(event: str, irq_mask: int, unless_by: list[int]) -> str | None:
    """Frees, but not those the tasks `unless_by` do in task context, other than an mm_struct's:
    an exited task's mm is freed by whichever task its CPU runs next (finish_task_switch), often
    the collector, which runs at a higher priority. kfree(NULL) and kfree(ZERO_SIZE_PTR) free
    nothing."""
    predicates = []
    if unless_by:
        others = " && ".join(f"common_pid != {tid}" for tid in unless_by)
        if event == "kmem_cache_free":
            others = f'({others}) || name == "mm_struct"'
        predicates.append(f"((common_flags & {irq_mask}) || ({others}))")
    if event == "kfree":
        predicates.append("ptr > 16")
    return " && ".join(predicates) or None


class TracefsCollector(Collector):
    backend = "tracefs"

    def __init__(self, options: CaptureOptions, report: Callable[[Progress], None], say: Callable[[str], None]) -> None:
        super().__init__(options, report, say)
        self.instances: list[Instance] = []
        self.readers: list[CpuReader] = []
        self.last_read_ts: dict[CpuReader, int] = {}  # the last event read from each buffer
        self.behind_at: int | None = None  # the earliest such of the buffers the last drain left events in
        self.buffer: np.ndarray | None = None  # what each drain reads into (_read_parts)

    def _owned_paths(self, root: Path) -> list[Path]:
        return [root / "instances" / f"chargeplay-{os.getpid()}{suffix}" for suffix in INSTANCE_SUFFIXES]

    def _owned_kprobe_group(self) -> str | None:
        return f"{GROUP_PREFIX}{os.getpid()}"

    def _open_sources(self, root: Path) -> None:
        tracepoints = load_formats(root / "events", TASK_EVENTS + MEMCG_EVENTS + FREE_EVENTS)
        probed = self._memcg_probes(root, {(fmt.system, fmt.name) for _, fmt in tracepoints.values()})
        stood_in = {("memcg", f.tracepoint) for f in STAT_FUNCTIONS if f.name in self.probes.created}
        wanted = [event for event in TASK_EVENTS + MEMCG_EVENTS + FREE_EVENTS if event not in stood_in]
        self.decoder = self._new_decoder({**tracepoints, **probed}, wanted)
        usable = {(fmt.system, fmt.name) for _, fmt in self.decoder.formats.values()}
        me = os.getpid()
        task, memcg_events, others = (Instance(root, f"chargeplay-{me}{s}") for s in INSTANCE_SUFFIXES)
        self.instances = [task, memcg_events, others]
        for instance in self.instances:
            instance.write("trace_clock", TRACE_CLOCK)
            instance.write("buffer_size_kb", str(self.options.buffer_kb or DEFAULT_BUFFER_KB))
            instance.write("options/overwrite", "0")  # a full buffer drops new events and counts them
        for instance in (task, others):
            instance.write("options/event-fork", "1")
        for system, event in TASK_EVENTS:
            if (system, event) in usable:
                task.enable(system, event, None if self.options.all_allocations else self._accounted_only(event))
        for system, event in MEMCG_EVENTS + [(fmt.system, fmt.name) for _, fmt in probed.values()]:
            if (system, event) in usable:
                memcg_events.enable(system, event, f"id >= {self.memcg.id}")
        irq_mask = sum(self.enums["trace_flag_type"][flag] for flag in IRQ_FLAGS)
        collector = sorted(int(tid) for tid in os.listdir("/proc/self/task"))
        for system, event in FREE_EVENTS:
            task.enable(system, event, free_filter(event, irq_mask, unless_by=[]))
            others.enable(system, event, free_filter(event, irq_mask, unless_by=collector))
        self.readers = [CpuReader(i.path, cpu) for i in self.instances for cpu in range(i.cpu_count())]

    def _accounted_only(self, event: str) -> str | None:
        """The filter that keeps only the slab allocations memcg charges, as the tracepoint's own
        `accounted` field says (kmem_cache_alloc, 6.0+); kmalloc has no such field, and its
        accounted caches are chosen by __GFP_ACCOUNT. None where the kernel cannot say."""
        fields = next((fmt.fields for _, fmt in self.decoder.formats.values() if fmt.name == event), {})
        if event == "kmem_cache_alloc" and "accounted" in fields:
            return "accounted == 1"
        if event == "kmalloc":
            return f"gfp_flags & {self.decoder.gfp_account:#x}"
        return None

    def _memcg_probes(self, root: Path, found: set[tuple[str, str]]) -> dict:
        """Kprobe events for the memcg tracepoints this kernel lacks (collect.memcg_probes), with
        their record layouts by event id; says what stands in, or why nothing can."""
        missing = [event for system, event in MEMCG_EVENTS if (system, event) not in found]
        plan = plan_probes(self._owned_kprobe_group(), missing, read_probe_facts(root) if missing else None)
        self.probes = MemcgProbes(root, self._owned_kprobe_group(), plan)
        formats = self.probes.create()
        for note in plan.notes():
            self.say(note)
        return formats

    def _start_sources(self) -> None:
        for instance in self.instances[1:]:  # the task instance waits for the workload's pid
            instance.write("tracing_on", "1")

    def _stop_sources(self) -> None:
        for instance in self.instances:
            instance.write("tracing_on", "0")

    def _admit_in_child(self, pid: int) -> None:
        task, _, others = self.instances
        write_setting(task.path / "set_event_pid", str(pid), append=True)  # first: no free goes unrecorded
        write_setting(others.path / "set_event_notrace_pid", str(pid), append=True)
        write_setting(task.path / "tracing_on", "1")

    def _admit(self, tid: int) -> None:
        task, _, others = self.instances
        task.write("set_event_pid", str(tid), append=True)
        others.write("set_event_notrace_pid", str(tid), append=True)

    def _admit_done(self) -> None:
        self.instances[0].write("tracing_on", "1")

    def _read_parts(self, pending: RawEvents | None) -> tuple[list[RawEvents], int | None]:
        """Every buffer's pages and the held-back events' bytes in one array, reused from drain
        to drain: the drain joins them without copying (a copy was a drain's size again in RSS)."""
        held = 0 if pending is None else len(pending.data)
        buffer = self._drain_buffer(held)
        parts, unread_after, used = [], None, _aligned(held)
        for reader in self.readers:
            last_read = self.last_read_ts.get(reader, 0)
            if self.behind_at is not None and last_read > self.behind_at:
                # Ahead of a buffer the last drain left events in: all this one holds is later, and
                # would only wait in memory until that one catches up (under a storm, the CPU the
                # collector shares with the workload writes fewer events, and its buffer runs ahead).
                # Unread, it holds events from its last one read on.
                unread_after = earliest(unread_after, last_read)
                continue
            room = DRAIN_PAGES * reader.page_size
            n = reader.read_into(buffer[used:used + room])
            part = parse_pages(buffer[used:used + n], reader.cpu, reader.page_size)
            used += n
            parts.append(part)
            if len(part):
                self.last_read_ts[reader] = int(part.ts.max())
            if n == room and len(part):
                unread_after = earliest(unread_after, int(part.ts.max()))
        if pending is not None:
            buffer[:held] = pending.data
            parts.append(replace(pending, data=buffer[:held]))
        self.behind_at = unread_after
        return [joined_in(buffer, parts)], unread_after

    def _drain_buffer(self, held: int) -> np.ndarray:
        """Room for the held-back events' bytes and a drain of every buffer; made anew when it
        is too small, or twice the size needed (once many held-back events have gone, their room
        would stay in RSS)."""
        size = _aligned(held) + sum(DRAIN_PAGES * reader.page_size for reader in self.readers)
        if self.buffer is None or not size <= len(self.buffer) <= 2 * size:
            self.buffer = np.empty(size, np.uint8)
        return self.buffer

    def _sources_open(self) -> bool:
        return bool(self.instances)

    def _lost_per_cpu(self) -> dict[int, int]:
        lost: dict[int, int] = {}
        for instance in self.instances:
            for cpu, count in instance.lost_per_cpu().items():
                lost[cpu] = lost.get(cpu, 0) + count
        return lost

    def _close_sources(self) -> None:
        for reader in self.readers:
            reader.close()
        try:
            for instance in self.instances:
                instance.remove()
        finally:
            if hasattr(self, "probes"):
                self.probes.remove()  # once no instance enables them


def _aligned(size: int) -> int:
    """`size` rounded up to 8 bytes: each page read lands 8-byte aligned, as its u64 header wants."""
    return -(-size // 8) * 8
