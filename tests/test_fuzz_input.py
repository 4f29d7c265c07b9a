"""Property: whatever is done to a trace or a result, `info`, `replay` and `report` either
succeed or refuse it on purpose: exit code 2 and one `error:` line, raised as a UserError by
the code that judges the input. An exit 2 from anything else (an incidental ValueError,
an OSError) or a bug (exit 70 and a traceback) fails the property.

Each example damages a copy of the committed tiny trace (tests/corpus/tiny-trace) or of its
replay result and runs the real command line in-process (typer's CliRunner), so that
hundreds of examples run in seconds. `pytest --hypothesis-show-statistics` counts them.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from hypothesis import HealthCheck, event, given, settings, strategies as st
from typer.testing import CliRunner

from chargeplay.cli import app
from traces.errors import UserError
from traces.schema import CONTEXTS, KINDS

TINY = Path(__file__).parent / "corpus" / "tiny-trace"
SEGMENT = "events/part-000000.parquet"
SIDE_TABLES = ("memcg.parquet", "slabs.parquet", "symbols.parquet")
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def refusal(exit: BaseException | None) -> BaseException | None:
    """What made the command exit: the exception the CLI caught, found behind the SystemExit
    and typer.Exit it raised while handling it."""
    while isinstance(exit, (SystemExit, typer.Exit)):
        exit = exit.__context__
    return exit


def run(*args: str) -> int:
    """The command's exit code, after checking it is 0, or 2 from a UserError with one `error:` line."""
    result = CliRunner().invoke(app, list(args))
    if result.exit_code == 0:
        return 0
    cause = refusal(result.exception)
    if result.exit_code != 2 or not isinstance(cause, UserError):
        pytest.fail(f"chargeplay {' '.join(args)}: exit {result.exit_code}, not a UserError but {cause!r}\n{result.stderr}"
                    + "".join(traceback.format_exception(cause) if cause else ""))
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {cause}", result.stderr
    return result.exit_code


@contextmanager
def damaged(change: Callable[[Path], None]) -> Iterator[Path]:
    """A copy of the tiny trace with `change` done to it."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace"
        shutil.copytree(TINY, trace)
        change(trace)
        yield trace


def info_and_replay(change: Callable[[Path], None]) -> None:
    with damaged(change) as trace:
        info = run("info", str(trace))
        replay = run("replay", str(trace), "-o", str(trace.parent / "result"))
        event(f"info exit {info}, replay exit {replay}")  # --hypothesis-show-statistics: how many got through
        assert info == replay, "info and replay disagree on whether the trace is readable"


# --- bytes --------------------------------------------------------------------------------

FILES = (SEGMENT, *SIDE_TABLES)


@FUZZ
@given(st.sampled_from(FILES), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8),
       st.one_of(st.none(), st.floats(0, 1)))
def test_flipped_or_truncated_parquet(name, flips, keep):
    def change(trace: Path) -> None:
        data = bytearray((trace / name).read_bytes())
        for where, mask in flips:
            data[int(where * len(data))] ^= mask
        (trace / name).write_bytes(bytes(data[:int(keep * len(data))] if keep is not None else data))
    info_and_replay(change)


# --- columns ------------------------------------------------------------------------------

TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint16(), pa.uint32(), pa.uint64(), pa.float64(),
         pa.string(), pa.large_string(), pa.bool_(), pa.binary(), pa.timestamp("ns"), pa.list_(pa.int64()))


def retyped(column: pa.ChunkedArray, dtype: pa.DataType) -> pa.ChunkedArray | pa.Array:
    try:
        return column.cast(dtype, safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.nulls(len(column), dtype)


@FUZZ
@given(st.sampled_from(FILES), st.data())
def test_dropped_retyped_or_added_columns(name, data):
    def change(trace: Path) -> None:
        table = pq.read_table(trace / name)
        column = data.draw(st.sampled_from(table.column_names))
        action = data.draw(st.sampled_from(["drop", "retype", "add", "rename"]))
        index = table.schema.get_field_index(column)
        if action == "drop":
            table = table.remove_column(index)
        elif action == "retype":
            dtype = data.draw(st.sampled_from(TYPES))
            table = table.set_column(index, pa.field(column, dtype), retyped(table.column(column), dtype))
        elif action == "add":
            table = table.append_column(data.draw(st.sampled_from(["pool", "row", "op", column, "x"])), table.column(column))
        else:
            table = table.rename_columns([data.draw(st.text(max_size=8)) if n == index else c for n, c in enumerate(table.column_names)])
        pq.write_table(table, trace / name)
    info_and_replay(change)


# --- values -------------------------------------------------------------------------------

def values_of(dtype: pa.DataType, column: str) -> st.SearchStrategy:
    """Any value the column's type holds, near-boundary and plausible ones more often."""
    if pa.types.is_integer(dtype):
        low, high = (0, 2 ** dtype.bit_width - 1) if pa.types.is_unsigned_integer(dtype) else (-2 ** (dtype.bit_width - 1), 2 ** (dtype.bit_width - 1) - 1)
        return st.one_of(st.none(), st.integers(low, high), st.integers(max(low, -3), min(high, 300)), st.sampled_from([low, high]))
    if pa.types.is_boolean(dtype):
        return st.one_of(st.none(), st.booleans())
    named = {"kind": KINDS, "ctx": CONTEXTS}.get(column, ("kmalloc-cg-64", "dentry", "<b>x</b>"))
    return st.one_of(st.none(), st.text(max_size=20), st.sampled_from(named))


@FUZZ
@given(st.sampled_from(FILES), st.data())
def test_any_values_in_any_cells(name, data):
    def change(trace: Path) -> None:
        table = pq.read_table(trace / name)
        for _ in range(data.draw(st.integers(1, 5))):
            index = data.draw(st.integers(0, table.num_columns - 1))
            field = table.schema.field(index)
            values = table.column(index).to_pylist()
            if not values:
                continue
            for row in data.draw(st.lists(st.integers(0, len(values) - 1), min_size=1, max_size=10)):
                values[row] = data.draw(values_of(field.type, field.name))
            table = table.set_column(index, field.with_nullable(True), pa.array(values, field.type))
        pq.write_table(table, trace / name)
    info_and_replay(change)


@FUZZ
@given(st.data())
def test_timestamps_permuted_negated_or_shifted(data):
    def change(trace: Path) -> None:
        table = pq.read_table(trace / SEGMENT)
        ts = table.column("ts_ns").to_pylist()
        how = data.draw(st.sampled_from(["permute", "negate", "shift", "swap"]))
        if how == "permute":
            ts = data.draw(st.permutations(ts))
        elif how == "negate":
            rows = data.draw(st.sets(st.integers(0, len(ts) - 1), min_size=1, max_size=20))
            ts = [-t if n in rows else t for n, t in enumerate(ts)]
        elif how == "shift":
            ts = [t + data.draw(st.integers(-2**62, 2**62)) for t in ts]
            ts = [min(max(t, -2**63), 2**63 - 1) for t in ts]
        else:
            a, b = data.draw(st.integers(0, len(ts) - 1)), data.draw(st.integers(0, len(ts) - 1))
            ts[a], ts[b] = ts[b], ts[a]
        table = table.set_column(0, table.schema.field(0), pa.array(ts, pa.int64()))
        pq.write_table(table, trace / SEGMENT)
    info_and_replay(change)


# --- manifest -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def key_paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from key_paths(inner, (*path, key))
    elif isinstance(value, list):
        for n, inner in enumerate(value):
            yield from key_paths(inner, (*path, n))


def replaced(document: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    document[path[0]] = replaced(document[path[0]], path[1:], value)
    return document


MANIFEST = json.loads((TINY / "manifest.json").read_text())
MANIFEST_PATHS = [path for path in key_paths(MANIFEST) if not (len(path) > 2 and path[0] in ("enums", "gfp_flags"))]


@FUZZ
@given(st.sampled_from(MANIFEST_PATHS), st.one_of(JSON, st.sampled_from([0, -1, 2**63, "", [], {}, None])), st.booleans())
def test_manifest_values_replaced_or_removed(path, value, remove):
    def change(trace: Path) -> None:
        manifest = json.loads(json.dumps(MANIFEST))
        if remove and path:
            parent = replaced(manifest, (), manifest)
            for key in path[:-1]:
                parent = parent[key]
            del parent[path[-1]]
        else:
            manifest = replaced(manifest, path, value)
        (trace / "manifest.json").write_text(json.dumps(manifest))
    info_and_replay(change)


@FUZZ
@given(st.one_of(JSON, st.binary(max_size=50).map(lambda b: b.decode("latin-1"))))
def test_manifest_any_json_or_bytes(document):
    info_and_replay(lambda trace: (trace / "manifest.json").write_text(document if isinstance(document, str) else json.dumps(document)))


# --- results ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def result() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        assert run("replay", str(TINY), "-o", f"{tmp}/result") == 0
        yield Path(tmp) / "result"


@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_result_summary_or_outcomes_damaged(result, data):
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "result"
        shutil.copytree(result, copy)
        if data.draw(st.booleans()):
            summary = json.loads((copy / "summary.json").read_text())
            path = data.draw(st.sampled_from(list(key_paths(summary))))
            (copy / "summary.json").write_text(json.dumps(replaced(summary, path, data.draw(JSON))))
        else:
            table = pq.read_table(copy / "outcomes.parquet")
            rows = table.column("row").to_pylist()
            for n in data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, max_size=5)):
                rows[n] = data.draw(st.integers(-2**63, 2**63 - 1))
            pq.write_table(table.set_column(0, "row", pa.array(rows, pa.int64())), copy / "outcomes.parquet")
        event(f"report exit {run('report', str(copy), '-o', f'{tmp}/report.html')}")
