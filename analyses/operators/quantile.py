"""Quantile steps: quantiles of a bounded column from a noisy fine histogram (poolable across
partners: their histograms add up).

Local step: one count per bin and group, each row in one bin, so sensitivity `max_rows`.
Aggregate step: the estimate is interpolated where a monotone version of the pooled noisy
cumulative count crosses `q` times the total (never the bin's upper edge); the interval inverts a
test at every bin edge on the signed noisy cumulative, with a critical value calibrated by a
seeded simulation of the known noise (`quantile_from_histogram`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from analyses.local_data import Exact, LocalData, bincount, clamped
from analyses.operators._bounded import BoundedStep
from analyses.reply import StepRelease
from analyses.step import RoundLike
from analyses.tables import CHECK, Publication, Published, pool_vectors
from privacy.accuracy import Z95
from privacy.unit import PrivacyUnit

__all__ = ["STEPS", "QuantileEstimate", "QuantileStep", "monotone_cumulative", "quantile_from_histogram"]


class QuantileStep(BoundedStep):
    """Quantiles from a noisy fine histogram of a bounded column (poolable across partners)."""

    kind: Literal["quantile"]
    quantiles: tuple[float, ...] = Field(min_length=1, max_length=99)
    bins: int = Field(default=100, ge=2, le=10_000)

    @field_validator("quantiles")
    @classmethod
    def _q_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < q < 1 for q in value):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        return value

    def cells(self) -> int:
        return self.bins * self.groups()

    def measurements(self) -> tuple[str, ...]:
        return ("histogram",)

    def exact(self, data: LocalData, unit: PrivacyUnit, state: RoundLike | None) -> dict[str, Exact]:
        cells = data.cells(self.by, unit)
        groups = self.groups()
        values = clamped(data.frame[self.column], self.bounds)
        low, high = self.bounds
        bin_of = np.floor((values - low) / (high - low) * self.bins)
        bin_of = np.clip(np.nan_to_num(bin_of, nan=-1), -1, self.bins - 1).astype(np.int64)
        valid = (bin_of >= 0) & (cells < groups)
        combined = np.where(valid, cells * self.bins + bin_of, groups * self.bins)
        return {"histogram": Exact(bincount(combined, groups * self.bins), unit.max_rows)}

    def outcomes(self, release: StepRelease, publication: Publication) -> list[str] | None:
        """Each group's check from its noisy total alone (the quantiles need not be read)."""
        histogram = release.measurement("histogram")
        totals = (
            np.asarray(histogram.values, dtype=float).reshape(-1, self.bins).sum(axis=1)
            * histogram.unit_value
        )
        least = _least(self, histogram.scale * histogram.unit_value, publication)
        kept = "review" if publication.threshold > 0 else "pass"
        return [kept if t >= least else publication.small_rule() for t in totals]

    def publish(self, releases: Sequence[StepRelease], publication: Publication) -> Published:
        return _quantile_frame(self, releases, self.key_frame(), publication)


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


def _least(step: QuantileStep, scale: float, publication: Publication) -> float:
    """The least noisy total a published group has: the cut for a total of `bins` noisy cells
    of noise `scale` (their scales in quadrature), and at least 1."""
    return max(publication.cut(scale * math.sqrt(step.bins)), 1.0)


def _quantile_frame(
    step: QuantileStep, releases: Sequence[StepRelease], keys: pd.DataFrame, publication: Publication
) -> Published:
    """Each group's quantiles; a group whose noisy total is under the publication's cut (its
    noise: the bins' scales in quadrature) is suppressed; under a people threshold the others are
    marked `review`, since a quantile is an order statistic a person should look at."""
    pooled = pool_vectors([r.measurement("histogram") for r in releases])
    hist = pooled.values.reshape(-1, step.bins)
    low, high = step.bounds
    least = _least(step, pooled.scale, publication)
    kept = "review" if publication.threshold > 0 else "pass"
    rows = []
    for g in range(hist.shape[0]):
        total = float(hist[g].sum())
        row: dict[str, float | str] = {
            "count": max(total, 0.0) if publication.non_negative else total,
            CHECK: kept if total >= least else publication.small_rule(),
        }
        for q in step.quantiles:
            label = f"q{round(q * 100):02d}"
            if total < least:
                row[label] = row[f"{label}_low"] = row[f"{label}_high"] = math.nan
                continue
            found = quantile_from_histogram(hist[g], q, pooled.scale, low, high)
            row[label], row[f"{label}_low"], row[f"{label}_high"] = found.value, found.low, found.high
        rows.append(row)
    frame = pd.concat([keys.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    if keys.shape[1] == 0:
        frame = pd.DataFrame(rows)
    frame = frame[[c for c in frame.columns if c != CHECK] + [CHECK]]
    notes = [
        f"quantiles read from a pooled noisy histogram of {step.bins} bins over {list(step.bounds)}; "
        "[low, high] is a 95% interval"
    ]
    note = publication.note(pooled.scale * math.sqrt(step.bins))
    if note:
        notes += [note, "quantiles are order statistics: each published group is marked review"]
    return Published(frame, notes)


#: The step kinds this module owns (the registry reads it).
STEPS = (QuantileStep,)
