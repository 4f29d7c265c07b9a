"""The running kernel's own tables: its gfp flag table (tracefs) and enums and types (BTF).

Both change between kernel versions and configs, so a capture reads them from the kernel it
runs on and stores them with the trace: the gfp table from the kmem:kmalloc tracepoint's
format (decoded by traces.gfp), enums and struct layouts from /sys/kernel/btf/vmlinux.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from traces.gfp import parse_print_flags

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
KERNEL_ENUMS = ("node_stat_item", "memcg_stat_item", "vm_event_item", "trace_flag_type")


def read_gfp_table(tracefs: Path) -> dict[str, int]:
    """The running kernel's gfp flag table, from tracefs's kmem:kmalloc format file."""
    format_file = Path(tracefs) / "events" / "kmem" / "kmalloc" / "format"
    try:
        text = format_file.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{format_file} is missing: tracefs is not mounted at {tracefs}"
            " or this kernel lacks the kmem:kmalloc tracepoint"
        ) from None
    print_fmt = next((line for line in text.splitlines() if line.startswith("print fmt:")), None)
    if print_fmt is None:
        raise ValueError(f"{format_file} has no 'print fmt:' line")
    return parse_print_flags(print_fmt, "gfp_flags")


# ---------------------------------------------------------------------------
# enums from BTF (include/uapi/linux/btf.h)
# ---------------------------------------------------------------------------

BTF_MAGIC = 0xEB9F
_BTF_HEADER = "HBBIIIII"  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
_BTF_TYPE_SIZE = 12  # name_off, info, size_or_type
_KIND_ENUM, _KIND_ENUM64 = 6, 19
# Bytes after each kind's 12-byte header: (fixed, per vlen item), indexed by kind 0..19 (UNKN..ENUM64).
_KIND_TRAILER = (
    (0, 0),  # UNKN
    (4, 0),  # INT
    (0, 0),  # PTR
    (12, 0),  # ARRAY
    (0, 12),  # STRUCT
    (0, 12),  # UNION
    (0, 8),  # ENUM
    (0, 0),  # FWD
    (0, 0),  # TYPEDEF
    (0, 0),  # VOLATILE
    (0, 0),  # CONST
    (0, 0),  # RESTRICT
    (0, 0),  # FUNC
    (0, 8),  # FUNC_PROTO
    (4, 0),  # VAR
    (0, 12),  # DATASEC
    (0, 0),  # FLOAT
    (4, 0),  # DECL_TAG
    (0, 0),  # TYPE_TAG
    (0, 12),  # ENUM64
)


def _btf_byte_order(blob: bytes) -> str:
    if len(blob) < struct.calcsize("<" + _BTF_HEADER):
        raise ValueError(f"BTF blob is {len(blob)} bytes, too short for a BTF header")
    for order in "<>":
        if struct.unpack_from(order + "H", blob)[0] == BTF_MAGIC:
            return order
    raise ValueError(f"not BTF: magic is {blob[:2].hex()}, expected 0x{BTF_MAGIC:x} in either byte order")


def _btf_sections(blob: bytes, order: str) -> tuple[memoryview, bytes]:
    """The (type, string) sections of a BTF blob, checked to lie inside it."""
    header = struct.unpack_from(order + _BTF_HEADER, blob)
    _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = header
    if version != 1:
        raise ValueError(f"unsupported BTF version {version}")
    if hdr_len < struct.calcsize(_BTF_HEADER):
        raise ValueError(f"BTF header length {hdr_len} is shorter than the header itself")
    view = memoryview(blob)
    for name, off, length in (("type", type_off, type_len), ("string", str_off, str_len)):
        if hdr_len + off + length > len(blob):
            raise ValueError(
                f"BTF blob truncated: {name} section ends at byte {hdr_len + off + length} but the blob has {len(blob)}"
            )
    return (
        view[hdr_len + type_off : hdr_len + type_off + type_len],
        blob[hdr_len + str_off : hdr_len + str_off + str_len],
    )


def _string_offsets(strings: bytes, names: Iterable[str]) -> dict[int, str]:
    """Offset -> name for every place a wanted name sits in the string section, so types match by offset alone."""
    offsets: dict[int, str] = {}
    for name in names:
        needle = b"\0" + name.encode() + b"\0"
        at = strings.find(needle)
        while at != -1:
            offsets[at + 1] = name
            at = strings.find(needle, at + 1)
    return offsets


def _enum_values(
    types: memoryview, strings: bytes, at: int, vlen: int, kind: int, signed: bool, order: str
) -> dict[str, int]:
    """Enumerator -> value of the ENUM or ENUM64 whose vlen items start at types[at]."""
    values: dict[str, int] = {}
    item = 8 if kind == _KIND_ENUM else 12
    for i in range(vlen):
        if kind == _KIND_ENUM:
            name_off, value = struct.unpack_from(order + "II", types, at + i * item)
            if signed and value >= 1 << 31:
                value -= 1 << 32
        else:
            name_off, lo, hi = struct.unpack_from(order + "III", types, at + i * item)
            value = hi << 32 | lo
            if signed and value >= 1 << 63:
                value -= 1 << 64
        values[_btf_string(strings, name_off)] = value
    return values


def _btf_string(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    if offset >= len(strings) or end == -1:
        raise ValueError(f"BTF string offset {offset} is outside the string section or unterminated")
    return strings[offset:end].decode()


class _BtfTypeHeader(NamedTuple):  # a tuple: vmlinux has some 170,000 types
    name_off: int
    kind: int
    vlen: int
    kind_flag: bool
    size_or_type: int
    trailer_at: int  # where the kind's trailer (and vlen items) start in the type section


def _btf_type_headers(types: memoryview, order: str) -> Iterator[tuple[int, _BtfTypeHeader]]:
    """(type id, header) of every type in a BTF type section, in order (ids from 1)."""
    header = struct.Struct(order + "III")
    at, end, type_id = 0, len(types), 1
    while at < end:
        if at + _BTF_TYPE_SIZE > end:
            raise ValueError(f"BTF type section truncated inside type {type_id}")
        name_off, info, size_or_type = header.unpack_from(types, at)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind >= len(_KIND_TRAILER):
            known = len(_KIND_TRAILER) - 1
            raise ValueError(f"BTF type {type_id} has kind {kind}, unknown to this parser (it knows 0..{known})")
        fixed, per_item = _KIND_TRAILER[kind]
        trailer_at, at = at + _BTF_TYPE_SIZE, at + _BTF_TYPE_SIZE + fixed + per_item * vlen
        if at > end:
            raise ValueError(f"BTF type section truncated inside type {type_id}")
        yield type_id, _BtfTypeHeader(name_off, kind, vlen, bool(info >> 31), size_or_type, trailer_at)
        type_id += 1


def parse_btf_enums(blob: bytes, names: Iterable[str]) -> dict[str, dict[str, int]]:
    """The named enums (ENUM and ENUM64) of a BTF blob as enum -> {enumerator: value}, enumerators in declaration order.

    Values are signed when the enum's kind_flag says so. The blob must be
    standalone BTF like vmlinux's, not split module BTF (its offsets continue
    vmlinux's).
    """
    wanted = list(dict.fromkeys(names))
    order = _btf_byte_order(blob)
    types, strings = _btf_sections(blob, order)
    wanted_at = _string_offsets(strings, wanted)
    found: dict[str, dict[str, int]] = {}
    for _type_id, t in _btf_type_headers(types, order):
        # vlen 0 is a forward declaration; the full enum is elsewhere.
        if t.name_off in wanted_at and t.kind in (_KIND_ENUM, _KIND_ENUM64) and t.vlen:
            name = wanted_at[t.name_off]
            values = _enum_values(types, strings, t.trailer_at, t.vlen, t.kind, t.kind_flag, order)
            if found.setdefault(name, values) != values:
                raise ValueError(f"BTF has two different enums named {name!r}")
    missing = [name for name in wanted if name not in found]
    if missing:
        raise KeyError(f"BTF has no enum {', '.join(missing)} (kernel config or version lacks it)")
    return {name: found[name] for name in wanted}


def read_btf_enums(names: Iterable[str], path: Path = VMLINUX_BTF) -> dict[str, dict[str, int]]:
    """The named enums from a BTF file, by default the running kernel's."""
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF") from None
    try:
        return parse_btf_enums(blob, names)
    except (ValueError, KeyError) as err:
        raise type(err)(f"{path}: {err.args[0]}") from None


def read_kernel_enums(path: Path = VMLINUX_BTF) -> dict[str, dict[str, int]]:
    """The enums chargeplay decodes with (KERNEL_ENUMS), from the running kernel's BTF by default."""
    return read_btf_enums(KERNEL_ENUMS, path)


# ---------------------------------------------------------------------------
# struct layouts and tracepoint prototypes from BTF (the eBPF backend's)
# ---------------------------------------------------------------------------

_KIND_PTR, _KIND_STRUCT, _KIND_TYPEDEF, _KIND_FUNC, _KIND_FUNC_PROTO = 2, 4, 8, 12, 13
_KIND_QUALIFIERS = {9: "volatile", 10: "const", 11: "restrict", 18: ""}  # 18: TYPE_TAG
_KIND_NAMED = {1: "", 4: "struct ", 5: "union ", 6: "enum ", 7: "struct ", 8: "", 16: "", 19: "enum "}


class Btf:
    """The types of a BTF blob, looked up by id: enough to read struct member offsets, the C
    types of a raw tracepoint's arguments (its btf_trace_NAME typedef) and of a function's."""

    def __init__(self, blob: bytes) -> None:
        self.order = _btf_byte_order(blob)
        self.types, self.strings = _btf_sections(blob, self.order)
        self.headers: list[_BtfTypeHeader | None] = [None]  # id 0 is void
        self.by_name: dict[tuple[int, str], int] = {}
        for type_id, t in _btf_type_headers(self.types, self.order):
            self.headers.append(t)
            if t.kind in (_KIND_STRUCT, _KIND_TYPEDEF, _KIND_FUNC) and t.name_off and (t.kind != _KIND_STRUCT or t.vlen):
                self.by_name.setdefault((t.kind, _btf_string(self.strings, t.name_off)), type_id)

    def _items(self, t: _BtfTypeHeader, fmt: str) -> Iterator[tuple[int, ...]]:
        size = struct.calcsize(fmt)
        for i in range(t.vlen):
            yield struct.unpack_from(self.order + fmt, self.types, t.trailer_at + i * size)

    def member_offsets(self, struct_name: str, members: Iterable[str]) -> dict[str, int]:
        """Byte offset of each named member of a struct (direct members, not bitfields)."""
        type_id = self.by_name.get((_KIND_STRUCT, struct_name))
        if type_id is None:
            raise KeyError(f"BTF has no struct {struct_name}")
        t = self.headers[type_id]
        offsets = {}
        for name_off, _type, offset in self._items(t, "III"):
            bits = offset & 0xFFFFFF if t.kind_flag else offset  # kind_flag: bitfield size in the top byte
            offsets[_btf_string(self.strings, name_off)] = bits // 8
        missing = [m for m in members if m not in offsets]
        if missing:
            raise KeyError(f"BTF struct {struct_name} has no member {', '.join(missing)}")
        return {m: offsets[m] for m in members}

    def type_name(self, type_id: int) -> str:
        """A C spelling of a type, as the kernel declares it ("const struct kmem_cache *")."""
        if type_id == 0:
            return "void"
        t = self.headers[type_id]
        if t.kind == _KIND_PTR:
            return self.type_name(t.size_or_type).rstrip() + " *"
        if t.kind in _KIND_QUALIFIERS:
            return f"{_KIND_QUALIFIERS[t.kind]} {self.type_name(t.size_or_type)}".strip()
        if t.kind in _KIND_NAMED and t.name_off:
            return _KIND_NAMED[t.kind] + _btf_string(self.strings, t.name_off)
        return f"<BTF kind {t.kind}>"

    def tracepoint_args(self, event: str) -> list[str]:
        """The C types of a tracepoint's TP_PROTO arguments (after the raw tracepoint's
        leading void *), from the kernel's typedef btf_trace_EVENT."""
        type_id = self.by_name.get((_KIND_TYPEDEF, f"btf_trace_{event}"))
        if type_id is None:
            raise KeyError(f"BTF has no tracepoint {event}")
        proto = self.headers[self.headers[type_id].size_or_type]  # typedef -> pointer -> proto
        proto = self.headers[proto.size_or_type] if proto.kind == _KIND_PTR else proto
        if proto.kind != _KIND_FUNC_PROTO:
            raise ValueError(f"BTF btf_trace_{event} is not a function pointer")
        return [self.type_name(param_type) for _name, param_type in self._items(proto, "II")][1:]

    def function_args(self, function: str) -> list[str]:
        """The C types of a kernel function's parameters. BTF lists the functions the compiler
        kept (not those inlined everywhere), so a KeyError also means "nothing to probe"."""
        type_id = self.by_name.get((_KIND_FUNC, function))
        if type_id is None:
            raise KeyError(f"BTF has no function {function}")
        proto = self.headers[self.headers[type_id].size_or_type]  # FUNC -> FUNC_PROTO
        return [self.type_name(param_type) for _name, param_type in self._items(proto, "II")]


def read_btf(path: Path = VMLINUX_BTF) -> Btf:
    """The running kernel's BTF (or the file given)."""
    try:
        return Btf(Path(path).read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF") from None
