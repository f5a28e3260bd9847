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

import numpy as np
import pandas as pd

from analyses.glm import ModelSpec, auc_from_histograms, score_edges
from analyses.release import MeasurementRelease, NodeRelease, StepRelease
from analyses.spec import AnalysisSpec, EvaluateStep, HistogramStep, QuantileStep, ScoreStep, Step
from privacy.accuracy import pooled_accuracy95, ratio_accuracy95
from privacy.disclosure import round_to, suppress_small
from privacy.errors import ProtocolError

__all__ = ["PooledVector", "ResultTable", "combine", "evaluation_tables", "key_frame", "pool_vectors"]

_Z95 = 1.959963984540054


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
    if step.kind == "mean":
        s, c = pooled["sum"], pooled["count"]
        frame["count"] = c.values
        frame["count_accuracy95"] = c.accuracy95
        with np.errstate(divide="ignore", invalid="ignore"):
            frame["mean"] = np.where(c.values > 0, s.values / c.values, np.nan)
        frame["mean_accuracy95"] = [
            ratio_accuracy95(sv, cv, s.scale, c.scale) for sv, cv in zip(s.values, c.values, strict=True)
        ]
        _disclose(frame, "count", ["mean", "count"], spec, min_cell)
        notes.append("mean = pooled noisy sum / pooled noisy count; accuracy by the delta method")
    elif step.kind == "sum":
        p = pooled["sum"]
        frame["sum"] = p.values
        frame["sum_accuracy95"] = p.accuracy95
        notes.append("sums are not suppressed by count: no count is released with them")
    else:
        p = pooled["count"]
        frame["count"] = p.values
        frame["count_accuracy95"] = p.accuracy95
        _disclose(frame, "count", ["count"], spec, min_cell)
    return frame, notes


def _value_at_rank(cdf: np.ndarray, rank: float, low: float, width: float, bins: int) -> float:
    """Upper edge of the first bin whose cumulative count reaches `rank`."""
    j = int(np.searchsorted(cdf, rank, side="left"))
    return float(low + min(j + 1, bins) * width)


def _quantile_frame(
    step: QuantileStep, releases: Sequence[StepRelease], keys: pd.DataFrame, min_cell: int
) -> tuple[pd.DataFrame, list[str]]:
    pooled = pool_vectors([r.measurement("histogram") for r in releases])
    hist = pooled.values.reshape(-1, step.bins)
    low, high = step.bounds
    width = (high - low) / step.bins
    rows = []
    for g in range(hist.shape[0]):
        h = np.maximum(hist[g], 0)
        total = h.sum()
        cdf = np.cumsum(h)
        # the noise on a cumulative count over j bins has scale sqrt(j) * per-bin scale
        slack = _Z95 * pooled.scale * math.sqrt(step.bins)
        row: dict[str, float] = {"count": float(hist[g].sum())}
        for q in step.quantiles:
            target = q * total
            label = f"q{round(q * 100):02d}"
            if total < max(min_cell, 1):
                row[label] = row[f"{label}_low"] = row[f"{label}_high"] = math.nan
                continue
            row[label] = _value_at_rank(cdf, target, low, width, step.bins)
            row[f"{label}_low"] = _value_at_rank(cdf, max(target - slack, 0), low, width, step.bins) - width
            row[f"{label}_high"] = _value_at_rank(cdf, min(target + slack, total), low, width, step.bins)
        rows.append(row)
    frame = pd.concat([keys.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    if keys.shape[1] == 0:
        frame = pd.DataFrame(rows)
    notes = [
        f"quantiles read from a pooled noisy histogram of {step.bins} bins over {list(step.bounds)}; "
        "[low, high] is an approximate 95% interval"
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
