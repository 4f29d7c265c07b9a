"""`chargeplay sweep`: a trace replayed over a range of limits, the criterion, the smallest
limit that meets it, and the page that charts it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from analyze.criterion import parse_criterion, recommend
from conftest import assert_user_error, chargeplay
from test_report import BROWSER, DrawnCharts, render
from traces.errors import UserError
from traces.samples import sample_path

MIB = 1 << 20


def test_a_criterion_reads_each_metric_in_its_unit():
    conditions = parse_criterion("stretch<=5%, oom=0,above<500ms,stall<=2s,failed<3")
    assert [(c.metric, c.op, c.value) for c in conditions] == [
        ("stretch", "<=", pytest.approx(0.05)), ("oom", "=", 0), ("above", "<", pytest.approx(0.5)), ("stall", "<=", 2e9),
        ("failed", "<", 3)]


@pytest.mark.parametrize(("text", "words"), [
    ("stretch<=5", ["stretch", "'%'"]),  # a bare 5 could be 5% or 500%
    ("oom=0s", ["oom", "a count"]),
    ("speed<=1", ["no metric 'speed'", "stretch"]),
    ("oom>1", ["cannot read 'oom>1'", "<=, < or ="]),
])
def test_a_criterion_it_cannot_read_names_the_part(text, words):
    with pytest.raises(UserError) as raised:
        parse_criterion(text)
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_the_recommendation_is_the_smallest_limit_from_which_every_larger_one_meets_the_criterion():
    """By hand: A meets at 8 MiB but not at 12, so only from 16; B never at the largest; C everywhere."""
    stretch = {"A": [0.5, 0.03, 0.07, 0.01], "B": [0.9, 0.5, 0.2, 0.06], "C": [0.0, 0.0, 0.0, 0.0]}
    rows = [{"policy": p, "limit_bytes": (4 + 4 * n) * MIB, "stretch": s, "oom_kills": 1 if (p, n) == ("C", 0) else 0}
            for p, values in stretch.items() for n, s in enumerate(values)]
    table = pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=7)  # the order of rows does not matter
    assert dict(sorted(recommend(table, parse_criterion("stretch<=5%,oom=0")).items())) == {"A": 16 * MIB, "B": None, "C": 8 * MIB}
    assert dict(sorted(recommend(table, parse_criterion("stretch<=100%")).items())) == {"A": 4 * MIB, "B": 4 * MIB, "C": 4 * MIB}


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "s"
    result = chargeplay("sweep", str(sample_path("file-storm")), "-o", str(out), "--memory-high", "6M:30M:8M",
                        "--memory-max", "32M", "--policy", "mainline-6.18", "--policy", "caller-gfp", "--policy", "nowait-slab-charge")
    assert result.returncode == 0, result.stderr
    return out


def test_each_limit_of_a_sweep_is_what_replay_gives_at_that_limit(swept, tmp_path):
    table = pl.read_parquet(swept / "sweep.parquet")
    assert sorted(set(table["limit_bytes"])) == [6 * MIB, 14 * MIB, 22 * MIB, 30 * MIB]
    assert table.height == 4 * 3 and set(table["max_bytes"]) == {32 * MIB}
    for high in (6, 22):
        out = tmp_path / f"r{high}"
        result = chargeplay("replay", str(sample_path("file-storm")), "-o", str(out), "--memory-high", f"{high}M", "--memory-max", "32M",
                            "--policy", "mainline-6.18", "--policy", "caller-gfp", "--policy", "nowait-slab-charge")
        assert result.returncode == 0, result.stderr
        summary = json.loads((out / "summary.json").read_text())
        for policy, figures in summary["policies"].items():
            row = table.filter((pl.col("policy") == policy) & (pl.col("limit_bytes") == high * MIB)).to_dicts()[0]
            assert row["high_bytes"] == high * MIB
            for name in ("peak_bytes", "seconds_above_high", "stretch", "stall_ns_total", "failed", "oom_kills", "fallbacks",
                         "reclaimed_file_pages"):
                assert row[name] == figures[name], (policy, high, name)
            assert row["reclaim_calls"] == sum(figures["reclaim_calls"].values())


def test_a_sweep_prices_reclaim_at_the_cost_it_is_given_as_replay_does(tmp_path):
    # file-storm-6.12 has no reclaim batch of its own; file-storm's cost, given to both, makes the
    # same stall in the sweep's row as in replay at that limit, and the sweep says where it came from.
    donor, options = str(sample_path("file-storm")), ("--policy", "mainline-6.12", "--reclaim-cost-from", str(sample_path("file-storm")))
    result = chargeplay("sweep", str(sample_path("file-storm-6.12")), "-o", str(tmp_path / "s"), "--memory-max", "12M:20M:8M", *options)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["replayed_with"].endswith(f"ns/page (measured in {donor})")
    table = pl.read_parquet(tmp_path / "s" / "sweep.parquet")
    for limit in (12, 20):
        stall = {}
        for name, given in (("given", options), ("own", ("--policy", "mainline-6.12"))):
            out = tmp_path / f"{name}{limit}"
            assert chargeplay("replay", str(sample_path("file-storm-6.12")), "-o", str(out), "--memory-max", f"{limit}M", *given).returncode == 0
            stall[name] = json.loads((out / "summary.json").read_text())["policies"]["mainline-6.12"]["stall_ns_total"]
        row = table.filter(pl.col("limit_bytes") == limit * MIB).to_dicts()[0]
        assert row["stall_ns_total"] == stall["given"] != stall["own"]


def test_a_limit_above_a_policys_peak_is_never_exceeded_nor_throttled_for(swept):
    """Kernel rule: memory.high is only acted on when usage goes above it. Where a policy's peak
    stayed at or under the limit, no time is spent above high and nothing is throttled."""
    table = pl.read_parquet(swept / "sweep.parquet")
    under = table.filter(pl.col("peak_bytes") <= pl.col("limit_bytes"))
    over = table.filter(pl.col("peak_bytes") > pl.col("limit_bytes"))
    assert under.height and over.height  # the range spans both
    assert set(under["seconds_above_high"]) == {0.0} and set(under["throttle_ns"]) == {0}
    assert (over["seconds_above_high"] > 0).all()


def test_the_sweep_names_what_it_recommends_and_why(swept):
    document = json.loads((swept / "sweep.json").read_text())
    table = pl.read_parquet(swept / "sweep.parquet")
    assert document["swept"] == {"limit": "memory_high", "values": [6 * MIB, 14 * MIB, 22 * MIB, 30 * MIB]}
    assert document["criterion"].startswith("stretch<=5% (how much longer")
    assert document["recommended"] == recommend(table, parse_criterion("stretch<=5%,oom=0"))
    assert list(document["recommended"]) == ["mainline-6.18", "caller-gfp", "nowait-slab-charge"]


@pytest.mark.parametrize(("options", "words"), [
    (["--memory-high", "8M:4M:1M"], ["--memory-high 8M:4M:1M", "at most TO"]),
    (["--memory-high", "4M:8M"], ["FROM:TO:STEP"]),
    (["--memory-high", "4M:8M:0"], ["STEP more than 0"]),
    (["--memory-high", "1M:1G:1M"], ["1,024 limits", "larger STEP"]),
    (["--memory-high", "4M:8M:1M", "--memory-max", "8M:16M:1M"], ["sweep one limit"]),
    (["--memory-high", "4M"], ["sweep one limit"]),
    (["--memory-high", "4M:8M:1M", "--criterion", "stretch<=5"], ["--criterion", "'%'"]),
    (["--memory-high", "4M:8M:1M", "--reclaim-cost-from", str(sample_path("file-storm-6.1"))], ["no memcg reclaim of 32 pages"]),
])
def test_a_sweep_it_cannot_run_is_one_line_and_creates_nothing(tmp_path, options, words):
    assert_user_error(chargeplay("sweep", str(sample_path("file-storm")), "-o", str(tmp_path / "s"), *options), *words)
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(BROWSER is None, reason="needs Chromium (Debian package chromium) to open the report")
def test_the_sweep_page_draws_a_curve_per_policy_and_the_recommendations(swept, tmp_path):
    dom, log = render(swept / "sweep.html", tmp_path)
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    table = pl.read_parquet(swept / "sweep.parquet")
    policies = ["mainline-6.18", "caller-gfp", "nowait-slab-charge"]
    drawn = DrawnCharts(dom)
    assert len(drawn.charts) == 7
    for chart in drawn.charts:
        assert sorted(fields["policy"] for fields, _ in drawn.marks(chart, "line")) == sorted(policies), chart
        assert drawn.charts[chart]["legend"] == policies, chart
    # chart 0, stretch: each point at the sweep's figure, in percent
    def stretch(fields: dict) -> float:  # the axis title names the field: "(log scale)" where the values span decades
        return float(next(v for k, v in fields.items() if k.startswith("stretch, %")).replace(",", ""))

    points = {(f["policy"], float(f["limit MiB"])): stretch(f) for f, _ in drawn.marks(0, "symbol")}
    assert points == pytest.approx({(r["policy"], r["limit_bytes"] / MIB): r["stretch"] * 100 for r in table.to_dicts()}, rel=1e-3, abs=1e-3)
    recommended = json.loads((swept / "sweep.json").read_text())["recommended"]
    shown = dom.split('<table class="recommended">')[1].split("</table>")[0]
    for policy, limit in recommended.items():
        assert f"<td>{policy}</td><td>{'none in the range' if limit is None else f'{limit / MIB:.1f} MiB'}</td>" in shown


FLEET = ("file-storm", "file-storm-6.1")
FLEET_OPTIONS = ("--memory-high", "6M:30M:8M", "--memory-max", "32M", "--policy", "mainline-6.1", "--policy", "mainline-6.18",
                 "--policy", "caller-gfp")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    """A directory of two traces, swept as a fleet in this process."""
    root = tmp_path_factory.mktemp("fleet")
    for name in FLEET:
        shutil.copytree(sample_path(name), root / "traces" / name)
    result = chargeplay("sweep", str(root / "traces"), "-o", str(root / "local"), *FLEET_OPTIONS)
    assert result.returncode == 0, result.stderr
    return root


def test_a_fleet_sweep_recommends_for_each_trace_what_its_own_sweep_does(fleet):
    document = json.loads((fleet / "local" / "sweep.json").read_text())
    traces = [str(fleet / "traces" / name) for name in FLEET]
    assert document["traces"] == traces
    for trace in traces:
        alone = fleet / f"alone-{Path(trace).name}"
        result = chargeplay("sweep", trace, "-o", str(alone), *FLEET_OPTIONS)
        assert result.returncode == 0, result.stderr
        assert document["recommended"][trace] == json.loads((alone / "sweep.json").read_text())["recommended"]
    # Each trace's baseline is the model of the kernel it was captured on (6.18 here, 6.1 in the lab).
    assert document["baselines"] == dict(zip(traces, ["mainline-6.18", "mainline-6.1"]))
    for name, summary in document["fleet"].items():
        limits = [document["recommended"][t][name] for t in traces]
        assert summary["none_in_range"] == limits.count(None)
        assert summary["differs_from_baseline"] == [t for t in traces if document["recommended"][t][name] !=
                                                    document["recommended"][t][document["baselines"][t]]]


def test_a_fleet_sweep_on_a_local_dask_cluster_gives_what_it_gives_here(fleet):
    """Two worker processes of a real Dask cluster, one task per trace: the same table."""
    pytest.importorskip("distributed", reason="needs Dask distributed (pip install 'chargeplay[fleet]'; make test installs it)")
    result = chargeplay("sweep", str(fleet / "traces"), "-o", str(fleet / "dask"), *FLEET_OPTIONS, "--executor", "dask", timeout=300)
    assert result.returncode == 0, result.stderr
    assert_frame_equal(pl.read_parquet(fleet / "dask" / "sweep.parquet"), pl.read_parquet(fleet / "local" / "sweep.parquet"))
    local, dask = (json.loads((fleet / run / "sweep.json").read_text()) for run in ("local", "dask"))
    assert dask["executor"] == "dask" and dask["recommended"] == local["recommended"] and dask["fleet"] == local["fleet"]


@pytest.mark.parametrize(("executor", "words"), [
    ("spark", ["--executor 'spark'", "local, dask"]),
    ("dask=tcp://127.0.0.1:9", ["--executor dask=tcp://127.0.0.1:9", "no scheduler answered"]),
])
def test_an_executor_it_cannot_use_is_one_line(tmp_path, executor, words):
    result = chargeplay("sweep", str(sample_path("file-storm")), str(sample_path("fork-storm")), "-o", str(tmp_path / "s"),
                        "--memory-high", "8M:16M:8M", "--executor", executor, timeout=120)
    assert_user_error(result, *words)


def test_a_directory_without_traces_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(chargeplay("sweep", str(tmp_path / "empty"), "-o", str(tmp_path / "s"), "--memory-high", "8M:16M:8M"),
                      "neither a trace nor a directory of traces")


@pytest.mark.skipif(BROWSER is None, reason="needs Chromium (Debian package chromium) to open the report")
def test_the_fleet_page_draws_each_traces_recommendation(fleet, tmp_path):
    dom, log = render(fleet / "local" / "sweep.html", tmp_path)
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    recommended = json.loads((fleet / "local" / "sweep.json").read_text())["recommended"]
    drawn = {(f["trace"], f["policy"], float(f["limit MiB"])) for f, _ in DrawnCharts(dom).marks(0, "symbol")}
    assert drawn == {(t, p, limit / MIB) for t, limits in recommended.items() for p, limit in limits.items() if limit is not None}
