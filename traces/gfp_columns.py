"""gfp classes of a polars column (traces have few distinct gfp values: each is classified once)."""
from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from traces.gfp import gfp_class


def gfp_class_series(gfp: pl.Series, table: Mapping[str, int]) -> pl.Series:
    """gfp_class of every value, computed once per distinct value (traces have few distinct gfp values)."""
    distinct = gfp.drop_nulls().unique()
    classes = [gfp_class(bits, table) for bits in distinct.to_list()]
    # Every non-null value is in `distinct`; the default only keeps nulls null (and the dtype right when all are).
    return gfp.replace_strict(distinct, pl.Series(classes, dtype=pl.String), default=None, return_dtype=pl.String)


def gfp_class_expr(col: str, table: Mapping[str, int]) -> pl.Expr:
    """Polars expression classifying the unsigned gfp column `col` with gfp_class; nulls stay null."""
    return pl.col(col).map_batches(
        lambda gfp: gfp_class_series(gfp, table), return_dtype=pl.String, is_elementwise=True
    )
