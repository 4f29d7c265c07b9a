"""Hostile input, through the real command line: every bad trace of the committed corpus
(tests/corpus/bad-traces, each saying in why.txt what is wrong and what the error must name)
and bad result directories end `info`, `replay` and `report` with one `error:` line that names
it and exit code 2, in time, having written nothing outside the output path; output paths never
lead a write elsewhere."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_user_error, chargeplay

CORPUS = Path(__file__).parent / "corpus"
TINY = CORPUS / "tiny-trace"
BAD_TRACES = sorted(path.name for path in (CORPUS / "bad-traces").iterdir())
TIMEOUT = 60


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below `root` (links not followed) with its size and mtime: what a write would change."""
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            info = (Path(directory) / name).lstat()
            found[os.path.relpath(Path(directory) / name, root)] = (info.st_size, info.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def good_result(tmp_path_factory) -> Path:
    """A replay result of the tiny trace (the corpus traces' origin), made once."""
    result = tmp_path_factory.mktemp("good") / "result"
    replayed = chargeplay("replay", str(TINY), "-o", str(result))
    assert replayed.returncode == 0, replayed.stderr
    return result


def point_at(result: Path, trace: Path, copy: Path) -> Path:
    """A copy of `result` whose summary names `trace`."""
    shutil.copytree(result, copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["trace"].update(path=str(trace), absolute_path=str(trace))
    (copy / "summary.json").write_text(json.dumps(summary))
    return copy


def test_the_corpus_is_what_make_corpus_writes():
    from corpus.make_corpus import BAD, why_text

    assert BAD_TRACES == sorted(BAD)
    for name in BAD_TRACES:
        assert (CORPUS / "bad-traces" / name / "why.txt").read_text() == why_text(name)


def error_says(trace: Path) -> list[str]:
    """The phrases why.txt says the error must name: the file, row, column and value at fault."""
    from corpus.make_corpus import SAYS

    lines = (trace / "why.txt").read_text().splitlines()
    return [line.removeprefix(SAYS) for line in lines if line.startswith(SAYS)]


def test_the_tiny_trace_replays_and_reports(good_result, tmp_path):
    info = chargeplay("info", str(TINY))
    assert info.returncode == 0 and "200 events" in info.stdout, info.stderr
    reported = chargeplay("report", str(good_result), "-o", str(tmp_path / "r.html"))
    assert reported.returncode == 0, reported.stderr


@pytest.mark.parametrize("name", BAD_TRACES)
def test_a_bad_trace_is_one_error_line_in_every_command(name, good_result, tmp_path):
    trace = CORPUS / "bad-traces" / name
    before = tree(CORPUS)
    result = point_at(good_result, trace, tmp_path / "result")
    run = dict(timeout=TIMEOUT, cwd=tmp_path)  # a relative write would land in tmp_path
    says = error_says(trace)
    assert says, f"{name}/why.txt names no phrase the error must say"
    assert_user_error(chargeplay("info", str(trace), **run), *says)
    assert_user_error(chargeplay("replay", str(trace), "-o", str(tmp_path / "out"), **run), *says)
    assert_user_error(chargeplay("report", str(result), "-o", str(tmp_path / "report.html"), **run), *says)
    assert tree(CORPUS) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]  # no output, no leftovers


def test_a_fifo_in_a_trace_is_refused_not_waited_on(tmp_path):
    trace = tmp_path / "trace"
    shutil.copytree(TINY, trace)
    (trace / "slabs.parquet").unlink()
    os.mkfifo(trace / "slabs.parquet")  # git cannot hold one: made here
    assert_user_error(chargeplay("info", str(trace), timeout=TIMEOUT), "slabs.parquet", "not a regular file")


def write_cells(path: Path, column: str, values: list, dtype: pa.DataType | None = None) -> None:
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    dtype = dtype or table.schema.field(index).type
    pq.write_table(table.set_column(index, pa.field(column, dtype), pa.array(values, dtype)), path)


def edit_summary(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(result: Path) -> None:
        summary = json.loads((result / "summary.json").read_text())
        change(summary)
        (result / "summary.json").write_text(json.dumps(summary))
    return edit


def first_policy(summary: dict) -> dict:
    return next(iter(summary["policies"].values()))


def rename_policy(summary: dict) -> None:
    summary["policies"] = {"row": first_policy(summary)}


def outcome_rows(result: Path) -> int:
    return pq.read_metadata(result / "outcomes.parquet").num_rows


# name: (what is wrong, how to do it to a good result, a word the error names)
BAD_RESULTS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "summary-not-json": ("summary.json is not JSON", lambda r: (r / "summary.json").write_text("{"), "not valid JSON"),
    "summary-a-list": ("summary.json is a list", lambda r: (r / "summary.json").write_text("[]"), "summary.json"),
    "summary-no-limits": ("summary.json has no limits", edit_summary(lambda s: s.pop("limits")), "limits"),
    "summary-negative-count": ("a policy failed -1 charges", edit_summary(lambda s: first_policy(s).update(failed=-1)), "failed"),
    "summary-stall-pid-not-a-number": ("stall_ns_by_pid is keyed by a name",
                                       edit_summary(lambda s: first_policy(s)["stall_ns_by_pid"].update(abc=1)), "stall_ns_by_pid"),
    "summary-policy-named-row": ("a policy named row, a column of outcomes.parquet", edit_summary(rename_policy), "row"),
    "summary-trace-missing": ("the trace it names is gone",
                              edit_summary(lambda s: s["trace"].update(path="/nonexistent/trace", absolute_path="/nonexistent/trace")),
                              "/nonexistent"),
    "outcomes-truncated": ("outcomes.parquet is cut short",
                           lambda r: (r / "outcomes.parquet").write_bytes((r / "outcomes.parquet").read_bytes()[:100]), "outcomes.parquet"),
    "outcomes-row-beyond-trace": ("an outcome's row is past the trace's last event",
                                  lambda r: write_cells(r / "outcomes.parquet", "row", list(range(outcome_rows(r) - 1)) + [10**9]),
                                  "outcomes.parquet"),
    "outcomes-unknown-outcome": ("an outcome is 'exploded'", lambda r: write_cells(
        r / "outcomes.parquet", "caller-gfp", pa.DictionaryArray.from_arrays(pa.array([0] * outcome_rows(r), pa.int8()), ["exploded"]),
        pa.dictionary(pa.int8(), pa.string())), "exploded"),
    "outcomes-policy-column-missing": ("outcomes.parquet lacks a policy's column",
                                       lambda r: pq.write_table(pq.read_table(r / "outcomes.parquet").drop_columns(["watermark"]),
                                                                r / "outcomes.parquet"), "watermark"),
    "timeseries-retyped": ("timeseries.parquet's usage is text", lambda r: write_cells(
        r / "timeseries.parquet", "usage_bytes", ["x"] * pq.read_metadata(r / "timeseries.parquet").num_rows, pa.string()), "usage_bytes"),
    "timeseries-symlink-out": ("timeseries.parquet links out of the result",
                               lambda r: ((r / "timeseries.parquet").unlink(), os.symlink(TINY / "memcg.parquet", r / "timeseries.parquet")),
                               "leads outside"),
    "summary-fifo": ("summary.json is a FIFO: a reader would wait forever",
                     lambda r: ((r / "summary.json").unlink(), os.mkfifo(r / "summary.json")), "not a regular file"),
}


@pytest.mark.parametrize("name", sorted(BAD_RESULTS))
def test_a_bad_result_is_one_error_line(name, good_result, tmp_path):
    _, damage, word = BAD_RESULTS[name]
    result = tmp_path / "result"
    shutil.copytree(good_result, result)
    damage(result)
    assert_user_error(chargeplay("report", str(result), "-o", str(tmp_path / "report.html"), timeout=TIMEOUT), word)
    assert not (tmp_path / "report.html").exists()


def test_replay_refuses_an_output_that_is_a_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere)
    assert_user_error(chargeplay("replay", str(TINY), "-o", str(tmp_path / "out")), "symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_report_writes_through_no_link_at_its_output_or_temporary_name(good_result, tmp_path):
    """In a shared directory, links planted at the report's name and at its temporary name
    (.NAME.tmp) must not make the report overwrite what they point to: a link at its name is
    something already there, refused in one line; one at the temporary name is replaced."""
    victims = [tmp_path / "victim1", tmp_path / "victim2"]
    for victim in victims:
        victim.write_text("precious")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "report.html").symlink_to(victims[0])
    (shared / ".report.html.tmp").symlink_to(victims[1])
    assert_user_error(chargeplay("report", str(good_result), "-o", str(shared / "report.html")), "report.html exists")
    (shared / "report.html").unlink()
    reported = chargeplay("report", str(good_result), "-o", str(shared / "report.html"))
    assert reported.returncode == 0, reported.stderr
    assert [victim.read_text() for victim in victims] == ["precious", "precious"]
    page = shared / "report.html"
    assert not page.is_symlink() and page.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in shared.iterdir()) == ["report.html"]
