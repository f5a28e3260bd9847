"""Accuracy at 95%: the half-width a released value lies within of the truth, 19 times in 20.

Every figure here is computed in bounded time whatever the noise scale (the coordinator chooses
the scale, so a cost linear in it would let one request freeze a node), and means what the
reports say: "within +/-a of its value before noise in 19 of 20 cells".

- Integer noise (one discrete Gaussian, or a sum of several from different partners): the
  smallest integer `a` with P(|noise| <= a) >= 95%. Exact (a convolution of the probability
  mass functions) while the total standard deviation is small; beyond that the sum is Gaussian
  to far better than the integer step, and `ceil(z * sd - 1/2)` is the same integer.
- A combination of several noisy releases in value units (a sum rebuilt from a centred sum and a
  count, a mean): Gaussian, `z * sd`, plus any rounding bound stated separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALPHA",
    "Z95",
    "discrete_gaussian_variance",
    "gaussian_accuracy95",
    "integer_noise_accuracy95",
    "pooled_accuracy95",
    "ratio_accuracy95",
]

ALPHA = 0.05
#: The two-sided 95% quantile of the standard normal.
Z95 = 1.959963984540054
#: Below this total standard deviation the integer figure is computed exactly.
_EXACT_BELOW_SD = 8.0


def _pmf(scale: float) -> npt.NDArray[np.float64]:
    """The discrete Gaussian's mass on -r..r (r = 12 scale + 2: the rest is below 1e-30)."""
    radius = math.ceil(12 * scale + 2)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-(x * x) / (2.0 * scale * scale))
    return np.asarray(weights / weights.sum(), dtype=np.float64)


@lru_cache(maxsize=4096)
def discrete_gaussian_variance(scale: float) -> float:
    """Variance of OpenDP's discrete Gaussian of `scale` (below scale^2 when scale < 1)."""
    if scale >= 3.0:
        return scale * scale  # equal to double precision
    pmf = _pmf(scale)
    radius = (len(pmf) - 1) // 2
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    return float((x * x * pmf).sum())


def integer_noise_accuracy95(scales: Sequence[float]) -> float:
    """Smallest integer `a` with P(|X| <= a) >= 95%, X the sum of independent discrete
    Gaussians of `scales` (one per partner whose release is added up).

    Bounded time: an exact convolution while the total standard deviation is below 8 (arrays of
    a few hundred entries), the Gaussian quantile beyond.
    """
    if not scales:
        return 0.0
    variance = sum(discrete_gaussian_variance(s) for s in scales)
    if math.sqrt(variance) >= _EXACT_BELOW_SD:
        return float(max(0, math.ceil(Z95 * math.sqrt(variance) - 0.5)))
    mass = np.ones(1)
    for scale in scales:
        mass = np.convolve(mass, _pmf(scale))
    radius = (len(mass) - 1) // 2
    inside = mass[radius] + 2.0 * np.cumsum(mass[radius + 1 :])  # P(|X| <= a) for a = 1, 2, ...
    if mass[radius] >= 1 - ALPHA:
        return 0.0
    return float(1 + int(np.searchsorted(inside, 1 - ALPHA - 1e-15)))


@lru_cache(maxsize=4096)
def gaussian_accuracy95(scale: float) -> float:
    """95% accuracy of one integer-Gaussian release of `scale` (in its integer units)."""
    return integer_noise_accuracy95((scale,))


def pooled_accuracy95(scales: Sequence[float]) -> float:
    """95% accuracy of the sum of several partners' integer releases (in integer units)."""
    return integer_noise_accuracy95(tuple(scales))


def ratio_accuracy95(
    numerator: float, denominator: float, numerator_scale: float, denominator_scale: float
) -> float:
    """Approximate 95% accuracy of numerator / denominator (delta method), both noisy with the
    given standard deviations.

    Returns `inf` when the denominator is too small for the approximation to mean anything.
    """
    if denominator <= 2 * denominator_scale or denominator <= 0:
        return math.inf
    ratio = numerator / denominator
    variance = (numerator_scale**2 + (ratio**2) * denominator_scale**2) / denominator**2
    return Z95 * math.sqrt(variance)
