"""When a capture lost events: the spans of trace time between two drains of the buffers in
which the kernel dropped records (a full buffer), so that replay can say where its figures
under-count rather than spread the loss over the whole trace."""
from __future__ import annotations


def add_lost(spans: list[dict], from_ns: int, to_ns: int, events: int) -> None:
    """`events` were lost between the drains at `from_ns` and `to_ns` (trace time): a new span,
    or the last one made longer when it ended at `from_ns` (a loss over consecutive drains)."""
    if spans and spans[-1]["to_ns"] == from_ns:
        spans[-1]["to_ns"] = to_ns
        spans[-1]["events"] += events
    else:
        spans.append({"from_ns": from_ns, "to_ns": to_ns, "events": events})
