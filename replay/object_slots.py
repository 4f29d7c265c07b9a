"""Object slots: the replay keeps its per-object state (charged or not, which slab) by slot,
a number that is handed out again once its object is freed, rather than by the trace's
pseudonym, which a long trace never reuses. The state then follows the objects alive at
once, not the trace's length.

The same slots hold what the input pass (replay.events_to_operations) must know of each live
charged allocation when its free comes, possibly segments later: which operation made it,
its cache, size, pages and pool. Slot 0 is never handed out; operations without an object
keep -1.

A slot freed in a segment is handed out again from the next segment on: closed-loop replay
replays a segment's operations in another order than the trace's (a delayed task's free can
come after another task's later allocation), but replays every one of them before the next
segment's, so no object's slot is reused before the model has freed it.
"""
from __future__ import annotations

import numpy as np
from numba import typed, types

from common.jit import njit

NEVER_CHARGED = 0
# counts: slots on the free stack, the next slot never handed out, slots freed in this segment (on the stack
# above the held ones)
HELD, NEXT, FREED = range(3)
# Per slot, what the allocation that holds it was (LIVE columns).
# ALLOC_OP: the operation's number, counted over the trace; MEMCG: the memcg it charged (replay.events_to_operations)
OP, CACHE, BYTES, PAGES, POOL, ALLOC_OP, MEMCG = range(7)


@njit
def _new_slot_map():
    return typed.Dict.empty(types.int64, types.int64)  # made compiled: numba caches it, unlike a typed.Dict made here


class ObjectSlots:
    """Pseudonyms to slots across a trace's segments, given in order, and the live allocations."""

    def __init__(self) -> None:
        self.slot_of = _new_slot_map()  # pseudonym -> slot of each live object
        self.free = np.zeros(1024, np.int64)  # a stack of freed slots
        self.counts = np.array([0, NEVER_CHARGED + 1, 0], np.int64)
        self.live = np.zeros((1024, MEMCG + 1), np.int64)

    def make_room(self, allocations: int) -> None:
        """Room for `allocations` more slots than were ever handed out."""
        room = int(self.counts[NEXT]) + allocations
        if room > len(self.free):  # the stack never holds more slots than were handed out
            self.free = np.concatenate([self.free, np.zeros(max(room, len(self.free)), np.int64)])
            self.live = np.concatenate([self.live, np.zeros((len(self.free) - len(self.live), MEMCG + 1), np.int64)])

    def new_segment(self) -> None:
        """The slots freed in the segment before may be handed out again."""
        self.counts[HELD] += self.counts[FREED]
        self.counts[FREED] = 0


@njit
def take_slot(slot_of, free, counts, pseudonym: int) -> int:
    if counts[HELD]:
        counts[HELD] -= 1
        slot = free[counts[HELD]]
        free[counts[HELD]] = free[counts[HELD] + counts[FREED]]  # the last freed slot fills the gap
    else:
        slot = counts[NEXT]
        counts[NEXT] += 1
    slot_of[pseudonym] = slot  # a pseudonym allocated twice leaves its first slot behind, as the trace does
    return slot


@njit
def give_back_slot(slot_of, free, counts, pseudonym: int) -> int:
    """The slot a freed pseudonym held, free again from the next segment on; NEVER_CHARGED for one not held."""
    if pseudonym not in slot_of:
        return NEVER_CHARGED
    slot = slot_of[pseudonym]
    del slot_of[pseudonym]
    free[counts[HELD] + counts[FREED]] = slot
    counts[FREED] += 1
    return slot
