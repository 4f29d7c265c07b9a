"""`chargeplay scrub`: a copy fit to share, with what the replay needs left intact."""
from __future__ import annotations

import json
import re
import shutil

import polars as pl
import pytest

from conftest import chargeplay
from test_cli_errors import assert_user_error
from traces.reader import Trace
from traces.samples import sample_path

SAMPLE = "fork-storm"  # many tasks, several task names


@pytest.fixture
def source(tmp_path):
    """The sample, with an addresses/ directory as `collect --keep-addresses` would leave."""
    copy = tmp_path / "source"
    shutil.copytree(sample_path(SAMPLE), copy)
    (copy / "addresses").mkdir()
    (copy / "addresses" / "part-000000.parquet").write_bytes(b"raw addresses")
    return copy


def events(path) -> pl.DataFrame:
    return Trace.open(path).events().collect()


def test_scrub_hashes_names_renumbers_pids_and_keeps_the_rest(source, tmp_path):
    done = chargeplay("scrub", str(source), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    before, after = events(source), events(tmp_path / "out")
    assert after.height == before.height
    # Everything but comm and pid is the same, row for row.
    assert after.drop("comm", "pid").equals(before.drop("comm", "pid"))
    # pids: 1, 2, ... in order of first appearance.
    first_seen = list(dict.fromkeys(before["pid"].to_list()))
    assert after["pid"].to_list() == [first_seen.index(p) + 1 for p in before["pid"].to_list()]
    # comm: one keyed hash per name, each name's own, nulls stay null.
    pairs = before.select(pl.col("comm").alias("was"), after["comm"].alias("now")).unique()
    assert pairs.filter(pl.col("was").is_null())["now"].null_count() == pairs.filter(pl.col("was").is_null()).height
    named = pairs.drop_nulls("was")
    assert named.height == named["was"].n_unique() == named["now"].n_unique() > 1
    assert all(re.fullmatch(r"comm-[0-9a-f]{8}", now) for now in named["now"])
    # The manifest says nothing of the host: no command, cgroup path or collector pid.
    original = json.loads((source / "manifest.json").read_text())
    text = (tmp_path / "out" / "manifest.json").read_text()
    for secret in [original["target"]["cgroup_path"], " ".join(original["target"]["command"]), str(original["collector"]["pid"])]:
        assert secret not in text
    scrubbed = json.loads(text)
    assert scrubbed["scrubbed"] is True and scrubbed["status"] == "complete" and scrubbed["events"] == before.height
    assert not (tmp_path / "out" / "addresses").exists()
    for path in (tmp_path / "out").rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path
    info = chargeplay("info", str(tmp_path / "out"), "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["events"] == before.height


def test_each_scrub_has_its_own_key(source, tmp_path):
    for name in ("a", "b"):
        assert chargeplay("scrub", str(source), "-o", str(tmp_path / name)).returncode == 0
    a, b = events(tmp_path / "a"), events(tmp_path / "b")
    assert a["pid"].equals(b["pid"])
    assert set(a["comm"].drop_nulls()).isdisjoint(set(b["comm"].drop_nulls()))


def test_drop_and_keep(source, tmp_path):
    done = chargeplay("scrub", str(source), "-o", str(tmp_path / "out"), "--comm", "drop", "--pid", "keep")
    assert done.returncode == 0, done.stderr
    before, after = events(source), events(tmp_path / "out")
    assert after["comm"].null_count() == after.height
    assert after["pid"].equals(before["pid"])


def test_a_scrubbed_trace_replays_like_the_original(source, tmp_path):
    for name, trace in (("original", source), ("scrubbed", tmp_path / "out")):
        if name == "scrubbed":
            assert chargeplay("scrub", str(source), "-o", str(trace)).returncode == 0
        done = chargeplay("replay", str(trace), "-o", str(tmp_path / f"{name}-result"), "--policy", "mainline-6.18")
        assert done.returncode == 0, done.stderr
    original, scrubbed = (json.loads((tmp_path / f"{name}-result" / "summary.json").read_text())["policies"]["mainline-6.18"]
                          for name in ("original", "scrubbed"))
    for figure in ("charges", "failed", "failcnt", "reclaim_calls", "reclaimed_pages", "oom_kills", "peak_bytes", "stall_ns_total"):
        assert scrubbed[figure] == original[figure], figure


def test_bad_choices_and_outputs(source, tmp_path):
    assert_user_error(chargeplay("scrub", str(source), "-o", str(tmp_path / "x"), "--comm", "blur"), "--comm blur")
    assert_user_error(chargeplay("scrub", str(source), "-o", str(source)), "not an empty directory")
    assert_user_error(chargeplay("scrub", str(tmp_path / "nothing"), "-o", str(tmp_path / "y")), "no such trace")
