"""The running kernel's own tables: gfp flag names and kernel enums.

Nothing here hard-codes a bit value or an enum number. gfp flags come from
the kmem:kmalloc tracepoint's print fmt (the same ``__print_flags`` table the
kernel uses to render ``gfp_flags=`` in trace text) and enums come from the
kernel's BTF (/sys/kernel/btf/vmlinux). Both change between kernel versions
and configs, so a capture must be decoded with the tables of the kernel that
produced it.
"""
from __future__ import annotations

import ast
import operator
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import polars as pl

MASK64 = (1 << 64) - 1
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
KERNEL_ENUMS = ("node_stat_item", "memcg_stat_item", "vm_event_item", "trace_flag_type")

# ---------------------------------------------------------------------------
# gfp flags from the tracepoint print fmt
# ---------------------------------------------------------------------------

# Only these type names may appear in a cast; any other parenthesised word is
# left alone so the evaluator rejects it by name instead of silently dropping it.
_CAST = re.compile(
    r"\(\s*(?:(?:__force|unsigned|signed|long|int|short|char|gfp_t|size_t|__?[us](?:8|16|32|64))\s*)+\)"
)
# A C integer literal with an optional u/l suffix, not part of an identifier or a float.
_INT_LITERAL = re.compile(r"(?<![\w.])(0[xX][0-9a-fA-F]+|[0-9]+)(?:[uU](?:ll|LL|l|L)?|(?:ll|LL|l|L)[uU]?)?(?![\w.])")
_STRING_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')
_NULL_NAMES = {"NULL", "((void*)0)", "(void*)0"}  # spellings of the terminator's name, spaces removed
_BINARY_OPS = {
    ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
}


def _c_int_to_python(match: re.Match[str]) -> str:
    literal = match.group(1)
    if literal.lower().startswith("0x"):
        return str(int(literal, 16))
    if len(literal) > 1 and literal.startswith("0"):
        return str(int(literal, 8))  # C octal, which Python's parser rejects
    return literal


def _eval_node(node: ast.AST, source: str) -> int:
    segment = ast.get_source_segment(source, node)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value & MASK64
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
        return ~_eval_node(node.operand, source) & MASK64
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _eval_node(node.left, source), _eval_node(node.right, source)
        if isinstance(node.op, (ast.LShift, ast.RShift)) and right >= 64:
            # Undefined in C for a 64-bit operand; refusing also keeps Python from building huge ints.
            raise ValueError(f"shift count {right} in {segment!r} is out of range for a 64-bit value")
        return _BINARY_OPS[type(node.op)](left, right) & MASK64
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        operator_name = type(node.op).__name__
        raise ValueError(f"unsupported operator {operator_name} in {segment!r} of C flag expression {source!r}")
    raise ValueError(f"unsupported token {segment!r} in C flag expression {source!r}")


def eval_c_flag_expr(expr: str) -> int:
    """Value of a constant C bit expression as unsigned 64-bit, allowing only integer literals, casts, | & << >> ~."""
    python = _INT_LITERAL.sub(_c_int_to_python, _CAST.sub("", expr)).strip()
    try:
        tree = ast.parse(python, mode="eval")
    except SyntaxError as err:
        near = python[err.offset - 1 :][:20] if err.offset else python
        raise ValueError(f"cannot parse C flag expression {expr!r}: {err.msg} near {near!r}") from None
    return _eval_node(tree.body, python)


def _split_args(text: str, start: int) -> tuple[list[str], int]:
    """Split text from start at top-level commas, up to the first unmatched closing bracket.

    Returns the pieces and the index of that bracket (len(text) if none).
    String literals are skipped whole, so names may hold any character.
    """
    parts, depth, piece_start, i = [], 0, start, start
    while i < len(text):
        char = text[i]
        if char == '"':
            literal = _STRING_LITERAL.match(text, i)
            if literal is None:
                raise ValueError(f"unterminated string literal at {text[i:i + 40]!r}")
            i = literal.end()
            continue
        if char in "({":
            depth += 1
        elif char in ")}":
            if depth == 0:
                break
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[piece_start:i].strip())
            piece_start = i + 1
        i += 1
    parts.append(text[piece_start:i].strip())
    return parts, i


def _flag_entry(entry: str) -> tuple[str, str] | None:
    """(C mask expression, name) of one ``{ mask, "name" }`` entry; None for the ``{ 0, NULL }`` terminator."""
    if not entry.startswith("{"):
        raise ValueError(f"expected a {{mask, name}} entry in __print_flags, got {entry!r}")
    parts, end = _split_args(entry, 1)
    if entry[end:] != "}" or len(parts) != 2 or not parts[0]:
        raise ValueError(f"malformed __print_flags entry {entry!r}")
    expr, name = parts
    if re.sub(r"\s", "", name) in _NULL_NAMES:
        return None
    literal = _STRING_LITERAL.fullmatch(name)
    if literal is None:
        raise ValueError(f"__print_flags entry {entry!r} has no string name")
    return expr, literal.group(1)


def parse_print_flags(print_fmt: str, field: str = "gfp_flags") -> dict[str, int]:
    """Name -> mask of the ``__print_flags(REC-><field>, ...)`` table in a tracepoint print fmt, in kernel order.

    Order matters: the kernel lists composites (GFP_KERNEL) before their parts
    (__GFP_IO) and decodes greedily in that order.
    """
    call = re.search(r"__print_flags\(\s*REC->" + re.escape(field) + r"\s*,", print_fmt)
    if call is None:
        raise ValueError(f"print fmt has no __print_flags(REC->{field}, ...)")
    args, end = _split_args(print_fmt, call.start() + len("__print_flags("))
    if end == len(print_fmt):
        raise ValueError(f"__print_flags(REC->{field}, ...) is not closed")
    table: dict[str, int] = {}
    for entry in args[2:]:  # after the field and the delimiter
        parsed = _flag_entry(entry)
        if parsed is None:
            break
        expr, name = parsed
        if name in table:
            raise ValueError(f"flag {name!r} appears twice in __print_flags(REC->{field}, ...)")
        table[name] = eval_c_flag_expr(expr)
    if not table:
        raise ValueError(f"__print_flags(REC->{field}, ...) has no named flags")
    return table


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


def decode_gfp(bits: int, table: Mapping[str, int]) -> str:
    """gfp bits as the kernel's trace text renders them (trace_print_flags_seq in kernel/trace/trace_output.c).

    Greedy in table order: each entry whose whole mask is set is named and its
    bits cleared; the walk stops once no bits remain; leftovers are appended as
    0x%lx. Like the kernel, an entry with mask 0 matches while bits remain.
    The kmalloc tracepoint prints "none" for 0 instead of calling the decoder.
    """
    if not 0 <= bits <= MASK64:
        raise ValueError(f"gfp bits {bits} are not an unsigned 64-bit value")
    if bits == 0:
        return "none"
    names = []
    for name, mask in table.items():
        if not bits:
            break
        if bits & mask == mask:
            names.append(name)
            bits &= ~mask
    if bits:
        names.append(f"0x{bits:x}")
    return "|".join(names)


def gfp_class(bits: int, table: Mapping[str, int]) -> str:
    """The first GFP_* composite (not a __GFP_* bit) in kernel order whose whole mask is set.

    "none" for 0 and "other" when no GFP_* composite is wholly set.
    """
    if bits == 0:
        return "none"
    for name, mask in table.items():
        if name.startswith("GFP_") and mask and bits & mask == mask:
            return name
    return "other"


def gfp_bit(table: Mapping[str, int], name: str) -> int:
    """The mask this kernel gives flag `name`."""
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"this kernel's gfp table has no {name!r}; it has {', '.join(table)}") from None


def gfp_class_series(gfp: pl.Series, table: Mapping[str, int]) -> pl.Series:
    """gfp_class of every value, computed once per distinct value (traces have few distinct gfp values)."""
    distinct = gfp.drop_nulls().unique()
    classes = [gfp_class(bits, table) for bits in distinct.to_list()]
    # Every non-null value is in `distinct`; the default only keeps nulls null (and the dtype right when all are).
    return gfp.replace_strict(distinct, pl.Series(classes, dtype=pl.String), default=None, return_dtype=pl.String)


def gfp_class_expr(col: str, table: Mapping[str, int]) -> pl.Expr:
    """Polars expression classifying the unsigned gfp column `col` with gfp_class; nulls stay null."""
    return pl.col(col).map_batches(
        lambda gfp: gfp_class_series(gfp, table), return_dtype=pl.String, is_elementwise=True
    )


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

_KIND_PTR, _KIND_STRUCT, _KIND_TYPEDEF, _KIND_FUNC_PROTO = 2, 4, 8, 13
_KIND_QUALIFIERS = {9: "volatile", 10: "const", 11: "restrict", 18: ""}  # 18: TYPE_TAG
_KIND_NAMED = {1: "", 4: "struct ", 5: "union ", 6: "enum ", 7: "struct ", 8: "", 16: "", 19: "enum "}


class Btf:
    """The types of a BTF blob, looked up by id: enough to read struct member offsets and
    the C types of a raw tracepoint's arguments (its btf_trace_NAME typedef)."""

    def __init__(self, blob: bytes) -> None:
        self.order = _btf_byte_order(blob)
        self.types, self.strings = _btf_sections(blob, self.order)
        self.headers: list[_BtfTypeHeader | None] = [None]  # id 0 is void
        self.by_name: dict[tuple[int, str], int] = {}
        for type_id, t in _btf_type_headers(self.types, self.order):
            self.headers.append(t)
            if t.kind in (_KIND_STRUCT, _KIND_TYPEDEF) and t.name_off and (t.kind != _KIND_STRUCT or t.vlen):
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


def read_btf(path: Path = VMLINUX_BTF) -> Btf:
    """The running kernel's BTF (or the file given)."""
    try:
        return Btf(Path(path).read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF") from None
