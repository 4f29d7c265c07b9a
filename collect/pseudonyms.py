"""Object pseudonyms: an allocation and its free share a sequence number, never the pointer.

Raw object addresses (and page frame numbers) reveal the kernel's memory layout, so
the trace stores `obj`, a number given in allocation order. The map from address to
pseudonym lives only in the collector's memory, in an open-addressing hash table on
numpy arrays walked by compiled code: millions of events a second, bounded memory
(an entry is overwritten when its address is allocated again).
"""
from __future__ import annotations

from chargeplay.jit import njit
import numpy as np

ALLOC, FREE = 1, 2
NO_OBJ = -1
PAGE_TAG = np.uint64(1 << 63)  # page frame numbers get their own key space
_EMPTY = np.uint64(0)


@njit
def _slot(keys: np.ndarray, key: np.uint64) -> int:
    mask = keys.size - 1
    i = int((key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) & mask
    while keys[i] != key and keys[i] != _EMPTY:
        i = (i + 1) & mask
    return i


@njit
def _assign(keys, values, key, op, out, next_id, used):
    """For each event in time order: allocations take a fresh id, frees look theirs up."""
    for n in range(key.size):
        if op[n] == 0 or key[n] == _EMPTY:
            continue
        i = _slot(keys, key[n])
        if op[n] == ALLOC:
            if keys[i] == _EMPTY:
                keys[i] = key[n]
                used += 1
            values[i] = next_id
            out[n] = next_id
            next_id += 1
        elif keys[i] == key[n]:
            out[n] = values[i]
    return next_id, used


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
        self.next_id, self.used = _assign(
            self.keys, self.values, key.astype(np.uint64), op.astype(np.int8), out, self.next_id, self.used
        )
        return out

    def _reserve(self, more: int) -> None:
        """Keep the load factor under one half so probes stay short."""
        if 2 * (self.used + more) <= self.keys.size:
            return
        capacity = self.keys.size
        while 2 * (self.used + more) > capacity:
            capacity *= 2
        live = self.keys != _EMPTY
        old_keys, old_values = self.keys[live], self.values[live]
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.values = np.zeros(capacity, dtype=np.int64)
        _reinsert(self.keys, self.values, old_keys, old_values)


@njit
def _reinsert(keys, values, old_keys, old_values):
    for n in range(old_keys.size):
        i = _slot(keys, old_keys[n])
        keys[i] = old_keys[n]
        values[i] = old_values[n]
