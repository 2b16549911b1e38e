"""Columns to text, vectorised, for ``sheetxml``. Every function takes one column and
returns an object array of ``str`` (one per row) plus a mask of the missing values,
without a Python loop over rows: numbers go through ``map(str|repr, ...)`` (C loops,
about twice as fast as numpy's and five times pandas' ``astype(str)``; floats as the
shortest round-trip repr, the text pandas' ``to_csv`` writes too), text is transformed
once per distinct value (names and comments repeat a lot) and picked by factorized
codes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd

Kind = Literal["number", "bool", "text"]


def kind_of(column: pd.Series) -> Kind:
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
        return "number"
    return "text"


def number_text(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integers as ``str``, floats as ``repr``; NaN, NA and infinities are missing."""
    values = pd.to_numeric(column, errors="coerce").astype("float64").to_numpy()
    missing = ~np.isfinite(values)
    # Missing values are filled only to keep the conversion typed; callers mask them.
    if pd.api.types.is_integer_dtype(column.dtype):
        ints = column.astype("Int64").fillna(0).to_numpy(dtype=np.int64).tolist()
        return np.array(list(map(str, ints)), dtype=object), missing
    floats = np.where(missing, 0.0, values).tolist()
    return np.array(list(map(repr, floats)), dtype=object), missing


def bool_text(column: pd.Series, true: str, false: str) -> tuple[np.ndarray, np.ndarray]:
    values = column.astype("boolean")
    missing = values.isna().to_numpy(dtype=bool)
    truth = values.fillna(False).to_numpy(dtype=bool)
    return np.where(truth, true, false).astype(object), missing


def mapped_text(column: pd.Series, transform: Callable[[object], str]
                ) -> tuple[np.ndarray, np.ndarray]:
    """``transform`` applied once per distinct value, then spread over the rows."""
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    table = np.array([transform(u) for u in uniques] + [""], dtype=object)
    return table[codes], codes < 0  # code -1 (missing) picks the trailing ""


def join_rows(columns: Sequence[np.ndarray]) -> str:
    """Row by row, each row's column values in order, concatenated: one ``str.join``
    over the 2-D array (callers put separators and line ends in as columns)."""
    return "".join(np.stack(list(columns), axis=1).ravel().tolist())
