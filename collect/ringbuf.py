"""Decoding ftrace's binary per-CPU ring buffer, as read from `per_cpu/cpuN/trace_pipe_raw`.

Every read of trace_pipe_raw hands out one whole sub-buffer ("page", `buffer_subbuf_size_kb`
KiB; 4096 bytes by default).  Layout, for a 64-bit little-endian kernel (see
`events/header_page` and kernel/trace/ring_buffer.c):

    u64 time_stamp     trace-clock time the events' deltas start from
    u64 commit         local_t: low bits = bytes of event data; bit 31 RB_MISSED_EVENTS (events
                       were lost before this page), bit 30 RB_MISSED_STORED (their count is a
                       u64 right after the data)
    u8  data[]         events, 4-byte aligned; nothing past `commit` is valid

Each event starts with a u32 header: type_len = low 5 bits, time_delta = high 27 bits.

    1..28  data: payload of type_len*4 bytes follows; ts += time_delta
    0      data: array[0] = 4 + payload bytes (it counts itself), payload from array[1];
           ts += time_delta
    29     padding: time_delta == 0 means the rest of the page is empty; otherwise a discarded
           event of 4 + array[0] bytes whose time_delta the kernel reader ignores
    30     TIME_EXTEND: ts += (array[0] << 27) + time_delta; 8 bytes
    31     TIME_STAMP: absolute (array[0] << 27) + time_delta, which has only the low 59 bits;
           the 5 MSBs come from the running timestamp (kernel's rb_fix_abs_ts); 8 bytes.
           Not only in absolute mode: 6.x forces one after a discarded or interrupted write.

The payload of a data event is the tracepoint record, starting with u16 common_type.
Payload lengths are rounded up to 4 bytes.
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from collect.event_format import Field
from collect.native import pointer, walks

PAGE_HEADER_SIZE = 16  # u64 time_stamp + u64 commit
MIN_EVENT_SIZE = 8  # smallest data event: header + one payload word

_INT_DTYPES = {
    (1, False): np.dtype("u1"),
    (2, False): np.dtype("<u2"),
    (4, False): np.dtype("<u4"),
    (8, False): np.dtype("<u8"),
    (1, True): np.dtype("i1"),
    (2, True): np.dtype("<i2"),
    (4, True): np.dtype("<i4"),
    (8, True): np.dtype("<i8"),
}


@dataclass
class RawEvents:
    """Data events decoded from ring buffer pages of one CPU, or several CPUs concatenated.

    `missed` sums the RB_MISSED counts of the pages: events the ring buffer lost before
    them.  A page flagged as missing events without a stored count contributes 1, so
    `missed > 0` is reliable while the exact number is a lower bound.
    """

    ts: np.ndarray  # uint64, absolute trace-clock timestamps
    cpu: np.ndarray  # uint16
    type_id: np.ndarray  # uint16, common_type: the event id of the format file
    start: np.ndarray  # int64, offset of each payload (at common_type) in `data`
    length: np.ndarray  # int32, payload length in bytes (a multiple of 4)
    data: np.ndarray  # uint8, the raw bytes `start` points into
    missed: int

    def __len__(self) -> int:
        return len(self.ts)


def parse_pages(buf: bytes | np.ndarray, cpu: int, page_size: int = 4096) -> RawEvents:
    """Decode whole trace_pipe_raw pages of one CPU (concatenated, in read order)."""
    data = np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, (bytes, bytearray, memoryview)) else buf
    if data.dtype != np.uint8 or data.ndim != 1:
        raise ValueError("pages must be bytes or a 1-d uint8 array")
    if page_size <= PAGE_HEADER_SIZE or page_size % 4:
        raise ValueError(f"page_size {page_size} is not a ring buffer sub-buffer size")
    if len(data) % page_size:
        raise ValueError(f"{len(data)} bytes are not whole pages of {page_size} bytes")
    data = np.ascontiguousarray(data)
    n_pages = len(data) // page_size
    bound = n_pages * ((page_size - PAGE_HEADER_SIZE) // MIN_EVENT_SIZE)
    outs = (
        np.empty(bound, np.uint64),
        np.empty(bound, np.uint16),
        np.empty(bound, np.uint16),
        np.empty(bound, np.int64),
        np.empty(bound, np.int32),
    )
    missed = ct.c_uint64(0)
    n = walks().walk_pages(data.ctypes.data, len(data) // 4, page_size // 4, cpu,
                           *(out.ctypes.data for out in outs), ct.byref(missed))
    ts, cpus, type_id, start, length = (out[:n].copy() for out in outs)
    return RawEvents(ts=ts, cpu=cpus, type_id=type_id, start=start, length=length, data=data, missed=missed.value)


def concat(parts: list[RawEvents]) -> RawEvents:
    """One RawEvents holding all events of `parts`, in order, over their concatenated bytes."""
    if not parts:
        return parse_pages(b"", cpu=0)
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(part.data) for part in parts[:-1]], dtype=np.int64)
    return _over(np.concatenate([part.data for part in parts]), parts, offsets)


def joined_in(buffer: np.ndarray, parts: list[RawEvents]) -> RawEvents:
    """concat for parts whose bytes are all views into `buffer`: over it, without a copy."""
    offsets = [part.data.ctypes.data - buffer.ctypes.data for part in parts]
    if any(offset < 0 or offset + len(part.data) > len(buffer) for offset, part in zip(offsets, parts)):
        raise ValueError("a part's bytes are not in the buffer")
    return _over(buffer, parts, offsets)


def _over(data: np.ndarray, parts: list[RawEvents], offsets) -> RawEvents:
    """The events of `parts`, in order, over `data`, where each part's bytes start at its offset."""
    return RawEvents(
        ts=np.concatenate([part.ts for part in parts]),
        cpu=np.concatenate([part.cpu for part in parts]),
        type_id=np.concatenate([part.type_id for part in parts]),
        start=np.concatenate([part.start + offset for part, offset in zip(parts, offsets)]),
        length=np.concatenate([part.length for part in parts]),
        data=data,
        missed=sum(part.missed for part in parts),
    )


def compact(raw: RawEvents) -> RawEvents:
    """A copy holding only these events' bytes, so held-back events do not pin whole pages."""
    start = np.zeros(len(raw), np.int64)
    np.cumsum(raw.length[:-1], out=start[1:])
    data = np.empty(int(raw.length.sum()), np.uint8)
    walks().copy_spans(pointer(raw.data, np.uint8), pointer(np.ascontiguousarray(raw.start), np.int64),
                       pointer(np.ascontiguousarray(raw.length), np.int32), len(raw), data.ctypes.data)
    return RawEvents(ts=raw.ts, cpu=raw.cpu, type_id=raw.type_id, start=start, length=raw.length, data=data, missed=0)


def _field_bytes(raw: RawEvents, select: np.ndarray, offset: int, size: int) -> np.ndarray:
    """An (n, size) uint8 matrix: `size` bytes at `offset` into each selected payload."""
    at = np.ascontiguousarray(raw.start[select] + offset, np.int64)
    out = np.empty((len(at), size), np.uint8)
    # a loop, not an (n, size) index matrix, which costs eight times the bytes it gathers
    walks().gather(pointer(raw.data, np.uint8), pointer(at, np.int64), len(at), size, out.ctypes.data)
    return out


def field_values(raw: RawEvents, select: np.ndarray, field: Field) -> np.ndarray:
    """A fixed-size integer field of the selected events (bool mask or index array)."""
    dtype = _INT_DTYPES.get((field.size, field.signed))
    if dtype is None:
        raise ValueError(f"field {field.name!r} of {field.size} bytes is not an integer")
    return _field_bytes(raw, select, field.offset, field.size).view(dtype).reshape(-1)


def string_values(raw: RawEvents, select: np.ndarray, field: Field) -> np.ndarray:
    """A `__data_loc` string field of the selected events, as an object array of str.

    Strings end at their first NUL (or their data_loc length) and are decoded as UTF-8
    with errors="replace".  Events repeat few strings, so each distinct one is decoded once.
    """
    if not field.data_loc:
        raise ValueError(f"field {field.name!r} is not a __data_loc field")
    loc = field_values(raw, select, Field(field.name, field.offset, 4, False, True)).astype(np.int64)
    start = raw.start[select] + (loc & 0xFFFF)
    end = np.empty(len(loc), np.int64)
    digest = np.empty(len(loc), np.uint64)
    _c_string_spans(raw.data, start, np.ascontiguousarray(loc >> 16), end, digest)
    _, first, inverse = np.unique(digest, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if not _spans_equal(raw.data, start, end, np.ascontiguousarray(first[inverse], np.int64)):
        return _decode_each(raw.data, start, end)  # a hash collision: compare the bytes themselves
    distinct = [raw.data[start[i] : end[i]].tobytes().decode("utf-8", errors="replace") for i in first]
    return np.array(distinct, dtype=object)[inverse]


def _c_string_spans(data: np.ndarray, start: np.ndarray, length: np.ndarray, end_out: np.ndarray, digest_out: np.ndarray) -> None:
    """End (first NUL, or start+length) and FNV-1a hash of each string."""
    walks().c_string_spans(pointer(data, np.uint8), len(data), pointer(start, np.int64), pointer(length, np.int64),
                           len(start), pointer(end_out, np.int64), pointer(digest_out, np.uint64))


def _spans_equal(data: np.ndarray, start: np.ndarray, end: np.ndarray, other: np.ndarray) -> bool:
    """Whether every string i has the same bytes as string other[i]."""
    return bool(walks().spans_equal(pointer(data, np.uint8), pointer(start, np.int64), pointer(end, np.int64),
                                    pointer(other, np.int64), len(start)))


def _decode_each(data: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    decoded: dict[bytes, str] = {}
    out = np.empty(len(start), dtype=object)
    for i, (s, e) in enumerate(zip(start.tolist(), end.tolist())):
        value = data[s:e].tobytes()
        if value not in decoded:
            decoded[value] = value.decode("utf-8", errors="replace")
        out[i] = decoded[value]
    return out


class CpuReader:
    """Non-blocking reader of one CPU's `trace_pipe_raw` in a tracefs instance (or the top level).

    Reading consumes: each page handed out is gone from the ring buffer.  A page the writer
    is still filling is handed out as a copy of its committed events, so pages may be partly
    empty; their `commit` says how much is valid.
    """

    def __init__(self, instance: Path, cpu: int, page_size: int | None = None) -> None:
        self.cpu = cpu
        self.page_size = page_size or _subbuf_size(instance)
        self._fd = os.open(instance / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw", os.O_RDONLY | os.O_NONBLOCK)

    def read_into(self, buffer: np.ndarray) -> int:
        """Read the whole pages readable now into `buffer` (uint8), as many as it holds, in one
        system call (readv: trace_pipe_raw hands out a page a read); the bytes read."""
        view = memoryview(buffer)
        pages = [view[at:at + self.page_size] for at in range(0, len(buffer) - self.page_size + 1, self.page_size)]
        try:
            n = os.readv(self._fd, pages)
        except OSError as err:
            if err.errno == errno.EAGAIN:
                return 0
            raise
        if n % self.page_size:
            raise OSError(f"trace_pipe_raw of cpu{self.cpu} returned {n} bytes, not whole {self.page_size}-byte pages")
        return n

    def read_available(self) -> bytearray:
        """Every whole page readable now (empty when the buffer is)."""
        pages, chunk = bytearray(), np.empty(64 * self.page_size, np.uint8)
        while n := self.read_into(chunk):
            pages += memoryview(chunk)[:n]
        return pages

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CpuReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _subbuf_size(instance: Path) -> int:
    """The instance's sub-buffer size in bytes; kernels before 6.8 only have 4096-byte pages."""
    setting = instance / "buffer_subbuf_size_kb"
    return int(setting.read_text()) * 1024 if setting.exists() else 4096
