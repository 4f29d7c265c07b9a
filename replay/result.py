"""What an engine records while replaying one policy: per-operation outcomes, counters,
per-task stall and a usage time series. Both engines fill the same structure."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from replay.ops import RECLAIM_TRIGGERS


@dataclass
class EngineResult:
    outcome: np.ndarray  # uint8 per operation (replay.ops.OUTCOMES)
    stall_ns: np.ndarray  # int64 per task
    delay_ns: np.ndarray  # int64 per task: how much later than in the trace it ended (closed loop; 0 in open loop)
    reclaim_calls: np.ndarray  # int64 per trigger (replay.ops.RECLAIM_TRIGGERS)
    reclaimed_pages: np.ndarray  # int64 per trigger
    bucket_last: np.ndarray  # int64 usage (pages) at the end of each time bucket; -1: no event in it
    bucket_peak: np.ndarray  # int64 highest usage within each bucket
    resolution_ns: int
    charges: int = 0  # page counter charges (stock misses that succeeded)
    stock_hits: int = 0  # charges served by a page or object stock
    forced: int = 0  # charges forced past max
    max_events: int = 0  # memory.events max
    high_events: int = 0  # memory.events high
    failcnt: int = 0
    oom_kills: int = 0
    high_order_attempts: int = 0  # slab charges above the cache's minimum order
    fallbacks: int = 0  # of which fell back to the minimum order
    other_node: int = 0  # objects taken from another NUMA node's slab after a failed node-local charge
    ns_above_high: int = 0
    page_ns_above_high: int = 0  # integral of (usage - high) over time, in page-nanoseconds
    throttle_ns: int = 0  # memory.high penalty sleeps (part of stall_ns)
    peak_pages: int = 0
    reclaimed_file_pages: int = 0  # of reclaimed_pages, page cache (refaults, which no trace shows, would charge it again)
    end_ns: int = 0  # the last operation's time on the replay's clock, from the trace's start

    @classmethod
    def empty(cls, operations: int, tasks: int, buckets: int, resolution_ns: int) -> "EngineResult":
        return cls(
            outcome=np.zeros(operations, np.uint8), stall_ns=np.zeros(tasks, np.int64), delay_ns=np.zeros(tasks, np.int64),
            reclaim_calls=np.zeros(len(RECLAIM_TRIGGERS), np.int64), reclaimed_pages=np.zeros(len(RECLAIM_TRIGGERS), np.int64),
            bucket_last=np.full(buckets, -1, np.int64), bucket_peak=np.full(buckets, -1, np.int64),
            resolution_ns=resolution_ns,
        )

    def differences(self, other: "EngineResult") -> list[str]:
        """Names of the fields in which two results differ (empty: identical)."""
        differ = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            same = np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
            if not same:
                differ.append(f.name)
        return differ

    def counters(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self) if not isinstance(getattr(self, f.name), np.ndarray)}
