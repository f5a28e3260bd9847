"""The local step of every operator: a node's frame in, a DP release out.

Pure: a pandas frame (already mapped to logical column names and declared types) and the
parsed spec go in; `StepRelease`s come out. Contributions are truncated to the privacy unit
first (as a row mask, see `LocalData`), so the sensitivities used below hold by construction:

- a count vector changes by at most `max_rows` in L2 when one person is added or removed;
- a sum vector of values clamped to [lo, hi], centred on the step's `centre()` and rounded to
  units of its `quantum()` (each row's units clipped to `units_per_row()`), by at most
  `max_rows * units_per_row()`; the rounding error, at most half a unit per row, is stated in
  the release (`rounding`) so the coordinator can add it to the accuracy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyses.glm import (
    RoundState,
    design,
    encode,
    evaluation_histograms,
    evaluation_sensitivity,
    exact_stats,
    mean_response,
    score_counts,
)
from analyses.release import MeasurementRelease, StepRelease
from analyses.spec import (
    AnalysisSpec,
    EvaluateStep,
    HistogramStep,
    KeySpec,
    MeanStep,
    ModelStep,
    QuantileStep,
    ScoreStep,
    Step,
    SumStep,
)
from privacy.budget import Rho, exact_total, rho_at_least, shares
from privacy.errors import SpecError
from privacy.mechanisms import NoisyVector, calibrate_scale, integer_gaussian
from privacy.unit import PrivacyUnit, unit_mask

__all__ = [
    "Exact",
    "LocalData",
    "Planned",
    "dry_run",
    "exact_aggregates",
    "measurement_release",
    "plan_releases",
    "planned_cost",
    "release_steps",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Noise for different measurements is drawn on this many threads (OpenDP releases the GIL).
NOISE_THREADS = max(1, min(4, os.cpu_count() or 1))


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


def _clamped(frame: pd.DataFrame, step: SumStep | MeanStep | QuantileStep) -> npt.NDArray[np.float64]:
    low, high = step.bounds
    values = pd.to_numeric(frame[step.column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(np.clip(values, low, high), dtype=np.float64)


def rounding_per_row(step: SumStep | MeanStep, column: pd.Series) -> float:
    """The most rounding can move one row's value: 0 for whole numbers on a grid that holds them
    (a power-of-two unit of at most 1), half a unit otherwise. From the declared type only."""
    quantum = step.quantum()
    whole = pd.api.types.is_integer_dtype(column.dtype)
    exact = whole and quantum <= 1 and (1 / quantum).is_integer() and float(step.centre()).is_integer()
    return 0.0 if exact else quantum / 2


def _bincount(cells: IntArray, n: int, weights: npt.NDArray[np.float64] | None = None) -> IntArray:
    """Per-cell count (or weighted sum) of rows in cells 0..n-1; cell n (outside) is dropped."""
    if weights is None:
        return np.bincount(cells, minlength=n + 1)[:n].astype(np.int64)
    if np.abs(weights).sum() < 2**52:  # float64 sums of integers are exact below 2**53
        return np.rint(np.bincount(cells, weights=weights, minlength=n + 1)[:n]).astype(np.int64)
    inside = cells < n
    out = np.zeros(n, dtype=np.int64)  # exact integer path for very large sums
    np.add.at(out, cells[inside], weights[inside].astype(np.int64))
    return out


class Exact(NamedTuple):
    """One exact vector a step releases, before noise."""

    vector: IntArray
    #: L2 distance between the vectors of two datasets that differ in one person.
    sensitivity: int
    #: What one integer of the vector is worth (a sum's quantum).
    unit_value: float = 1.0
    #: The most rounding moved one row's contribution, in value units.
    rounding: float = 0.0


def exact_aggregates(step: Step, data: LocalData, unit: PrivacyUnit) -> dict[str, Exact]:
    """The exact vectors a step releases, by measurement name, in `step.measurements()` order.

    Only rows that survive truncation to `unit` are counted, so the sensitivities hold.
    """
    max_rows = unit.max_rows
    if isinstance(step, EvaluateStep):
        x, y = design(step.model, data.frame.loc[data.keep(unit)])
        histograms = evaluation_histograms(step.model, x, y, np.asarray(step.coefficients), step.bins)
        return {"scores": Exact(histograms, evaluation_sensitivity(step.model, max_rows))}
    if isinstance(step, ScoreStep):
        kept = data.frame.loc[data.keep(unit)]
        scores = mean_response(step.model, encode(step.model, kept), np.asarray(step.coefficients))
        return {"count": Exact(score_counts(scores, step.bins), max_rows)}
    if isinstance(step, HistogramStep):
        cells = data.cells((step.band(), *step.by), unit)
        return {"count": Exact(_bincount(cells, step.cells()), max_rows)}
    cells = data.cells(step.by, unit)
    groups = step.groups()
    if isinstance(step, SumStep | MeanStep):
        values = _clamped(data.frame, step)
        has_value = ~np.isnan(values)
        limit = step.units_per_row()
        centred = (np.where(has_value, values, step.centre()) - step.centre()) / step.quantum()
        units = np.clip(np.rint(centred), -limit, limit)
        rounding = rounding_per_row(step, data.frame[step.column])
        return {
            "sum": Exact(_bincount(cells, groups, units), max_rows * limit, step.quantum(), rounding),
            "count": Exact(_bincount(np.where(has_value, cells, groups), groups), max_rows),
        }
    if isinstance(step, QuantileStep):
        values = _clamped(data.frame, step)
        low, high = step.bounds
        bin_of = np.floor((values - low) / (high - low) * step.bins)
        bin_of = np.clip(np.nan_to_num(bin_of, nan=-1), -1, step.bins - 1).astype(np.int64)
        valid = (bin_of >= 0) & (cells < groups)
        combined = np.where(valid, cells * step.bins + bin_of, groups * step.bins)
        return {"histogram": Exact(_bincount(combined, groups * step.bins), max_rows)}
    return {"count": Exact(_bincount(cells, groups), max_rows)}


class Planned(NamedTuple):
    """One measurement of one step, computed exactly and waiting for its noise."""

    step: Step
    name: str
    exact: Exact
    budget: Rho


def _model_plan(spec: AnalysisSpec, step: ModelStep, data: LocalData, state: RoundState | None) -> Planned:
    """One request of a model step: gradient and Hessian sums (fit) or score histograms
    (evaluate), on the rows that survive truncation."""
    if state is None:
        raise SpecError(f"model step {step.id!r} runs in rounds: the request carries no round state")
    state.check(step.model)
    unit = spec.unit_of(step).to_unit()
    x, y = design(step.model, data.frame.loc[data.keep(unit)])
    beta = np.asarray(state.coefficients, dtype=np.float64)
    budget = spec.request_budget(step.id)
    if state.phase == "fit":
        vector, sensitivity, unit_value = exact_stats(step.model, x, y, beta, unit.max_rows)
        return Planned(step, "stats", Exact(vector, sensitivity, unit_value), budget)
    histograms = evaluation_histograms(step.model, x, y, beta, step.evaluate_bins)
    return Planned(
        step, "scores", Exact(histograms, evaluation_sensitivity(step.model, unit.max_rows)), budget
    )


def plan_releases(
    spec: AnalysisSpec, steps: Sequence[Step], data: Mapping[str, LocalData], state: RoundState | None = None
) -> Iterator[Planned]:
    """The exact vectors `steps` will release, one step at a time, each with its sensitivity and
    budget share (a step's budget is shared among its measurements by `measurement_weights`)."""
    model = next((s for s in steps if isinstance(s, ModelStep)), None)
    if model is not None:  # a model step is the only step of its analysis
        yield _model_plan(spec, model, data[spec.dataset_of(model)], state)
        return
    for step in steps:
        exact = exact_aggregates(step, data[spec.dataset_of(step)], spec.unit_of(step).to_unit())
        budgets = shares(spec.step_budget(step.id), step.measurement_weights())
        for (name, part), budget in zip(exact.items(), budgets, strict=True):
            yield Planned(step, name, part, budget)


def dry_run(
    spec: AnalysisSpec, steps: Sequence[Step], empty: Mapping[str, LocalData], state: RoundState | None = None
) -> None:
    """Rehearse a release on empty frames of the node's columns: every exact computation, and
    every noise calibration (scale and sensitivity within their limits), without noise.

    Raises:
        SpecError: the release would fail (so it fails before any budget is reserved).
    """
    for planned in plan_releases(spec, steps, empty, state):
        calibrate_scale(planned.exact.sensitivity, planned.budget)


def release_steps(
    spec: AnalysisSpec, steps: Sequence[Step], data: Mapping[str, LocalData], state: RoundState | None = None
) -> list[StepRelease]:
    """Release `steps` of `spec`, each on the prepared data of its dataset.

    Each measurement is one OpenDP integer-Gaussian release; noise for one is drawn on a worker
    thread while the next step's exact vectors are computed.
    """
    planned: list[Planned] = []
    noisy: list[Future[NoisyVector]] = []
    with ThreadPoolExecutor(max_workers=NOISE_THREADS, thread_name_prefix="oda-noise") as pool:
        for p in plan_releases(spec, steps, data, state):
            planned.append(p)
            noisy.append(pool.submit(integer_gaussian, p.exact.vector, p.exact.sensitivity, p.budget))
    out: dict[str, list[MeasurementRelease]] = {}
    for p, future in zip(planned, noisy, strict=True):
        release = measurement_release(p.name, p.exact.unit_value, future.result(), p.exact.rounding)
        out.setdefault(p.step.id, []).append(release)
    by_id = {s.id: s for s in steps}
    return [StepRelease(step_id, by_id[step_id].kind, "hidden", tuple(ms)) for step_id, ms in out.items()]


def measurement_release(
    name: str, unit_value: float, noisy: NoisyVector, rounding: float = 0.0
) -> MeasurementRelease:
    """The wire form of one OpenDP release."""
    return MeasurementRelease(
        name=name,
        values=noisy.values,
        mechanism=noisy.mechanism,
        scale=noisy.scale,
        sensitivity=noisy.sensitivity,
        rho=noisy.cost.value,
        accuracy95=noisy.accuracy95,
        unit_value=unit_value,
        rounding=rounding,
    )


def planned_cost(spec: AnalysisSpec, steps: list[Step]) -> Rho:
    """What running `steps` will debit: the sum of their budget shares (zCDP adds up), exactly,
    as the smallest float not below it."""
    return rho_at_least(exact_total(spec.request_budget(step.id) for step in steps))
