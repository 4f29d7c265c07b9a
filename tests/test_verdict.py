"""The report's verdict, from summaries whose figures are set by hand."""
from __future__ import annotations

from analyze.verdict import verdict

MIB = 1 << 20


def figures(page_s: float, above_s: float, peak_mib: int, run_s: float = 2.0, stretch: float = 0.0, failed: dict | None = None,
            fallbacks: int = 0, oom_kills: int = 0, stall_ms: float = 0.0, knobs: dict | None = None, other_node: int = 0) -> dict:
    failed = failed or {}
    return {"page_seconds_above_high": page_s, "seconds_above_high": above_s, "peak_bytes": peak_mib * MIB,
            "run_seconds": run_s, "stretch": stretch, "failed": sum(failed.values()), "failed_by_gfp_class": failed,
            "fallbacks": fallbacks, "other_node": other_node, "oom_kills": oom_kills, "stall_ns_total": int(stall_ms * 1e6),
            "knobs": {"stock_batch": 64, "high_mode": "mainline", **(knobs or {})}}


def summary(policies: dict, high_mib: int | None = 4, loop: str = "closed") -> dict:
    return {"limits": {"high_bytes": high_mib * MIB if high_mib else None, "loop": loop}, "policies": policies}


def test_ranks_on_page_seconds_then_time_above_high_and_prices_each_policy():
    # throttle spends 1.0 s of its 4 s run above high (5 MiB peak); sync as many page-seconds
    # but 1.5 s; nowait 90 page-seconds. So: throttle, sync, nowait.
    s = summary({
        "nowait": figures(90.0, 1.8, 8, failed={"GFP_NOWAIT": 3, "GFP_ATOMIC": 1}, fallbacks=250,
                          knobs={"stock_batch": 32, "high_mode": "sync"}),
        "throttle": figures(10.0, 1.0, 5, run_s=4.0, stretch=1.0, stall_ms=2000.0),
        "sync": figures(10.0, 1.5, 6, stall_ms=30.5, oom_kills=1, knobs={"high_mode": "sync"}, other_node=1),
    })
    assert verdict(s, "throttle") == [
        "Best at keeping memory.high (4.0 MiB): throttle, 1.000 s above it (25% of its run), 10.0 page-seconds, "
        "peak 5.0 MiB, 1.0 MiB over high.",
        "Worst: nowait, 1.800 s above it (90% of its run), 90.0 page-seconds, peak 8.0 MiB, 4.0 MiB over high.",
        "From best to worst: throttle, sync, nowait.",
        "throttle runs 4.000 s (+100.0% over the trace), stalls its tasks 2,000.0 ms; fails 0 charges; "
        "0 min-order fallbacks; 0 OOM kills.",
        "sync runs 2.000 s (+0.0% over the trace), stalls its tasks 30.5 ms; fails 0 charges; 0 min-order fallbacks; "
        "places 1 object on another NUMA node; 1 OOM kill.",
        "nowait runs 2.000 s (+0.0% over the trace), stalls its tasks 0.0 ms; fails 4 charges (GFP_NOWAIT 3, GFP_ATOMIC 1); "
        "250 min-order fallbacks; 0 OOM kills.",
        "sync differs from throttle in high_mode = sync.",
        "nowait differs from throttle in stock_batch = 32, high_mode = sync.",
    ]


def test_ties_a_huge_stretch_open_loop_and_no_high():
    tied = summary({"a": figures(0.0, 0.0, 3, stretch=99.0), "b": figures(0.0, 0.0, 3), "c": figures(5.0, 0.5, 6)})
    lines = verdict(tied, "b")
    assert lines[0].startswith("Best at keeping memory.high (4.0 MiB): a and b (a tie), 0.000 s above it (0% of its run)")
    assert lines[0].endswith("peak 3.0 MiB.")  # under high: no overshoot to state
    assert lines[3].startswith("a runs 2.000 s (100 times the trace's length)")
    assert lines[-1] == "c differs from b in nothing but its name."
    alike = summary({"a": figures(1.0, 0.1, 5), "b": figures(1.0, 0.1, 5)}, loop="open")
    assert verdict(alike, "a")[:2] == [
        "All policies keep memory.high (4.0 MiB) alike: 0.100 s above it (5% of its run), 1.0 page-seconds, peak 5.0 MiB, "
        "1.0 MiB over high.",
        "a stalls its tasks 0.0 ms (open loop: the run keeps the trace's time); fails 0 charges; 0 min-order fallbacks; "
        "0 OOM kills."]
    assert verdict(summary({"a": figures(0.0, 0.0, 5)}, high_mib=None), "a")[0] == (
        "This replay has no memory.high: the policies are compared on what memory.max cost them.")


def spread(phases: list[int], **runs: list[tuple[float, float]]) -> dict:
    """A spread whose policies have (page-seconds, run seconds) at each phase; 1 s above high, 5 MiB peak."""
    return {"stock_phases": phases, "policies": {
        name: {"page_seconds_above_high": [p for p, _ in at], "seconds_above_high": [1.0] * len(at),
               "peak_bytes": [5 * MIB] * len(at), "run_seconds": [r for _, r in at]} for name, at in runs.items()}}


def test_a_spread_says_how_often_each_policy_is_best_and_worst_and_each_run_time_range():
    # Phase 0 (the summary's figures): a 10 page-seconds, b 20: a best, b worst. At phase 8 a
    # has 30: b best, a worst. At phase 16 both have 20, a tie: both best and both worst.
    s = summary({"a": figures(10.0, 1.0, 5, run_s=4.0, stretch=1.0), "b": figures(20.0, 1.0, 5)})
    s["spread"] = spread([0, 8, 16], a=[(10.0, 4.0), (30.0, 6.5), (20.0, 3.0)], b=[(20.0, 2.0), (20.0, 2.0), (20.0, 2.0)])
    lines = verdict(s, "a")
    assert lines[3] == ("Over 3 states of the page stocks when the trace began (replay --spread), the best is a at 2, b at 2; "
                        "the worst b at 2, a at 2.")  # in the order first met, from phase 0 on
    assert lines[4].startswith("a runs 4.000 s (+100.0% over the trace; 3.000 to 6.500 s over the stock phases), stalls")
    assert lines[5].startswith("b runs 2.000 s (+0.0% over the trace; 2.000 s over the stock phases), stalls")
    s["spread"] = spread([0, 8], a=[(10.0, 4.0), (15.0, 4.0)], b=[(20.0, 2.0), (20.0, 2.0)])
    assert verdict(s, "a")[3] == ("Over 2 states of the page stocks when the trace began (replay --spread), the best is a at "
                                  "every one; the worst b at every one.")
