"""The eBPF backend: collect/kmem_bpf.c, loaded with bcc, read through mapped buffers.

The program is compiled and attached by a loader process (collect/bpf_loader.py: bcc
stays out of this process, see there) that hands over the maps' file descriptors and
holds the programs attached until this process closes their socket or dies (the loader
dies with it: PR_SET_PDEATHSIG). The programs detach when the loader exits; nothing is
pinned or left in tracefs. This process works the maps with the bpf() system call and
reads the records in batches (collect/bpf_outputs.py): from a BPF ring buffer, or from
per-CPU perf buffers where the kernel has no ring buffer (before 5.8) or when asked
(`bpf_output="perf"`).

Compile-time facts come from the running kernel: struct kmem_cache's member offsets and
the slab tracepoints' argument types from its BTF (the program reads the cache's name and
sizes itself), SLAB_ACCOUNT from BTF's enum _slab_flag_bits, pid_max from /proc.

The records are described to collect.decode.Decoder (collect/ebpf_records.py). What
differs from tracefs: the BPF program cannot read a record's common_flags, so `ctx` is
null; and frees are filtered in the kernel (by a workload task, or of an object a
workload task allocated, whoever frees it, in any context).
"""
from __future__ import annotations

import ctypes as ct
import json
import mmap
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

from collect import bpf_outputs
from collect.bpf_loader import MAPS, Unavailable
from collect.bpf_outputs import BpfMap, PerfReader, RingReader
from collect.cleanup import wait_or_kill
from collect.collector import DRAIN_RECORDS, INSTANCE_SUFFIXES, CaptureOptions, Collector, Progress, earliest
from collect.ebpf_records import NAMED_RECORD_SIZE, RECORD_SIZE, raw_events, record_formats, slab_caches
from collect.ringbuf import RawEvents
from traces.kernel_tables import read_btf, read_btf_enums

LOADER = [sys.executable, "-m", "collect.bpf_loader"]
LOST_SLOT, OBJECTS_EVICTED_SLOT = 0, 1  # counters[] in kmem_bpf.c
OBJECT_SLOTS_LOG2 = 20  # `objects`: 1 M slots, 8 MiB; 0.4% of allocations evicted a live object on the overhead benchmark

# The raw tracepoints kmem_bpf.c reads, with the argument types it expects (TP_PROTO since 6.1).
SLAB_TRACEPOINT_ARGS = {
    "kmalloc": ["long unsigned int", "const void *", "size_t", "size_t", "gfp_t", "int"],
    "kmem_cache_alloc": ["long unsigned int", "const void *", "struct kmem_cache *", "gfp_t", "int"],
    "kfree": ["long unsigned int", "const void *"],
    "kmem_cache_free": ["long unsigned int", "const void *", "const struct kmem_cache *"],
}
KMEM_CACHE_MEMBERS = ("name", "object_size", "size", "flags")
SLAB_ACCOUNT_BEFORE_6_9 = 0x04000000  # include/linux/slab.h, before the flags became enum _slab_flag_bits


def kernel_layout() -> tuple[list[str], int]:
    """The cflags describing the running kernel to kmem_bpf.c, and SLAB_ACCOUNT's value;
    Unavailable if its slab tracepoints are not the ones the program reads."""
    try:
        btf = read_btf()
        for event, expected in SLAB_TRACEPOINT_ARGS.items():
            if (found := btf.tracepoint_args(event)) != expected:
                raise Unavailable(f"tracepoint {event} passes ({', '.join(found)}), not ({', '.join(expected)}) as since Linux 6.1")
        offsets = btf.member_offsets("kmem_cache", KMEM_CACHE_MEMBERS)
    except (OSError, KeyError, ValueError) as error:
        raise Unavailable(f"cannot read the kernel's slab layout from BTF: {error}") from None
    try:
        slab_account = 1 << read_btf_enums(["_slab_flag_bits"])["_slab_flag_bits"]["_SLAB_ACCOUNT"]
    except KeyError:
        slab_account = SLAB_ACCOUNT_BEFORE_6_9
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    cflags = [f"-DKMEM_CACHE_{member.upper()}={offset}" for member, offset in offsets.items()]
    return cflags + [f"-DPID_MAX={pid_max}", f"-DOBJECT_SLOTS_LOG2={OBJECT_SLOTS_LOG2}"], slab_account


def check_available() -> None:
    """Unavailable (saying what is missing) unless bcc loads here; checked in a subprocess."""
    if os.geteuid() != 0:
        raise Unavailable("loading BPF programs needs root")
    result = subprocess.run([*LOADER, "--check"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise Unavailable(result.stdout.strip() or result.stderr.strip().splitlines()[-1])


def _power_of_two(n: int) -> int:
    """The largest power of two <= n (1 for n < 1)."""
    return 1 << (max(n, 1).bit_length() - 1)


def _output_pages(buffer_kb: int) -> tuple[int, int]:
    """Pages for the `records` and `named` ring buffers: what the tracefs backend allocates
    in all (buffer_kb for each CPU of each of its INSTANCE_SUFFIXES), rounded down to a
    power of two, and a sixteenth of that for the rare named records. The kernel
    allocates a ring buffer whole when the map is created."""
    records = _power_of_two(buffer_kb * 1024 * len(INSTANCE_SUFFIXES) * (os.cpu_count() or 1) // mmap.PAGESIZE)
    return records, max(records // 16, 16)


def _output_cflags(bpf_output: str, buffer_kb: int) -> list[str]:
    if bpf_output == "perf":
        return ["-DPERF_OUTPUT"]
    records, named = _output_pages(buffer_kb)
    return [f"-DRINGBUF_PAGES={records}", f"-DNAMED_RINGBUF_PAGES={named}"]


def choose_output(requested: str) -> tuple[str, str | None]:
    """The output kmem_bpf.c writes to, and a note when that is not what was asked."""
    if bpf_outputs.ring_buffer_supported():
        return ("ringbuf", None) if requested != "perf" else ("perf", None)
    if requested == "ringbuf":
        raise Unavailable("this kernel has no BPF ring buffer (Linux 5.8+); use --bpf-output perf or auto")
    return "perf", None if requested == "perf" else "no BPF ring buffer in this kernel (before 5.8): using perf buffers"


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ct.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Loader:
    """The loader process and what it handed over: map fds, and whether charge probes attached."""

    def __init__(self, options: CaptureOptions) -> None:
        self.output, self.output_note = choose_output(options.bpf_output)
        layout, self.slab_account = kernel_layout()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket = ours
        self.process = subprocess.Popen(
            [*LOADER, str(theirs.fileno()), *layout, *_output_cflags(self.output, options.buffer_kb)],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        theirs.close()
        message, fds, _, _ = socket.recv_fds(ours, 1 << 16, len(MAPS))
        reply = json.loads(message or b"{}")
        if len(fds) != len(MAPS):
            for fd in fds:
                os.close(fd)
            self.socket.close()
            stderr = self.process.stderr.read().decode(errors="replace").strip().splitlines()
            self.process.wait()
            self.process.stderr.close()
            raise Unavailable(reply.get("error") or (stderr[-1] if stderr else f"the BPF loader exited with {self.process.returncode}"))
        fd = dict(zip(MAPS, fds))
        self.output_fds = (fd["records"], fd["named"])
        self.tracked = BpfMap(fd["tracked"], ct.c_uint32, ct.c_uint8)
        self.config = BpfMap(fd["config"], ct.c_int32, ct.c_uint64)
        self.counters = BpfMap(fd["counters"], ct.c_int32, ct.c_uint64, per_cpu=True)
        self.charge_problem: str | None = reply.get("charge_problem")

    def close(self) -> None:
        """Let the loader detach the programs and exit (once; later calls do nothing)."""
        if self.socket.fileno() < 0:
            return
        for name in ("tracked", "config", "counters"):
            if hasattr(self, name):
                getattr(self, name).close()
        for fd in getattr(self, "output_fds", ()):
            os.close(fd)
        self.socket.close()
        wait_or_kill(self.process, timeout=10)
        self.process.stderr.close()


class EbpfCollector(Collector):
    backend = "ebpf"

    def __init__(self, options: CaptureOptions, report: Callable[[Progress], None], say: Callable[[str], None], loader: Loader) -> None:
        super().__init__(options, report, say)
        self.loader = loader
        self.outputs: list[RingReader | PerfReader] = []  # records, then named records

    def _owned_paths(self, root: Path) -> list[Path]:
        return []  # the BPF programs go with the loader, which dies with this process

    def _open_sources(self, root: Path) -> None:
        loader = self.loader
        pages = _output_pages(self.options.buffer_kb)
        if loader.output == "perf":  # the same pages, split between the CPUs
            cpus = len(bpf_outputs.online_cpus())
            self.outputs = [PerfReader(BpfMap(fd, ct.c_uint32, ct.c_uint32), _power_of_two(n // cpus), size)
                            for fd, n, size in zip(loader.output_fds, pages, (RECORD_SIZE, NAMED_RECORD_SIZE))]
        else:
            self.outputs = [RingReader(fd, n * mmap.PAGESIZE, size)
                            for fd, n, size in zip(loader.output_fds, pages, (RECORD_SIZE, NAMED_RECORD_SIZE))]
        bpf_outputs.warm_up()
        self.tracked, self.config, self.counters = loader.tracked, loader.config, loader.counters
        for note in (loader.output_note, loader.charge_problem and f"charge probes unavailable: {loader.charge_problem}; recording tracepoints only"):
            if note:
                self.say(note)
        self.decoder = self._new_decoder(record_formats())

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

    def _read_parts(self) -> tuple[list[RawEvents], int | None]:
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
        return parts, unread_after

    def _sources_open(self) -> bool:
        return bool(self.outputs)

    def _counter(self, slot: int) -> list[int]:
        return self.counters.per_cpu(slot)

    def _lost_per_cpu(self) -> dict[int, int]:
        return dict(enumerate(self._counter(LOST_SLOT)))

    def _write_manifest(self) -> None:
        if self.outputs:
            self.manifest["ebpf"] = {"output": self.loader.output, "objects_evicted": sum(self._counter(OBJECTS_EVICTED_SLOT)),
                                     "record_bytes": RECORD_SIZE, "ctx": "not recorded (null)"}
        super()._write_manifest()

    def _close_sources(self) -> None:
        for output in self.outputs:
            output.close()
        self.outputs = []
        self.loader.close()
