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

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from common.jit import njit
import numpy as np

from collect.event_format import Field

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


# Page walk; word indices are u32 offsets into the whole buffer.
_COMMIT_LENGTH_MASK = (1 << 30) - 1
_MISSED_EVENTS = 1 << 31
_MISSED_STORED = 1 << 30
_TYPE_PADDING = 29
_TYPE_TIME_EXTEND = 30
_TYPE_TIME_STAMP = 31
_TS_SHIFT = 27
_TS_MSB = 0xF8 << 56


@njit
def _fix_absolute_ts(absolute: np.uint64, running: np.uint64) -> np.uint64:
    """Give a 59-bit absolute timestamp the 5 MSBs of the running one (kernel: rb_fix_abs_ts)."""
    msb = running & np.uint64(_TS_MSB)
    if msb:
        absolute |= msb
        if absolute < running:
            absolute += np.uint64(1) << np.uint64(59)
    return absolute


@njit
def _walk_pages(words, page_words, cpu, ts_out, cpu_out, type_out, start_out, length_out):
    """Decode the data events of every page into the *_out arrays; returns (count, missed).

    A malformed event (impossible length) ends the walk of its page rather than the decode.
    """
    n = 0
    missed = np.uint64(0)
    capacity = (page_words - 4) * 4  # data bytes a page can hold
    for page in range(words.size // page_words):
        base = page * page_words
        ts = np.uint64(words[base]) | (np.uint64(words[base + 1]) << np.uint64(32))
        commit = np.int64(words[base + 2])  # flags live in the low 32 bits of the local_t
        size = min(commit & _COMMIT_LENGTH_MASK, capacity) // 4 * 4
        if commit & _MISSED_EVENTS:
            if commit & _MISSED_STORED and size + 8 <= capacity:
                count_at = base + 4 + size // 4
                missed += np.uint64(words[count_at]) | (np.uint64(words[count_at + 1]) << np.uint64(32))
            else:
                missed += np.uint64(1)
        pos = base + 4
        end = base + 4 + size // 4
        while pos < end:
            header = words[pos]
            type_len = np.int64(header & 31)
            delta = np.uint64(header >> 5)
            # array[0]: a length, a time extension or the first payload word, by type.
            array0 = np.int64(words[pos + 1]) if pos + 1 < end else np.int64(0)
            if type_len == _TYPE_PADDING:
                if delta == 0 or array0 == 0:
                    break  # the rest of the page is empty
                pos += 1 + array0 // 4
                continue
            if type_len == _TYPE_TIME_EXTEND:
                ts += (np.uint64(array0) << np.uint64(_TS_SHIFT)) + delta
                pos += 2
                continue
            if type_len == _TYPE_TIME_STAMP:
                ts = _fix_absolute_ts((np.uint64(array0) << np.uint64(_TS_SHIFT)) + delta, ts)
                pos += 2
                continue
            if type_len == 0:
                if array0 < 8:
                    break  # corrupt: a long event carries at least one payload word
                payload = pos + 2
                following = pos + 1 + array0 // 4
            else:
                payload = pos + 1
                following = pos + 1 + type_len
            if following > end:
                break  # truncated at the commit boundary
            ts += delta
            ts_out[n] = ts
            cpu_out[n] = cpu
            type_out[n] = words[payload] & 0xFFFF
            start_out[n] = payload * 4
            length_out[n] = (following - payload) * 4
            n += 1
            pos = following
    return n, missed


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
    words = data.view("<u4")
    n, missed = _walk_pages(words, page_size // 4, np.uint16(cpu), *outs)
    ts, cpus, type_id, start, length = (out[:n].copy() for out in outs)
    return RawEvents(ts=ts, cpu=cpus, type_id=type_id, start=start, length=length, data=data, missed=int(missed))


def concat(parts: list[RawEvents]) -> RawEvents:
    """One RawEvents holding all events of `parts`, in order, over their concatenated bytes."""
    if not parts:
        return parse_pages(b"", cpu=0)
    offsets = np.cumsum([0] + [len(part.data) for part in parts[:-1]], dtype=np.int64)
    return RawEvents(
        ts=np.concatenate([part.ts for part in parts]),
        cpu=np.concatenate([part.cpu for part in parts]),
        type_id=np.concatenate([part.type_id for part in parts]),
        start=np.concatenate([part.start + offset for part, offset in zip(parts, offsets)]),
        length=np.concatenate([part.length for part in parts]),
        data=np.concatenate([part.data for part in parts]),
        missed=sum(part.missed for part in parts),
    )


def _field_bytes(raw: RawEvents, select: np.ndarray, offset: int, size: int) -> np.ndarray:
    """An (n, size) uint8 matrix: `size` bytes at `offset` into each selected payload."""
    at = raw.start[select] + offset
    out = np.empty((len(at), size), np.uint8)
    _gather(raw.data, at, out)
    return out


@njit
def _gather(data, at, out):
    """out[i] = data[at[i] : at[i] + out.shape[1]]: a loop, not an (n, size) index matrix,
    which costs eight times the bytes it gathers."""
    for i in range(at.size):
        for k in range(out.shape[1]):
            out[i, k] = data[at[i] + k]


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
    _c_string_spans(raw.data, start, loc >> 16, end, digest)
    _, first, inverse = np.unique(digest, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if not _spans_equal(raw.data, start, end, first[inverse]):
        return _decode_each(raw.data, start, end)  # a hash collision: compare the bytes themselves
    distinct = [raw.data[start[i] : end[i]].tobytes().decode("utf-8", errors="replace") for i in first]
    return np.array(distinct, dtype=object)[inverse]


_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


@njit
def _c_string_spans(data, start, length, end_out, digest_out):
    """End (first NUL, or start+length) and FNV-1a hash of each string."""
    for i in range(start.size):
        position = start[i]
        limit = min(position + length[i], data.size)
        digest = np.uint64(_FNV_OFFSET)
        while position < limit and data[position] != 0:
            digest = (digest ^ np.uint64(data[position])) * np.uint64(_FNV_PRIME)
            position += 1
        end_out[i] = position
        digest_out[i] = digest


@njit
def _spans_equal(data, start, end, other):
    """Whether every string i has the same bytes as string other[i]."""
    for i in range(start.size):
        j = other[i]
        if end[i] - start[i] != end[j] - start[j]:
            return False
        for k in range(end[i] - start[i]):
            if data[start[i] + k] != data[start[j] + k]:
                return False
    return True


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

    def read_available(self, max_pages: int | None = None) -> bytes:
        """The whole pages readable now, at most max_pages (b"" when the buffer is empty)."""
        pages = bytearray()
        while max_pages is None or len(pages) < max_pages * self.page_size:
            try:
                page = os.read(self._fd, self.page_size)
            except OSError as err:
                if err.errno == errno.EAGAIN:
                    break
                raise
            if not page:
                break
            if len(page) != self.page_size:
                raise OSError(f"trace_pipe_raw of cpu{self.cpu} returned {len(page)} bytes, not a {self.page_size}-byte page")
            pages += page
        return bytes(pages)

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


def warm_up() -> None:
    """Compile (or load from numba's cache) the page walker and string helpers now: the first
    compile takes seconds, and during a capture the buffers would fill meanwhile. numba compiles
    once per argument type, and read-only arrays are a type of their own: the pages a capture
    reads are bytes (read-only), several pages' events are joined in a new (writable) array."""
    parse_pages(bytes(4096), cpu=0)  # one empty page
    record = bytearray(16)
    record[8:12] = np.uint32((2 << 16) | 12).tobytes()  # data_loc: 2 bytes at 12
    record[12] = ord("x")
    for data in (np.frombuffer(bytes(record), np.uint8), np.array(record, np.uint8)):
        one = RawEvents(
            ts=np.zeros(1, np.uint64), cpu=np.zeros(1, np.uint16), type_id=np.zeros(1, np.uint16),
            start=np.zeros(1, np.int64), length=np.full(1, 16, np.int32), data=data, missed=0,
        )
        string_values(one, np.arange(1), Field("name", 8, 4, False, True))
