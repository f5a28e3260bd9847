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
from privacy.disclosure import noise_aware_threshold, round_to, suppress_small
from privacy.errors import ProtocolError

__all__ = ["PooledVector", "Publication", "Published", "ResultTable", "disclose", "pool_vectors"]


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
    published, and whether negative counts and sums are published as 0."""

    min_cell: int
    round_to: int = 1
    threshold: int = 0
    max_rows: int = 1
    false_publication: float = 0.01
    non_negative: bool = False

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
) -> list[str]:
    """Suppress the values of cells whose noisy count is under the publication's cut (the
    minimum cell, and under a people threshold the noise-aware one for a count of noise scale
    `count_sd`), publish negative values of `clamp_cols` as 0 when the rules say so, and round;
    return the notes a reader needs. `counts` are the noisy counts when `count_col` is not a
    column of `frame` (a sum step publishes none)."""
    cut = publication.cut(count_sd)
    noisy = frame[count_col].to_numpy(dtype=float) if counts is None else np.asarray(counts, dtype=float)
    for col in value_cols:
        values = [
            suppress_small(v, c, cut) for v, c in zip(frame[col].to_numpy(dtype=float), noisy, strict=True)
        ]
        if publication.non_negative and col in clamp_cols:
            values = [v if math.isnan(v) else max(v, 0.0) for v in values]
        frame[col] = [round_to(v, publication.round_to) for v in values]
    note = publication.note(count_sd)
    notes = [note] if note else []
    if publication.non_negative and clamp_cols:
        notes.append(f"negative values of {', '.join(clamp_cols)} are published as 0 (noise, not data)")
    return notes
