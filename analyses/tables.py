"""What the aggregate steps share: published tables, pooling of partners' noisy vectors, and the
disclosure rules applied to a cell.

Pure post-processing of DP releases at the coordinator: no budget is spent here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pandas as pd

from analyses.reply import MeasurementRelease
from privacy.accuracy import pooled_accuracy95
from privacy.disclosure import (
    DOMINANCE_K,
    DOMINANCE_N,
    DOMINANCE_P,
    RESIDUAL_DF,
    Outcome,
    dominance_floor,
    lower_bound,
    noise_aware_threshold,
    round_to,
    too_small,
)
from privacy.errors import ProtocolError

__all__ = [
    "CHECK",
    "Magnitude",
    "ModelCheck",
    "PooledVector",
    "Publication",
    "Published",
    "ResultTable",
    "check_columns",
    "disclose",
    "model_check",
    "pool_vectors",
    "withhold",
]

#: The column of every published step table that says what the disclosure checks made of the
#: cell: `pass`, `review`, or `suppressed:<rule>` (`privacy.disclosure.OUTCOMES`).
CHECK = "check"


def check_columns(frame: pd.DataFrame) -> list[str]:
    """A table's check columns: `check`, and a joined table's `<step>_check`."""
    return [str(c) for c in frame.columns if str(c) == CHECK or str(c).endswith(f"_{CHECK}")]


@dataclass(frozen=True)
class ResultTable:
    """One published table, with the notes a reader needs to interpret it."""

    name: str
    frame: pd.DataFrame
    notes: tuple[str, ...]


class Published(NamedTuple):
    """A step's table from pooled releases, and the notes a reader needs with it."""

    frame: pd.DataFrame
    notes: list[str]


@dataclass(frozen=True)
class Publication:
    """The rules a published cell follows: the strictest minimum cell (the spec's and every
    contributing node's) and the rounding of the spec's disclosure settings; under the `tre`
    and `custom` profiles also the people threshold (at least every node's floor), the rows a
    person may contribute, the largest probability that a cell below the threshold is
    published, whether negative counts and sums are published as 0, and whether sums and
    means follow the dominance rules."""

    min_cell: int
    round_to: int = 1
    threshold: int = 0
    max_rows: int = 1
    false_publication: float = 0.01
    non_negative: bool = False
    dominance: bool = False

    def small_rule(self) -> str:
        """The outcome of a cell suppressed for its count."""
        return "suppressed:threshold" if self.threshold > 0 else "suppressed:min_cell"

    def cut(self, sd: float) -> float:
        """The least noisy count a published cell has (its count's noise of scale `sd`)."""
        return max(
            float(self.min_cell),
            noise_aware_threshold(self.threshold, self.max_rows, sd, self.false_publication),
        )

    def with_floor(self, floor: int) -> Publication:
        """These rules raised to a node's own floor (`policy.min_cell`), which no spec lowers: a
        least noisy count, and under a people threshold a least threshold too."""
        return replace(
            self,
            min_cell=max(self.min_cell, floor),
            threshold=max(self.threshold, floor) if self.threshold > 0 else 0,
        )

    def note(self, sd: float) -> str | None:
        """What a reader is told of the threshold, or None under the open profile."""
        if self.threshold <= 0:
            return None
        return (
            f"cells of fewer than {self.threshold} people are suppressed: a cell is published only when its "
            f"noisy count is at least {self.cut(sd):.1f} (up to {self.max_rows} rows a person, noise scale "
            f"{sd:.3g}), so one below the threshold is published with probability at most {self.false_publication:g}"
        )


@dataclass(frozen=True)
class Magnitude:
    """What the dominance rules read of a sum or mean step's cells: the noisy totals, their noise
    scale, and the public bounds of one value, with the rows a person may contribute."""

    totals: np.ndarray
    sd: float
    bounds: tuple[float, float]
    max_rows: int

    def contributor_max(self) -> float:
        """The most one person adds to a cell's total: their rows times the larger bound."""
        return self.max_rows * max(abs(self.bounds[0]), abs(self.bounds[1]))

    def note(self, false_publication: float) -> str:
        floor = dominance_floor(self.contributor_max())
        return (
            f"dominance (n={DOMINANCE_N}, k={DOMINANCE_K:g}; p={DOMINANCE_P:g}): a person adds at most "
            f"{self.contributor_max():g} to a cell ({self.max_rows} rows within {list(self.bounds)}), so a cell "
            f"is published only when its noisy total is at least {floor:g} plus a noise margin (probability "
            f"{false_publication:g}); decided from the released noisy sum and public bounds: privacy cost 0"
        )


@dataclass(frozen=True)
class PooledVector:
    """Cell-wise sum of several partners' noisy vectors."""

    values: np.ndarray
    scale: float
    accuracy95: float
    partners: int


def pool_vectors(measurements: Sequence[MeasurementRelease]) -> PooledVector:
    """Sum noisy vectors from several partners (in units), with pooled scale and accuracy.

    Raises:
        ProtocolError: the vectors differ in length or in what one integer is worth.
    """
    lengths = {len(m.values) for m in measurements}
    if len(lengths) != 1:
        raise ProtocolError(f"partners released vectors of different lengths {sorted(lengths)}")
    unit = measurements[0].unit_value
    if any(not math.isclose(m.unit_value, unit, rel_tol=1e-12) for m in measurements):
        raise ProtocolError("partners released vectors in different units")
    total = np.sum([np.asarray(m.values, dtype=float) for m in measurements], axis=0) * unit
    scales = [m.scale for m in measurements]
    return PooledVector(
        values=total,
        scale=math.sqrt(sum(s * s for s in scales)) * unit,
        accuracy95=pooled_accuracy95(scales) * unit,
        partners=len(measurements),
    )


def disclose(
    frame: pd.DataFrame,
    count_col: str,
    value_cols: list[str],
    publication: Publication,
    count_sd: float = 0.0,
    clamp_cols: tuple[str, ...] = (),
    counts: np.ndarray | None = None,
    magnitude: Magnitude | None = None,
) -> list[str]:
    """Apply the publication's rules to `frame`'s cells and add its `check` column; return the
    notes a reader needs.

    A cell's values are suppressed when its noisy count is under the publication's cut (the
    minimum cell, and under a people threshold the noise-aware one for a count of noise scale
    `count_sd`), or, with dominance rules and a `magnitude`, when its noisy total could be held
    mostly by one or two people; negative values of `clamp_cols` are published as 0 when the
    rules say so; values are rounded. `counts` are the noisy counts when `count_col` is not a
    column of `frame` (a sum step publishes none). A signed magnitude (a bound below 0) cannot be
    checked for dominance from its total: its cells are marked `review`.
    """
    cut = publication.cut(count_sd)
    noisy = frame[count_col].to_numpy(dtype=float) if counts is None else np.asarray(counts, dtype=float)
    small = np.array([too_small(float(c), cut) for c in noisy], dtype=bool)
    check = np.where(small, publication.small_rule(), "pass").astype(object)
    notes: list[str] = []
    if publication.dominance and magnitude is not None:
        if magnitude.bounds[0] < 0:
            check[~small] = "review"
            notes.append("dominance rules need non-negative values: cells of a signed sum are marked review")
        else:
            least = dominance_floor(magnitude.contributor_max())
            low = np.array(
                [lower_bound(t, magnitude.sd, publication.false_publication) for t in magnitude.totals]
            )
            check[~small & (low < least)] = "suppressed:dominance"
            notes.append(magnitude.note(publication.false_publication))
    hidden = check != "pass"
    hidden &= check != "review"
    for col in value_cols:
        values = np.where(hidden, math.nan, frame[col].to_numpy(dtype=float))
        if publication.non_negative and col in clamp_cols:
            values = np.where(np.isnan(values), values, np.maximum(values, 0.0))
        frame[col] = [round_to(float(v), publication.round_to) for v in values]
    frame[CHECK] = check
    note = publication.note(count_sd)
    if note:
        notes.insert(0, note)
    if publication.non_negative and clamp_cols:
        notes.append(f"negative values of {', '.join(clamp_cols)} are published as 0 (noise, not data)")
    return notes


@dataclass(frozen=True)
class ModelCheck:
    """The residual degrees of freedom check of a model: its outcome and the numbers behind it."""

    outcome: Outcome
    rows: float
    rows_sd: float
    parameters: int
    residual_df: float

    def note(self) -> str:
        return (
            f"residual degrees of freedom: at least {self.residual_df:.0f} (a noisy row count of "
            f"{self.rows:.0f}, noise scale {self.rows_sd:.3g}, less its margin and {self.parameters} "
            f"parameters; at least {RESIDUAL_DF} needed): {self.outcome}; read from released counts, privacy cost 0"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "rule": "residual_df",
            "outcome": self.outcome,
            "least": RESIDUAL_DF,
            "residual_df": round(self.residual_df, 3),
            "noisy_rows": round(self.rows, 3),
            "rows_noise_scale": self.rows_sd,
            "parameters": self.parameters,
            "privacy_cost": "0: post-processing of released counts",
        }


def model_check(publication: Publication, rows: float, rows_sd: float, parameters: int) -> ModelCheck:
    """A model's residual degrees of freedom from a DP row count (`rows`, noise scale `rows_sd`):
    the count less the margin it overstates the truth by with probability at most the
    publication's `false_publication`, less the model's parameters. Under a people threshold (the
    `tre` and `custom` profiles) a model with fewer than `RESIDUAL_DF` is suppressed."""
    df = lower_bound(rows, rows_sd, publication.false_publication) - parameters
    failed = publication.threshold > 0 and df < RESIDUAL_DF
    return ModelCheck("suppressed:residual_df" if failed else "pass", rows, rows_sd, parameters, df)


def withhold(frame: pd.DataFrame, withheld: Sequence[tuple[int, str]], keys: Sequence[str]) -> None:
    """Mark the rows a node withheld (`StepRelease.withheld`) with its rule and blank their
    values (a withheld cell was sent as 0; its accuracy columns, which say nothing of the data,
    stay)."""
    if not withheld:
        return
    rows = [row for row, _ in withheld]
    values = [c for c in frame.columns if c not in keys and c != CHECK and not str(c).endswith("_accuracy95")]
    frame.loc[rows, values] = math.nan
    frame.loc[rows, CHECK] = [rule for _, rule in withheld]
