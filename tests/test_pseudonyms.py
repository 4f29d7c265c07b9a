"""Object pseudonyms against a plain-dict model of what they must mean."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from collect.pseudonyms import ALLOC, FREE, NO_OBJ, Pseudonyms

events = st.lists(st.tuples(st.sampled_from([ALLOC, FREE, 0]), st.integers(0, 40)), max_size=400)


def model(batches: list[list[tuple[int, int]]]) -> list[int]:
    """An allocation gets the next number; a free gets the number of the live allocation at
    its address, and ends it; anything else gets none."""
    live: dict[int, int] = {}
    next_id, out = 0, []
    for batch in batches:
        for op, key in batch:
            if op == ALLOC and key > 1:  # 0 is NULL, 1 the tombstone value: never addresses
                live[key] = next_id
                out.append(next_id)
                next_id += 1
            elif op == FREE and key in live:
                out.append(live.pop(key))
            else:
                out.append(NO_OBJ)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=5), st.sampled_from([2, 4, 1024]))
def test_pseudonyms_match_the_model_across_batches_and_rebuilds(batches, capacity):
    table = Pseudonyms(capacity)
    got = []
    for batch in batches:
        ops = np.array([op for op, _ in batch], dtype=np.int8)
        keys = np.array([key for _, key in batch], dtype=np.uint64)
        got += table.assign(keys, ops).tolist()
    assert got == model(batches)


def test_memory_follows_live_objects():
    table = Pseudonyms(4)
    for start in range(0, 200_000, 1000):
        keys = np.arange(start + 2, start + 1002, dtype=np.uint64)
        table.assign(keys, np.full(keys.size, ALLOC, np.int8))
        table.assign(keys, np.full(keys.size, FREE, np.int8))
    # 200,000 objects came and went; at most 1,000 were ever alive at once.
    assert table.keys.size <= 4096
