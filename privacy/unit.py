"""Privacy units: who is protected, and how many rows one of them may contribute.

The unit is enforced, not declared: `truncate_contributions` keeps at most `max_rows` rows per
identifier before any aggregate is computed, so every sensitivity below holds by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from privacy.errors import SpecError

__all__ = ["MAX_ROWS_LIMIT", "PrivacyUnit", "truncate_contributions"]

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


def truncate_contributions(frame: pd.DataFrame, unit: PrivacyUnit) -> pd.DataFrame:
    """Keep the first `unit.max_rows` rows of each person, in source order.

    Rows with a missing identifier cannot be bounded, so they are dropped.

    Raises:
        SpecError: the identifier column is not in the frame.
    """
    if unit.identifier not in frame.columns:
        raise SpecError(f"identifier column {unit.identifier!r} is not in the dataset")
    ids = frame[unit.identifier]
    known = ids.notna().to_numpy()
    if not known.all():
        frame = frame.loc[known]
        ids = frame[unit.identifier]
    # factorize + per-code running count is several times faster than groupby().cumcount().
    codes, _ = pd.factorize(ids, sort=False)
    rank = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    if rank.max(initial=-1) < unit.max_rows:
        return frame
    return frame.loc[rank < unit.max_rows]
