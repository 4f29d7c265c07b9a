"""The model compiled (the fast engine) gives exactly the result of the same model run
interpreted (the reference engine): property-based differential tests on generated inputs
(every built-in policy and random custom ones), and the bundled samples under limits tight
enough to reclaim. One source, yet two runs: they can part where numba's typing is not
Python's (integer widths and promotion, bools in arithmetic), in the borrowed array views,
and where numba's optimisations meet int64 arithmetic near its limits."""
from __future__ import annotations

import functools
import json
import operator
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import FunctionType

import numpy as np
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from replay.engine import Compiled, Interpreted, Replay
from replay.input import ARRAYS, ReplayInput, build
from replay.ops import (
    ANON_FREED, ANON_UNMAPPED, CLOCK_SHARING, FAILED_CHARGE, LRU_CHARGE, LRU_OOM_FREED, LRU_RECLAIMED, LRU_UNCHARGE, OBJ_ALLOC, OBJ_FREE,
    NR_MEMCG_STOCK, OOM_CHARGE, OUTCOMES, PAGE_ALLOC, PAGE_FREE, PAGE_SIZE, POOL_ANON, POOL_FILE, POOL_KMEM_PAGES, POOL_OTHER, POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE, RECLAIM_TRIGGERS, TASK_CLONE_VM, TASK_EXEC, TASK_EXIT, TASK_FORK, TASK_JOIN,
    UNLIMITED, USER_RETURN, GfpBits, Limits,
)
from replay.policy import BUILTIN, CHARGE_UNITS, HIGH_MODES, NODE_LOCAL_CHARGES, SLAB_GROWTH, Policy
from replay.result import EngineResult
from replay.run import replay_whole
from traces.reader import Trace
from traces.samples import sample_path


class GfpLayout:
    """A kernel's gfp bits: what the engines test (GfpBits) and realistic flag values."""

    def __init__(self, table: dict[str, int], bases: tuple[str, ...], retry_mayfail: str) -> None:
        self.bits = GfpBits(direct_reclaim=table["__GFP_DIRECT_RECLAIM"], noretry=table["__GFP_NORETRY"],
                            retry_mayfail=table[retry_mayfail], nofail=table["__GFP_NOFAIL"], high=table["__GFP_HIGH"],
                            fs=table["__GFP_FS"], kernel=table["GFP_KERNEL"])
        self.bases = [table[name] for name in bases]
        self.modifiers = [self.bits.noretry, self.bits.retry_mayfail, self.bits.nofail, self.bits.high]


# 6.18, from the bundled sample's own table; 4.2 from its include/linux/gfp.h, where
# __GFP_WAIT is the direct-reclaim bit, __GFP_REPEAT stands in for __GFP_RETRY_MAYFAIL and
# GFP_NOWAIT is 0.
LAYOUTS = (
    GfpLayout(Trace.open(sample_path("file-storm")).gfp_flags, retry_mayfail="__GFP_RETRY_MAYFAIL", bases=(
        "GFP_KERNEL", "GFP_KERNEL_ACCOUNT", "GFP_NOFS", "GFP_NOIO", "GFP_NOWAIT", "GFP_ATOMIC", "GFP_HIGHUSER_MOVABLE",
        "GFP_TRANSHUGE", "GFP_TRANSHUGE_LIGHT")),
    GfpLayout({"__GFP_DIRECT_RECLAIM": 0x10, "__GFP_HIGH": 0x20, "__GFP_REPEAT": 0x400, "__GFP_NOFAIL": 0x800,
               "__GFP_NORETRY": 0x1000, "__GFP_FS": 0x80, "GFP_KERNEL": 0xD0, "GFP_NOFS": 0x50, "GFP_NOIO": 0x10, "GFP_ATOMIC": 0x20,
               "GFP_NOWAIT": 0x0, "GFP_HIGHUSER_MOVABLE": 0x200DA},
              retry_mayfail="__GFP_REPEAT", bases=("GFP_KERNEL", "GFP_NOFS", "GFP_NOIO", "GFP_ATOMIC", "GFP_NOWAIT",
                                                   "GFP_HIGHUSER_MOVABLE")),
)
OBJECT_SIZES = (8, 64, 192, 512, 1024, 2048, 4096, 8192)
LRU_PAGES = (1, 2, 8, 33, 64, 150, 256, 400)  # around the stock batches (32, 64), SWAP_CLUSTER_MAX; a large folio
# Kinds weighted by repetition: allocations a little more often than frees.
KINDS = ((OBJ_ALLOC,) * 4 + (OBJ_FREE,) * 3 + (PAGE_ALLOC,) * 2 + (PAGE_FREE,) + (LRU_CHARGE,) * 3 + (LRU_UNCHARGE,) * 2
         + (LRU_RECLAIMED, LRU_OOM_FREED, OOM_CHARGE, FAILED_CHARGE, ANON_UNMAPPED, ANON_FREED) + (USER_RETURN,) * 2
         + (TASK_FORK, TASK_CLONE_VM, TASK_EXEC, TASK_EXIT, TASK_JOIN))
RESOLUTIONS = (100_000, 1_000_000, 7_000_000, 50_000_000)
# A generated operation's values, with ReplayInput's dtypes.
ROW_COLUMNS = (("ts", np.int64), ("cpu", np.int32), ("task", np.int32), ("irq", np.bool_), ("op", np.int8),
               ("gfp", np.int64), ("pages", np.int64), ("bytes", np.int64), ("cache", np.int32), ("obj", np.int64),
               ("pool", np.int8), ("memcg", np.int16))


@st.composite
def caches(draw) -> tuple[int, int, int, int, int, int]:
    """A slab cache: object size, order, minimum order, objects per slab of each, pool."""
    size = draw(st.sampled_from(OBJECT_SIZES))
    min_order = draw(st.integers(0, 2))
    order = min_order + draw(st.integers(0, 2))
    pool = draw(st.sampled_from((POOL_SLAB_RECLAIMABLE, POOL_SLAB_UNRECLAIMABLE)))
    return size, order, min_order, max((PAGE_SIZE << order) // size, 1), max((PAGE_SIZE << min_order) // size, 1), pool


@st.composite
def gfp_values(draw, layout: GfpLayout) -> int:
    modifiers = draw(st.lists(st.sampled_from(layout.modifiers), max_size=2))
    return functools.reduce(operator.or_, modifiers, draw(st.sampled_from(layout.bases)))


steps = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 1 << 16),  # which live allocation a free takes
    st.integers(0, len(LRU_PAGES) - 1),  # size: LRU_PAGES index, page order, cache
    st.integers(0, 3),  # gfp: index into the scenario's palette
    st.integers(0, 2),  # task
    st.integers(0, 2),  # cpu
    st.sampled_from((False, False, False, True)),  # irq
    st.sampled_from((0, 1, 1000, 100_000, 1_000_000)),  # ns since the previous operation
    st.sampled_from((0, 0, 1, 2)),  # memcg: the target, or one of two below it
)


@st.composite
def scenarios(draw) -> tuple[ReplayInput, GfpBits, Limits, int]:
    """A consistent ReplayInput (objects and pages freed only while allocated, with their own
    size, cache and pool), the kernel's gfp bits, tight limits and a time resolution."""
    layout = draw(st.sampled_from(LAYOUTS))
    palette = draw(st.lists(gfp_values(layout), min_size=1, max_size=4))
    geometry = draw(st.lists(caches(), min_size=1, max_size=3))
    tasks, cpus = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    initial = np.array(draw(st.lists(st.integers(0, 80), min_size=6, max_size=6)), np.int64)
    rows: list[tuple] = []  # one value per ROW_COLUMNS
    live_objects: list[tuple[int, int, int]] = []  # (obj, cache, memcg)
    live_pages: list[tuple[int, int, int]] = []  # (obj, pages, memcg)
    anon_charged = [0] * tasks  # anon pages each task charged: what an OOM victim of it frees
    objects = 0
    ts = draw(st.integers(0, 10**12))
    t_first = ts - draw(st.integers(0, 10**6))  # the trace starts before its first operation
    for kind, pick, size, g, task, cpu, irq, dt, memcg in draw(st.lists(steps, min_size=20, max_size=200)):
        ts += dt
        gfp = palette[g % len(palette)]
        common = (ts, cpu % cpus, task % tasks, irq)
        if kind == OBJ_FREE and live_objects:
            obj, cache, charged_to = live_objects.pop(pick % len(live_objects))  # a free uncharges its allocation's memcg
            rows.append((*common, OBJ_FREE, gfp, 0, geometry[cache][0], cache, obj, geometry[cache][5], charged_to))
        elif kind in (OBJ_ALLOC, OBJ_FREE):
            cache = size % len(geometry)
            rows.append((*common, OBJ_ALLOC, gfp, 0, geometry[cache][0], cache, objects, geometry[cache][5], memcg))
            live_objects.append((objects, cache, memcg))
            objects += 1
        elif kind == PAGE_FREE and live_pages:
            obj, pages, charged_to = live_pages.pop(pick % len(live_pages))
            rows.append((*common, PAGE_FREE, gfp, pages, 0, -1, obj, POOL_KMEM_PAGES, charged_to))
        elif kind in (PAGE_ALLOC, PAGE_FREE):
            pages = 1 << min(size, 4)
            rows.append((*common, PAGE_ALLOC, gfp, pages, 0, -1, objects, POOL_KMEM_PAGES, memcg))
            live_pages.append((objects, pages, memcg))
            objects += 1
        elif kind in (LRU_CHARGE, LRU_UNCHARGE, LRU_RECLAIMED):
            pool = POOL_FILE if pick % 3 else POOL_ANON
            rows.append((*common, kind, gfp, LRU_PAGES[size], 0, -1, -1, pool, memcg))
            if kind == LRU_CHARGE and pool == POOL_ANON:
                anon_charged[task % tasks] += LRU_PAGES[size]
        elif kind == LRU_OOM_FREED:
            # A victim frees its own pages and, now and then, a page it never charged (a COW
            # original): frees of pages nobody charged would only empty the memcg.
            pages = min(LRU_PAGES[size], anon_charged[task % tasks] + 1)
            anon_charged[task % tasks] = max(anon_charged[task % tasks] - pages, 0)
            rows.append((*common, kind, gfp, pages, 0, -1, -1, POOL_ANON, memcg))
        elif kind in (ANON_UNMAPPED, ANON_FREED):
            rows.append((*common, kind, gfp, LRU_PAGES[size], 0, -1, -1, POOL_ANON, memcg))
        elif kind in (OOM_CHARGE, FAILED_CHARGE):
            rows.append((*common, kind, gfp, 1 << min(size, 4), 0, -1, -1, POOL_ANON, memcg))
        elif kind in (TASK_FORK, TASK_CLONE_VM, TASK_JOIN):  # obj: the new task (any, as pids are reused), the one waited for
            rows.append((*common, kind, 0, 0, 0, -1, pick % tasks, POOL_OTHER, memcg))
        elif kind in (TASK_EXEC, TASK_EXIT):
            rows.append((*common, kind, 0, 0, 0, -1, -1, POOL_OTHER, memcg))
        else:
            rows.append((*common, USER_RETURN, 0, 0, 0, -1, -1, 0, memcg))
    arrays = {name: np.array(column, dtype) for (name, dtype), column in zip(ROW_COLUMNS, zip(*rows))}
    _, order, min_order, per_slab, per_slab_min, _ = (np.array(column, np.int64) for column in zip(*geometry))
    t_last = ts + draw(st.integers(0, 10**6))
    nodes = draw(st.integers(1, 2))  # drawn last: the draws before it stay as they were
    data = ReplayInput(
        **arrays, row=np.arange(len(rows), dtype=np.int64), node=(arrays["cpu"] % nodes).astype(np.int16),
        cache_order=order, cache_min_order=min_order,
        cache_objects=per_slab, cache_objects_min=per_slab_min, cache_names=[f"c{i}" for i in range(len(geometry))],
        task_pids=np.arange(100, 100 + tasks, dtype=np.int32), initial_pools=initial, cpus=cpus, nodes=nodes,
        t_first=t_first, t_last=t_last,
    )
    # Limits mostly near the initial usage: tight enough to reclaim, fail, force, kill and throttle.
    usage = int(initial.sum())
    max_pages = draw(st.sampled_from((UNLIMITED, max(usage + draw(st.integers(-20, 200)), 0))))
    high_pages = draw(st.sampled_from((UNLIMITED, max(usage + draw(st.integers(-80, 150)), 0))))
    limits = Limits(max_pages=max_pages, high_pages=high_pages, swap=draw(st.booleans()),
                    reclaim_ns_per_call=draw(st.integers(0, 100_000)), reclaim_ns_per_page=draw(st.integers(0, 5000)), rcu_grace_ns=draw(st.integers(0, 3 * 10**6)),
                    closed_loop=draw(st.booleans()), clock=draw(st.sampled_from(CLOCK_SHARING)),
                    stock_phase=draw(st.sampled_from((0, draw(st.integers(1, 63))))),
                    hz=draw(st.sampled_from((100, 250, 300, 1000))))
    return data, layout.bits, limits, draw(st.sampled_from(RESOLUTIONS))


@st.composite
def custom_policies(draw) -> Policy:
    high_mode = draw(st.sampled_from(HIGH_MODES))
    policy = Policy(
        "custom", "drawn by hypothesis", charge_unit=draw(st.sampled_from(CHARGE_UNITS)),
        slab_growth_gfp=draw(st.sampled_from(SLAB_GROWTH)), stock_batch=draw(st.integers(1, 130)),
        stock_memcgs=draw(st.integers(1, NR_MEMCG_STOCK)),
        high_mode=high_mode, max_reclaim_retries=draw(st.integers(0, 20)),
        watermark_margin_pages=draw(st.integers(1 if high_mode == "watermark" else 0, 300)),
        node_local_charge=draw(st.sampled_from(NODE_LOCAL_CHARGES)),
    )
    policy.validate()
    return policy


def explain(compiled: EngineResult, interpreted: EngineResult) -> str:
    """Each differing field, with the first place it differs."""
    lines = []
    for name in compiled.differences(interpreted):
        a, b = getattr(compiled, name), getattr(interpreted, name)
        if isinstance(a, np.ndarray) and a.shape == b.shape:
            at = int(np.flatnonzero(a != b)[0])
            lines.append(f"{name}[{at}]: compiled {a[at]}, interpreted {b[at]}")
        else:
            lines.append(f"{name}: compiled {a}, interpreted {b}")
    return "; ".join(lines)


def fed_in_pieces(engine: type[Replay], data: ReplayInput, policy: Policy, gfp: GfpBits, limits: Limits,
                  resolution_ns: int, cuts: list[int], batch_size: int) -> EngineResult:
    """The model fed `data` cut into consecutive batches, as a trace's segments are."""
    session = engine(replace(data, **{name: getattr(data, name)[:0] for name in ARRAYS}), policy, limits, gfp,
                   resolution_ns, batch_size=batch_size)
    bounds = [0, *sorted(cut % (len(data) + 1) for cut in cuts), len(data)]
    outcomes = [session.feed(replace(data, **{name: getattr(data, name)[a:b] for name in ARRAYS}))
                for a, b in zip(bounds, bounds[1:])]
    result = session.finish()
    result.outcome = np.concatenate(outcomes)
    return result


@settings(deadline=None, max_examples=600)
@given(scenarios(), custom_policies(), st.lists(st.integers(0, 1000), max_size=3), st.sampled_from((1, 7, 1 << 21)))
def test_compiled_model_equals_interpreted(scenario, custom, cuts, batch_size):
    """Fed alike, the engines agree. In open loop, batches change nothing, so the interpreted
    engine gets the whole input at once; in closed loop, operations still waiting at a batch's
    end are replayed by then, so both get the same batches."""
    data, gfp, limits, resolution_ns = scenario
    for policy in (*BUILTIN.values(), custom):
        compiled = fed_in_pieces(Compiled, data, policy, gfp, limits, resolution_ns, cuts, batch_size)
        if limits.closed_loop:
            interpreted = fed_in_pieces(Interpreted, data, policy, gfp, limits, resolution_ns, cuts, batch_size)
        else:
            interpreted = replay_whole(Interpreted, data, policy, limits, gfp, resolution_ns)
        assert compiled.differences(interpreted) == [], f"{policy}: {explain(compiled, interpreted)}"


COUNTERS = ("failcnt", "max_events", "high_events", "forced", "oom_kills", "fallbacks", "throttle_ns", "ns_above_high")


def paths_taken() -> Counter[str]:
    """The outcomes, reclaim triggers and nonzero counters of 300 generated scenarios (a fixed
    seed) replayed under every built-in policy."""
    seen: Counter[str] = Counter()

    # A seed whose inputs reach every outcome; any change to the scenarios' draws moves them
    # (2015's, 2018's, 2019's, 2023's, 2025's, then 2026's stopped reaching the oom outcome: their kills all came
    # in one-task scenarios, where the victim is the charging task, whose charge then fails; 2030's
    # reached no other_node, which needs two nodes, a tight max and an empty page stock; with
    # TASK_JOIN drawn, 2036's reached neither that nor oom; with the stock phase drawn, 2046's no other_node;
    # with HZ drawn, 2047's neither other_node nor oom).
    @seed(2048)
    @settings(deadline=None, max_examples=300, database=None)
    @given(scenarios())
    def replay_all_policies(scenario):
        data, gfp, limits, resolution_ns = scenario
        for policy in BUILTIN.values():
            r = replay_whole(Interpreted, data, policy, limits, gfp, resolution_ns)
            seen.update(OUTCOMES[code] for code in np.unique(r.outcome))
            seen.update(f"reclaim by {t}" for t, calls in zip(RECLAIM_TRIGGERS, r.reclaim_calls) if calls)
            seen.update(f"{name} > 0" for name in COUNTERS if getattr(r, name))
            seen.update(["a task delayed"] if r.delay_ns.any() else [])

    replay_all_policies()
    return seen


def test_generated_scenarios_reach_every_outcome_and_reclaim_trigger():
    """The differential test above is only as good as the paths its inputs take. Counted in a
    child that loads only this module and what it imports: hypothesis also draws constants
    found in the source of the local modules loaded, so in pytest's process the seed's inputs
    would move with whatever else was collected."""
    child = subprocess.run([sys.executable, "-c", "import json, test_engines_agree as t; print(json.dumps(t.paths_taken()))"],
                           cwd=Path(__file__).parent, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-2000:]
    seen = Counter(json.loads(child.stdout.splitlines()[-1]))
    expected = [*OUTCOMES, *(f"reclaim by {t}" for t in RECLAIM_TRIGGERS), *(f"{name} > 0" for name in COUNTERS),
                "a task delayed"]
    assert [what for what in expected if not seen[what]] == [], seen


@pytest.mark.parametrize("sample", ["file-storm", "fork-storm", "socket-storm"])
@pytest.mark.parametrize("swap", [False, True])
def test_compiled_model_equals_interpreted_on_samples(sample, swap):
    trace = Trace.open(sample_path(sample))
    data = build(trace)
    gfp = GfpBits.from_table(trace.gfp_flags)
    limits = Limits(max_pages=(20 << 20) // PAGE_SIZE, high_pages=(14 << 20) // PAGE_SIZE, swap=swap)
    reclaimed = 0
    for policy in BUILTIN.values():
        interpreted = replay_whole(Interpreted, data, policy, limits, gfp, 10_000_000)
        compiled = replay_whole(Compiled, data, policy, limits, gfp, 10_000_000)
        assert compiled.differences(interpreted) == [], f"{policy.name}: {explain(compiled, interpreted)}"
        reclaimed += int(interpreted.reclaim_calls.sum())
    assert reclaimed > 0  # the limits were tight enough to matter


def test_the_reference_engine_runs_every_model_function_interpreted():
    # Were any compiled, the tests above would compare the compiled model with itself there.
    compiled = [name for name, f in vars(Compiled.model).items() if hasattr(f, "py_func")]  # numba's dispatchers
    assert "try_charge_memcg" in compiled and "replay_batch" in compiled
    assert all(type(getattr(Interpreted.model, name)) is FunctionType for name in compiled)
    assert Interpreted.model.borrowed is Interpreted.model.same_array


@pytest.mark.parametrize("engine", [Compiled, Interpreted])
def test_the_engines_refuse_ids_outside_the_trace(engine):
    # The compiled model indexes its tables without bounds checks: a bad id must raise, not corrupt memory.
    trace = Trace.open(sample_path("file-storm"))
    data = build(trace)
    session = engine(data, BUILTIN["mainline-6.18"], Limits(), GfpBits.from_table(trace.gfp_flags), 10_000_000)
    with pytest.raises(ValueError, match="cpu"):
        session.feed(replace(data, cpu=np.full(len(data), data.cpus, np.int32)))

