"""The eBPF backend: collect/kmem_bpf.c, loaded with bcc, read through a mapped ring buffer.

The program is compiled and attached by a loader process (collect/bpf_loader.py: bcc
stays out of this process, see there) that hands over the maps' file descriptors and
holds the programs attached until this process closes their socket or dies (the loader
dies with it: PR_SET_PDEATHSIG). The programs detach when the loader exits; nothing is
pinned or left in tracefs. This process works the maps with the bpf() system call.

Records are fixed-size (`struct record` in kmem_bpf.c). The ring buffer map is mapped
into this process (consumer page read-write, producer page and data read-only, the data
mapped twice by the kernel so a batch is one contiguous slice) and drained in batches:
one copy, a structured numpy view, and the consumer position advanced past the last
committed record. bcc's own ring_buffer_poll (a Python callback per record) is not used.

The records are then described to collect.decode.Decoder with synthetic EventFormats
(field name -> offset in `struct record`), so pseudonyms, call-site ids, task names and
the kind mapping are the tracefs backend's. What differs: the BPF program cannot read a
record's common_flags (bcc overwrites them), so `ctx` is null; and frees are filtered in
the kernel (by a workload task, or of an object a workload task allocated, whoever frees
it, in any context).
"""
from __future__ import annotations

import ctypes as ct
import json
import mmap
import os
import platform
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from collect.collector import INSTANCE_SUFFIXES, Collector, CaptureOptions, Progress
from collect.decode import TRACEPOINT_KINDS, Decoder
from collect.event_format import EventFormat, Field
from collect.ringbuf import RawEvents
from collect.bpf_loader import MAPS, Unavailable
from collect.cleanup import wait_or_kill
from traces.kernel_tables import gfp_bit, read_gfp_table, read_kernel_enums

LOADER = [sys.executable, "-m", "collect.bpf_loader"]

HEADER_SIZE = 8  # the ring buffer's record header: u32 len (bit 31 busy, bit 30 discard), u32 page offset
PAYLOAD_SIZE = 96  # sizeof(struct record)
RECORD_SIZE = HEADER_SIZE + PAYLOAD_SIZE  # already a multiple of 8
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
LOST_SLOT, OBJECTS_FULL_SLOT = 0, 1  # counters[] in kmem_bpf.c

# struct record, after the ring buffer's header.
RECORD_DTYPE = np.dtype({
    "names": ["len", "pg_off", "ts", "a", "p", "b", "c", "gfp", "pid", "type", "cpu", "s", "accounted", "pad", "name_loc", "name"],
    "formats": ["<u4", "<u4", "<u8", "<u8", "<u8", "<u8", "<u8", "<u4", "<i4", "<u2", "<u2", "<i2", "u1", "u1", "<u4", "S36"],
    "offsets": [0, 4, 8, 16, 24, 32, 40, 48, 52, 56, 58, 60, 62, 63, 64, 68],
    "itemsize": RECORD_SIZE,
})

# Field offsets inside the payload (struct record), by slot.
_SLOTS = {"a": (8, 8), "p": (16, 8), "b": (24, 8), "c": (32, 8), "gfp": (40, 4), "s": (52, 2), "accounted": (54, 1)}
NAME_LOC_OFFSET, NAME_OFFSET, NAME_LEN = 56, 60, 36
_COMMON = {"common_pid": Field("common_pid", 44, 4, True, False)}

# Record type id (T_* in kmem_bpf.c) -> tracepoint, and the tracepoint field each slot holds.
RECORD_TYPES: dict[int, tuple[str, str, dict[str, str | tuple[str, bool]]]] = {
    1: ("kmem", "kmalloc", {"call_site": "a", "ptr": "p", "bytes_req": "b", "bytes_alloc": "c", "gfp_flags": "gfp", "node": ("s", True)}),
    2: ("kmem", "kmem_cache_alloc", {"call_site": "a", "ptr": "p", "bytes_req": "b", "bytes_alloc": "c", "gfp_flags": "gfp",
                                     "node": ("s", True), "accounted": "accounted", "name": "name"}),
    3: ("kmem", "kfree", {"call_site": "a", "ptr": "p"}),
    4: ("kmem", "kmem_cache_free", {"call_site": "a", "ptr": "p", "name": "name"}),
    5: ("kmem", "mm_page_alloc", {"pfn": "p", "order": ("s", False), "gfp_flags": "gfp"}),
    6: ("kmem", "mm_page_free", {"pfn": "p", "order": ("s", False)}),
    7: ("memcg", "mod_memcg_state", {"id": "a", "item": ("gfp", True), "val": ("b", True)}),
    8: ("memcg", "mod_memcg_lruvec_state", {"id": "a", "item": ("gfp", True), "val": ("b", True)}),
    9: ("memcg", "count_memcg_events", {"id": "a", "item": ("gfp", True), "val": ("b", True)}),
    10: ("vmscan", "mm_vmscan_memcg_reclaim_begin", {"order": ("s", True), "gfp_flags": "gfp"}),
    11: ("vmscan", "mm_vmscan_memcg_reclaim_end", {"nr_reclaimed": "b"}),
    12: ("raw_syscalls", "sys_exit", {"id": ("a", True)}),
    13: ("oom", "mark_victim", {"pid": ("a4", True)}),
    14: ("sched", "sched_process_fork", {"child_pid": ("a4", True), "child_comm": "name"}),
    15: ("sched", "sched_process_exec", {"pid": ("a4", True), "filename": "name"}),
    16: ("task", "task_rename", {"pid": ("a4", True), "newcomm": "comm"}),
}


def record_formats() -> dict[int, tuple[str | None, EventFormat]]:
    """Record type id -> (trace kind, an EventFormat describing where struct record keeps its fields)."""
    formats = {}
    for type_id, (system, name, slots) in RECORD_TYPES.items():
        fields = dict(_COMMON)
        for field_name, slot in slots.items():
            slot, signed = slot if isinstance(slot, tuple) else (slot, False)
            if slot == "name":
                spec = Field(field_name, NAME_LOC_OFFSET, 4, False, True)
            elif slot == "comm":
                spec = Field(field_name, NAME_OFFSET, 16, False, False)
            elif slot == "a4":
                spec = Field(field_name, 8, 4, signed, False)
            else:
                offset, size = _SLOTS[slot]
                spec = Field(field_name, offset, size, signed, False)
            fields[field_name] = spec
        formats[type_id] = (TRACEPOINT_KINDS[(system, name)], EventFormat(system, name, type_id, fields, ""))
    return formats


def check_available() -> None:
    """Unavailable (saying what is missing) unless bcc loads here; checked in a subprocess."""
    if os.geteuid() != 0:
        raise Unavailable("loading BPF programs needs root")
    result = subprocess.run([*LOADER, "--check"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise Unavailable(result.stdout.strip() or result.stderr.strip().splitlines()[-1])


def _ring_pages(buffer_kb: int) -> int:
    """Ring buffer pages: what the tracefs backend allocates in all (buffer_kb for each CPU
    of each of its INSTANCE_SUFFIXES), rounded down to a power of two; one ring buffer
    serves every CPU, and the kernel allocates it whole when the map is created."""
    total_kb = buffer_kb * len(INSTANCE_SUFFIXES) * (os.cpu_count() or 1)
    pages = max(total_kb * 1024 // mmap.PAGESIZE, 1)
    return 1 << (pages.bit_length() - 1)


_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_MAP_LOOKUP_ELEM, _MAP_UPDATE_ELEM = 1, 2
_libc = ct.CDLL(None, use_errno=True)


class _MapAttr(ct.Structure):
    _fields_ = [("map_fd", ct.c_uint32), ("pad", ct.c_uint32), ("key", ct.c_uint64), ("value", ct.c_uint64), ("flags", ct.c_uint64)]


class BpfMap:
    """A BPF map by file descriptor, worked with the bpf() system call (fixed key/value types)."""

    def __init__(self, fd: int, key: type, value: type, per_cpu: bool = False) -> None:
        self.fd, self.key, self.value = fd, key, value
        self.cpus = _possible_cpus() if per_cpu else 1

    def _call(self, cmd: int, key: ct._SimpleCData, value: ct.Array | ct._SimpleCData) -> None:
        attr = _MapAttr(self.fd, 0, ct.addressof(key), ct.addressof(value), 0)
        if _libc.syscall(_SYS_BPF, cmd, ct.byref(attr), ct.sizeof(attr)) < 0:
            error = ct.get_errno()
            raise OSError(error, f"bpf map {'lookup' if cmd == _MAP_LOOKUP_ELEM else 'update'}: {os.strerror(error)}")

    def __setitem__(self, key: int, value: int) -> None:
        self._call(_MAP_UPDATE_ELEM, self.key(key), self.value(value))

    def per_cpu(self, key: int) -> list[int]:
        values = (self.value * self.cpus)()  # per-CPU values are 8-byte aligned: u64 here
        self._call(_MAP_LOOKUP_ELEM, self.key(key), values)
        return list(values)

    def close(self) -> None:
        os.close(self.fd)


def _possible_cpus() -> int:
    """How many values a per-CPU map holds: one per possible CPU (0-N ranges)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Loader:
    """The loader process and what it handed over: map fds, and whether charge probes attached."""

    def __init__(self, options: CaptureOptions) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket = ours
        self.process = subprocess.Popen(
            [*LOADER, str(theirs.fileno()), f"-DRINGBUF_PAGES={_ring_pages(options.buffer_kb)}"],
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
        self.records_fd = fd["records"]
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
        if hasattr(self, "records_fd"):
            os.close(self.records_fd)
        self.socket.close()
        wait_or_kill(self.process, timeout=10)
        self.process.stderr.close()


class RingReader:
    """Batch consumer of a BPF ring buffer map of fixed-size records, through mmap."""

    def __init__(self, map_fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.size = size
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self.consumer_pos = np.frombuffer(self._consumer, np.uint64, 1)
        self.producer_pos = np.frombuffer(self._producer, np.uint64, 1)
        self.data = np.frombuffer(self._producer, np.uint8, offset=page)

    def read(self) -> np.ndarray:
        """The committed records since the last read, as RECORD_DTYPE (consumed)."""
        consumer, producer = int(self.consumer_pos[0]), int(self.producer_pos[0])
        start = consumer & (self.size - 1)
        chunk = self.data[start : start + (producer - consumer)].copy()  # the data is mapped twice: no wrap
        if chunk.size % RECORD_SIZE:
            raise RuntimeError(f"BPF ring buffer holds {chunk.size} bytes, not whole {RECORD_SIZE}-byte records")
        records = chunk.view(RECORD_DTYPE)
        busy = (records["len"] & BUSY_BIT) != 0
        ready = int(np.argmax(busy)) if busy.any() else len(records)
        self.consumer_pos[0] = consumer + ready * RECORD_SIZE  # the kernel may reuse the space now
        records = records[:ready]
        return records[(records["len"] & DISCARD_BIT) == 0]

    def close(self) -> None:
        del self.consumer_pos, self.producer_pos, self.data
        self._consumer.close()
        self._producer.close()


def raw_events(records: np.ndarray) -> RawEvents:
    """The records as RawEvents over their own bytes (payloads at HEADER_SIZE + i*RECORD_SIZE)."""
    n = len(records)
    return RawEvents(
        ts=records["ts"].copy(), cpu=records["cpu"].copy(), type_id=records["type"].copy(),
        start=np.arange(n, dtype=np.int64) * RECORD_SIZE + HEADER_SIZE,
        length=np.full(n, PAYLOAD_SIZE, dtype=np.int32),
        data=records.view(np.uint8).reshape(-1), missed=0,
    )


class EbpfCollector(Collector):
    backend = "ebpf"

    def __init__(self, options: CaptureOptions, report: Callable[[Progress], None], say: Callable[[str], None], loader: Loader) -> None:
        super().__init__(options, report, say)
        self.loader = loader
        self.ring: RingReader | None = None

    def _owned_paths(self, root: Path) -> list[Path]:
        return []  # the BPF programs go with the loader, which dies with this process

    def _open_sources(self, root: Path) -> None:
        self.ring = RingReader(self.loader.records_fd, _ring_pages(self.options.buffer_kb) * mmap.PAGESIZE)
        self.tracked, self.config, self.counters = self.loader.tracked, self.loader.config, self.loader.counters
        if self.loader.charge_problem:
            self.say(f"charge probes unavailable: {self.loader.charge_problem}; recording tracepoints only")
        self.decoder = Decoder(
            formats=record_formats(),
            gfp_account=gfp_bit(read_gfp_table(root), "__GFP_ACCOUNT"),
            trace_flags=read_kernel_enums()["trace_flag_type"],
        )

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

    def _read_parts(self) -> list[RawEvents]:
        return [raw_events(self.ring.read())]

    def _sources_open(self) -> bool:
        return self.ring is not None

    def _counter(self, slot: int) -> list[int]:
        return self.counters.per_cpu(slot)

    def _lost_per_cpu(self) -> dict[int, int]:
        return dict(enumerate(self._counter(LOST_SLOT)))

    def _write_manifest(self) -> None:
        if self.ring is not None:
            self.manifest["ebpf"] = {"objects_not_followed": sum(self._counter(OBJECTS_FULL_SLOT)),
                                     "record_bytes": RECORD_SIZE, "ctx": "not recorded (null)"}
        super()._write_manifest()

    def _close_sources(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self.loader.close()
