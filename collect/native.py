"""The collector's inner loops (collect/walks.c), loaded with ctypes.

`make native` builds collect/walks.so beside its source; `make demo` and `make test` build
it too. Arrays pass as pointers: each wrapper's caller hands contiguous numpy arrays of the
C function's element types.
"""
from __future__ import annotations

import ctypes as ct
from functools import cache
from pathlib import Path

import numpy as np

from traces.errors import UserError

LIBRARY = Path(__file__).with_name("walks.so")

_i64, _p = ct.c_int64, ct.c_void_p
SIGNATURES = {
    "walk_pages": (_i64, [_p, _i64, _i64, ct.c_uint16, _p, _p, _p, _p, _p, _p]),
    "gather": (None, [_p, _p, _i64, _i64, _p]),
    "copy_spans": (None, [_p, _p, _p, _i64, _p]),
    "c_string_spans": (None, [_p, _i64, _p, _p, _i64, _p, _p]),
    "spans_equal": (ct.c_int, [_p, _p, _p, _p, _i64]),
    "perf_samples": (_i64, [_p, _i64, _p, _p]),
    "assign": (_i64, [_p, _p, _i64, _p, _p, _i64, _p, _i64, _p]),
    "reinsert": (None, [_p, _p, _i64, _p, _p, _i64]),
}


@cache
def walks() -> ct.CDLL:
    """The library, its functions typed; a clear error where it was not built."""
    try:
        library = ct.CDLL(str(LIBRARY))
    except OSError as err:
        raise UserError(f"the collector's compiled loops are missing ({err}): run `make native` in the project directory") from None
    for name, (result, arguments) in SIGNATURES.items():
        function = getattr(library, name)
        function.restype, function.argtypes = result, arguments
    return library


def pointer(array: np.ndarray, dtype: np.dtype | type) -> int:
    """Where a contiguous array of `dtype` starts; refuses anything else, which C would misread."""
    if array.dtype != np.dtype(dtype) or not array.flags.c_contiguous:
        raise TypeError(f"a C loop needs a contiguous {np.dtype(dtype)} array, not {array.dtype}")
    return array.ctypes.data
