"""The memcg samples a capture keeps as columns: what memcg.parquet gets, and what the flight
recorder keeps when it drops its oldest segments."""
from __future__ import annotations

import tracemalloc

from collect.memcg_samples import COLUMNS, SampleLog

MIB = 1 << 20


def sample(ts_ns: int, usage: int, high: int | None = None) -> dict[str, int | None]:
    values: dict[str, int | None] = {name: None for name in COLUMNS}
    values.update(ts_ns=ts_ns, usage=usage, high=high, events_high=0)
    return values


def test_the_table_holds_each_sample_and_what_the_kernel_lacks_as_null():
    log = SampleLog()
    log.append(sample(0, 3 * MIB, high=4 * MIB))
    log.append(sample(100, 5 * MIB))
    table = log.table().to_pydict()
    assert table["ts_ns"] == [0, 100]
    assert table["usage"] == [3 * MIB, 5 * MIB]
    assert table["high"] == [4 * MIB, None]  # v1 has no memory.high: null, not a number
    assert table["events_high"] == [0, 0]  # a zero count stays zero, not null
    assert table["slab_reclaimable"] == [None, None]


def test_the_flight_recorder_keeps_the_last_sample_before_the_first_kept_event():
    log = SampleLog()
    for ts in (0, 100, 200, 300):
        log.append(sample(ts, ts))
    log.keep_from(250)  # the kept events begin at 250: the memcg then is the sample at 200
    assert log.table()["ts_ns"].to_pylist() == [200, 300]
    log.keep_from(300)  # a sample at the first event's own time is what it found
    assert log.table()["ts_ns"].to_pylist() == [300]
    log.keep_from(50)  # nothing is older than the first kept sample: all stay
    assert log.table()["ts_ns"].to_pylist() == [300]
    log.append(sample(400, 1))  # and the log goes on after a table was made from it
    assert len(log) == 2


def test_an_hour_of_samples_takes_the_bytes_of_its_counters():
    log = SampleLog()
    tracemalloc.start()
    for tick in range(36_000):  # an hour at the collector's 0.1 s tick
        log.append(sample(tick * 100_000_000, (1 << 30) + tick, high=4 << 30))
    grown, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    counters = 36_000 * len(COLUMNS) * 8
    assert grown < 1.2 * counters, (grown, counters)  # a dict a sample took about 1.2 KiB: 40 MiB
