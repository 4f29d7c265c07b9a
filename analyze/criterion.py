"""What a limit must achieve for a sweep to recommend it (`--criterion "stretch<=5%,oom=0"`),
and the smallest swept limit that achieves it, per policy."""
from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from traces.errors import UserError

DEFAULT_CRITERION = "stretch<=5%,oom=0"
# A criterion's metrics: the sweep's column, the unit a value must carry and its scale to the
# column's unit (a percent of stretch, seconds above high, milliseconds of stall are written
# with their unit; counts bare), and what the metric is.
METRICS = {
    "stretch": ("stretch", {"%": 0.01}, "how much longer the workload runs than in the trace"),
    "oom": ("oom_kills", {"": 1}, "OOM kills"),
    "failed": ("failed", {"": 1}, "failed charges"),
    "fallbacks": ("fallbacks", {"": 1}, "high-order slab charges that fell back to the minimum order"),
    "other_node": ("other_node", {"": 1}, "slab objects taken from another NUMA node after a failed node-local charge"),
    "above": ("seconds_above_high", {"s": 1, "ms": 1e-3}, "time above memory.high"),
    "stall": ("stall_ns_total", {"ms": 1e6, "s": 1e9}, "time tasks spent in reclaim or throttled, all tasks"),
}
_CONDITION = re.compile(r"\s*([a-z_]+)\s*(<=|<|=)\s*([0-9]*\.?[0-9]+)\s*([a-z%]*)\s*")


@dataclass(frozen=True)
class Condition:
    metric: str  # a METRICS name
    op: str  # "<=", "<" or "="
    value: float  # in the sweep column's unit
    text: str  # as the user wrote it

    def holds(self, figure: float) -> bool:
        return figure < self.value if self.op == "<" else figure <= self.value if self.op == "<=" else figure == self.value


def parse_criterion(text: str) -> list[Condition]:
    """Conditions joined by commas, each METRIC OP VALUE[UNIT]; all must hold."""
    conditions = []
    for part in text.split(","):
        match = _CONDITION.fullmatch(part)
        if not match:
            raise UserError(f"--criterion {text!r}: cannot read {part.strip()!r}; write conditions like "
                            f"\"{DEFAULT_CRITERION}\" (metrics: {', '.join(METRICS)}; <=, < or =)")
        name, op, number, unit = match.groups()
        if name not in METRICS:
            raise UserError(f"--criterion {text!r}: no metric {name!r}; choose from {', '.join(METRICS)}")
        _column, units, _what = METRICS[name]
        if unit not in units:
            wanted = " or ".join(repr(u) for u in units if u) or "no unit (a count)"
            raise UserError(f"--criterion {text!r}: {name} is given in {wanted}, not {unit or 'a bare number'!r}")
        conditions.append(Condition(name, op, float(number) * units[unit], part.strip()))
    return conditions


def meets(row: dict, conditions: list[Condition]) -> bool:
    return all(c.holds(row[METRICS[c.metric][0]]) for c in conditions)


def recommend(table: pl.DataFrame, conditions: list[Condition]) -> dict[str, int | None]:
    """Per policy (in the table's order), the smallest swept limit at which the criterion
    holds and keeps holding at every larger limit swept; None when the largest fails it."""
    chosen: dict[str, int | None] = {}
    for (policy,), rows in table.sort("limit_bytes").group_by("policy", maintain_order=True):
        best = None
        for row in reversed(rows.to_dicts()):
            if not meets(row, conditions):
                break
            best = row["limit_bytes"]
        chosen[policy] = best
    return {policy: chosen[policy] for policy in table["policy"].unique(maintain_order=True)}
