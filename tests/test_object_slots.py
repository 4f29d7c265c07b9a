"""Object slots (replay.object_slots): per-object state by slot, handed out again after a
free, gives the same replay as state by the trace's pseudonym, in memory that follows the
objects alive at once."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl

from replay import policy
from replay.input import InputStream, build
from replay.object_slots import ObjectSlots
from replay.ops import LRU_CHARGE, OBJ_ALLOC, OBJ_FREE, PAGE_ALLOC, PAGE_FREE, GfpBits
from replay.run import ENGINES, limits_for, replay_whole, resolution_for
from traces.reader import Trace
from traces.samples import sample_path


def test_slots_are_handed_out_again_after_a_free():
    op = np.array([OBJ_ALLOC, PAGE_ALLOC, OBJ_FREE, OBJ_ALLOC, PAGE_FREE, OBJ_FREE, LRU_CHARGE, OBJ_ALLOC], np.int8)
    obj = np.array([10, 11, 10, 12, 11, 99, -1, -1], np.int64)
    # 10 -> 1, 11 -> 2, 10 gives 1 back, 12 takes it, 11 gives 2 back; 99 was never
    # allocated: slot 0, where nothing is charged; no pseudonym stays -1.
    assert ObjectSlots().assign(op, obj).tolist() == [1, 2, 1, 1, 2, 0, -1, -1]


def test_slots_carry_from_one_batch_to_the_next():
    slots = ObjectSlots()
    assert slots.assign(np.array([OBJ_ALLOC, OBJ_ALLOC], np.int8), np.array([5, 6])).tolist() == [1, 2]
    assert slots.assign(np.array([OBJ_FREE, OBJ_ALLOC, OBJ_FREE], np.int8), np.array([6, 7, 5])).tolist() == [2, 2, 1]


def test_a_sample_replays_the_same_by_slot_as_by_pseudonym():
    # The file storm (its allocations and frees interleave across segments of a long run)
    # under every built-in policy, at limits that reclaim and fail: outcomes and counters
    # agree between the input's slots and the trace's own pseudonyms.
    trace = Trace.open(sample_path("file-storm"))
    by_slot = build(trace)
    pseudonyms = trace.events().select("obj").collect()["obj"].fill_null(-1).to_numpy()[by_slot.row]
    by_pseudonym = replace(by_slot, obj=np.where(by_slot.obj >= 0, pseudonyms, -1))
    assert by_slot.obj.max() < by_pseudonym.obj.max()  # slots were handed out again
    limits = limits_for(trace, 12 << 20, 8 << 20, False)
    resolution = resolution_for(InputStream(trace))
    for p in policy.BUILTIN.values():
        runs = [replay_whole(ENGINES["fast"], data, p, limits, GfpBits.from_table(trace.gfp_flags), resolution)
                for data in (by_slot, by_pseudonym)]
        assert runs[0].outcome.tolist() == runs[1].outcome.tolist(), p.name
        assert runs[0].counters() == runs[1].counters(), p.name
        assert pl.Series(runs[0].bucket_last).equals(pl.Series(runs[1].bucket_last)), p.name
