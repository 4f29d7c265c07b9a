"""Checks readers run before trusting a file: traces and results come from elsewhere.

Whatever is wrong (a file that leaves its directory, damaged Parquet, a missing or
retyped column, a JSON document of another shape) becomes one TraceError that names
the file and what is wrong, never a traceback deep in a reader.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from traces.errors import UserError
from traces.schema import SCHEMA_VERSION, SCHEMA_VERSION_KEY

MAX_JSON_BYTES = 16 << 20  # a manifest or summary is a few hundred KiB at most


class TraceError(UserError):
    """A trace (or result) that cannot be read; the message says what is wrong and what to do."""


def inside(root: Path, path: Path) -> Path:
    """`path` as a regular file within `root` once symlinks are resolved, refused otherwise
    (a link out of the directory, a FIFO that would block a reader, a directory)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise TraceError(f"{path}: leads outside {root} (to {resolved}); refusing to read it")
    if not resolved.exists():
        raise TraceError(f"{path}: missing")
    if not resolved.is_file():
        raise TraceError(f"{path}: not a regular file")
    return resolved


def read_json(root: Path, path: Path) -> Any:
    """A JSON document within `root`, of bounded size."""
    with open(inside(root, path), "rb") as file:
        text = file.read(MAX_JSON_BYTES + 1)
    if len(text) > MAX_JSON_BYTES:
        raise TraceError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB; not a chargeplay file")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise TraceError(f"{path}: not valid JSON ({one_line(err)}); the file is damaged") from None


def parquet_schema(root: Path, path: Path, columns: pa.Schema | tuple[tuple[str, pa.DataType, str], ...],
                   versioned: bool = True) -> pa.Schema:
    """A Parquet file's schema, after checking that it reads, has every expected column with
    its type and no other (an extra column could shadow one a reader derives) and, if
    `versioned`, this schema version's tag."""
    try:
        schema = pq.read_schema(inside(root, path))
    except TraceError:
        raise
    except Exception as err:  # pyarrow raises several types for damaged files
        raise TraceError(f"{path}: unreadable Parquet ({one_line(err)}); remove the file or re-record it") from None
    if versioned:
        version = (schema.metadata or {}).get(SCHEMA_VERSION_KEY, b"?").decode(errors="replace")
        if version != str(SCHEMA_VERSION):
            raise TraceError(f"{path}: written with trace schema version {show(version)}, this chargeplay reads {SCHEMA_VERSION}")
    expected = columns if isinstance(columns, pa.Schema) else pa.schema([pa.field(name, dtype) for name, dtype, _ in columns])
    unexpected = [name for name in schema.names if name not in expected.names or schema.names.count(name) > 1]
    if unexpected:
        raise TraceError(f"{path}: unexpected or repeated column {show(unexpected[0])}; not a file chargeplay wrote")
    for field in expected:
        if field.name not in schema.names:
            raise TraceError(f"{path}: no column {field.name!r}; not a file chargeplay wrote")
        found = schema.field(field.name).type
        if not _same_type(found, field.type):
            raise TraceError(f"{path}: column {field.name!r} is {found}, expected {field.type}")
    return schema


def _same_type(found: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_dictionary(expected):
        return pa.types.is_dictionary(found) and _same_type(found.value_type, expected.value_type)
    large = {pa.string(): pa.large_string()}  # polars writes large strings; they read the same
    return found == expected or large.get(expected) == found


# JSON shapes: a type (float admits integers), None (null), Int(low, high), {key: shape} for
# an object with those keys (Optional(shape): the key may be missing; other keys are
# ignored), [shape] for a list, MapOf(shape) for an object of any keys (integer keys, or some required), and a tuple of
# shapes for any one of them.
@dataclass(frozen=True)
class Int:
    low: int
    high: int


@dataclass(frozen=True)
class Optional:
    shape: Any


@dataclass(frozen=True)
class MapOf:
    shape: Any
    integer_keys: bool = False  # keys that are numbers (JSON keys are strings)
    required: tuple[str, ...] = ()


def check_shape(value: Any, shape: Any, file: str, key: str = "") -> None:
    """Raise a TraceError naming `file` and the key path unless `value` has `shape`."""
    if isinstance(shape, tuple):
        containers = []
        for alternative in shape:
            try:
                return check_shape(value, alternative, file, key)
            except TraceError as error:
                if isinstance(alternative, (dict, list, MapOf)):
                    containers.append(error)
        if isinstance(value, (dict, list)) and len(containers) == 1:
            raise containers[0]  # says which key inside is wrong
        _fail(value, shape, file, key)
    elif isinstance(shape, (dict, MapOf)):
        if type(value) is not dict:
            _fail(value, shape, file, key)
        if isinstance(shape, MapOf) and shape.integer_keys:
            for name in value:
                if not name.lstrip("-").isdigit() or not name.isascii():
                    raise TraceError(f"{file}: {_join(key, show(name))}: expected a number as key")
        if isinstance(shape, MapOf):
            for name in shape.required:
                if name not in value:
                    raise TraceError(f"{file}: no {_join(key, name)!r}")
        inner_shapes = shape.items() if isinstance(shape, dict) else ((name, shape.shape) for name in value)
        for name, inner in inner_shapes:
            if isinstance(inner, Optional):
                if name not in value:
                    continue
                inner = inner.shape
            if name not in value:
                raise TraceError(f"{file}: no {_join(key, name)!r}")
            check_shape(value[name], inner, file, _join(key, name))
    elif isinstance(shape, list):
        if type(value) is not list:
            _fail(value, shape, file, key)
        for n, item in enumerate(value):
            check_shape(item, shape[0], file, f"{key}[{n}]")
    elif isinstance(shape, Int):
        if type(value) is not int or not shape.low <= value <= shape.high:
            _fail(value, shape, file, key)
    elif not (value is None if shape is None else type(value) is shape or (shape is float and type(value) is int)):
        _fail(value, shape, file, key)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _fail(value: Any, shape: Any, file: str, key: str) -> None:
    raise TraceError(f"{file}: {key + ': ' if key else ''}expected {_describe(shape)}, found {show(value)}")


def _describe(shape: Any) -> str:
    if shape is None:
        return "null"
    if isinstance(shape, Int):
        return f"an integer from {shape.low} to {shape.high}"
    if isinstance(shape, (dict, MapOf)):
        return "an object"
    if isinstance(shape, list):
        return "a list"
    if isinstance(shape, tuple):
        return " or ".join(_describe(a) for a in shape)
    return {str: "a string", float: "a number", bool: "true or false", int: "an integer", dict: "an object", list: "a list"}[shape]


def one_line(error: Exception) -> str:
    """A library's message in ours: pyarrow's and polars' span lines."""
    return " ".join(str(error).split())


def show(value: Any) -> str:
    """A value in an error message: JSON-escaped (one line), and short."""
    text = json.dumps(value) if isinstance(value, (int, float, str, bool, type(None))) else _describe(type(value))
    return text if len(text) <= 40 else text[:37] + "..."
