"""An empirical privacy audit: a measured lower bound on the privacy loss of a release.

Two neighbouring datasets D and D' (D' adds one person) give exact vectors x and x'. Releases
are drawn from the very OpenDP measurement the node uses, at the sensitivity and budget the node
claims. A test that says "D'" when the release, projected on x' - x, exceeds a threshold has
false and true positive rates whose Clopper-Pearson bounds hold with high probability; by the
data-processing inequality, the Renyi divergence between two Bernoulli variables with those
rates is at most what the mechanism's zCDP allows (alpha x rho). The largest such bound over a
grid of thresholds and orders is a measured lower bound on rho, and a claim that is an upper
bound must not be below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from privacy.budget import Rho
from privacy.mechanisms import calibrate_scale, integer_gaussian_samples

__all__ = ["Audit", "audit_release"]

#: Thresholds, in claimed noise standard deviations of the projected release.
THRESHOLDS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5)
ORDERS = (1.5, 2.0, 3.0, 4.0)
#: Probability that any of the confidence bounds fails (Bonferroni over thresholds and sides).
FALSE_ALARM = 1e-3


@dataclass(frozen=True)
class Audit:
    """What one audit measured against what the release claims."""

    claimed_rho: float
    measured_rho: float  # a lower bound, with confidence 1 - FALSE_ALARM
    shift: float  # |x' - x|, in the release's integer units
    sensitivity: int  # what the node claimed the shift could be at most

    def epsilons(self, delta: float = 1e-6) -> tuple[float, float]:
        """(claimed, measured lower bound) as epsilon at `delta`, by OpenDP's conversion."""
        measured = Rho(self.measured_rho).epsilon(delta) if self.measured_rho > 0 else 0.0
        return Rho(self.claimed_rho).epsilon(delta), measured


def _renyi_bernoulli(p: float, q: float, order: float) -> float:
    if p <= q:
        return 0.0
    return math.log(p**order * q ** (1 - order) + (1 - p) ** order * (1 - q) ** (1 - order)) / (order - 1)


def _bounds(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    alpha = 1 - confidence
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = (
        1.0
        if successes == trials
        else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    )
    return low, high


def audit_release(
    exact: npt.NDArray[np.int64],
    neighbour: npt.NDArray[np.int64],
    sensitivity: int,
    budget: Rho,
    samples: int,
) -> Audit:
    """Audit the release of `exact` (dataset D) against `neighbour` (D' = D plus one person).

    Only the cells where the two differ are drawn (the noise of the others is independent of
    the test); `sensitivity` and `budget` are what the node claims for the whole vector.
    """
    x, y = np.asarray(exact, dtype=np.int64), np.asarray(neighbour, dtype=np.int64)
    cells = np.flatnonzero(x != y)
    direction = (y[cells] - x[cells]).astype(np.float64)
    shift = float(np.linalg.norm(direction))
    claimed = calibrate_scale(sensitivity, budget)
    if shift == 0:
        return Audit(budget.value, 0.0, 0.0, sensitivity)
    unit = direction / shift
    on_d = (integer_gaussian_samples(x[cells], sensitivity, budget, samples) - x[cells]) @ unit
    on_n = (integer_gaussian_samples(y[cells], sensitivity, budget, samples) - x[cells]) @ unit
    confidence = 1 - FALSE_ALARM / (2 * len(THRESHOLDS))
    measured = 0.0
    for k in THRESHOLDS:
        threshold = k * claimed
        tpr_low, _ = _bounds(int(np.sum(on_n > threshold)), samples, confidence)
        _, fpr_high = _bounds(int(np.sum(on_d > threshold)), samples, confidence)
        for order in ORDERS:
            measured = max(measured, _renyi_bernoulli(tpr_low, fpr_high, order) / order)
    return Audit(budget.value, measured, shift, sensitivity)
