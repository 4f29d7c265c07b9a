"""Object slots: the replay keeps its per-object state (charged or not, which slab) by slot,
a number handed out again once its object is freed, rather than by the trace's pseudonym,
which a long trace never reuses. The state then follows the objects alive at once, not the
trace's length. A slot also remembers what its allocation charged, which its free uncharges.
"""
from __future__ import annotations

import numpy as np
from numba import typed, types

from common.jit import njit

# charge columns: what the allocation in a slot charged
CHARGED_OP, CHARGED_BYTES, CHARGED_PAGES, CHARGED_POOL, CHARGED_CACHE = range(5)
HELD, HANDED_OUT = range(2)  # counts: slots on the free stack, slots ever handed out


@njit
def _new_slot_map():
    return typed.Dict.empty(types.int64, types.int64)  # made compiled: numba caches it, unlike a typed.Dict made here


class ObjectSlots:
    """The live objects' slots across a trace's segments, given in order."""

    def __init__(self) -> None:
        self.slot_of = _new_slot_map()  # pseudonym -> slot of each live object
        self.free = np.zeros(0, np.int64)  # a stack of freed slots
        self.charge = np.zeros((0, CHARGED_CACHE + 1), np.int64)  # per slot
        self.counts = np.zeros(2, np.int64)

    def reserve(self, allocations: int) -> None:
        """Room for `allocations` more objects (the free stack never holds more slots than were handed out)."""
        needed = int(self.counts[HANDED_OUT]) + allocations
        if needed > len(self.free):
            size = max(needed, 2 * len(self.free))
            self.free = np.concatenate([self.free, np.zeros(size - len(self.free), np.int64)])
            self.charge = np.concatenate([self.charge, np.zeros((size - len(self.charge), self.charge.shape[1]), np.int64)])


@njit
def take_slot(slot_of, free, counts, pseudonym):
    """A slot for a new object: the last one freed, or a new one."""
    if counts[HELD]:
        counts[HELD] -= 1
        slot = free[counts[HELD]]
    else:
        slot = counts[HANDED_OUT]
        counts[HANDED_OUT] += 1
    slot_of[pseudonym] = slot
    return slot


@njit
def give_back_slot(slot_of, free, counts, pseudonym):
    """The freed object's slot (it is handed out again later); -1 if no allocation took one."""
    if pseudonym not in slot_of:
        return -1
    slot = slot_of[pseudonym]
    del slot_of[pseudonym]
    free[counts[HELD]] = slot
    counts[HELD] += 1
    return slot
