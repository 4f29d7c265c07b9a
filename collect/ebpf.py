"""The eBPF backend: collect/kmem.bpf.c, a CO-RE object loaded with libbpf, read through
mapped buffers.

collect/bpf_loader.py loads and attaches the object in this process (libbpf, no compiler);
the programs detach when it is closed or this process dies (the kernel drops what its file
descriptors held: nothing is pinned or left in tracefs). This process works the maps with the
bpf() system call and reads the records in batches (collect/bpf_outputs.py): from a BPF ring
buffer, or from per-CPU perf buffers where the kernel has no ring buffer (before 5.8) or when
asked (`bpf_output="perf"`).

The records are described to collect.decode.Decoder (collect/ebpf_records.py). What
differs from tracefs: the BPF program cannot read a record's common_flags, so `ctx` is
null; and frees are filtered in the kernel (by a workload task, or of an object a
workload task allocated, whoever frees it, in any context).
"""
from __future__ import annotations

import ctypes as ct
import mmap
import os
from pathlib import Path
from typing import Callable

from collect import bpf_loader, bpf_outputs
from collect.bpf_loader import Unavailable, check_available
from collect.bpf_outputs import BpfMap, PerfReader, RingReader
from collect.collector import DRAIN_RECORDS, CaptureOptions, Collector, Progress, earliest
from collect.ebpf_records import NAMED_RECORD_SIZE, RECORD_SIZE, raw_events, record_formats, slab_caches
from collect.lost_spans import add_lost
from collect.ringbuf import RawEvents

__all__ = ["Loader", "EbpfCollector", "Unavailable", "check_available"]
LOST_SLOT, OBJECTS_EVICTED_SLOT = 0, 1  # counters[] in kmem.bpf.c


def _power_of_two(n: int) -> int:
    """The largest power of two <= n (1 for n < 1)."""
    return 1 << (max(n, 1).bit_length() - 1)


# KiB per CPU in the one records ring: a tick (0.1 s) of the most a CPU writes, 2 M records/s
# of 64 bytes (the storm of benchmarks/capture_storm.py: 32 MiB on 2 CPUs kept it lossless,
# 16 did not). The ring is mapped into this process, so it counts in its RSS, unlike tracefs's.
DEFAULT_BUFFER_KB = 16 * 1024


def _output_pages(buffer_kb: int | None) -> tuple[int, int]:
    """Pages for the `records` and `named` ring buffers: buffer_kb for each CPU, rounded
    down to a power of two, and a sixteenth of that for the rare named records. The kernel
    allocates a ring buffer whole when the map is created."""
    records = _power_of_two((buffer_kb or DEFAULT_BUFFER_KB) * 1024 * (os.cpu_count() or 1) // mmap.PAGESIZE)
    return records, max(records // 16, 16)


def choose_output(requested: str) -> tuple[str, str | None]:
    """The output kmem.bpf.c writes to, and a note when that is not what was asked."""
    if bpf_outputs.ring_buffer_supported():
        return ("ringbuf", None) if requested != "perf" else ("perf", None)
    if requested == "ringbuf":
        raise Unavailable("this kernel has no BPF ring buffer (Linux 5.8+); use --bpf-output perf or auto")
    return "perf", None if requested == "perf" else "no BPF ring buffer in this kernel (before 5.8): using perf buffers"


class Loader(bpf_loader.Loader):
    """kmem.bpf.o loaded and attached for a capture with these options."""

    def __init__(self, options: CaptureOptions) -> None:
        output, output_note = choose_output(options.bpf_output)
        self.pages = _output_pages(options.buffer_kb)  # (records, named)
        super().__init__(output, self.pages, options.all_allocations)
        if output_note:
            self.notes.insert(0, output_note)


class EbpfCollector(Collector):
    backend = "ebpf"

    def __init__(self, options: CaptureOptions, report: Callable[[Progress], None], say: Callable[[str], None], loader: Loader) -> None:
        super().__init__(options, report, say)
        self.loader = loader
        self.outputs: list[RingReader | PerfReader] = []  # records, then named records
        self.missed: dict[str, int] = {}  # per program, the calls the kernel skipped so far
        self.missed_spans: list[dict] = []  # collect.lost_spans, of those calls

    def _owned_paths(self, root: Path) -> list[Path]:
        return []  # the BPF programs detach when this process closes the loader or dies

    def _open_sources(self, root: Path) -> None:
        loader = self.loader
        pages = loader.pages
        if loader.output == "perf":  # the same pages, split between the CPUs
            cpus = len(bpf_outputs.online_cpus())
            self.outputs = [PerfReader(BpfMap(fd, ct.c_uint32, ct.c_uint32), _power_of_two(n // cpus), size)
                            for fd, n, size in zip(loader.output_fds, pages, (RECORD_SIZE, NAMED_RECORD_SIZE))]
        else:
            self.outputs = [RingReader(fd, n * mmap.PAGESIZE, size)
                            for fd, n, size in zip(loader.output_fds, pages, (RECORD_SIZE, NAMED_RECORD_SIZE))]
        self.tracked, self.config, self.counters = loader.tracked, loader.config, loader.counters
        for note in loader.notes:
            self.say(note)
        if loader.charge_problem:
            self.say(f"charge probes unavailable: {loader.charge_problem}; recording tracepoints only")
        formats = record_formats()
        recorded = {type_id: entry for type_id, entry in formats.items() if entry[1].name not in loader.absent}
        self.decoder = self._new_decoder(recorded, wanted=[(fmt.system, fmt.name) for _, fmt in formats.values()])

    def _start_sources(self) -> None:
        self.config[0] = self.memcg.id

    def _stop_sources(self) -> None:
        self.config[0] = 0

    def _admit_in_child(self, pid: int) -> None:
        self.tracked[pid] = 1

    def _admit(self, tid: int) -> None:
        self.tracked[tid] = 1

    def _admit_done(self) -> None:
        pass

    def _read_parts(self, pending: RawEvents | None) -> tuple[list[RawEvents], int | None]:
        """Records first, then named records: a slab record's T_CACHE was written before
        the record, so it is among the named records read after it (which are never left
        unread: they are few)."""
        records, named = self.outputs
        reads = [(*batch, RECORD_SIZE) for batch in records.read(DRAIN_RECORDS)]
        reads += [(*batch, NAMED_RECORD_SIZE) for batch in named.read()]
        parts, unread_after = [], None
        for data, offsets, capped, size in reads:
            part = raw_events(data, offsets, size)
            parts.append(part)
            if capped and len(part):
                unread_after = earliest(unread_after, int(part.ts.max()))
            if size == NAMED_RECORD_SIZE:
                self.decoder.slab_caches.update(slab_caches(part, self.loader.slab_account))
        return parts + ([pending] if pending is not None else []), unread_after

    def _sources_open(self) -> bool:
        return bool(self.outputs)

    def _drain(self, final: bool) -> bool:
        """The core's drain, and the calls the kernel skipped since the last one: it runs no BPF
        program while one runs on that CPU (libbpf.BpfObject.recursion_misses), so an interrupt
        that frees or uncharges during one goes unrecorded. An upper bound on the workload's
        events lost so (a skipped call may have been another task's, filtered out anyway)."""
        since = self.last_drain_ns
        backlog = super()._drain(final)
        missed = self.loader.bpf.recursion_misses()
        if (more := sum(missed.values()) - sum(self.missed.values())) > 0:
            add_lost(self.missed_spans, since, self.last_drain_ns, more)
        self.missed = missed
        return backlog

    def _counter(self, slot: int) -> list[int]:
        return self.counters.per_cpu(slot)

    def _lost_per_cpu(self) -> dict[int, int]:
        return dict(enumerate(self._counter(LOST_SLOT)))

    def _write_manifest(self) -> None:
        if self.outputs:
            loader = self.loader
            self.manifest["ebpf"] = {"output": loader.output, "objects_evicted": sum(self._counter(OBJECTS_EVICTED_SLOT)),
                                     "record_bytes": RECORD_SIZE, "ctx": "not recorded (null)",
                                     "buffer_bytes": [page_count * mmap.PAGESIZE for page_count in loader.pages],
                                     "btf_seconds": round(loader.facts_seconds, 4), "load_seconds": round(loader.load_seconds, 4), "tracepoints_absent": loader.absent,
                                     "charge_probes": loader.charge_functions,
                                     "skipped": {"total": sum(self.missed.values()),
                                                 "per_program": {name: n for name, n in self.missed.items() if n},
                                                 "spans": self.missed_spans}}
        super()._write_manifest()

    def _close_sources(self) -> None:
        for output in self.outputs:
            output.close()
        self.outputs = []
        self.loader.close()
