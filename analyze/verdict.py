"""The verdict the report opens with: which policy keeps memory.high best, and at what cost,
in sentences made from a result's summary.json figures (on each policy's own timeline when the
replay ran in closed loop, which is the default), and, after `replay --spread`, whether they
hold whatever the page stocks held when the trace began."""
from __future__ import annotations

from collections import Counter

from common.units import format_bytes, format_span


def keeping_high(figures: dict) -> tuple:
    """The order of keeping memory.high: page-seconds above it, then time above it, then peak."""
    return figures["page_seconds_above_high"], figures["seconds_above_high"], figures["peak_bytes"]


def verdict(summary: dict, baseline: str) -> list[str]:
    """Sentences: the best and worst at keeping memory.high and the order of all (when there is a
    memory.high), each policy's cost, and what sets each policy apart from `baseline`."""
    policies, limits = summary["policies"], summary["limits"]
    ranked = sorted(policies, key=lambda name: keeping_high(policies[name]))
    spread = summary.get("spread")
    sentences = _keeping(policies, ranked, limits["high_bytes"]) if limits["high_bytes"] is not None else [
        "This replay has no memory.high: the policies are compared on what memory.max cost them."]
    if spread and limits["high_bytes"] is not None:
        sentences.append(_best_over_phases(spread))
    sentences += [_cost(name, policies[name], limits["loop"], spread["policies"][name] if spread else None) for name in ranked]
    sentences += [_apart(name, policies[name]["knobs"], policies[baseline]["knobs"], baseline)
                  for name in ranked if name != baseline and baseline in policies]
    return sentences


def _keeping(policies: dict, ranked: list[str], high: int) -> list[str]:
    best, worst = _tied(policies, ranked, 0), _tied(policies, ranked, -1)
    if len(best) == len(ranked):
        return [f"All policies keep memory.high ({format_bytes(high)}) alike: {_above(policies[best[0]], high)}."]
    return [
        f"Best at keeping memory.high ({format_bytes(high)}): {_names(best)}, {_above(policies[best[0]], high)}.",
        f"Worst: {_names(worst)}, {_above(policies[worst[0]], high)}.",
        f"From best to worst: {', '.join(ranked)}.",
    ]


def _best_over_phases(spread: dict) -> str:
    """Which policies keep memory.high best, and which worst, at each stock phase of a spread."""
    phases = len(spread["stock_phases"])
    at_phase = [{name: {figure: values[n] for figure, values in figures.items()} for name, figures in spread["policies"].items()}
                for n in range(phases)]
    best, worst = Counter(), Counter()
    for policies in at_phase:
        ranked = sorted(policies, key=lambda name: keeping_high(policies[name]))
        best.update(_tied(policies, ranked, 0))
        worst.update(_tied(policies, ranked, -1))
    return (f"Over {phases} states of the page stocks when the trace began (replay --spread), the best is "
            f"{_how_often(best)}; the worst {_how_often(worst)}.")


def _tied(policies: dict, ranked: list[str], place: int) -> list[str]:
    """The policies that keep memory.high as well as the one at `place` of `ranked`."""
    return [name for name in ranked if keeping_high(policies[name]) == keeping_high(policies[ranked[place]])]


def _how_often(counts: Counter) -> str:
    if len(counts) == 1:
        return f"{next(iter(counts))} at every one"
    return ", ".join(f"{name} at {n}" for name, n in counts.most_common())


def _above(figures: dict, high: int) -> str:
    share = figures["seconds_above_high"] / figures["run_seconds"] if figures["run_seconds"] else 0.0
    over = figures["peak_bytes"] - high
    peak = f"peak {format_bytes(figures['peak_bytes'])}" + (f", {format_bytes(over)} over high" if over > 0 else "")
    return (f"{figures['seconds_above_high']:.3f} s above it ({share:.0%} of its run), "
            f"{figures['page_seconds_above_high']:,.1f} page-seconds, {peak}")


def _cost(name: str, figures: dict, loop: str, spread: dict | None) -> str:
    stall = f"stalls its tasks {figures['stall_ns_total'] / 1e6:,.1f} ms"
    if loop == "closed":
        stretch = figures["stretch"]
        longer = f"{stretch + 1:,.0f} times the trace's length" if stretch >= 10 else f"{stretch:+.1%} over the trace"
        if spread:
            longer += f"; {format_span(spread['run_seconds'], '{:.3f}')} s over the stock phases"
        run = f"runs {figures['run_seconds']:.3f} s ({longer}), {stall}"
    else:
        run = f"{stall} (open loop: the run keeps the trace's time)"
    classes = ", ".join(f"{cls} {n:,}" for cls, n in sorted(figures["failed_by_gfp_class"].items(), key=lambda kv: -kv[1]))
    return (f"{name} {run}; fails {_count(figures['failed'], 'charge')}" + (f" ({classes})" if classes else "")
            + f"; {_count(figures['fallbacks'], 'min-order fallback')}"
            + (f"; places {_count(figures['other_node'], 'object')} on another NUMA node" if figures["other_node"] else "")
            + f"; {_count(figures['oom_kills'], 'OOM kill')}.")


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def _apart(name: str, knobs: dict, baseline_knobs: dict, baseline: str) -> str:
    differ = [f"{knob} = {value}" for knob, value in knobs.items() if baseline_knobs.get(knob) != value]
    return f"{name} differs from {baseline} in " + (", ".join(differ) if differ else "nothing but its name") + "."


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1] + " (a tie)"
