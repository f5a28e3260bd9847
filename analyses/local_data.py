"""A node's data prepared for one request: truncation masks, key codes, exact vectors.

Pure: a pandas frame (already mapped to logical column names and declared types) goes in.
Truncation to a privacy unit is a row mask and each grouping key is coded once; every step
reading the dataset shares them. The exact vectors a step releases (`Exact`) carry the L2
sensitivity that holds because only rows surviving truncation are counted.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyses.keys import KeySpec
from privacy.unit import PrivacyUnit, unit_mask

__all__ = ["Exact", "LocalData", "bincount", "clamped", "outside", "rounding_per_row"]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]


class Exact(NamedTuple):
    """One exact vector a step releases, before noise."""

    vector: IntArray
    #: L2 distance between the vectors of two datasets that differ in one person.
    sensitivity: int
    #: What one integer of the vector is worth (a sum's quantum).
    unit_value: float = 1.0
    #: The most rounding moved one row's contribution, in value units.
    rounding: float = 0.0


class LocalData:
    """One dataset's frame, prepared for one request.

    Truncation to a privacy unit is a row mask, and each grouping key is coded once; every step
    reading the dataset shares them. The frame itself is never copied.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self._keep: dict[PrivacyUnit, BoolArray] = {}
        self._codes: dict[KeySpec, IntArray] = {}
        self._cells: dict[tuple[tuple[KeySpec, ...], PrivacyUnit], IntArray] = {}

    def keep(self, unit: PrivacyUnit) -> BoolArray:
        """Rows that survive truncation to `unit` (the first `max_rows` of each person).

        Raises:
            SpecError: the identifier column is not in the dataset.
        """
        if unit not in self._keep:
            self._keep[unit] = unit_mask(self.frame, unit)
        return self._keep[unit]

    def codes(self, key: KeySpec) -> IntArray:
        """Index of each row's key in `key.keys()`, or -1 when it is not a published key."""
        if key not in self._codes:
            self._codes[key] = _key_codes(self.frame[key.column], key)
        return self._codes[key]

    def cells(self, keys: tuple[KeySpec, ...], unit: PrivacyUnit) -> IntArray:
        """Each row's cell in the product of public key sets (row-major).

        A row outside the published keys or dropped by truncation to `unit` gets the cell one
        past the last, `outside(keys)`, which no release reads.
        """
        if (keys, unit) not in self._cells:
            drop = ~self.keep(unit)
            cells = np.zeros(len(self.frame), dtype=np.int64)
            for key in keys:
                codes = self.codes(key)
                drop |= codes < 0
                cells *= len(key.keys())
                cells += codes
            cells[drop] = outside(keys)
            self._cells[(keys, unit)] = cells
        return self._cells[(keys, unit)]


def outside(keys: tuple[KeySpec, ...]) -> int:
    """The cell of rows outside the published keys: one past the last cell."""
    return math.prod(len(key.keys()) for key in keys)


def _key_codes(column: pd.Series, key: KeySpec) -> IntArray:
    if key.derive == "missing":
        return np.asarray(column.isna().to_numpy(), dtype=np.int64)
    if key.derive in ("hour", "weekday") and column.dtype.kind == "M":
        # Naive datetimes: integer arithmetic on seconds since the epoch (a Thursday).
        seconds = column.to_numpy().astype("datetime64[s]", copy=False).view(np.int64)
        codes = seconds // 3600 % 24 if key.derive == "hour" else (seconds // 86400 + 3) % 7
        return np.asarray(np.where(seconds == np.iinfo(np.int64).min, -1, codes), dtype=np.int64)
    if key.derive in ("hour", "weekday", "month"):
        when = pd.to_datetime(column, errors="coerce")
        raw = {"hour": when.dt.hour, "weekday": when.dt.day_of_week, "month": when.dt.month - 1}[key.derive]
        return np.asarray(raw.fillna(-1).to_numpy(dtype=np.int64), dtype=np.int64)
    if key.derive == "band":
        edges = np.asarray(key.edges, dtype=float)
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
        codes = np.searchsorted(edges, values, side="right") - 1
        outside = np.isnan(values) | (codes < 0) | (codes >= len(edges) - 1)
        return np.asarray(np.where(outside, -1, codes), dtype=np.int64)
    keys = key.keys()
    if isinstance(keys[0], str) and isinstance(column.array, pd.arrays.ArrowStringArray):
        # Arrow-backed strings: one hash lookup per row against the public keys, no copy.
        arrow = pa.array(column)
        found = pc.index_in(arrow, value_set=pa.array(keys, type=arrow.type))
        return np.asarray(found.fill_null(-1).to_numpy(), dtype=np.int64)
    # Otherwise hash the column once, then look up only its distinct values among the keys.
    codes, uniques = pd.factorize(column, sort=False)
    if isinstance(keys[0], str):
        uniques = pd.Index(uniques).astype(str)
    positions = np.append(pd.Index(keys).get_indexer(pd.Index(uniques)), -1).astype(np.int64)
    return np.asarray(positions[codes], dtype=np.int64)  # code -1 (missing) picks the appended -1


def clamped(column: pd.Series, bounds: tuple[float, float]) -> FloatArray:
    """A column as floats clamped to `bounds`, NaN where it has no value."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(np.clip(values, bounds[0], bounds[1]), dtype=np.float64)


def rounding_per_row(column: pd.Series, quantum: float, centre: float) -> float:
    """The most rounding to units of `quantum` around `centre` can move one row's value: 0 for
    whole numbers on a grid that holds them (a power-of-two unit of at most 1), half a unit
    otherwise. From the column's declared type only, never from its values."""
    whole = pd.api.types.is_integer_dtype(column.dtype)
    exact = whole and quantum <= 1 and (1 / quantum).is_integer() and float(centre).is_integer()
    return 0.0 if exact else quantum / 2


def bincount(cells: IntArray, n: int, weights: FloatArray | None = None) -> IntArray:
    """Per-cell count (or weighted sum) of rows in cells 0..n-1; cell n (outside) is dropped."""
    if weights is None:
        return np.bincount(cells, minlength=n + 1)[:n].astype(np.int64)
    if np.abs(weights).sum() < 2**52:  # float64 sums of integers are exact below 2**53
        return np.rint(np.bincount(cells, weights=weights, minlength=n + 1)[:n]).astype(np.int64)
    inside = cells < n
    out = np.zeros(n, dtype=np.int64)  # exact integer path for very large sums
    np.add.at(out, cells[inside], weights[inside].astype(np.int64))
    return out
