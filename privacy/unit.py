"""Privacy units: who is protected, and how many rows one of them may contribute.

The unit is enforced, not declared: `truncate_contributions` keeps at most `max_rows` rows per
identifier before any aggregate is computed, so every sensitivity below holds by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from privacy.errors import SpecError

__all__ = ["MAX_ROWS_LIMIT", "PrivacyUnit", "contribution_mask", "truncate_contributions", "unit_mask"]

#: Larger bounds make every release so noisy that they are almost surely a mistake.
MAX_ROWS_LIMIT = 1000


@dataclass(frozen=True)
class PrivacyUnit:
    """One person, identified by `identifier`, contributing at most `max_rows` rows."""

    identifier: str
    max_rows: int

    def __post_init__(self) -> None:
        if not self.identifier:
            raise SpecError("the privacy unit needs an identifier column")
        if not 1 <= self.max_rows <= MAX_ROWS_LIMIT:
            raise SpecError(
                f"privacy unit max_rows must be between 1 and {MAX_ROWS_LIMIT}, got {self.max_rows}"
            )


def contribution_mask(ids: pd.Series, max_rows: int) -> npt.NDArray[np.bool_]:
    """Which rows survive truncation: the first `max_rows` of each identifier, in source order.

    Rows with a missing identifier cannot be bounded, so they never survive. Only people with
    more than `max_rows` rows are ranked, so the common case costs one counting pass.
    """
    if max_rows < 1:
        raise SpecError(f"max_rows must be at least 1, got {max_rows}")
    people = _person_codes(ids)
    counts = np.bincount(people, minlength=1)
    keep = people > 0 if counts[0] else np.ones(len(people), dtype=bool)
    heavy = counts > max_rows
    heavy[0] = False  # rows without an identifier are already dropped
    if not heavy.any():
        return keep
    rows = np.flatnonzero(heavy[people])  # rows of people over the limit, in source order
    heavy_people = people[rows]
    order = np.argsort(heavy_people, kind="stable")
    grouped = heavy_people[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    rank = np.arange(len(grouped)) - np.repeat(starts, np.diff(np.r_[starts, len(grouped)]))
    keep[rows[order[rank >= max_rows]]] = False
    return keep


def _person_codes(ids: pd.Series) -> npt.NDArray[np.int64]:
    """A dense code per identifier, starting at 1; 0 where the identifier is missing."""
    if pd.api.types.is_integer_dtype(ids.dtype) and len(ids) and not ids.hasnans:
        values = ids.to_numpy(dtype=np.int64)
        low, high = int(values.min()), int(values.max())
        if high - low < 4 * len(values) + 1024:  # a small range: the shifted ids are the codes
            return np.asarray(values - (low - 1), dtype=np.int64)
    codes, _ = pd.factorize(ids, sort=False)
    return np.asarray(codes + 1, dtype=np.int64)


def truncate_contributions(frame: pd.DataFrame, unit: PrivacyUnit) -> pd.DataFrame:
    """Keep the first `unit.max_rows` rows of each person, in source order.

    Rows with a missing identifier cannot be bounded, so they are dropped.

    Raises:
        SpecError: the identifier column is not in the frame.
    """
    keep = unit_mask(frame, unit)
    return frame if keep.all() else frame.loc[keep]


def unit_mask(frame: pd.DataFrame, unit: PrivacyUnit) -> npt.NDArray[np.bool_]:
    """`contribution_mask` of the frame's identifier column.

    Raises:
        SpecError: the identifier column is not in the frame.
    """
    if unit.identifier not in frame.columns:
        raise SpecError(f"identifier column {unit.identifier!r} is not in the dataset")
    return contribution_mask(frame[unit.identifier], unit.max_rows)
