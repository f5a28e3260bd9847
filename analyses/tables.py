"""What the aggregate steps share: published tables, pooling of partners' noisy vectors, and the
disclosure rules applied to a cell.

Pure post-processing of DP releases at the coordinator: no budget is spent here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from analyses.reply import MeasurementRelease
from privacy.accuracy import pooled_accuracy95
from privacy.disclosure import round_to, suppress_small
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
    contributing node's) and the rounding of the spec's disclosure settings."""

    min_cell: int
    round_to: int = 1


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


def disclose(frame: pd.DataFrame, count_col: str, value_cols: list[str], publication: Publication) -> None:
    """Suppress the values of cells whose noisy count is under the minimum cell; round them."""
    counts = frame[count_col].to_numpy(dtype=float)
    for col in value_cols:
        frame[col] = [
            round_to(suppress_small(v, c, publication.min_cell), publication.round_to)
            for v, c in zip(frame[col].to_numpy(dtype=float), counts, strict=True)
        ]
