"""Object pseudonyms: an allocation and its free share a sequence number, never the pointer.

Raw object addresses (and page frame numbers) reveal the kernel's memory layout, so
the trace stores `obj`, a number given in allocation order. The map from address to
pseudonym lives only in the collector's memory, in an open-addressing hash table on
numpy arrays walked by compiled code: millions of events a second, bounded memory
(a free forgets its address; tombstones go when the table is rebuilt).
"""
from __future__ import annotations

from common.jit import njit
import numpy as np

ALLOC, FREE = 1, 2
NO_OBJ = -1
PAGE_TAG = np.uint64(1 << 63)  # page frame numbers get their own key space
_EMPTY = np.uint64(0)
_FREED = np.uint64(1)  # tombstone: neither a kernel pointer nor a tagged pfn


@njit
def _home(keys: np.ndarray, key: np.uint64) -> int:
    return int((key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) & (keys.size - 1)


@njit
def _find(keys: np.ndarray, key: np.uint64) -> int:
    """The slot holding `key`, or -1."""
    i = _home(keys, key)
    while keys[i] != _EMPTY:
        if keys[i] == key:
            return i
        i = (i + 1) & (keys.size - 1)
    return -1


@njit
def _free_slot(keys: np.ndarray, key: np.uint64) -> int:
    """Where a new `key` goes: the first tombstone or empty slot on its probe path."""
    i = _home(keys, key)
    while keys[i] != _EMPTY and keys[i] != _FREED:
        i = (i + 1) & (keys.size - 1)
    return i


@njit
def _assign(keys, values, key, op, out, next_id, used):
    """For each event in time order: an allocation takes a fresh id, a free takes its
    allocation's id and forgets the address (the next object there is another object)."""
    for n in range(key.size):
        if op[n] == 0 or key[n] <= _FREED:  # no address (NULL), or one no object can have
            continue
        i = _find(keys, key[n])
        if op[n] == ALLOC:
            if i < 0:
                i = _free_slot(keys, key[n])
                if keys[i] == _EMPTY:
                    used += 1
                keys[i] = key[n]
            values[i] = next_id
            out[n] = next_id
            next_id += 1
        elif i >= 0:
            out[n] = values[i]
            keys[i] = _FREED
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
        _reinsert(self.keys, self.values, old_keys, old_values)


@njit
def _reinsert(keys, values, old_keys, old_values):
    for n in range(old_keys.size):
        i = _free_slot(keys, old_keys[n])
        keys[i] = old_keys[n]
        values[i] = old_values[n]


def warm_up() -> None:
    """Compile (or load from cache) the hash table's functions before a capture needs them,
    the rebuild's too (two allocations overfill a table of two)."""
    Pseudonyms(capacity=2).assign(np.array([5, 6], np.uint64), np.array([ALLOC, ALLOC], np.int8))
