"""Object pseudonyms: an allocation and its free share a sequence number, never the pointer.

Raw object addresses (and page frame numbers) reveal the kernel's memory layout, so
the trace stores `obj`, a number given in allocation order. The map from address to
pseudonym lives only in the collector's memory, in an open-addressing hash table on
numpy arrays walked in C (collect/walks.c: assign, reinsert): millions of events a second,
bounded memory (a free forgets its address; tombstones go when the table is rebuilt).
"""
from __future__ import annotations

import ctypes as ct

import numpy as np

from collect.native import pointer, walks

ALLOC, FREE = 1, 2
NO_OBJ = -1
PAGE_TAG = np.uint64(1 << 63)  # page frame numbers get their own key space
_FREED = np.uint64(1)  # tombstone: neither a kernel pointer nor a tagged pfn (walks.c: FREED)


class Pseudonyms:
    def __init__(self, capacity: int = 1 << 16) -> None:
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.values = np.zeros(capacity, dtype=np.int64)
        self.next_id = 0
        self.used = 0

    def assign(self, key: np.ndarray, op: np.ndarray) -> np.ndarray:
        """Pseudonyms for events with address `key` (0: none) and `op` (ALLOC, FREE or 0),
        in time order; NO_OBJ for frees of unknown objects and events without one."""
        self._reserve(int(np.count_nonzero(op == ALLOC)))
        out = np.full(key.size, NO_OBJ, dtype=np.int64)
        key, op = np.ascontiguousarray(key, np.uint64), np.ascontiguousarray(op, np.int8)
        used = ct.c_int64(self.used)
        self.next_id = walks().assign(pointer(self.keys, np.uint64), pointer(self.values, np.int64), self.keys.size,
                                      pointer(key, np.uint64), pointer(op, np.int8), key.size, pointer(out, np.int64),
                                      self.next_id, ct.byref(used))
        self.used = used.value
        return out

    def _reserve(self, more: int) -> None:
        """Keep used slots (live and tombstones) under half the table, so probes stay short;
        rebuilding drops the tombstones, so memory follows the live objects."""
        if 2 * (self.used + more) <= self.keys.size:
            return
        live = self.keys > _FREED
        capacity = self.keys.size
        while 2 * (int(live.sum()) + more) > capacity:
            capacity *= 2
        old_keys, old_values = self.keys[live], self.values[live]
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.values = np.zeros(capacity, dtype=np.int64)
        self.used = old_keys.size
        walks().reinsert(pointer(self.keys, np.uint64), pointer(self.values, np.int64), capacity,
                         pointer(old_keys, np.uint64), pointer(old_values, np.int64), old_keys.size)

