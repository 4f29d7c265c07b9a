"""Replay of the bundled real traces: the thread's predictions, and the result files."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import polars as pl
import pyarrow as pa
import pytest

from conftest import chargeplay
from replay import run
from replay.policy import BUILTIN
from replay.result_format import CHARGE_COLUMNS, SPREAD_FIGURES
from test_cli_errors import assert_user_error
from traces.reader import Trace
from traces.samples import sample_path


def replay(tmp_path, sample: str, *args: str) -> dict:
    out = tmp_path / f"{sample}-{len(list(tmp_path.iterdir()))}"
    result = chargeplay("replay", str(sample_path(sample)), "-o", str(out), *args)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "summary.json").read_text())["policies"]


@pytest.mark.parametrize("sample", ["file-storm", "socket-storm"])
def test_nowait_slab_charges_stay_above_high_longer_than_caller_gfp(tmp_path, sample):
    # memory.high just under max: only blocking charges trigger 4.2's high reclaim, and
    # the 4.3 slab charges are not blocking (Davydov, 2015-08-30).
    s = replay(tmp_path, sample, "--memory-max", "16M", "--memory-high", "15M",
               "--policy", "nowait-slab-charge", "--policy", "caller-gfp")
    assert s["nowait-slab-charge"]["seconds_above_high"] > s["caller-gfp"]["seconds_above_high"]
    assert s["nowait-slab-charge"]["page_seconds_above_high"] > s["caller-gfp"]["page_seconds_above_high"]


def test_thp_charges_that_may_not_reclaim_overshoot_high_those_that_may_stall_in_the_fault(tmp_path):
    # thp-6.12: 16 huge pages (GFP_TRANSHUGE: defrag=madvise on a MADV_HUGEPAGE range) written
    # past a 24 MiB memory.high. Each one charged over high adds 512 pages to the task's
    # overage: one that may reclaim reclaims and throttles in the fault (the thread's "reclaim 2
    # MB now"), one that may not leaves usage over high until the return to user space (the
    # thread: "memory.high silently exceeded"). The fault's own gfp may reclaim here, so the
    # kernel's model (mainline-6.12) does as thp-reclaim.
    policies = ["thp-no-reclaim", "thp-reclaim", "mainline-6.12"]
    replay(tmp_path, "thp-6.12", *[arg for name in policies for arg in ("--policy", name)])
    outcomes = pl.read_parquet(next(tmp_path.iterdir()) / "outcomes.parquet")
    huge = outcomes.filter(pl.col("gfp_class") == "GFP_TRANSHUGE")
    assert huge.height == 16 and set(huge["kind"]) == {"anon or shmem page"}
    fared = {name: dict(huge[name].value_counts().iter_rows()) for name in policies}
    assert fared["thp-no-reclaim"].get("above_high", 0) > 0 and "reclaimed_for_high" not in fared["thp-no-reclaim"]
    assert fared["thp-reclaim"].get("reclaimed_for_high", 0) == fared["thp-no-reclaim"]["above_high"]
    assert "above_high" not in fared["thp-reclaim"] and fared["mainline-6.12"] == fared["thp-reclaim"]


def test_4_2_slab_takes_objects_from_the_other_node_where_caller_gfp_reclaims(tmp_path):
    # files-numa-6.12: a two-node guest (CPU 0 on node 0, CPU 1 on node 1), a file tree built
    # on each CPU, then removed on the other (partial slabs on both nodes). With memory.max
    # replayed at 21M, below the kernel's 22 MiB peak, slab growth meets the limit: 4.2 SLAB's
    # no-wait node-local charge fails and fallback_alloc takes the other node's free objects
    # ("although there is no reason for that", Davydov); caller-gfp reclaims instead and keeps
    # every object on its node, and so does mainline, which charges objects, not slabs.
    s = replay(tmp_path, "files-numa-6.12", "--memory-max", "21M", "--policy", "nowait-node-charge", "--policy", "caller-gfp",
               "--policy", "mainline-6.12")
    assert s["nowait-node-charge"]["other_node"] > 0 == s["caller-gfp"]["other_node"] == s["mainline-6.12"]["other_node"]
    assert s["nowait-node-charge"]["outcomes"]["other_node"] == s["nowait-node-charge"]["other_node"]
    # Every failed no-wait charge is one more failcnt, and a fallback object one reclaim fewer.
    assert s["nowait-node-charge"]["failcnt"] > s["caller-gfp"]["failcnt"]
    assert sum(s["nowait-node-charge"]["reclaim_calls"].values()) < sum(s["caller-gfp"]["reclaim_calls"].values())


@pytest.mark.parametrize("sample", ["file-storm", "socket-storm"])
def test_nowait_slab_charges_fall_back_to_min_order_more_often_than_caller_gfp(tmp_path, sample):
    # At the hard limit a high-order slab charge that may not reclaim fails, and SLUB falls
    # back to the cache's minimum order ("unexpected and unjustified", Davydov).
    s = replay(tmp_path, sample, "--memory-max", "16M", "--policy", "nowait-slab-charge", "--policy", "caller-gfp")
    assert s["nowait-slab-charge"]["fallbacks"] > s["caller-gfp"]["fallbacks"] == 0


@pytest.mark.parametrize("sample", ["fork-storm", "file-storm-6.1", "file-storm-6.12"])  # and other kernels' tables
def test_result_files_describe_every_policy_and_charge(tmp_path, sample):
    out = tmp_path / "r"
    result = chargeplay("replay", str(sample_path(sample)), "-o", str(out), "--memory-high", "12M")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    policies = list(summary["policies"])
    assert policies == ["nowait-slab-charge", "caller-gfp", "nowait-node-charge", "return-to-user", "fail-nowait-above-high", "watermark", "mainline-6.1",
                        "mainline-6.12", "mainline-6.18", "thp-no-reclaim", "thp-reclaim"]
    assert summary["limits"]["high_bytes"] == 12 << 20 and summary["limits"]["max_bytes"] == 28 << 20  # from the manifest
    outcomes = pl.read_parquet(out / "outcomes.parquet")
    assert outcomes.columns == [*CHARGE_COLUMNS.names, *policies]
    for name, s in summary["policies"].items():
        counts = outcomes[name].value_counts()
        assert dict(counts.iter_rows()) == {k: v for k, v in s["outcomes"].items() if k != "none"}
    series = pl.read_parquet(out / "timeseries.parquet")
    assert sorted(series["policy"].unique()) == sorted(policies)
    peaks = series.group_by("policy").agg(pl.col("peak_bytes").max())
    assert {p: b for p, b in peaks.iter_rows()} == {p: s["peak_bytes"] for p, s in summary["policies"].items()}


def test_a_replay_whose_reclaim_took_page_cache_says_so_and_one_without_reclaim_does_not(tmp_path):
    # file-storm under 16M / 15M: reclaim takes the page cache of its files, which a workload that
    # read them again would be charged for again (refaults), and no trace shows that.
    out = tmp_path / "limited"
    result = chargeplay("replay", str(sample_path("file-storm")), "-o", str(out), "--memory-max", "16M", "--memory-high", "15M")
    assert result.returncode == 0, result.stderr
    taken = {name: p["reclaimed_file_pages"] for name, p in json.loads((out / "summary.json").read_text())["policies"].items()}
    most = max(taken, key=taken.get)
    assert taken[most] > 0
    note = next(line for line in result.stderr.splitlines() if line.startswith("note: reclaim took page cache"))
    assert f"in {most})" in note and "refault" in note
    unlimited = chargeplay("replay", str(sample_path("file-storm")), "-o", str(tmp_path / "unlimited"),
                           "--memory-max", "max", "--memory-high", "max")
    assert unlimited.returncode == 0 and "page cache" not in unlimited.stderr


def test_a_reclaim_cost_from_another_trace_prices_the_same_reclaim_and_one_to_be_had_nowhere_is_said(tmp_path):
    # file-storm-6.12 reclaims no batch (28 pages in 376 calls): a page costs the default, and the
    # replay says so. file-storm has batches: its own replay's cost is what --reclaim-cost-from it
    # gives another trace. In open loop under memory.max alone (no throttling) a policy reclaims the
    # same whatever the cost, and its stall is its calls at the cost of a call plus its pages at the
    # cost of a page (KERNEL-MODEL: what reclaim costs the task).
    limited = ("--memory-max", "16M", "--memory-high", "max", "--open-loop", "--policy", "mainline-6.12", "--policy", "caller-gfp")

    def replay_with(name: str, *args: str) -> tuple[dict, str]:
        result = chargeplay("replay", str(sample_path("file-storm-6.12")), "-o", str(tmp_path / name), *limited, *args)
        assert result.returncode == 0, result.stderr
        return json.loads((tmp_path / name / "summary.json").read_text()), result.stderr

    own, said = replay_with("own")
    assert own["limits"]["reclaim_cost_from"] == "default" and own["limits"]["reclaim_ns_per_page"] == run.DEFAULT_RECLAIM_NS_PER_PAGE
    assert "note: reclaim took pages, each at the default cost of 1 us" in said and "--reclaim-cost-from" in said
    donor = sample_path("file-storm")
    assert chargeplay("replay", str(donor), "-o", str(tmp_path / "donor"), "--memory-max", "16M").returncode == 0
    donor_limits = json.loads((tmp_path / "donor" / "summary.json").read_text())["limits"]
    assert donor_limits["reclaim_cost_from"] == "trace"
    given, said = replay_with("given", "--reclaim-cost-from", str(donor))
    cost = ("reclaim_ns_per_call", "reclaim_ns_per_page")
    assert [given["limits"][k] for k in cost] == [donor_limits[k] for k in cost] != [own["limits"][k] for k in cost]
    assert given["limits"]["reclaim_cost_from"] == str(donor) and "default cost" not in said
    for summary in (own, given):
        per_call, per_page = (summary["limits"][k] for k in cost)
        for name, figures in summary["policies"].items():
            calls, pages = sum(figures["reclaim_calls"].values()), sum(figures["reclaimed_pages"].values())
            assert (calls, pages) == (sum(own["policies"][name]["reclaim_calls"].values()), sum(own["policies"][name]["reclaimed_pages"].values()))
            assert pages > 0 and figures["stall_ns_total"] == calls * per_call + pages * per_page
    assert_user_error(chargeplay("replay", str(sample_path("file-storm-6.12")), "-o", str(tmp_path / "none"), *limited,
                                 "--reclaim-cost-from", str(sample_path("file-storm-6.1"))), "no memcg reclaim of 32 pages or more")
    assert not (tmp_path / "none").exists()


def test_replay_errors_are_one_line(tmp_path):
    copy = tmp_path / "trace"
    shutil.copytree(sample_path("fork-storm"), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"]["max"] = None
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(chargeplay("replay", str(copy), "-o", str(tmp_path / "a")), "--memory-max")
    assert_user_error(chargeplay("replay", str(copy), "-o", str(tmp_path / "b"), "--memory-max", "8M", "--policy", "lazy"), "lazy")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep").write_text("x")
    assert_user_error(chargeplay("replay", str(copy), "-o", str(tmp_path / "c"), "--memory-max", "8M"), "not an empty directory")
    assert (tmp_path / "c" / "keep").read_text() == "x"


def test_policies_from_a_toml_file_are_listed_and_replayed(tmp_path):
    toml = tmp_path / "mine.toml"
    toml.write_text('[policy.big-stock]\nbase = "mainline-6.18"\ndescription = "mainline, 512-page stocks"\nstock_batch = 512\n')
    listed = chargeplay("policies", "--json", "--policies", str(toml))
    assert listed.returncode == 0, listed.stderr
    policies = {p["name"]: p for p in json.loads(listed.stdout)}
    assert len(policies) == len(BUILTIN) + 1 and policies["big-stock"]["stock_batch"] == 512
    assert policies["big-stock"]["high_mode"] == policies["mainline-6.18"]["high_mode"] == "mainline"
    s = replay(tmp_path, "file-storm", "--memory-max", "64M", "--policies", str(toml),
               "--policy", "mainline-6.18", "--policy", "big-stock")
    # With room under max, a bigger stock serves more charges without touching the page
    # counter. (Near max it need not: a 512-page batch fails where a 64-page one fits in
    # the margin a 256-page folio's reclaim leaves, and then no stock is refilled.)
    assert s["big-stock"]["charges"] < s["mainline-6.18"]["charges"]
    toml.write_text("[policy.broken]\nstock_batch = -1\n")
    assert_user_error(chargeplay("policies", "--policies", str(toml)), "stock_batch = -1")


def test_kernel_stacks_are_charged_as_kmem_pages():
    # 200 forks: each vmalloc'ed 16 KiB stack shows as 4 NR_KERNEL_STACK_KB changes of one
    # page each (charged by memcg_charge_kernel_stack, never as an accounted page
    # allocation); every one becomes a GFP_KERNEL charge or an uncharge of kmem pages.
    from replay.input import build
    from replay.ops import LRU_CHARGE, LRU_UNCHARGE, POOL_KMEM_PAGES
    from traces.reader import Trace

    trace = Trace.open(sample_path("fork-storm"))
    item = trace.manifest["enums"]["node_stat_item"]["NR_KERNEL_STACK_KB"]
    changes = trace.events().filter((pl.col("kind") == "memcg_lruvec_state") & (pl.col("item") == item)).collect()
    data = build(trace)
    stacks = (data.pool == POOL_KMEM_PAGES) & ((data.op == LRU_CHARGE) | (data.op == LRU_UNCHARGE))
    assert int(stacks.sum()) == changes.height > 0
    assert int(data.pages[stacks & (data.op == LRU_CHARGE)].sum()) == int(changes.filter(pl.col("val") > 0)["val"].sum())
    assert set(data.gfp[stacks & (data.op == LRU_CHARGE)].tolist()) == {trace.gfp_flags["GFP_KERNEL"]}


def test_an_interrupts_accounted_allocations_are_charged_to_no_memcg(tmp_path):
    # current_obj_cgroup (6.8+) and memcg_kmem_bypass (before) charge no memcg outside task
    # context unless one was made active: a TCP server sock cloned in softirq from the
    # SLAB_ACCOUNT cache, whichever task the softirq interrupted, is no charge, nor is its
    # free. The task's own allocation of the same cache is one.
    from replay.input import build
    from replay.ops import OBJ_ALLOC, OBJ_FREE, PAGE_ALLOC
    from test_trace_format import GFP, write_trace
    from traces.reader import Trace

    sock = {"kind": "kmem_cache_alloc", "cache": "TCP", "bytes_alloc": 2432, "accounted": True, "failed": False, "gfp": GFP["GFP_ATOMIC"]}
    write_trace(tmp_path, [
        {"ts_ns": 1, "ctx": "softirq", "obj": 1, **sock},
        {"ts_ns": 2, "ctx": "task", "obj": 2, **sock, "gfp": GFP["GFP_KERNEL"]},
        {"ts_ns": 3, "ctx": "hardirq", "kind": "page_alloc", "order": 0, "bytes_alloc": 4096, "accounted": True, "failed": False, "obj": 3,
         "gfp": GFP["GFP_ATOMIC"] | GFP["__GFP_ACCOUNT"]},
        {"ts_ns": 4, "ctx": "task", "kind": "kmem_cache_free", "cache": "TCP", "obj": 1},
        {"ts_ns": 5, "ctx": "task", "kind": "kmem_cache_free", "cache": "TCP", "obj": 2},
        {"ts_ns": 6, "ctx": "task", "kind": "page_free", "order": 0, "obj": 3},
    ])
    data = build(Trace.open(tmp_path))
    assert data.op.tolist() == [OBJ_ALLOC, OBJ_FREE]
    assert data.ts.tolist() == [2, 5]
    assert PAGE_ALLOC not in data.op.tolist()


def test_socket_buffers_charged_to_the_memcg_are_kmem_pages_with_the_gfp_of_their_context(tmp_path):
    # cgroup v2 charges socket buffers to the socket's memcg and counts them in MEMCG_SOCK
    # (mem_cgroup_charge_skmem), with gfp_memcg_charge(): GFP_ATOMIC in softirq (the receive
    # path, whichever task it interrupted), GFP_KERNEL in task context. Another memcg's
    # changes and other items are not the target's socket charges.
    from replay.input import build
    from replay.ops import LRU_CHARGE, LRU_UNCHARGE, POOL_KMEM_PAGES
    from test_trace_format import GFP, write_trace
    from traces.atomic import write_json
    from traces.manifest import MANIFEST
    from traces.reader import Trace

    sock, other_item = 7, 3
    stat = lambda ts, ctx, val, memcg=1, item=sock: {"ts_ns": ts, "kind": "memcg_state", "ctx": ctx, "memcg_id": memcg,  # noqa: E731
                                                     "item": item, "val": val}
    write_trace(tmp_path, [stat(1, "softirq", 2), stat(2, "task", 1), stat(3, "task", -3), stat(4, "softirq", 5, memcg=2),
                           stat(5, "task", 4, item=other_item)])
    manifest = Trace.open(tmp_path).manifest
    manifest["enums"] = {"memcg_stat_item": {"MEMCG_SOCK": sock, "MEMCG_PERCPU_B": other_item}}
    write_json(tmp_path / MANIFEST, manifest)
    data = build(Trace.open(tmp_path))
    assert data.op.tolist() == [LRU_CHARGE, LRU_CHARGE, LRU_UNCHARGE]
    assert data.pages.tolist() == [2, 1, 3]
    assert data.gfp.tolist()[:2] == [GFP["GFP_ATOMIC"], GFP["GFP_KERNEL"]]
    assert data.irq.tolist() == [True, False, False]
    assert set(data.pool.tolist()) == {POOL_KMEM_PAGES}


def test_dentries_and_inodes_of_sockets_pipes_and_tmpfs_files_are_unreclaimable_slab(tmp_path):
    # Three system calls of one task, each ended by its return to user space: socket() makes a
    # sockfs inode and its pseudo dentry, creat() on tmpfs a dentry and a shmem inode, creat()
    # on ext4 a dentry and an ext4 inode. Only the last pair can go to a shrinker (an unused
    # dentry and inode sit on the super block's LRUs); tmpfs pins its files' dentries, sockfs
    # frees both at the last close. The caches are all SLAB_RECLAIM_ACCOUNT but shmem's.
    from replay.input import build
    from replay.ops import OBJ_ALLOC, POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE
    from test_trace_format import GFP, write_trace
    from traces.atomic import write_parquet
    from traces.reader import Trace
    from traces.schema import SLAB_COLUMNS, table_schema

    obj = iter(range(1, 100))
    alloc = lambda cache, size: {"kind": "kmem_cache_alloc", "cache": cache, "bytes_alloc": size, "accounted": True,  # noqa: E731
                                 "failed": False, "gfp": GFP["GFP_KERNEL"], "ctx": "task", "obj": next(obj)}
    back = {"kind": "user_return", "ctx": "task"}
    rows = [alloc("sock_inode_cache", 832), alloc("dentry", 192), back,
            alloc("dentry", 192), alloc("shmem_inode_cache", 776), back,
            alloc("dentry", 192), alloc("ext4_inode_cache", 1184), back]
    write_trace(tmp_path, [{"ts_ns": n, **row} for n, row in enumerate(rows)])
    caches = [("sock_inode_cache", 832, True), ("dentry", 192, True), ("shmem_inode_cache", 776, False), ("ext4_inode_cache", 1184, True)]
    write_parquet(tmp_path / "slabs.parquet", pa.Table.from_pylist(
        [{"name": name, "size": size, "object_size": size, "order": 0, "min_order": 0, "objs_per_slab": 4096 // size,
          "account": True, "reclaim_account": reclaimable}
         for name, size, reclaimable in caches], schema=table_schema(SLAB_COLUMNS)))
    data = build(Trace.open(tmp_path))
    pools = [int(pool) for op, pool in zip(data.op, data.pool) if op == OBJ_ALLOC]
    assert pools == [POOL_SLAB_UNRECLAIMABLE] * 4 + [POOL_SLAB_RECLAIMABLE] * 2


def test_a_spread_gives_each_policys_figures_at_each_stock_phase_as_its_own_replay_would(tmp_path):
    # The socket-storm sample under 8M/4M: mainline-6.18 throttles, and where its batches cross
    # memory.high moves with the stock's state at the start. A 32-page stock (return-to-user, 4.4)
    # holds at most 31 pages, so phases 32 to 56 act as 0 to 24 for it.
    out = tmp_path / "spread"
    names = ["mainline-6.18", "return-to-user"]
    done = chargeplay("replay", str(sample_path("socket-storm")), "-o", str(out), "--memory-max", "8M", "--memory-high", "4M",
                      *(arg for name in names for arg in ("--policy", name)), "--spread")
    assert done.returncode == 0, done.stderr
    assert "over 8 stock phases (0 to 56 pages)" in done.stdout
    spread = json.loads((out / "summary.json").read_text())["spread"]
    assert spread["stock_phases"] == [0, 8, 16, 24, 32, 40, 48, 56]
    trace = Trace.open(sample_path("socket-storm"))
    limits = run.limits_for(trace, 8 << 20, 4 << 20, swap=False)
    for n, phase in enumerate(spread["stock_phases"]):
        alone = run.replay(trace, tmp_path / f"phase-{phase}", [BUILTIN[name] for name in names], replace(limits, stock_phase=phase),
                           run.ENGINES["fast"])["policies"]
        for name in names:
            assert {figure: values[n] for figure, values in spread["policies"][name].items()} == {
                figure: alone[name][figure] for figure in SPREAD_FIGURES}
    assert len(set(spread["policies"]["mainline-6.18"]["run_seconds"])) > 1
    for figure, values in spread["policies"]["return-to-user"].items():
        assert values[4:] == values[:4], figure
