"""The target memcg's counters, sampled every tick and kept as columns of 64-bit integers
until they are written to memcg.parquet (traces.schema.MEMCG_COLUMNS).

A capture samples ten times a second for as long as it runs: kept as a dict each, the samples
grew an idle capture by 44 MiB an hour; as columns they take 8 bytes a counter.
"""
from __future__ import annotations

from array import array

import numpy as np
import pyarrow as pa

from traces.schema import MEMCG_COLUMNS, table_schema

COLUMNS = [name for name, _, _ in MEMCG_COLUMNS]
MISSING = -(1 << 63)  # a counter this kernel or cgroup version does not have; never a real count


class SampleLog:
    def __init__(self) -> None:
        self.columns = {name: array("q") for name in COLUMNS}

    def __len__(self) -> int:
        return len(self.columns["ts_ns"])

    def append(self, sample: dict[str, int | None]) -> None:
        for name, column in self.columns.items():
            value = sample[name]
            column.append(MISSING if value is None else value)

    def keep_from(self, first_ts_ns: int) -> None:
        """Drop the samples before the last one at or before `first_ts_ns`: that one says what
        the memcg held when the kept events begin."""
        ts = np.array(self.columns["ts_ns"], np.int64)  # a copy: an array viewed cannot shrink
        start = max(int(np.searchsorted(ts, first_ts_ns, side="right")) - 1, 0)
        for column in self.columns.values():
            del column[:start]

    def table(self) -> pa.Table:
        arrays = []
        for name in COLUMNS:
            values = np.array(self.columns[name], np.int64)  # a copy, so that appending goes on
            arrays.append(pa.array(values, pa.int64(), mask=values == MISSING))
        return pa.Table.from_arrays(arrays, schema=table_schema(MEMCG_COLUMNS))
