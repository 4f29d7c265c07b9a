"""Ring buffer page decoding: checked against the kernel's own text output, and on hand-built pages.

The live tests record kmem events of this test process into a private tracefs instance,
read the non-consuming text `trace` first and then the binary per-CPU `trace_pipe_raw`
pages, and require both to agree event by event.
"""
from __future__ import annotations

import os
import re
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collect import ringbuf
from collect.event_format import EventFormat, Field, parse_event_format, read_event_format
from collect.ringbuf import CpuReader, RawEvents, compact, concat, field_values, joined_in, parse_pages, string_values

KMEM_EVENTS = ("kmalloc", "kmem_cache_alloc", "kfree")
PAGE = 4096
TS_SHIFT = 27

# `  task-pid  [cpu] flags  secs.usecs: event: body`; the flags column goes with options/irq-info.
TEXT_LINE = re.compile(
    r"^\s*(?P<task>.+)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?(?P<secs>\d+)\.(?P<usecs>\d{6}):\s+(?P<event>\w+):\s(?P<body>.*)$"
)
TEXT_FIELD = re.compile(r"(\w+)=(\S*)")


# ---------------------------------------------------------------- hand-built pages


def data_event(delta: int, payload: bytes, long: bool = False) -> bytes:
    """A data event; payloads over 112 bytes (or `long`) use type_len 0 with the length in array[0]."""
    assert len(payload) % 4 == 0 and payload
    if long or len(payload) > 28 * 4:
        return struct.pack("<II", delta << 5, len(payload) + 4) + payload
    return struct.pack("<I", (delta << 5) | (len(payload) // 4)) + payload


def time_extend(delta: int) -> bytes:
    return struct.pack("<II", ((delta & ((1 << TS_SHIFT) - 1)) << 5) | 30, delta >> TS_SHIFT)


def time_stamp(absolute: int) -> bytes:
    return struct.pack("<II", ((absolute & ((1 << TS_SHIFT) - 1)) << 5) | 31, (absolute >> TS_SHIFT) & 0xFFFFFFFF)


def discarded(delta: int, total: int) -> bytes:
    """A padding record of `total` bytes standing for a discarded event (time_delta != 0)."""
    return struct.pack("<II", (delta << 5) | 29, total - 4) + bytes(total - 8)


def record(type_id: int, body: bytes = b"") -> bytes:
    """A tracepoint record: common_type, flags, preempt count, pid, then `body` padded to 4 bytes."""
    raw = struct.pack("<HBBi", type_id, 0, 0, 4242) + body
    return raw + bytes(-len(raw) % 4)


def page(ts: int, events: bytes, after_commit: bytes = b"", missed: int | None = None, stored: bool = True) -> bytes:
    """One sub-buffer: header, `events` (counted by commit), then bytes past the commit."""
    commit = len(events)
    tail = after_commit
    if missed is not None:
        commit |= 1 << 31
        if stored:
            commit |= 1 << 30
            tail = struct.pack("<Q", missed) + after_commit
    body = struct.pack("<QQ", ts, commit) + events + tail
    assert len(body) <= PAGE
    return body + bytes(PAGE - len(body))


def test_hand_built_page_decodes_padding_extend_and_long_events() -> None:
    long_body = bytes(range(116))  # 8 + 116 = 124-byte payload: more than 112, so type_len 0
    events = (
        data_event(3, record(10, struct.pack("<q", -5)))
        + discarded(7, 24)  # its delta is ignored, as by the kernel reader
        + time_extend(5 << TS_SHIFT | 11)
        + data_event(2, record(11, long_body))
        + data_event(1, record(12), long=True)
        + struct.pack("<I", 29)  # padding with time_delta 0: nothing more on the page
    )
    beyond = data_event(1, record(13))
    raw = parse_pages(page(1_000_000, events, after_commit=beyond), cpu=3)

    assert raw.type_id.tolist() == [10, 11, 12]
    assert raw.ts.tolist() == [1_000_003, 1_000_003 + (5 << TS_SHIFT | 11) + 2, 1_000_003 + (5 << TS_SHIFT | 11) + 3]
    assert raw.length.tolist() == [16, 124, 8]
    assert raw.cpu.tolist() == [3, 3, 3]
    assert raw.missed == 0
    assert bytes(raw.data[raw.start[1] + 8 : raw.start[1] + 124]) == long_body
    assert field_values(raw, np.array([0]), Field("v", 8, 8, True, False)).tolist() == [-5]


def test_events_past_the_commit_are_ignored() -> None:
    """A page handed out while the writer was on it: only `commit` bytes are valid."""
    events = data_event(1, record(20)) + data_event(1, record(21))
    stale = data_event(1, record(22)) + data_event(1, record(23))
    raw = parse_pages(page(50, events, after_commit=stale), cpu=0)
    assert raw.type_id.tolist() == [20, 21]


def test_missed_events_are_counted() -> None:
    pages = (
        page(100, data_event(1, record(1)), missed=37)
        + page(200, data_event(1, record(1)), missed=0, stored=False)  # flagged, count unknown: 1
        + page(300, data_event(1, record(1)))
    )
    raw = parse_pages(pages, cpu=0)
    assert raw.missed == 38
    assert raw.ts.tolist() == [101, 201, 301]


def test_absolute_time_stamp_takes_the_high_bits_from_the_running_time() -> None:
    msb = 0b10101 << 59
    events = data_event(4, record(1)) + time_stamp(123_456_789_012) + data_event(0, record(2))
    raw = parse_pages(page(msb | 1000, events), cpu=0)
    assert raw.ts.tolist() == [msb | 1004, msb | 123_456_789_012]


def test_field_values_have_the_dtype_of_the_field() -> None:
    values = [(-1, 200, -2, 40000, -3, 3_000_000_000, -4, 2**63 + 5), (7, 8, 9, 10, 11, 12, 13, 14)]
    layout = "<bBhHiIqQ"
    events = b"".join(data_event(1, record(1, struct.pack(layout, *row))) for row in values)
    raw = parse_pages(page(0, events), cpu=0)
    offset = 8
    for column, code in enumerate(layout[1:]):
        size = struct.calcsize(code)
        field = Field(f"f{column}", offset, size, code.islower(), False)
        got = field_values(raw, np.array([True, True]), field)
        assert got.dtype == np.dtype(f"<{code}")
        assert got.tolist() == [row[column] for row in values]
        assert field_values(raw, np.array([1]), field).tolist() == [values[1][column]]
        offset += size


def test_string_values_follow_data_loc() -> None:
    def with_string(text: bytes) -> bytes:
        body = struct.pack("<I", (len(text) + 1) << 16 | 12) + text + b"\0"
        return data_event(1, record(5, body))

    raw = parse_pages(page(0, with_string(b"dentry") + with_string(b"filp") + with_string(b"\xffbad")), cpu=0)
    names = string_values(raw, np.ones(3, bool), Field("name", 8, 4, False, True))
    assert names.tolist() == ["dentry", "filp", "\ufffdbad"]


def test_string_values_survive_hash_collisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct strings are found by hash; a collision must fall back to comparing bytes."""
    spans = ringbuf._c_string_spans

    def colliding_spans(data, start, length, end_out, digest_out) -> None:  # type: ignore[no-untyped-def]
        spans(data, start, length, end_out, digest_out)
        digest_out[:] = 0

    monkeypatch.setattr(ringbuf, "_c_string_spans", colliding_spans)
    events = b"".join(data_event(1, record(5, struct.pack("<I", 7 << 16 | 12) + name)) for name in (b"dentry\0", b"kmalloc"))
    raw = parse_pages(page(0, events), cpu=0)
    assert string_values(raw, np.ones(2, bool), Field("name", 8, 4, False, True)).tolist() == ["dentry", "kmalloc"]


def test_concat_keeps_offsets_into_the_joined_bytes() -> None:
    first = parse_pages(page(10, data_event(1, record(1, struct.pack("<q", 111)))), cpu=0)
    second = parse_pages(page(20, data_event(2, record(2, struct.pack("<q", 222)))), cpu=1)
    both = concat([first, second])
    assert both.ts.tolist() == [11, 22]
    assert both.cpu.tolist() == [0, 1]
    assert field_values(both, np.array([0, 1]), Field("v", 8, 8, True, False)).tolist() == [111, 222]



def test_parts_read_into_one_buffer_are_joined_over_it_without_a_copy() -> None:
    # Two CPUs' pages read into one buffer, the second at 8192 (a page left empty between):
    # the join's offsets point into the buffer itself. A part from elsewhere is refused.
    buffer = np.zeros(3 * 4096, np.uint8)
    buffer[:4096] = np.frombuffer(page(10, data_event(1, record(1, struct.pack("<q", 111)))), np.uint8)
    buffer[8192:] = np.frombuffer(page(20, data_event(2, record(2, struct.pack("<q", 222)))), np.uint8)
    first, second = parse_pages(buffer[:4096], cpu=0), parse_pages(buffer[8192:], cpu=1)
    both = joined_in(buffer, [second, first])
    assert both.data is buffer and both.ts.tolist() == [22, 11] and both.cpu.tolist() == [1, 0]
    assert field_values(both, np.array([0, 1]), Field("v", 8, 8, True, False)).tolist() == [222, 111]
    elsewhere = parse_pages(page(30, data_event(3, record(3, struct.pack("<q", 333)))), cpu=0)
    with pytest.raises(ValueError):
        joined_in(buffer, [first, elsewhere])


def test_compact_keeps_only_the_chosen_events_bytes() -> None:
    events = concat([parse_pages(page(10, data_event(1, record(1, struct.pack("<q", 111)))
                                         + data_event(1, record(2, struct.pack("<qq", 222, 333)))
                                         + data_event(1, record(3, struct.pack("<q", 444)))), cpu=0)])
    held = compact(RawEvents(ts=events.ts[[2, 1]], cpu=events.cpu[[2, 1]], type_id=events.type_id[[2, 1]],
                             start=events.start[[2, 1]], length=events.length[[2, 1]], data=events.data, missed=0))
    # the third event's 16 bytes (8 of common fields, one value), then the second's 24: nothing else
    assert held.start.tolist() == [0, 16] and held.length.tolist() == [16, 24] and len(held.data) == 40
    assert field_values(held, np.array([0, 1]), Field("v", 8, 8, True, False)).tolist() == [444, 222]
    assert field_values(held, np.array([1]), Field("w", 16, 8, True, False)).tolist() == [333]

EVENT_SPECS = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.integers(0, (1 << TS_SHIFT) - 1), st.integers(1, 40)),
        st.tuples(st.just("long"), st.integers(0, (1 << TS_SHIFT) - 1), st.integers(1, 40)),
        st.tuples(st.just("extend"), st.integers(0, (1 << 59) - 1), st.just(0)),
        st.tuples(st.just("discard"), st.integers(1, (1 << TS_SHIFT) - 1), st.integers(2, 10)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(page_ts=st.integers(0, 1 << 62), specs=EVENT_SPECS)
def test_decoding_matches_a_model_of_the_page(page_ts: int, specs: list[tuple[str, int, int]]) -> None:
    events, expected, ts = b"", [], page_ts
    for kind, delta, words in specs:
        if kind == "extend":
            chunk, ts = time_extend(delta), ts + delta
        elif kind == "discard":
            chunk = discarded(delta, 4 * words)
        else:
            payload = record(len(expected) + 1, bytes(4 * words))
            chunk, ts = data_event(delta, payload, long=kind == "long"), ts + delta
            expected.append((ts % (1 << 64), len(expected) + 1, len(payload)))
        if 16 + len(events) + len(chunk) > PAGE:
            break
        events += chunk
    raw = parse_pages(page(page_ts, events), cpu=0)
    assert list(zip(raw.ts.tolist(), raw.type_id.tolist(), raw.length.tolist())) == expected


def test_parse_event_format_reads_fields_and_data_loc() -> None:
    text = """name: kmem_cache_alloc
ID: 659
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * ptr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:0;
\tfield:char comm[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:int node;\toffset:56;\tsize:4;\tsigned:1;

print fmt: "ptr=%p name=%s", REC->ptr, __get_str(name)
"""
    fmt = parse_event_format("kmem", text)
    assert (fmt.system, fmt.name, fmt.id) == ("kmem", "kmem_cache_alloc", 659)
    assert list(fmt.fields) == ["common_type", "common_flags", "common_preempt_count", "common_pid", "ptr", "name", "comm", "node"]
    assert fmt.fields["name"] == Field("name", 24, 4, False, True)
    assert fmt.fields["comm"] == Field("comm", 28, 16, False, False)
    assert fmt.fields["node"] == Field("node", 56, 4, True, False)
    assert fmt.fields["common_pid"].signed
    assert fmt.print_fmt.startswith('"ptr=%p')


# ---------------------------------------------------------------- live kernel


@dataclass
class TextEvent:
    cpu: int
    usecs: int  # the clock's microseconds, as the text shows them
    event: str
    fields: dict[str, str]


@dataclass
class Capture:
    text: list[TextEvent]
    raw: RawEvents
    formats: dict[int, EventFormat]
    ptr_hashed: bool


@pytest.fixture
def kmem_instance(tracefs: Path) -> Iterator[Path]:
    """A private trace instance recording kmem events of this process with the mono clock; always removed."""
    instance = tracefs / "instances" / f"chargeplay-test-{os.getpid()}"
    instance.mkdir()
    try:
        (instance / "tracing_on").write_text("0")
        (instance / "trace_clock").write_text("mono")
        (instance / "buffer_size_kb").write_text("4096")
        for event in KMEM_EVENTS:
            (instance / "events" / "kmem" / event / "filter").write_text(f"common_pid == {os.getpid()}")
            (instance / "events" / "kmem" / event / "enable").write_text("1")
        yield instance
    finally:
        with suppress(OSError):
            (instance / "tracing_on").write_text("0")
        for event in KMEM_EVENTS:
            with suppress(OSError):
                (instance / "events" / "kmem" / event / "enable").write_text("0")
        instance.rmdir()


def capture(instance: Path, workload: Callable[[], None]) -> Capture:
    """Run `workload` with tracing on; read the text `trace` first, then consume the binary pages."""
    hash_ptr = instance / "options" / "hash-ptr"
    if hash_ptr.exists():
        hash_ptr.write_text("0")
    (instance / "tracing_on").write_text("1")
    try:
        workload()
    finally:
        (instance / "tracing_on").write_text("0")
    text = parse_text_trace((instance / "trace").read_text())
    parts = []
    for cpu in range(os.cpu_count() or 1):
        with CpuReader(instance, cpu) as reader:
            parts.append(parse_pages(reader.read_available(), cpu, reader.page_size))
    formats = {fmt.id: fmt for fmt in (read_event_format(instance / "events", "kmem", e) for e in KMEM_EVENTS)}
    return Capture(text=text, raw=concat(parts), formats=formats, ptr_hashed=not hash_ptr.exists())


def parse_text_trace(text: str) -> list[TextEvent]:
    events = []
    for line in text.splitlines():
        if line.startswith("#") or not (match := TEXT_LINE.match(line)):
            continue
        events.append(
            TextEvent(
                cpu=int(match["cpu"]),
                usecs=int(match["secs"]) * 1_000_000 + int(match["usecs"]),
                event=match["event"],
                fields=dict(TEXT_FIELD.findall(match["body"])),
            )
        )
    return events


def churn_files(count: int) -> None:
    """Allocations of this process: dentries, inodes, files, names, pipes."""
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(count):
            path = Path(scratch) / f"f{i}"
            path.write_text("x")
            path.unlink()
            if i % 50 == 0:
                for fd in os.pipe():
                    os.close(fd)


def decoded_as_text(cap: Capture) -> list[TextEvent]:
    """The binary events rendered into the values the kernel's text output shows."""
    raw = cap.raw
    rendered: list[TextEvent | None] = [None] * len(raw)
    usecs = ((raw.ts + np.uint64(500)) // np.uint64(1000)).tolist()  # the kernel rounds ns to µs
    for type_id, fmt in cap.formats.items():
        index = np.flatnonzero(raw.type_id == type_id)
        columns = {
            name: (string_values(raw, index, field) if field.data_loc else field_values(raw, index, field)).tolist()
            for name, field in fmt.fields.items()
            if name in ("ptr", "bytes_req", "bytes_alloc", "node", "name", "accounted")
        }
        for row, i in enumerate(index.tolist()):
            values = {name: column[row] for name, column in columns.items()}
            rendered[i] = TextEvent(int(raw.cpu[i]), usecs[i], fmt.name, render_fields(values))
    assert all(event is not None for event in rendered), "events of types that were not enabled"
    return rendered  # type: ignore[return-value]


def render_fields(values: dict[str, object]) -> dict[str, str]:
    """Format field values as the kmem print fmts do (%p as %px with hash-ptr off)."""
    out = {}
    for name, value in values.items():
        if name == "ptr":
            out[name] = f"{value:016x}"
        elif name == "accounted":
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


def comparable(event: TextEvent, ptr_hashed: bool) -> tuple:
    fields = {k: v for k, v in event.fields.items() if k in ("ptr", "bytes_req", "bytes_alloc", "node", "name")}
    if event.event == "kmem_cache_alloc":
        fields["accounted"] = event.fields["accounted"]
    if ptr_hashed:
        fields.pop("ptr")
    return event.cpu, event.usecs, event.event, tuple(sorted(fields.items()))


def assert_binary_matches_text(cap: Capture) -> None:
    decoded = decoded_as_text(cap)
    assert cap.raw.missed == 0
    assert Counter(e.event for e in decoded) == Counter(e.event for e in cap.text)
    for cpu in sorted({e.cpu for e in cap.text} | {e.cpu for e in decoded}):
        from_text = [comparable(e, cap.ptr_hashed) for e in cap.text if e.cpu == cpu]
        from_binary = [comparable(e, cap.ptr_hashed) for e in decoded if e.cpu == cpu]
        assert from_binary == from_text, f"cpu {cpu}: binary decode differs from the kernel's text"


def churn_on_each_cpu(count: int) -> None:
    """churn_files on every CPU this process may use in turn, so several per-CPU buffers fill."""
    allowed = os.sched_getaffinity(0)
    try:
        for cpu in sorted(allowed):
            os.sched_setaffinity(0, {cpu})
            churn_files(count)
    finally:
        os.sched_setaffinity(0, allowed)


def test_binary_decode_matches_kernel_text(kmem_instance: Path) -> None:
    cap = capture(kmem_instance, lambda: churn_on_each_cpu(200))
    counts = Counter(e.event for e in cap.text)
    assert counts["kmalloc"] > 50 and counts["kmem_cache_alloc"] > 300 and counts["kfree"] > 50, counts
    assert set(cap.raw.cpu.tolist()) >= os.sched_getaffinity(0)
    assert not cap.ptr_hashed, "no options/hash-ptr: the text shows hashed pointers, so ptr goes unchecked"
    assert_binary_matches_text(cap)


def test_cache_names_decode_like_the_text(kmem_instance: Path) -> None:
    cap = capture(kmem_instance, lambda: churn_files(100))
    fmt = next(f for f in cap.formats.values() if f.name == "kmem_cache_alloc")
    names = string_values(cap.raw, cap.raw.type_id == fmt.id, fmt.fields["name"]).tolist()
    # Binary events come CPU by CPU, each CPU's in order; so does the text once sorted stably by CPU.
    from_text = [e.fields["name"] for e in sorted(cap.text, key=lambda e: e.cpu) if e.event == "kmem_cache_alloc"]
    assert names == from_text
    assert {"dentry", "filp"} <= set(names)


def test_time_extend_across_long_gaps(kmem_instance: Path) -> None:
    """Gaps over 2**27 ns (~134 ms) between events need TIME_EXTEND records; timestamps must survive them."""
    gap_s = 0.25
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # one CPU buffer sees every burst and every gap

    def bursts() -> None:
        for _ in range(3):
            churn_files(20)
            time.sleep(gap_s)

    try:
        cap = capture(kmem_instance, bursts)
    finally:
        os.sched_setaffinity(0, allowed)
    assert_binary_matches_text(cap)
    raw = cap.raw
    gaps = np.flatnonzero(np.diff(raw.ts.astype(np.int64)) > int(gap_s * 0.8e9)) + 1
    assert len(gaps) >= 2
    extended = [i for i in gaps.tolist() if extend_before(raw, i) == int(raw.ts[i] - raw.ts[i - 1])]
    assert extended, "no event after a gap was decoded through a TIME_EXTEND record"


def extend_before(raw: RawEvents, i: int) -> int | None:
    """time extend + event delta when event i (a small one) directly follows a TIME_EXTEND on its page."""
    assert raw.length[i] <= 28 * 4
    header = int(raw.start[i]) - 4
    if header - 8 < header // PAGE * PAGE + 16:
        return None  # first on its page: its time comes from the page header
    words = raw.data[header - 8 : header + 4].view("<u4").tolist()
    if words[0] & 31 != 30:
        return None
    return ((words[1] << TS_SHIFT) + (words[0] >> 5)) + (words[2] >> 5)
