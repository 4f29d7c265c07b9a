"""Where collect/kmem.bpf.c's records arrive, read in batches through mmap: a BPF ring
buffer (Linux 5.8+), or per-CPU perf buffers (older kernels), plus the bpf() map calls the
collector needs (standard library, ctypes and numpy).

Both readers return whole records as (bytes, payload offsets, whether a read limit left
some unread), one such batch per buffer: the kernel's own framing (the ring buffer's
8-byte header, the perf sample's header and size word) is stripped by offset, never copied
record by record.
"""
from __future__ import annotations

import ctypes as ct
import mmap
import os
import platform
import struct
from pathlib import Path

import numpy as np

from collect.native import pointer, walks
from traces.manifest import cpu_list

_SYSCALLS = {"x86_64": {"bpf": 321, "perf_event_open": 298}, "aarch64": {"bpf": 280, "perf_event_open": 241}}
_SYS = _SYSCALLS.get(platform.machine(), _SYSCALLS["x86_64"])
_MAP_LOOKUP_ELEM, _MAP_UPDATE_ELEM = 1, 2
_libc = ct.CDLL(None, use_errno=True)


class _MapAttr(ct.Structure):
    _fields_ = [("map_fd", ct.c_uint32), ("pad", ct.c_uint32), ("key", ct.c_uint64), ("value", ct.c_uint64), ("flags", ct.c_uint64)]


def possible_cpus() -> int:
    """How many values a per-CPU map holds: one per possible CPU (0-N ranges)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def online_cpus() -> list[int]:
    return cpu_list(Path("/sys/devices/system/cpu/online").read_text())


class BpfMap:
    """A BPF map by file descriptor, worked with the bpf() system call (fixed key/value types)."""

    def __init__(self, fd: int, key: type, value: type, per_cpu: bool = False) -> None:
        self.fd, self.key, self.value = fd, key, value
        self.cpus = possible_cpus() if per_cpu else 1

    def _call(self, cmd: int, key: ct._SimpleCData, value: ct.Array | ct._SimpleCData) -> None:
        attr = _MapAttr(self.fd, 0, ct.addressof(key), ct.addressof(value), 0)
        if _libc.syscall(_SYS["bpf"], cmd, ct.byref(attr), ct.sizeof(attr)) < 0:
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


def _copy_wrapping(data: np.ndarray, start: int, length: int) -> np.ndarray:
    """`length` bytes of a ring's data from `start`, copied out: in two slices where they wrap."""
    end = start + length
    return data[start:end].copy() if end <= data.size else np.concatenate((data[start:], data[: end - data.size]))


class RingReader:
    """Batch consumer of a BPF ring buffer map of fixed-size records.

    The consumer page is mapped read-write, the producer page and data read-only. The data
    is mapped once, not twice in a row as libbpf does so that a batch is one slice where it
    wraps: the batch is copied out anyway, in two slices where it wraps, and a second mapping
    would count the ring twice in this process's RSS. Each record is an 8-byte header (u32
    length, bit 31 busy, bit 30 discarded; u32 page offset) and the payload, padded to 8 bytes.
    """

    HEADER = 8
    BUSY_BIT, DISCARD_BIT = 1 << 31, 1 << 30

    def __init__(self, map_fd: int, size: int, payload: int) -> None:
        page = mmap.PAGESIZE
        self.size, self.payload = size, payload
        self.stride = self.HEADER + (payload + 7) // 8 * 8
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(map_fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self.consumer_pos = np.frombuffer(self._consumer, np.uint64, 1)
        self.producer_pos = np.frombuffer(self._producer, np.uint64, 1)
        self.data = np.frombuffer(self._producer, np.uint8, offset=page)

    def read(self, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """The committed records since the last read, at most `limit` (consumed): their bytes,
        payload offsets, and whether the limit left records unread (one batch: one buffer)."""
        consumer, producer = int(self.consumer_pos[0]), int(self.producer_pos[0])
        start = consumer & (self.size - 1)
        length = producer - consumer if limit is None else min(producer - consumer, limit * self.stride)
        chunk = _copy_wrapping(self.data, start, length)
        if chunk.size % self.stride:
            raise RuntimeError(f"BPF ring buffer holds {chunk.size} bytes, not whole {self.stride}-byte records")
        lengths = chunk.view(np.uint32)[:: self.stride // 4]
        busy = (lengths & self.BUSY_BIT) != 0
        ready = int(np.argmax(busy)) if busy.any() else len(lengths)  # records are committed in any order
        self.consumer_pos[0] = consumer + ready * self.stride  # the kernel may reuse the space now
        offsets = np.arange(ready, dtype=np.int64) * self.stride + self.HEADER
        return [(chunk, offsets[(lengths[:ready] & self.DISCARD_BIT) == 0], length < producer - consumer)]

    def close(self) -> None:
        del self.consumer_pos, self.producer_pos, self.data
        self._consumer.close()
        self._producer.close()


PERF_TYPE_SOFTWARE, PERF_COUNT_SW_BPF_OUTPUT, PERF_SAMPLE_RAW = 1, 10, 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_RECORD_SAMPLE = 9
_PERF_ATTR_SIZE = 128  # fields past what the kernel knows must be zero; these are
_DATA_HEAD, _DATA_TAIL = 1024, 1032  # offsets in struct perf_event_mmap_page


def _perf_event_open(cpu: int) -> int:
    """A BPF-output perf event on one CPU: what bpf_perf_event_output writes into."""
    attr = ct.create_string_buffer(_PERF_ATTR_SIZE)
    struct.pack_into("<IIQQQ", attr, 0, PERF_TYPE_SOFTWARE, _PERF_ATTR_SIZE, PERF_COUNT_SW_BPF_OUTPUT, 1, PERF_SAMPLE_RAW)
    fd = _libc.syscall(_SYS["perf_event_open"], attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        error = ct.get_errno()
        raise OSError(error, f"perf_event_open on cpu {cpu}: {os.strerror(error)}")
    return fd


def _perf_samples(words: np.ndarray, offsets_out: np.ndarray) -> tuple[int, int]:
    """Payload offsets (bytes) of the PERF_RECORD_SAMPLE records in 8-byte words of perf records
    (collect/walks.c: perf_samples), and the bytes of the whole records among them."""
    whole = ct.c_int64(0)
    n = walks().perf_samples(pointer(words, np.uint64), words.size, pointer(offsets_out, np.int64), ct.byref(whole))
    return n, whole.value


class PerfReader:
    """Batch consumer of per-CPU perf buffers behind a BPF perf event array map.

    One BPF-output perf event per online CPU, each with `pages` data pages mapped and its
    fd stored in the map at its CPU. The buffer is not mapped twice: a batch that wraps is
    copied in two pieces. Each sample is an 8-byte perf_event_header, a u32 size and the
    payload, padded to 8 bytes.
    """

    def __init__(self, perf_map: BpfMap, pages: int, payload: int) -> None:
        self.size = pages * mmap.PAGESIZE
        self.sample_size = 8 + (4 + payload + 7) // 8 * 8
        self.buffers: list[tuple[int, mmap.mmap]] = []
        for cpu in online_cpus():
            fd = _perf_event_open(cpu)
            buffer = mmap.mmap(fd, mmap.PAGESIZE + self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.buffers.append((fd, buffer))
            perf_map[cpu] = fd

    def read(self, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """Per CPU: the samples written since the last read, at most `limit` of them in all
        (consumed): their bytes, payload offsets, and whether the limit left some unread."""
        limit_bytes = None if limit is None else limit * self.sample_size // len(self.buffers)
        cpus = []
        for _fd, buffer in self.buffers:
            control = np.frombuffer(buffer, np.uint64, 2, offset=_DATA_HEAD)
            head, tail = int(control[0]), int(control[1])
            data = np.frombuffer(buffer, np.uint8, self.size, offset=mmap.PAGESIZE)
            length = head - tail if limit_bytes is None else min(head - tail, limit_bytes)
            chunk = _copy_wrapping(data, tail % self.size, length)
            offsets = np.empty(chunk.size // 16, np.int64)
            n, whole = _perf_samples(chunk.view(np.uint64), offsets)
            control[1] = tail + whole  # the kernel may reuse the space now
            cpus.append((chunk, offsets[:n], tail + whole < head))
            del control, data
        return cpus

    def close(self) -> None:
        for fd, buffer in self.buffers:
            buffer.close()
            os.close(fd)
        self.buffers = []


_MAP_CREATE, _MAP_TYPE_RINGBUF = 0, 27


def ring_buffer_supported() -> bool:
    """Whether this kernel has BPF ring buffer maps (5.8+): create a small one and close it."""
    attr = ct.create_string_buffer(struct.pack("<IIII", _MAP_TYPE_RINGBUF, 0, 0, mmap.PAGESIZE), 64)
    fd = _libc.syscall(_SYS["bpf"], _MAP_CREATE, attr, 64)
    if fd < 0:
        return False
    os.close(fd)
    return True
