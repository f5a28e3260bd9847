"""The local step of every operator: a node's frame in, a DP release out.

Pure: a pandas frame (already mapped to logical column names and declared types) and the
parsed spec go in; a `StepRelease` comes out. Contributions are truncated to the privacy unit
first, so the sensitivities used below hold by construction:

- a count vector changes by at most `max_rows` in L2 when one person is added or removed;
- a sum vector of values clamped to [lo, hi], in units of `precision`, by at most
  `max_rows * max(|lo|, |hi|) / precision` (rounded up).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pandas as pd

from analyses.release import MeasurementRelease, StepRelease
from analyses.spec import (
    AnalysisSpec,
    HistogramStep,
    KeySpec,
    MeanStep,
    QuantileStep,
    Step,
    SumStep,
)
from privacy.budget import Rho
from privacy.mechanisms import integer_gaussian
from privacy.unit import truncate_contributions

__all__ = ["cell_index", "exact_aggregates", "release_step", "truncate_for"]

IntArray = npt.NDArray[np.int64]


def truncate_for(spec: AnalysisSpec, step: Step, frame: pd.DataFrame) -> pd.DataFrame:
    """Enforce the step's privacy unit on its dataset before the step reads it."""
    return truncate_contributions(frame, spec.unit_of(step).to_unit())


def _key_codes(frame: pd.DataFrame, key: KeySpec) -> IntArray:
    """Index of each row's key in `key.keys()`, or -1 when it is not a published key."""
    column = frame[key.column]
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
    # Hash the column once, then look up only its distinct values among the public keys.
    codes, uniques = pd.factorize(column, sort=False)
    if isinstance(keys[0], str):
        uniques = pd.Index(uniques).astype(str)
    positions = np.append(pd.Index(keys).get_indexer(pd.Index(uniques)), -1).astype(np.int64)
    return np.asarray(positions[codes], dtype=np.int64)  # code -1 (missing) picks the appended -1


def cell_index(frame: pd.DataFrame, keys: tuple[KeySpec, ...]) -> IntArray:
    """Each row's cell in the product of public key sets (row-major), -1 if outside."""
    cells = np.zeros(len(frame), dtype=np.int64)
    valid = np.ones(len(frame), dtype=bool)
    for key in keys:
        codes = _key_codes(frame, key)
        valid &= codes >= 0
        cells = cells * len(key.keys()) + np.maximum(codes, 0)
    return np.where(valid, cells, -1)


def _quantised(frame: pd.DataFrame, step: SumStep | MeanStep | QuantileStep) -> npt.NDArray[np.float64]:
    low, high = step.bounds
    values = pd.to_numeric(frame[step.column], errors="coerce").to_numpy(dtype=float)
    return np.asarray(np.clip(values, low, high), dtype=np.float64)


def _bincount(cells: IntArray, n: int, weights: npt.NDArray[np.float64] | None = None) -> IntArray:
    inside = cells >= 0
    if weights is None:
        return np.bincount(cells[inside], minlength=n).astype(np.int64)
    w = weights[inside]
    if np.abs(w).sum() < 2**52:
        return np.rint(np.bincount(cells[inside], weights=w, minlength=n)).astype(np.int64)
    out = np.zeros(n, dtype=np.int64)  # exact integer path for very large sums
    np.add.at(out, cells[inside], w.astype(np.int64))
    return out


def exact_aggregates(
    step: Step, frame: pd.DataFrame, max_rows: int
) -> dict[str, tuple[IntArray, int, float]]:
    """The exact vectors a step releases: name -> (vector, L2 sensitivity, unit value).

    `frame` must already be truncated to `max_rows` rows per person.
    """
    if isinstance(step, HistogramStep):
        cells = cell_index(frame, (step.band(), *step.by))
        return {"count": (_bincount(cells, step.cells()), max_rows, 1.0)}
    cells = cell_index(frame, step.by)
    groups = step.groups()
    if isinstance(step, SumStep | MeanStep):
        values = _quantised(frame, step)
        has_value = ~np.isnan(values)
        units = np.rint(np.where(has_value, values, 0.0) / step.precision)
        bound = math.ceil(max(abs(step.bounds[0]), abs(step.bounds[1])) / step.precision)
        out = {"sum": (_bincount(cells, groups, units), max_rows * max(bound, 1), step.precision)}
        if isinstance(step, MeanStep):
            out["count"] = (_bincount(np.where(has_value, cells, -1), groups), max_rows, 1.0)
        return out
    if isinstance(step, QuantileStep):
        values = _quantised(frame, step)
        low, high = step.bounds
        bin_of = np.floor((values - low) / (high - low) * step.bins)
        bin_of = np.clip(np.nan_to_num(bin_of, nan=-1), -1, step.bins - 1).astype(np.int64)
        valid = (bin_of >= 0) & (cells >= 0)
        combined = np.where(valid, cells * step.bins + bin_of, -1)
        return {"histogram": (_bincount(combined, groups * step.bins), max_rows, 1.0)}
    return {"count": (_bincount(cells, groups), max_rows, 1.0)}


def release_step(spec: AnalysisSpec, step: Step, truncated: pd.DataFrame) -> StepRelease:
    """Release one step of `spec` on a frame already truncated to the privacy unit.

    The step's budget share is split evenly over its measurements; each is one OpenDP
    integer-Gaussian release.
    """
    budget = spec.step_budget(step.id)
    exact = exact_aggregates(step, truncated, spec.unit_of(step).max_rows)
    share = budget.split(len(exact))
    measurements = []
    for name, (vector, sensitivity, unit_value) in exact.items():
        noisy = integer_gaussian(vector, sensitivity, share)
        measurements.append(
            MeasurementRelease(
                name=name,
                values=noisy.values,
                mechanism=noisy.mechanism,
                scale=noisy.scale,
                sensitivity=noisy.sensitivity,
                rho=noisy.cost.value,
                accuracy95=noisy.accuracy95,
                unit_value=unit_value,
            )
        )
    return StepRelease(step.id, step.kind, "hidden", tuple(measurements))


def planned_cost(spec: AnalysisSpec, steps: list[Step]) -> Rho:
    """What running `steps` will debit: the sum of their budget shares (zCDP adds up)."""
    total = Rho(0.0)
    for step in steps:
        total = total + spec.step_budget(step.id)
    return total
