"""Tests for traces.gfp and collect.kernel_tables: gfp flags from tracepoint formats, enums from BTF.

Hand-worked tests use tables and blobs written out here; live tests compare
against this kernel's own renderings (trace text, /proc/vmstat).
"""
from __future__ import annotations

import mmap
import os
import re
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from collect.kernel_tables import (
    KERNEL_ENUMS,
    VMLINUX_BTF,
    parse_btf_enums,
    read_btf_enums,
    read_gfp_table,
    read_kernel_enums,
)
from traces.gfp import decode_gfp, eval_c_flag_expr, gfp_bit, gfp_class, parse_print_flags
from traces.gfp_columns import gfp_class_expr, gfp_class_series
from traces.reader import Trace
from traces.samples import sample_path

# ---------------------------------------------------------------------------
# C flag expressions and print fmt parsing (hand-worked)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("( unsigned long)(( gfp_t)((((1UL))) << (10)))", 0x400),
        ("(( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))) | (( gfp_t)0)", 0xC00),
        ("(0xF0u & ~(( gfp_t)0x10ULL)) >> 4", 0xE),
        ("~0UL", 0xFFFF_FFFF_FFFF_FFFF),
        ("010 | 1LU", 9),  # C octal
    ],
)
def test_eval_c_flag_expr_evaluates_kernel_style_expressions(expr: str, value: int) -> None:
    assert eval_c_flag_expr(expr) == value


@pytest.mark.parametrize(
    ("expr", "named"),
    [
        ("1 + 2", "Add"),
        ("FOO | 1", "FOO"),
        ("sizeof(int)", "sizeof"),
        ('__import__("os")', "__import__"),
        ("1.5 | 1", "1.5"),
        ("1UL << 64", "shift count 64"),
        ("(void *)0", "cannot parse"),
    ],
)
def test_eval_c_flag_expr_rejects_anything_but_bit_arithmetic(expr: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        eval_c_flag_expr(expr)


HAND_FMT = (
    'print fmt: "flags=%s other=%s", '
    '(REC->flags) ? __print_flags(REC->flags, "|", '
    '{( unsigned long)((( gfp_t)((((1UL))) << (0))) | (( gfp_t)((((1UL))) << (2)))), "BOTH"}, '
    '{( unsigned long)(( gfp_t)((((1UL))) << (0))), "LOW"}, '
    '{( unsigned long)(( gfp_t)((((1UL))) << (2))), "HIGH"}, '
    '{( unsigned long)(( gfp_t)0x10u), "ODD, NAME (1)"}, '
    "{ 0, ((void *)0) } ) : \"none\", "
    '__print_flags(REC->other, ",", {( unsigned long)0x80, "X"}, { 0, ((void *)0) })'
)


def test_parse_print_flags_keeps_kernel_order_and_values() -> None:
    table = parse_print_flags(HAND_FMT, "flags")
    assert list(table.items()) == [("BOTH", 0b101), ("LOW", 0b001), ("HIGH", 0b100), ("ODD, NAME (1)", 0x10)]


def test_parse_print_flags_picks_the_named_field() -> None:
    assert parse_print_flags(HAND_FMT, "other") == {"X": 0x80}
    with pytest.raises(ValueError, match="REC->absent"):
        parse_print_flags(HAND_FMT, "absent")


@pytest.mark.parametrize(
    ("fmt", "complaint"),
    [
        ('__print_flags(REC->gfp_flags, "|", {1, "A"}, {2, "A"})', "twice"),
        ('__print_flags(REC->gfp_flags, "|", {1})', "malformed"),
        ('__print_flags(REC->gfp_flags, "|", {1, A})', "no string name"),
        ('__print_flags(REC->gfp_flags, "|", {1, "A"}', "not closed"),
        ('__print_flags(REC->gfp_flags, "|", {BAD, "A"})', "BAD"),
        ('__print_flags(REC->gfp_flags, "|", { 0, ((void *)0) })', "no named flags"),
    ],
)
def test_parse_print_flags_rejects_malformed_tables(fmt: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_print_flags(fmt)


def test_read_gfp_table_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "events/kmem/kmalloc/format"))):
        read_gfp_table(tmp_path)


# ---------------------------------------------------------------------------
# decoding and classifying (hand-made tables)
# ---------------------------------------------------------------------------

COMPOSITE_FIRST = {"BOTH": 0b101, "LOW": 0b001, "HIGH": 0b100, "MID": 0b010}


@pytest.mark.parametrize(
    ("bits", "text"),
    [
        (0, "none"),
        (0b101, "BOTH"),
        (0b111, "BOTH|MID"),
        (0b001, "LOW"),
        (0b1000_0101, "BOTH|0x80"),
        (0xA0, "0xa0"),  # lowercase hex, as the kernel's "0x%lx"
        (1 << 63 | 0b010, "MID|0x8000000000000000"),
    ],
)
def test_decode_gfp_is_greedy_in_table_order(bits: int, text: str) -> None:
    assert decode_gfp(bits, COMPOSITE_FIRST) == text


def test_decode_gfp_order_decides_between_composite_and_parts() -> None:
    parts_first = {"LOW": 0b001, "HIGH": 0b100, "BOTH": 0b101}
    assert decode_gfp(0b101, parts_first) == "LOW|HIGH"


def test_decode_gfp_treats_a_zero_mask_like_the_kernel() -> None:
    # trace_print_flags_seq: (flags & 0) == 0 matches while flags remain; the walk stops at flags == 0.
    table = {"A": 0b01, "ZERO": 0}
    assert decode_gfp(0b01, table) == "A"
    assert decode_gfp(0b10, table) == "ZERO|0x2"


@pytest.mark.parametrize("bits", [-1, 1 << 64])
def test_decode_gfp_rejects_values_outside_unsigned_long(bits: int) -> None:
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        decode_gfp(bits, COMPOSITE_FIRST)


CLASS_TABLE = {"GFP_BIG": 0b111, "GFP_SMALL": 0b011, "GFP_NOTHING": 0, "__GFP_LOW": 0b001, "__GFP_TOP": 0b1000}


@pytest.mark.parametrize(
    ("bits", "klass"),
    [
        (0, "none"),
        (0b111, "GFP_BIG"),
        (0b1111, "GFP_BIG"),
        (0b1011, "GFP_SMALL"),
        (0b001, "other"),  # only a __GFP_ bit matches
        (0b1000, "other"),  # the zero-mask GFP_NOTHING must not claim everything
        (0b10000, "other"),
    ],
)
def test_gfp_class_is_the_first_matching_gfp_composite(bits: int, klass: str) -> None:
    assert gfp_class(bits, CLASS_TABLE) == klass


def test_gfp_bit_returns_the_mask_or_names_the_missing_flag() -> None:
    assert gfp_bit(CLASS_TABLE, "__GFP_TOP") == 0b1000
    with pytest.raises(KeyError, match="__GFP_ABSENT"):
        gfp_bit(CLASS_TABLE, "__GFP_ABSENT")


def test_gfp_class_series_and_expr_match_gfp_class_per_row() -> None:
    values = [0b111, None, 0b1011, 0, 0b111, 0b10000, None, 0b1011]
    expected = [None if v is None else gfp_class(v, CLASS_TABLE) for v in values]
    frame = pl.DataFrame({"gfp": pl.Series(values, dtype=pl.UInt64)})
    assert gfp_class_series(frame["gfp"], CLASS_TABLE).to_list() == expected
    lazy = frame.lazy().with_columns(gfp_class_expr("gfp", CLASS_TABLE).alias("class")).collect()
    assert lazy.schema["class"] == pl.String
    assert lazy["class"].to_list() == expected


def test_gfp_class_series_of_only_nulls_is_string_nulls() -> None:
    out = gfp_class_series(pl.Series("gfp", [None, None], dtype=pl.UInt64), CLASS_TABLE)
    assert out.dtype == pl.String and out.to_list() == [None, None]


# ---------------------------------------------------------------------------
# live: this kernel's gfp table and its own trace text
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("sample", ["file-storm", "fork-storm", "socket-storm"])
def test_bundled_samples_carry_the_6_18_gfp_table(sample: str) -> None:
    # The samples were captured on Linux 6.18.44: their tables must hold 6.18's values, from
    # include/linux/gfp_types.h (bit numbers of the ___GFP_*_BIT enum).
    trace = Trace.open(sample_path(sample))
    assert trace.manifest["kernel"]["release"].startswith("6.18.")
    table = trace.gfp_flags
    assert table["GFP_KERNEL"] == 0xCC0  # __GFP_RECLAIM (0x400|0x800) | __GFP_IO 0x40 | __GFP_FS 0x80
    assert table["GFP_NOWAIT"] == 0x2800  # __GFP_KSWAPD_RECLAIM | __GFP_NOWARN
    assert table["GFP_ATOMIC"] == 0x820  # __GFP_HIGH | __GFP_KSWAPD_RECLAIM
    assert table["__GFP_ACCOUNT"] == 1 << 22
    assert table["__GFP_DIRECT_RECLAIM"] == 0x400
    assert "__GFP_ATOMIC" not in table  # gone since 6.4
    assert decode_gfp(0xCC0 | 1 << 22, table) == "GFP_KERNEL_ACCOUNT"
    assert gfp_class(0x820 | 0x2000, table) == "GFP_ATOMIC"


@pytest.mark.parametrize(("sample", "release", "atomic", "nowait"), [
    # 6.1's include/linux/gfp_types.h: GFP_ATOMIC = __GFP_HIGH 0x20 | __GFP_ATOMIC 0x200 |
    # __GFP_KSWAPD_RECLAIM 0x800, GFP_NOWAIT = __GFP_KSWAPD_RECLAIM. 6.4 dropped __GFP_ATOMIC,
    # and 6.12's GFP_NOWAIT adds __GFP_NOWARN 0x2000.
    ("file-storm-6.1", "6.1.", 0xA20, 0x800),
    ("file-storm-6.12", "6.12.", 0x820, 0x2800),
])
def test_lab_samples_carry_their_own_kernels_gfp_table(sample: str, release: str, atomic: int, nowait: int) -> None:
    trace = Trace.open(sample_path(sample))
    assert trace.manifest["kernel"]["release"].startswith(release)
    table = trace.gfp_flags
    assert (table["GFP_ATOMIC"], table["GFP_NOWAIT"]) == (atomic, nowait)
    assert ("__GFP_ATOMIC" in table) == (release == "6.1.")
    assert table["GFP_KERNEL"] == 0xCC0 and table["__GFP_ACCOUNT"] == 1 << 22  # the same from 6.1 to 6.18
    # cgroup v2, memory.high reached: the kernel counted high events in the sampled memcg.
    target = trace.manifest["target"]
    assert target["cgroup_version"] == 2 and target["high"] == 20 << 20
    assert trace.side_table("memcg").collect()["events_high"].max() > 0


def test_live_gfp_composites_are_this_kernels_flags_combined(tracefs: Path) -> None:
    """The running kernel's composites, rebuilt from its own single flags by the definitions
    in include/linux/gfp_types.h that hold from 6.1 to 6.18 (where they changed, both forms
    are named): whatever the bit values, the table must be read into these relations."""
    table = read_gfp_table(tracefs)
    flag = table.__getitem__
    # Single flags a config leaves out are 0 (e.g. ___GFP_SKIP_KASAN without KASAN_HW_TAGS); the rest one bit each.
    singles = [value for name, value in table.items() if name.startswith("__GFP_") and name != "__GFP_RECLAIM" and value]
    assert len(singles) >= 20 and all(value & (value - 1) == 0 for value in singles)
    assert len(set(singles)) == len(singles)  # each its own bit
    assert flag("__GFP_RECLAIM") == flag("__GFP_DIRECT_RECLAIM") | flag("__GFP_KSWAPD_RECLAIM")
    assert flag("GFP_KERNEL") == flag("__GFP_RECLAIM") | flag("__GFP_IO") | flag("__GFP_FS")
    assert flag("GFP_KERNEL_ACCOUNT") == flag("GFP_KERNEL") | flag("__GFP_ACCOUNT")
    assert flag("GFP_NOIO") == flag("__GFP_RECLAIM")
    assert flag("GFP_NOFS") == flag("__GFP_RECLAIM") | flag("__GFP_IO")
    assert flag("GFP_USER") == flag("GFP_KERNEL") | flag("__GFP_HARDWALL")
    assert flag("GFP_HIGHUSER") == flag("GFP_USER") | flag("__GFP_HIGHMEM")
    # 6.1 still had __GFP_ATOMIC, in GFP_ATOMIC; 6.4 removed both (then 0 here).
    assert flag("GFP_ATOMIC") == flag("__GFP_HIGH") | flag("__GFP_KSWAPD_RECLAIM") | table.get("__GFP_ATOMIC", 0)
    # GFP_NOWAIT wakes kswapd and nothing else; later kernels (6.18 here) add __GFP_NOWARN.
    assert flag("GFP_NOWAIT") & ~flag("__GFP_NOWARN") == flag("__GFP_KSWAPD_RECLAIM")
    assert decode_gfp(flag("GFP_KERNEL") | flag("__GFP_ACCOUNT"), table) == "GFP_KERNEL_ACCOUNT"
    assert gfp_class(flag("GFP_ATOMIC") | flag("__GFP_NOWARN"), table) == "GFP_ATOMIC"
    assert gfp_class(flag("GFP_NOWAIT"), table) == "GFP_NOWAIT"


def _btf_enumerators_with(blob: bytes, enumerator: str) -> dict[str, int] | None:
    """The (possibly anonymous) ENUM of a little-endian BTF blob that has `enumerator`, walked
    here by the layout in include/uapi/linux/btf.h, apart from the parser under test."""
    trailer = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
               17: (4, 0), 19: (0, 12)}  # kind -> (fixed bytes, bytes per vlen item); other kinds have none
    hdr_len, type_off, type_len, str_off = struct.unpack_from("<IIII", blob, 4)
    types, strings = blob[hdr_len + type_off : hdr_len + type_off + type_len], blob[hdr_len + str_off :]
    name = lambda offset: strings[offset : strings.index(b"\0", offset)].decode()  # noqa: E731
    at = 0
    while at < len(types):
        info = struct.unpack_from("<I", types, at + 4)[0]
        kind, vlen = info >> 24 & 0x1F, info & 0xFFFF
        fixed, item = trailer.get(kind, (0, 0))
        if kind == KIND_ENUM:
            items = [struct.unpack_from("<II", types, at + 12 + 8 * i) for i in range(vlen)]
            values = {name(offset): value for offset, value in items}
            if enumerator in values:
                return values
        at += 12 + fixed + item * vlen
    return None


def test_live_gfp_flags_are_the_bits_btf_numbers(tracefs: Path, vmlinux_btf: Path) -> None:
    """Each single flag of the kernel's trace table is 1 << its ___GFP_*_BIT in the kernel's
    BTF: a second source for the bit values, where the kernel has that enum."""
    blob = vmlinux_btf.read_bytes()
    if blob[:2] != b"\x9f\xeb":
        pytest.skip(f"{vmlinux_btf} is not little-endian BTF, which this check walks")
    bits = _btf_enumerators_with(blob, "___GFP_ACCOUNT_BIT")
    if bits is None:
        pytest.skip(f"{vmlinux_btf} has no ___GFP_*_BIT enum: this kernel defines its gfp bits as macros "
                    "(kernels before the gfp flags became an enum), so there is no second source to compare with")
    table = read_gfp_table(tracefs)
    compared = {name: value for name, value in table.items() if f"_{name}_BIT" in bits}
    assert {"__GFP_ACCOUNT", "__GFP_DIRECT_RECLAIM", "__GFP_KSWAPD_RECLAIM", "__GFP_HIGH", "__GFP_NOWARN"} <= set(compared)
    assert compared == {name: 1 << bits[f"_{name}_BIT"] for name in compared}


GFP_EVENTS = ("kmalloc", "kmem_cache_alloc", "mm_page_alloc")


@pytest.fixture
def trace_instance(tracefs: Path) -> Iterator[Path]:
    """A private tracefs instance, removed afterwards whatever happens."""
    instance = tracefs / "instances" / f"chargeplay-test-{os.getpid()}"
    instance.mkdir()
    try:
        yield instance
    finally:
        (instance / "events" / "enable").write_text("0")
        instance.rmdir()


def _allocate_from_this_process() -> None:
    """Kernel allocations with a few different gfp masks: slab objects, page cache and anonymous pages."""
    for _ in range(20):
        read_end, write_end = os.pipe()
        os.close(read_end)
        os.close(write_end)
        socket.socket().close()
        Path("/proc/self/status").read_text()
    with mmap.mmap(-1, 64 * mmap.PAGESIZE) as anonymous:
        for offset in range(0, len(anonymous), mmap.PAGESIZE):
            anonymous[offset] = 1


_TRACE_LINE = re.compile(r"^(?P<context>.*?\d+\.\d+): (?P<event>\w+): (?P<body>.*)$")


def _trace_events(instance: Path) -> list[re.Match[str]]:
    return [m for line in (instance / "trace").read_text().splitlines() if (m := _TRACE_LINE.match(line))]


def test_live_decode_gfp_reproduces_the_kernels_trace_text(trace_instance: Path) -> None:
    """Each recorded event read twice: as the kernel's text, and with options/fields as raw numbers."""
    events = trace_instance / "events" / "kmem"
    for event in GFP_EVENTS:
        (events / event / "filter").write_text(f"common_pid == {os.getpid()}")
        (events / event / "enable").write_text("1")
    _allocate_from_this_process()
    for event in GFP_EVENTS:
        (events / event / "enable").write_text("0")

    texts = _trace_events(trace_instance)
    (trace_instance / "options" / "fields").write_text("1")
    raws = _trace_events(trace_instance)
    assert len(texts) == len(raws) > 0

    tables = {event: parse_print_flags((events / event / "format").read_text()) for event in GFP_EVENTS}
    seen = set()
    for text, raw in zip(texts, raws):
        assert (text["context"], text["event"]) == (raw["context"], raw["event"])
        kernel_text = re.search(r"gfp_flags=(\S+)", text["body"]).group(1)
        bits = int(re.search(r"gfp_flags=0x([0-9a-f]+) ", raw["body"]).group(1), 16)
        assert decode_gfp(bits, tables[text["event"]]) == kernel_text, f"{text['event']} gfp_flags={bits:#x}"
        seen.add((text["event"], bits))
    assert {event for event, _ in seen} >= {"kmalloc", "mm_page_alloc"}
    assert len({bits for _, bits in seen}) >= 3  # several distinct masks, not one repeated


# ---------------------------------------------------------------------------
# BTF: hand-built blobs
# ---------------------------------------------------------------------------

KIND_INT, KIND_STRUCT, KIND_ENUM, KIND_FUNC_PROTO, KIND_DECL_TAG, KIND_ENUM64 = 1, 4, 6, 13, 17, 19


class BtfBuilder:
    """Writes a BTF blob by the layout in include/uapi/linux/btf.h, independently of the parser."""

    def __init__(self, order: str = "<") -> None:
        self.order, self.strings, self.types = order, bytearray(b"\0"), bytearray()

    def name(self, text: str) -> int:
        offset = len(self.strings)
        self.strings += text.encode() + b"\0"
        return offset

    def type(self, name: str, kind: int, vlen: int, size: int, trailer: bytes = b"", kind_flag: bool = False) -> None:
        info = kind_flag << 31 | kind << 24 | vlen
        self.types += struct.pack(self.order + "III", self.name(name) if name else 0, info, size) + trailer

    def enum(self, name: str, values: dict[str, int], signed: bool = False) -> None:
        item = self.order + ("Ii" if signed else "II")
        trailer = b"".join(struct.pack(item, self.name(k), v) for k, v in values.items())
        self.type(name, KIND_ENUM, len(values), 4, trailer, signed)

    def enum64(self, name: str, values: dict[str, int], signed: bool = False) -> None:
        trailer = b"".join(  # masking gives the two's complement halves of negative values
            struct.pack(self.order + "III", self.name(k), v & 0xFFFF_FFFF, (v >> 32) & 0xFFFF_FFFF)
            for k, v in values.items()
        )
        self.type(name, KIND_ENUM64, len(values), 8, trailer, signed)

    def blob(self) -> bytes:
        types, strings = len(self.types), len(self.strings)
        header = struct.pack(self.order + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, types, types, strings)
        return header + bytes(self.types) + bytes(self.strings)


def _sample_btf(order: str = "<") -> bytes:
    btf = BtfBuilder(order)
    btf.type("int", KIND_INT, 0, 4, struct.pack(order + "I", 0x01000020))
    btf.type("pair", KIND_STRUCT, 2, 8, struct.pack(order + "6I", btf.name("a"), 1, 0, btf.name("b"), 1, 32))
    btf.type("colour", KIND_ENUM, 0, 4)  # forward declaration: no enumerators
    btf.enum("colour", {"RED": 0, "GREEN": 7, "TOP": 0xFFFF_FFFF})
    btf.type("", KIND_FUNC_PROTO, 1, 1, struct.pack(order + "II", 0, 1))
    btf.enum("sign", {"MINUS_ONE": -1, "ONE": 1}, signed=True)
    btf.type("tag", KIND_DECL_TAG, 0, 2, struct.pack(order + "i", -1))
    btf.enum64("wide", {"BIG": 1 << 40, "ALL": (1 << 64) - 1})
    btf.enum64("wide_signed", {"MIN": -(1 << 63), "ALIAS": 3, "ALIAS2": 3}, signed=True)
    return btf.blob()


@pytest.mark.parametrize("order", ["<", ">"])
def test_parse_btf_enums_reads_enum_and_enum64_with_signedness(order: str) -> None:
    enums = parse_btf_enums(_sample_btf(order), ["wide_signed", "colour", "sign", "wide"])
    assert list(enums) == ["wide_signed", "colour", "sign", "wide"]
    assert list(enums["colour"].items()) == [("RED", 0), ("GREEN", 7), ("TOP", 0xFFFF_FFFF)]
    assert enums["sign"] == {"MINUS_ONE": -1, "ONE": 1}
    assert enums["wide"] == {"BIG": 1 << 40, "ALL": (1 << 64) - 1}
    assert enums["wide_signed"] == {"MIN": -(1 << 63), "ALIAS": 3, "ALIAS2": 3}


def test_parse_btf_enums_names_a_missing_enum() -> None:
    with pytest.raises(KeyError, match="no_such_enum"):
        parse_btf_enums(_sample_btf(), ["colour", "no_such_enum"])


def _with_type_len_delta(blob: bytes, delta: int) -> bytes:
    magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", blob)
    header = struct.pack("<HBBIIIII", magic, version, flags, hdr_len, type_off, type_len + delta, str_off, str_len)
    return header + blob[24:]


@pytest.mark.parametrize(
    ("mangle", "complaint"),
    [
        (lambda blob: b"\x00\x00" + blob[2:], "magic"),
        (lambda blob: blob[:10], "too short"),
        (lambda blob: blob[:-5], "truncated"),
        (lambda blob: blob[:2] + b"\x02" + blob[3:], "version 2"),
        # type section 4 bytes short of its last enum: header says type_len - 4, string section shifted to match
        (lambda blob: _with_type_len_delta(blob, -4), "truncated inside type"),
        (lambda blob: blob[:24 + 7] + b"\x1f" + blob[24 + 8 :], "kind 31"),  # first type's info high byte
    ],
)
def test_parse_btf_enums_rejects_malformed_blobs(mangle: Callable[[bytes], bytes], complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_btf_enums(mangle(_sample_btf()), ["colour"])


def test_read_btf_enums_puts_the_path_in_errors(tmp_path: Path) -> None:
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"not btf at all, just text")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        read_btf_enums(["colour"], bad)
    with pytest.raises(FileNotFoundError, match="CONFIG_DEBUG_INFO_BTF"):
        read_btf_enums(["colour"], tmp_path / "absent")


# ---------------------------------------------------------------------------
# BTF: this kernel
# ---------------------------------------------------------------------------


@pytest.fixture
def vmlinux_btf() -> Path:
    if not VMLINUX_BTF.is_file():
        pytest.skip(f"{VMLINUX_BTF} missing: kernel built without CONFIG_DEBUG_INFO_BTF")
    return VMLINUX_BTF


def test_live_kernel_enums_are_all_present(vmlinux_btf: Path) -> None:
    enums = read_kernel_enums(vmlinux_btf)
    assert tuple(enums) == KERNEL_ENUMS
    assert all(enums[name] for name in KERNEL_ENUMS)


def test_live_memcg_stats_continue_after_node_stats(vmlinux_btf: Path) -> None:
    # include/linux/memcontrol.h: enum memcg_stat_item { MEMCG_SWAP = NR_VM_NODE_STAT_ITEMS, ... }
    enums = read_kernel_enums(vmlinux_btf)
    assert enums["memcg_stat_item"]["MEMCG_SWAP"] == enums["node_stat_item"]["NR_VM_NODE_STAT_ITEMS"]
    assert min(enums["memcg_stat_item"].values()) == enums["memcg_stat_item"]["MEMCG_SWAP"]


def test_live_trace_flag_type_values(vmlinux_btf: Path) -> None:
    # include/linux/trace_events.h, enum trace_flag_type
    flags = read_kernel_enums(vmlinux_btf)["trace_flag_type"]
    assert (flags["TRACE_FLAG_HARDIRQ"], flags["TRACE_FLAG_SOFTIRQ"], flags["TRACE_FLAG_NMI"]) == (0x08, 0x10, 0x40)


# mm/vmstat.c vmstat_text: node_stat_item counters whose /proc/vmstat name is not the lowercased enum name.
NODE_STAT_RENAMES = {
    "NR_SLAB_RECLAIMABLE_B": "nr_slab_reclaimable",
    "NR_SLAB_UNRECLAIMABLE_B": "nr_slab_unreclaimable",
    "NR_ANON_MAPPED": "nr_anon_pages",
    "NR_FILE_MAPPED": "nr_mapped",
    "NR_FILE_DIRTY": "nr_dirty",
    "NR_SHMEM_THPS": "nr_shmem_hugepages",
    "NR_FILE_THPS": "nr_file_hugepages",
    "NR_ANON_THPS": "nr_anon_transparent_hugepages",
    "NR_VMSCAN_IMMEDIATE": "nr_vmscan_immediate_reclaim",
    "NR_KERNEL_STACK_KB": "nr_kernel_stack",
    "NR_KERNEL_SCS_KB": "nr_shadow_call_stack",
    "NR_PAGETABLE": "nr_page_table_pages",
    "NR_SECONDARY_PAGETABLE": "nr_sec_page_table_pages",
    "NR_SWAPCACHE": "nr_swapcached",
}


def _vmstat_names() -> list[str]:
    return [line.split()[0] for line in Path("/proc/vmstat").read_text().splitlines()]


def _vmstat_sections(vmlinux_btf: Path) -> dict[str, dict[str, int]]:
    sections = ["zone_stat_item", "numa_stat_item", "node_stat_item", "vm_stat_item", "vm_event_item"]
    return read_btf_enums(sections, vmlinux_btf)


def _node_stats_offset(enums: dict[str, dict[str, int]]) -> int:
    # /proc/vmstat prints zone stats, then NUMA events, then node stats, each in enum order.
    return enums["zone_stat_item"]["NR_VM_ZONE_STAT_ITEMS"] + enums["numa_stat_item"]["NR_VM_NUMA_EVENT_ITEMS"]


def test_live_node_stat_item_order_matches_proc_vmstat(vmlinux_btf: Path) -> None:
    enums = _vmstat_sections(vmlinux_btf)
    node = enums["node_stat_item"]
    count = node["NR_VM_NODE_STAT_ITEMS"]
    start = _node_stats_offset(enums)
    names = _vmstat_names()
    printed = names[start : start + count]
    assert printed[0] == "nr_inactive_anon"
    # The next line is the first vm_stat_item, so the node section has exactly `count` lines.
    assert names[start + count] == "nr_dirty_threshold"
    for index, vmstat_name in enumerate(printed):
        # Aliases (NR_LRU_BASE = NR_INACTIVE_ANON) share a value; one of them must print as this line.
        enumerators = [name for name, value in node.items() if value == index]
        assert vmstat_name in {NODE_STAT_RENAMES.get(name, name.lower()) for name in enumerators}, (index, enumerators)


def test_live_vm_event_item_order_matches_proc_vmstat(vmlinux_btf: Path) -> None:
    enums = _vmstat_sections(vmlinux_btf)
    events = enums["vm_event_item"]
    node_and_vm_stats = enums["node_stat_item"]["NR_VM_NODE_STAT_ITEMS"] + enums["vm_stat_item"]["NR_VM_STAT_ITEMS"]
    start = _node_stats_offset(enums) + node_and_vm_stats
    names = _vmstat_names()
    printed = names[start : start + events["NR_VM_EVENT_ITEMS"]]
    assert printed[0] == "pgpgin"
    assert names[start + events["NR_VM_EVENT_ITEMS"] :] in ([], ["nr_unstable"])  # vmstat_show's deprecated trailer
    same_name = {name: value for name, value in events.items() if name.lower() in printed}
    assert len(same_name) > len(printed) // 2
    assert all(printed[value] == name.lower() for name, value in same_name.items())
