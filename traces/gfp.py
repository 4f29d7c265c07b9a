"""gfp flags as the trace format decodes them, with the capturing kernel's own table.

Nothing here hard-codes a bit value: the table comes from the kmem:kmalloc tracepoint's
print fmt (the same ``__print_flags`` table the kernel uses to render ``gfp_flags=`` in
trace text), parsed here and stored in each trace's manifest. Flags change between kernel
versions and configs, so a trace is decoded with the table of the kernel that produced it.
"""
from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping

MASK64 = (1 << 64) - 1


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
