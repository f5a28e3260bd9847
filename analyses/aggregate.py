"""The aggregate step of every operator: node releases in, result tables out.

Pure post-processing of DP releases at the coordinator: no budget is spent here. Modes:

- `pool`: the same dataset at several partners; noisy vectors are summed cell by cell, scales
  add in quadrature, means are pooled sum over pooled count.
- `by_partner`: one row per partner and cell, each with its own accuracy.
- `join`: steps on different datasets (held by different partners), each pooled, then joined
  on their shared public key columns.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from analyses.glm import ModelSpec, auc_from_histograms, score_edges
from analyses.release import MeasurementRelease, NodeRelease, StepRelease
from analyses.spec import (
    AnalysisSpec,
    EvaluateStep,
    HistogramStep,
    MeanStep,
    QuantileStep,
    ScoreStep,
    Step,
    SumStep,
)
from privacy.accuracy import Z95, pooled_accuracy95, ratio_accuracy95
from privacy.disclosure import round_to, suppress_small
from privacy.errors import ProtocolError

__all__ = [
    "PooledVector",
    "QuantileEstimate",
    "ResultTable",
    "combine",
    "evaluation_tables",
    "key_frame",
    "monotone_cumulative",
    "pool_vectors",
    "quantile_from_histogram",
]


@dataclass(frozen=True)
class ResultTable:
    """One published table, with the notes a reader needs to interpret it."""

    name: str
    frame: pd.DataFrame
    notes: tuple[str, ...]


@dataclass(frozen=True)
class PooledVector:
    """Cell-wise sum of several partners' noisy vectors."""

    values: np.ndarray
    scale: float
    accuracy95: float
    partners: int


def key_frame(step: Step) -> pd.DataFrame:
    """All public cells of a step, in canonical (row-major) order."""
    if isinstance(step, ScoreStep):
        edges = score_edges(step.bins)
        return pd.DataFrame({"score_from": edges[:-1], "score_to": edges[1:]})
    keys = [step.band(), *step.by] if isinstance(step, HistogramStep) else list(step.by)
    if not keys:
        return pd.DataFrame(index=range(1))
    combos = list(itertools.product(*(k.keys() for k in keys)))
    return pd.DataFrame(combos, columns=[k.output for k in keys])


def pool_vectors(measurements: Sequence[MeasurementRelease]) -> PooledVector:
    """Sum noisy vectors from several partners (in units), with pooled scale and accuracy.

    Raises:
        ProtocolError: the vectors do not have the same number of cells.
    """
    lengths = {len(m.values) for m in measurements}
    if len(lengths) != 1:
        raise ProtocolError(f"partners released vectors of different lengths {sorted(lengths)}")
    unit = measurements[0].unit_value
    total = np.sum([np.asarray(m.values, dtype=float) for m in measurements], axis=0) * unit
    scales = [m.scale for m in measurements]
    return PooledVector(
        values=total,
        scale=math.sqrt(sum(s * s for s in scales)) * unit,
        accuracy95=pooled_accuracy95(scales) * unit,
        partners=len(measurements),
    )


def _disclose(
    frame: pd.DataFrame, count_col: str, value_cols: list[str], spec: AnalysisSpec, min_cell: int
) -> None:
    counts = frame[count_col].to_numpy(dtype=float)
    for col in value_cols:
        frame[col] = [
            round_to(suppress_small(v, c, min_cell), spec.disclosure.round_to)
            for v, c in zip(frame[col].to_numpy(dtype=float), counts, strict=True)
        ]


def _step_frame(
    spec: AnalysisSpec, step: Step, releases: Sequence[StepRelease], min_cell: int
) -> tuple[pd.DataFrame, list[str]]:
    frame = key_frame(step)
    notes: list[str] = []
    if isinstance(step, QuantileStep):
        return _quantile_frame(step, releases, frame, min_cell)
    names = [m.name for m in releases[0].measurements]
    pooled = {n: pool_vectors([r.measurement(n) for r in releases]) for n in names}
    if isinstance(step, SumStep | MeanStep):
        _check_quantum(step, [r.measurement("sum") for r in releases])
        s, c = pooled["sum"], pooled["count"]
        centre = step.centre()
        rounding = max(r.measurement("sum").rounding for r in releases)
        if isinstance(step, MeanStep):
            frame["count"] = c.values
            frame["count_accuracy95"] = c.accuracy95
            with np.errstate(divide="ignore", invalid="ignore"):
                frame["mean"] = np.where(c.values > 0, centre + s.values / c.values, np.nan)
            frame["mean_accuracy95"] = [
                ratio_accuracy95(sv, cv, s.scale, c.scale) + rounding
                for sv, cv in zip(s.values, c.values, strict=True)
            ]
            _disclose(frame, "count", ["mean", "count"], spec, min_cell)
            notes.append(
                f"mean = {centre:g} + pooled noisy sum of (value - {centre:g}) / pooled noisy count; "
                "accuracy by the delta method" + (f", plus {rounding:.3g} for rounding" if rounding else "")
            )
        else:
            frame["sum"] = s.values + centre * c.values
            noise = Z95 * math.sqrt(s.scale**2 + (centre * c.scale) ** 2)
            rows = np.maximum(c.values + c.accuracy95, 0.0)
            frame["sum_accuracy95"] = noise + rows * rounding
            notes.append("sums are not suppressed by count: no count is published with them")
            if rounding:
                notes.append(f"accuracy includes rounding of at most {rounding:.3g} per row")
    else:
        p = pooled["count"]
        frame["count"] = p.values
        frame["count_accuracy95"] = p.accuracy95
        _disclose(frame, "count", ["count"], spec, min_cell)
    return frame, notes


def _check_quantum(step: SumStep | MeanStep, measurements: Sequence[MeasurementRelease]) -> None:
    """Raises: ProtocolError when a release's unit is not the one the spec defines."""
    for m in measurements:
        if not math.isclose(m.unit_value, step.quantum(), rel_tol=1e-12):
            raise ProtocolError(
                f"step {step.id!r}: a release counts in units of {m.unit_value:g}, the spec defines "
                f"{step.quantum():g}"
            )


def monotone_cumulative(cumulative: np.ndarray) -> np.ndarray:
    """A non-decreasing stand-in for a noisy cumulative count: the mean of its running maximum
    from the left and its running minimum from the right (both monotone, so their mean is)."""
    left = np.maximum.accumulate(cumulative)
    right = np.minimum.accumulate(cumulative[::-1])[::-1]
    return np.asarray((left + right) / 2.0)


@dataclass(frozen=True)
class QuantileEstimate:
    """One quantile read from a noisy histogram, with its 95% interval."""

    value: float
    low: float
    high: float


#: Simulated noise walks per quantile interval (seeded, so a report is reproducible).
_WALKS = 400


@lru_cache(maxsize=8)
def _noise_walks(bins: int) -> np.ndarray:
    """`_WALKS` Gaussian random walks of `bins` unit steps (with the 0 start): the shape of the
    noise on a cumulative count, whatever the data."""
    rng = np.random.default_rng(20261202)
    steps = rng.standard_normal((_WALKS, bins))
    return np.concatenate([np.zeros((_WALKS, 1)), np.cumsum(steps, axis=1)], axis=1)


def _critical_value(smooth: np.ndarray, position: float, q: float, bin_sd: float, sd: np.ndarray) -> float:
    """The z for which, in 95% of simulated noise draws, no bin edge lands on the wrong side of
    the quantile by more than z standard deviations: 1.96 for one edge, more when many edges
    are ambiguous.

    Near the quantile the cumulative count rises at the local density of the data, so an edge's
    margin (its cumulative count minus q times the total) grows with its distance from the
    quantile. The calibration uses that straight line, with the density taken at the low end of
    its own 95% interval: where the data are swamped by noise the slope is near zero, many
    edges are ambiguous and z grows; where they are clear it stays at 1.96. Only edges whose
    margin is within 8 standard deviations are simulated (the rest cannot err).
    """
    bins = len(smooth) - 1
    centre = min(max(round(position), 0), bins)
    reach = max(4, int(np.ceil(np.max(sd) / max(bin_sd, 1e-300))))  # a neighbourhood of the estimate
    lo, hi = max(0, centre - reach), min(bins, centre + reach)
    rise = smooth[hi] - smooth[lo] - Z95 * bin_sd * math.sqrt(max(hi - lo, 1))
    slope = max(rise, 0.0) / max(hi - lo, 1)
    span = bins if slope <= 0 else min(bins, int(np.ceil(8.0 * np.max(sd) / slope)) + 1)
    window = np.arange(max(0, centre - span), min(bins, centre + span) + 1)
    walks = _noise_walks(bins)
    noise = (walks[:, window] - q * walks[:, -1:]) * bin_sd
    margin = slope * (window - position)
    standardised = (margin + noise) / np.maximum(sd[window], 1e-300)
    needed = np.max(np.where(margin < 0, standardised, -standardised), axis=1)
    # Only the excess over one edge's test is taken from the simulation (the same draws give
    # both, so their sampling noise cancels); one edge alone needs exactly 1.96.
    alone = np.abs(standardised[:, int(np.searchsorted(window, centre))])
    excess = float(np.quantile(needed, 0.95) - np.quantile(alone, 0.95))
    return Z95 + max(excess, 0.0)


def quantile_from_histogram(
    histogram: np.ndarray, q: float, bin_sd: float, low: float, high: float
) -> QuantileEstimate:
    """The `q` quantile of the values behind a noisy histogram of equal bins over [low, high].

    The noise is left signed (clamping empty bins at 0 would add false mass). The estimate is
    where a monotone version of the noisy cumulative count crosses `q` times the noisy total,
    interpolated inside the bin (not the bin's upper edge). The interval inverts a test at every
    bin edge: the noisy `cumulative - q x total` at an edge with j bins below it (B in all) has
    standard deviation `bin_sd * sqrt((1-q)^2 j + q^2 (B - j))`; an edge more than z of those
    below zero lies below the quantile, more than z above lies above, and the interval runs
    from the highest edge found below to the lowest found above (each end placed inside its bin
    where the test crosses its threshold). z is calibrated so that all edges together err with
    probability 5% (`_critical_value`).
    """
    bins = len(histogram)
    width = (high - low) / bins
    cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(histogram, dtype=np.float64))])
    target = q * cumulative[-1]
    smooth = monotone_cumulative(cumulative)
    j = int(np.searchsorted(smooth, target, side="left"))
    if j == 0:
        value = low
    elif j > bins:
        value = high
    else:
        below, above = smooth[j - 1], smooth[j]
        frac = 0.5 if above <= below else float(np.clip((target - below) / (above - below), 0.0, 1.0))
        value = low + (j - 1 + frac) * width
    edges = np.arange(bins + 1)
    sd = bin_sd * np.sqrt((1 - q) ** 2 * edges + q**2 * (bins - edges))
    z = _critical_value(smooth, (value - low) / width, q, bin_sd, sd)
    gap = cumulative - target
    rising = gap + z * sd  # below zero: this edge lies below the quantile
    falling = gap - z * sd  # above zero: this edge lies above it
    lower_edges = np.flatnonzero(rising < 0)
    upper_edges = np.flatnonzero(falling > 0)
    first = _crossing(rising, int(lower_edges[-1])) if len(lower_edges) else 0.0
    last = _crossing(falling, int(upper_edges[0]) - 1) if len(upper_edges) else float(bins)
    first, last = min(first, last), max(first, last)  # contradicting edges: keep both sides
    # Where the estimate's own bin is wider than the interval, the data's place inside that bin
    # is unknowable from a histogram: the interval keeps the whole bin.
    home = min(int((value - low) / width), bins - 1) if value < high else bins - 1
    first, last = min(first, float(home)), max(last, float(home + 1))
    return QuantileEstimate(value, low + first * width, low + last * width)


def _crossing(curve: np.ndarray, j: int) -> float:
    """Where `curve` crosses zero between edges j and j+1 (linearly inside the bin, as values
    spread inside a bin), clamped to [j, j+1]."""
    if j < 0:
        return 0.0
    if j + 1 >= len(curve):
        return float(len(curve) - 1)
    a, b = curve[j], curve[j + 1]
    return float(j + (np.clip(-a / (b - a), 0.0, 1.0) if b != a else 0.5))


def _quantile_frame(
    step: QuantileStep, releases: Sequence[StepRelease], keys: pd.DataFrame, min_cell: int
) -> tuple[pd.DataFrame, list[str]]:
    pooled = pool_vectors([r.measurement("histogram") for r in releases])
    hist = pooled.values.reshape(-1, step.bins)
    low, high = step.bounds
    rows = []
    for g in range(hist.shape[0]):
        total = float(hist[g].sum())
        row: dict[str, float] = {"count": total}
        for q in step.quantiles:
            label = f"q{round(q * 100):02d}"
            if total < max(min_cell, 1):
                row[label] = row[f"{label}_low"] = row[f"{label}_high"] = math.nan
                continue
            found = quantile_from_histogram(hist[g], q, pooled.scale, low, high)
            row[label], row[f"{label}_low"], row[f"{label}_high"] = found.value, found.low, found.high
        rows.append(row)
    frame = pd.concat([keys.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    if keys.shape[1] == 0:
        frame = pd.DataFrame(rows)
    notes = [
        f"quantiles read from a pooled noisy histogram of {step.bins} bins over {list(step.bounds)}; "
        "[low, high] is a 95% interval"
    ]
    return frame, notes


def combine(
    spec: AnalysisSpec, releases: Sequence[NodeRelease], min_cells: dict[str, int] | None = None
) -> list[ResultTable]:
    """Assemble the published tables of `spec` from the nodes' releases.

    Raises:
        ProtocolError: releases do not match the spec (missing steps, wrong shapes).
    """
    released = [r for r in releases if r.status == "released"]
    min_cell = max([spec.disclosure.min_cell, *(r.min_cell for r in released)])
    tables: list[ResultTable] = []
    step_frames: list[pd.DataFrame] = []
    for step in spec.steps:
        holders = [r for r in released if any(s.step_id == step.id for s in r.steps)]
        if isinstance(step, EvaluateStep):
            parts = [next(s for s in r.steps if s.step_id == step.id) for r in holders]
            _check_lengths(step, parts)
            scores = {h.partner: part.measurement("scores") for h, part in zip(holders, parts, strict=True)}
            tables += evaluation_tables(step.model, step.bins, scores, prefix=f"{step.id}_") if scores else []
            continue
        if not holders:
            tables.append(ResultTable(step.id, key_frame(step).iloc[0:0], ("no partner released this step",)))
            continue
        parts = [next(s for s in r.steps if s.step_id == step.id) for r in holders]
        _check_lengths(step, parts)
        if spec.combine == "by_partner":
            frames = []
            for holder, part in zip(holders, parts, strict=True):
                f, notes = _step_frame(spec, step, [part], max(spec.disclosure.min_cell, holder.min_cell))
                f.insert(0, "partner", holder.partner)
                frames.append(f)
            frame = pd.concat(frames, ignore_index=True)
        else:
            frame, notes = _step_frame(spec, step, parts, min_cell)
        partners = ", ".join(sorted(h.partner for h in holders))
        tables.append(ResultTable(step.id, frame, (f"partners: {partners}", *notes)))
        step_frames.append(
            frame.rename(columns={c: f"{step.id}_{c}" for c in frame.columns if c not in step.key_columns()})
        )
    if spec.combine == "join" and len(step_frames) > 1:
        shared = sorted(set.intersection(*(set(s.key_columns()) for s in spec.steps)))
        joined = step_frames[0]
        for other in step_frames[1:]:
            joined = joined.merge(other, on=shared, how="outer")
        tables.append(ResultTable(spec.name, joined, (f"steps joined on {', '.join(shared)}",)))
    return tables


def _check_lengths(step: Step, parts: Sequence[StepRelease]) -> None:
    expected = step.cells()
    for part in parts:
        for m in part.measurements:
            if len(m.values) != expected:
                raise ProtocolError(
                    f"step {step.id!r}: a release has {len(m.values)} cells, the spec defines {expected}"
                )


def evaluation_tables(
    model: ModelSpec, bins: int, scores: Mapping[str, MeasurementRelease], prefix: str = ""
) -> list[ResultTable]:
    """Evaluation tables from each partner's DP evaluation histograms (`scores`, by partner):
    AUC (or mean absolute error) overall and per partner; for a classifier also calibration by
    score bin and confusion counts at each bin edge."""
    vectors = {p: np.asarray(m.values, dtype=np.float64) for p, m in scores.items()}
    accuracy = {p: m.accuracy95 for p, m in scores.items()}
    pooled = np.sum(list(vectors.values()), axis=0)
    if model.family != "logistic":
        low, high = model.target_bounds or (0.0, 1.0)
        mids = (np.arange(bins) + 0.5) / bins * (high - low)
        rows = []
        for name, vector in [("all", pooled), *sorted(vectors.items())]:
            errors = np.clip(vector[:bins], 0, None)
            rows.append({"partner": name, "mean_abs_error": float(errors @ mids / max(errors.sum(), 1.0))})
        return [
            ResultTable(f"{prefix}evaluation", pd.DataFrame(rows), ("absolute errors from a DP histogram",))
        ]
    rows = []
    for name, vector in [("all", pooled), *sorted(vectors.items())]:
        clipped = np.clip(vector, 0, None)
        rows.append(
            {
                "partner": name,
                "auc": auc_from_histograms(vector, bins),
                "negatives": float(clipped[:bins].sum()),
                "positives": float(clipped[bins:].sum()),
            }
        )
    edges = score_edges(bins)
    negatives, positives = np.clip(pooled[:bins], 0, None), np.clip(pooled[bins:], 0, None)
    total = negatives + positives
    calibration = pd.DataFrame(
        {
            "score_from": edges[:-1],
            "score_to": edges[1:],
            "records": total,
            "observed_rate": np.where(total > 0, positives / np.maximum(total, 1e-9), np.nan),
        }
    )
    above_pos = np.cumsum(positives[::-1])[::-1]
    above_neg = np.cumsum(negatives[::-1])[::-1]
    thresholds = pd.DataFrame(
        {
            "threshold": edges[:-1],
            "true_positive": above_pos,
            "false_positive": above_neg,
            "false_negative": positives.sum() - above_pos,
            "true_negative": negatives.sum() - above_neg,
        }
    )
    worst = max(accuracy.values(), default=0.0)
    note = f"from DP score histograms ({bins} bins, equal on the logit scale); each count within +/-{worst:.0f} per partner (95%)"
    return [
        ResultTable(f"{prefix}evaluation", pd.DataFrame(rows), (note,)),
        ResultTable(f"{prefix}calibration", calibration, (note,)),
        ResultTable(
            f"{prefix}thresholds",
            thresholds,
            (note, "a record counts as predicted positive at score >= threshold"),
        ),
    ]
