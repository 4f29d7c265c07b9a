"""Object slots (replay.object_slots): per-object state by slot, handed out again after a
free, gives the same replay as state by the trace's pseudonym, in memory that follows the
objects alive at once."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl

from replay import policy
from replay.input import InputStream, build
from replay.object_slots import NEVER_CHARGED, POOL, ObjectSlots, give_back_slot, take_slot
from replay.ops import GfpBits
from replay.run import ENGINES, limits_for, replay_whole, resolution_for
from traces.reader import Trace
from traces.samples import sample_path


def test_slots_are_handed_out_again_after_a_free():
    slots = ObjectSlots()
    take = lambda pseudonym: take_slot(slots.slot_of, slots.free, slots.counts, pseudonym)  # noqa: E731
    give_back = lambda pseudonym: give_back_slot(slots.slot_of, slots.free, slots.counts, pseudonym)  # noqa: E731
    # 10 -> 1, 11 -> 2, 10 gives 1 back, which waits for the next segment: 12 takes 3. In the
    # next segment, 13 takes 1, 11 gives 2 back, and 14 takes 4; 99 was never allocated:
    # nothing to give back (slot 0, where nothing is ever charged).
    assert [take(10), take(11), give_back(10), take(12)] == [1, 2, 1, 3]
    slots.new_segment()
    assert [take(13), give_back(11), take(14), give_back(99)] == [1, 2, 4, NEVER_CHARGED]


def test_slots_and_live_allocations_survive_growing():
    slots = ObjectSlots()
    first = take_slot(slots.slot_of, slots.free, slots.counts, 5)
    slots.live[first, POOL] = 3
    slots.make_room(5000)  # more than the first tables hold: they grow
    assert len(slots.free) >= 5001 and len(slots.live) == len(slots.free)
    assert slots.live[first, POOL] == 3
    assert give_back_slot(slots.slot_of, slots.free, slots.counts, 5) == first
    slots.new_segment()
    assert take_slot(slots.slot_of, slots.free, slots.counts, 7) == first


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
