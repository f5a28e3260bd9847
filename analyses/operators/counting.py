"""Counting steps: count, sum, mean and histogram of rows in the cells of public keys.

Local step (at a node), on the rows that survive truncation to the privacy unit:

- a count vector changes by at most `max_rows` in L2 when one person is added or removed;
- a sum vector of values clamped to [lo, hi], centred on the step's `centre()` and rounded to
  units of its `quantum()` (each row's units clipped to `units_per_row()`), by at most
  `max_rows * units_per_row()`; the rounding error, at most half a unit per row, travels in the
  release (`rounding`) and is added to the stated accuracy.

Aggregate step (at the coordinator): partners' vectors summed cell by cell (scales add in
quadrature); a sum is `centred sum + centre x count`, a mean `centre + centred sum / count`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from analyses.keys import MAX_LIST, KeySpec
from analyses.local_data import Exact, LocalData, bincount, clamped, rounding_per_row
from analyses.operators._bounded import BoundedStep
from analyses.reply import StepRelease
from analyses.step import RoundLike, StepBase
from analyses.tables import Magnitude, PooledVector, Publication, Published, disclose, pool_vectors
from privacy.accuracy import Z95, ratio_accuracy95
from privacy.errors import ProtocolError
from privacy.unit import PrivacyUnit

__all__ = [
    "MAX_DATASET_ROWS",
    "MAX_UNITS_PER_ROW",
    "STEPS",
    "UNITS_PER_HALF_RANGE",
    "CountStep",
    "HistogramStep",
    "MeanStep",
    "SumStep",
]

#: Default quantisation of sums and means: about this many units across half the bounds' width,
#: so rounding moves a value by at most a two-millionth of that half-width.
UNITS_PER_HALF_RANGE = 2**20
#: Most units one row may add to a sum. With at most `MAX_DATASET_ROWS` rows an exact sum stays
#: below 2^62, inside int64 whatever the data: no overflow, no wrapped sign.
MAX_UNITS_PER_ROW = 2**31
#: Most rows a dataset may have (a node refuses to load more).
MAX_DATASET_ROWS = 2**31


def count_table(step: StepBase, releases: Sequence[StepRelease], publication: Publication) -> Published:
    """A step's pooled noisy counts per cell, with the disclosure rules applied."""
    frame = step.key_frame()
    pooled = pool_vectors([r.measurement("count") for r in releases])
    frame["count"] = pooled.values
    frame["count_accuracy95"] = pooled.accuracy95
    notes = disclose(frame, "count", ["count"], publication, pooled.scale, clamp_cols=("count",))
    return Published(frame, notes)


class CountStep(StepBase):
    """Noisy number of rows in each cell."""

    kind: Literal["count"]

    def measurements(self) -> tuple[str, ...]:
        return ("count",)

    def exact(self, data: LocalData, unit: PrivacyUnit, state: RoundLike | None) -> dict[str, Exact]:
        cells = data.cells(self.by, unit)
        return {"count": Exact(bincount(cells, self.groups()), unit.max_rows)}

    def publish(self, releases: Sequence[StepRelease], publication: Publication) -> Published:
        return count_table(self, releases, publication)


class _SumLike(BoundedStep):
    """A sum of a bounded column, quantised and centred (sums and means)."""

    precision: float | None = Field(
        default=None,
        gt=0,
        description="values are summed in units of this; default: derived from the bounds (a power "
        "of two giving about a million units across half their width), so rounding is negligible",
    )

    @model_validator(mode="after")
    def _units_fit(self) -> _SumLike:
        low, high = self.bounds
        if self.precision is not None and (high - low) / self.precision > 2 * MAX_UNITS_PER_ROW:
            raise ValueError(
                f"bounds / precision is over {2 * MAX_UNITS_PER_ROW:,} units: sums could overflow; "
                "use a coarser precision, or leave it out to derive one from the bounds"
            )
        return self

    def quantum(self) -> float:
        """The unit values are summed in: `precision`, or a power of two from the bounds."""
        if self.precision is not None:
            return self.precision
        half = (self.bounds[1] - self.bounds[0]) / 2
        return float(2.0 ** math.floor(math.log2(max(half / UNITS_PER_HALF_RANGE, 2.0**-1000))))

    def centre(self) -> float:
        """The point values are centred on before summing: the bounds' midpoint on the unit grid.

        Centred values need only half the bounds' width of sensitivity each, whatever their
        magnitude (bounds [44.85, 45.06] cost 0.105 per row, not 45.06).
        """
        quantum = self.quantum()
        return quantum * round((self.bounds[0] + self.bounds[1]) / 2 / quantum)

    def units_per_row(self) -> int:
        """Most units (in absolute value) one row's centred value can round to."""
        quantum, centre = self.quantum(), self.centre()
        low, high = self.bounds
        return max(1, math.ceil(max(high - centre, centre - low) / quantum))

    def measurements(self) -> tuple[str, ...]:
        return ("sum", "count")

    def clipping(self) -> str:
        """The note that says which values were summed: each clipped to the public bounds."""
        low, high = self.bounds
        return f"{self.column} is clipped to [{low:g}, {high:g}] before summing: a value outside counts as the bound"

    def exact(self, data: LocalData, unit: PrivacyUnit, state: RoundLike | None) -> dict[str, Exact]:
        cells = data.cells(self.by, unit)
        groups = self.groups()
        values = clamped(data.frame[self.column], self.bounds)
        has_value = ~np.isnan(values)
        limit = self.units_per_row()
        centred = (np.where(has_value, values, self.centre()) - self.centre()) / self.quantum()
        units = np.clip(np.rint(centred), -limit, limit)
        rounding = rounding_per_row(data.frame[self.column], self.quantum(), self.centre())
        return {
            "sum": Exact(bincount(cells, groups, units), unit.max_rows * limit, self.quantum(), rounding),
            "count": Exact(bincount(np.where(has_value, cells, groups), groups), unit.max_rows),
        }

    def _pooled(
        self, releases: Sequence[StepRelease]
    ) -> tuple[pd.DataFrame, PooledVector, PooledVector, float]:
        """The key frame, the pooled centred sum and count, and the most rounding per row.

        Raises: ProtocolError when a release's unit is not the one the spec defines.
        """
        sums = [r.measurement("sum") for r in releases]
        for m in sums:
            if not math.isclose(m.unit_value, self.quantum(), rel_tol=1e-12):
                raise ProtocolError(
                    f"step {self.id!r}: a release counts in units of {m.unit_value:g}, the spec defines "
                    f"{self.quantum():g}"
                )
        counts = pool_vectors([r.measurement("count") for r in releases])
        return self.key_frame(), pool_vectors(sums), counts, max(m.rounding for m in sums)


class SumStep(_SumLike):
    """Noisy sum of a bounded numeric column in each cell, released as the sum of the values
    centred on `centre()` and the count of rows with a value; the published sum is
    `centred sum + centre x count`. The budget is split between the two in proportion to what
    each contributes to the sum's noise, which makes that noise exactly what a plain sum's would
    be, and the count bounds the rounding error."""

    kind: Literal["sum"]

    def measurement_weights(self) -> tuple[float, ...]:
        """Budget weights of (sum, count): the noise of `sum + centre x count` is smallest when
        each gets a share proportional to its standard deviation per unit of budget (the count
        keeps at least a ninth, so it can bound the rounding)."""
        spread = self.units_per_row() * self.quantum()
        return (spread, max(abs(self.centre()), spread / 8))

    def publish(self, releases: Sequence[StepRelease], publication: Publication) -> Published:
        frame, s, c, rounding = self._pooled(releases)
        frame["sum"] = s.values + self.centre() * c.values
        noise = Z95 * math.sqrt(s.scale**2 + (self.centre() * c.scale) ** 2)
        rows = np.maximum(c.values + c.accuracy95, 0.0)
        frame["sum_accuracy95"] = noise + rows * rounding
        # the count under each sum is released, though not published: cells are cut by it
        clamp = ("sum",) if self.bounds[0] >= 0 else ()
        magnitude = Magnitude(
            frame["sum"].to_numpy(dtype=float), noise / Z95, self.bounds, publication.max_rows
        )
        notes = disclose(frame, "sum", ["sum"], publication, c.scale, clamp, c.values, magnitude)
        if publication.min_cell > 0 and publication.threshold <= 0:
            notes.append(
                f"sums of cells whose noisy count of rows is under {publication.min_cell} are suppressed"
            )
        if rounding:
            notes.append(f"accuracy includes rounding of at most {rounding:.3g} per row")
        return Published(frame, [self.clipping(), *notes])


class MeanStep(_SumLike):
    """Noisy mean: a noisy centred sum over a noisy count of rows with a value."""

    kind: Literal["mean"]

    def publish(self, releases: Sequence[StepRelease], publication: Publication) -> Published:
        frame, s, c, rounding = self._pooled(releases)
        centre = self.centre()
        frame["count"] = c.values
        frame["count_accuracy95"] = c.accuracy95
        with np.errstate(divide="ignore", invalid="ignore"):
            frame["mean"] = np.where(c.values > 0, centre + s.values / c.values, np.nan)
        frame["mean_accuracy95"] = [
            ratio_accuracy95(sv, cv, s.scale, c.scale) + rounding
            for sv, cv in zip(s.values, c.values, strict=True)
        ]
        magnitude = Magnitude(
            s.values + centre * c.values,
            math.sqrt(s.scale**2 + (centre * c.scale) ** 2),
            self.bounds,
            publication.max_rows,
        )
        disclosed = disclose(
            frame, "count", ["mean", "count"], publication, c.scale, ("count",), magnitude=magnitude
        )
        note = (
            f"mean = {centre:g} + pooled noisy sum of (value - {centre:g}) / pooled noisy count; "
            "accuracy by the delta method" + (f", plus {rounding:.3g} for rounding" if rounding else "")
        )
        return Published(frame, [self.clipping(), note, *disclosed])


class HistogramStep(StepBase):
    """Noisy counts of a numeric column in bins, optionally crossed with group keys."""

    kind: Literal["histogram"]
    column: str = Field(min_length=1, max_length=200)
    edges: tuple[float, ...] = Field(min_length=2, max_length=MAX_LIST)

    @model_validator(mode="after")
    def _edges(self) -> HistogramStep:
        if any(b <= a for a, b in itertools.pairwise(self.edges)):
            raise ValueError("histogram edges must increase strictly")
        return self

    def band(self) -> KeySpec:
        return KeySpec(column=self.column, derive="band", edges=self.edges)

    def key_columns(self) -> tuple[str, ...]:
        return (self.band().output, *super().key_columns())

    def published_keys(self) -> tuple[KeySpec, ...]:
        return (self.band(), *self.by)

    def cells(self) -> int:
        return (len(self.edges) - 1) * self.groups()

    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def numeric_columns(self) -> tuple[str, ...]:
        return (self.column,)

    def measurements(self) -> tuple[str, ...]:
        return ("count",)

    def exact(self, data: LocalData, unit: PrivacyUnit, state: RoundLike | None) -> dict[str, Exact]:
        cells = data.cells((self.band(), *self.by), unit)
        return {"count": Exact(bincount(cells, self.cells()), unit.max_rows)}

    def publish(self, releases: Sequence[StepRelease], publication: Publication) -> Published:
        return count_table(self, releases, publication)

    def summary(self) -> str:
        keys = ", ".join(self.key_columns())
        return f"histogram of {self.column} by {keys} ({self.cells():,} cells)"


#: The step kinds this module owns (the registry reads it).
STEPS = (
    CountStep,
    SumStep,
    MeanStep,
    HistogramStep,
)
