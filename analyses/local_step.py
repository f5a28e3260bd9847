"""The local step of every operator: a node's frame in, a DP release out.

Pure: a pandas frame (already mapped to logical column names and declared types) and the
parsed spec go in; `StepRelease`s come out. Contributions are truncated to the privacy unit
first (as a row mask, see `LocalData`), so the sensitivities used below hold by construction:

- a count vector changes by at most `max_rows` in L2 when one person is added or removed;
- a sum vector of values clamped to [lo, hi], in units of `precision`, by at most
  `max_rows * max(|lo|, |hi|) / precision` (rounded up).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

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
    mean_response,
    release_stats,
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
from privacy.accuracy import gaussian_accuracy95
from privacy.budget import Rho
from privacy.errors import SpecError
from privacy.mechanisms import MECHANISM_INTEGER_GAUSSIAN, NoisyVector, integer_gaussian
from privacy.unit import PrivacyUnit, unit_mask

__all__ = ["LocalData", "exact_aggregates", "measurement_release", "planned_cost", "release_steps"]

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


def _quantised(frame: pd.DataFrame, step: SumStep | MeanStep | QuantileStep) -> npt.NDArray[np.float64]:
    low, high = step.bounds
    values = pd.to_numeric(frame[step.column], errors="coerce").to_numpy(dtype=float)
    return np.asarray(np.clip(values, low, high), dtype=np.float64)


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


def exact_aggregates(
    step: Step, data: LocalData, unit: PrivacyUnit
) -> dict[str, tuple[IntArray, int, float]]:
    """The exact vectors a step releases: name -> (vector, L2 sensitivity, unit value).

    Only rows that survive truncation to `unit` are counted, so the sensitivities hold.
    """
    max_rows = unit.max_rows
    if isinstance(step, EvaluateStep):
        x, y = design(step.model, data.frame.loc[data.keep(unit)])
        histograms = evaluation_histograms(step.model, x, y, np.asarray(step.coefficients), step.bins)
        return {"scores": (histograms, max_rows, 1.0)}
    if isinstance(step, ScoreStep):
        kept = data.frame.loc[data.keep(unit)]
        scores = mean_response(step.model, encode(step.model, kept), np.asarray(step.coefficients))
        return {"count": (score_counts(scores, step.bins), max_rows, 1.0)}
    if isinstance(step, HistogramStep):
        cells = data.cells((step.band(), *step.by), unit)
        return {"count": (_bincount(cells, step.cells()), max_rows, 1.0)}
    cells = data.cells(step.by, unit)
    groups = step.groups()
    if isinstance(step, SumStep | MeanStep):
        values = _quantised(data.frame, step)
        has_value = ~np.isnan(values)
        units = np.rint(np.where(has_value, values, 0.0) / step.precision)
        bound = math.ceil(max(abs(step.bounds[0]), abs(step.bounds[1])) / step.precision)
        out = {"sum": (_bincount(cells, groups, units), max_rows * max(bound, 1), step.precision)}
        if isinstance(step, MeanStep):
            out["count"] = (_bincount(np.where(has_value, cells, groups), groups), max_rows, 1.0)
        return out
    if isinstance(step, QuantileStep):
        values = _quantised(data.frame, step)
        low, high = step.bounds
        bin_of = np.floor((values - low) / (high - low) * step.bins)
        bin_of = np.clip(np.nan_to_num(bin_of, nan=-1), -1, step.bins - 1).astype(np.int64)
        valid = (bin_of >= 0) & (cells < groups)
        combined = np.where(valid, cells * step.bins + bin_of, groups * step.bins)
        return {"histogram": (_bincount(combined, groups * step.bins), max_rows, 1.0)}
    return {"count": (_bincount(cells, groups), max_rows, 1.0)}


def _model_release(
    spec: AnalysisSpec, step: ModelStep, data: LocalData, state: RoundState | None
) -> StepRelease:
    """One request of a model step: gradient and Hessian sums (fit) or score histograms
    (evaluate), on the rows that survive truncation, released by OpenDP's integer Gaussian."""
    if state is None:
        raise SpecError(f"model step {step.id!r} runs in rounds: the request carries no round state")
    state.check(step.model)
    unit = spec.unit_of(step).to_unit()
    x, y = design(step.model, data.frame.loc[data.keep(unit)])
    beta = np.asarray(state.coefficients, dtype=np.float64)
    budget = spec.request_budget(step.id)
    if state.phase == "fit":
        stats = release_stats(step.model, x, y, beta, unit.max_rows, budget)
        measurement = MeasurementRelease(
            name="stats",
            values=stats.values,
            mechanism=MECHANISM_INTEGER_GAUSSIAN,
            scale=stats.scale,
            sensitivity=stats.sensitivity,
            rho=stats.cost.value,
            accuracy95=gaussian_accuracy95(stats.scale),
            unit_value=stats.unit_value,
        )
    else:
        histograms = evaluation_histograms(step.model, x, y, beta, step.evaluate_bins)
        measurement = measurement_release("scores", 1.0, integer_gaussian(histograms, unit.max_rows, budget))
    return StepRelease(step.id, step.kind, "hidden", (measurement,))


def release_steps(
    spec: AnalysisSpec, steps: Sequence[Step], data: Mapping[str, LocalData], state: RoundState | None = None
) -> list[StepRelease]:
    """Release `steps` of `spec`, each on the prepared data of its dataset.

    A step's budget share is split evenly over its measurements; each measurement is one
    OpenDP integer-Gaussian release. Noise for one measurement is drawn on a worker thread
    while the next exact vector is computed.
    """
    model = next((s for s in steps if isinstance(s, ModelStep)), None)
    if model is not None:  # a model step is the only step of its analysis
        return [_model_release(spec, model, data[spec.dataset_of(model)], state)]
    planned: list[tuple[Step, list[tuple[str, float, Future[NoisyVector]]]]] = []
    with ThreadPoolExecutor(max_workers=NOISE_THREADS, thread_name_prefix="oda-noise") as pool:
        for step in steps:
            exact = exact_aggregates(step, data[spec.dataset_of(step)], spec.unit_of(step).to_unit())
            share = spec.step_budget(step.id).split(len(exact))
            planned.append(
                (
                    step,
                    [
                        (name, unit_value, pool.submit(integer_gaussian, vector, sensitivity, share))
                        for name, (vector, sensitivity, unit_value) in exact.items()
                    ],
                )
            )
    return [
        StepRelease(
            step.id,
            step.kind,
            "hidden",
            tuple(
                measurement_release(name, unit_value, noisy.result()) for name, unit_value, noisy in futures
            ),
        )
        for step, futures in planned
    ]


def measurement_release(name: str, unit_value: float, noisy: NoisyVector) -> MeasurementRelease:
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
    )


def planned_cost(spec: AnalysisSpec, steps: list[Step]) -> Rho:
    """What running `steps` will debit: the sum of their budget shares (zCDP adds up)."""
    total = Rho(0.0)
    for step in steps:
        total = total + spec.request_budget(step.id)
    return total
