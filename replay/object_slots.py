"""Object slots: the replay keeps its per-object state (charged or not, which slab) by slot,
a number that is handed out again once its object is freed, rather than by the trace's
pseudonym, which a long trace never reuses. The state then follows the objects alive at
once, not the trace's length.

Slot 0 is never handed out: a free of a pseudonym never allocated here gets it, and the
replay finds nothing charged there. Operations without a pseudonym keep -1.
"""
from __future__ import annotations

import numpy as np
from numba import typed, types

from common.jit import njit
from replay.ops import OBJ_ALLOC, OBJ_FREE, PAGE_ALLOC, PAGE_FREE

NEVER_CHARGED = 0
HELD, NEXT = range(2)  # counts: slots on the free stack, the next slot never handed out


@njit
def _new_slot_map():
    return typed.Dict.empty(types.int64, types.int64)  # made compiled: numba caches it, unlike a typed.Dict made here


class ObjectSlots:
    """Pseudonyms to slots across a trace's batches, given in order."""

    def __init__(self) -> None:
        self.slot_of = _new_slot_map()  # pseudonym -> slot of each live object
        self.free = np.zeros(1024, np.int64)  # a stack of freed slots
        self.counts = np.array([0, NEVER_CHARGED + 1], np.int64)

    def assign(self, op: np.ndarray, obj: np.ndarray) -> np.ndarray:
        """The slot of each operation's object (`obj`: pseudonyms, -1 for none)."""
        room = int(self.counts[NEXT]) + int(np.count_nonzero((op == OBJ_ALLOC) | (op == PAGE_ALLOC)))
        if room > len(self.free):  # the stack never holds more slots than were handed out
            self.free = np.concatenate([self.free, np.zeros(max(room, len(self.free)), np.int64)])
        return assign_slots(op, obj, self.slot_of, self.free, self.counts)


@njit
def assign_slots(op, obj, slot_of, free, counts):
    slots = np.empty_like(obj)
    for i in range(obj.shape[0]):
        pseudonym = obj[i]
        if pseudonym < 0:
            slots[i] = -1
        elif op[i] == OBJ_ALLOC or op[i] == PAGE_ALLOC:
            if counts[HELD]:
                counts[HELD] -= 1
                slot = free[counts[HELD]]
            else:
                slot = counts[NEXT]
                counts[NEXT] += 1
            slot_of[pseudonym] = slot  # a pseudonym allocated twice leaves its first slot behind, as the trace does
            slots[i] = slot
        elif op[i] == OBJ_FREE or op[i] == PAGE_FREE:
            slot = slot_of.pop(pseudonym, NEVER_CHARGED)
            if slot != NEVER_CHARGED:
                free[counts[HELD]] = slot
                counts[HELD] += 1
            slots[i] = slot
        else:
            slots[i] = -1
    return slots
