"""Accuracy at 95%: the half-width a released value lies within of the truth, 19 times in 20."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from privacy._opendp import dp

__all__ = ["ALPHA", "gaussian_accuracy95", "pooled_accuracy95", "ratio_accuracy95"]

ALPHA = 0.05
_Z95 = 1.959963984540054


@lru_cache(maxsize=4096)
def gaussian_accuracy95(scale: float) -> float:
    """OpenDP's exact 95% accuracy of one integer Gaussian release."""
    return float(dp.discrete_gaussian_scale_to_accuracy(scale, ALPHA))


def pooled_accuracy95(scales: Sequence[float]) -> float:
    """95% accuracy of a sum of independent integer Gaussian releases.

    One release keeps OpenDP's exact figure. For a sum, the noise is Gaussian with variance the
    sum of variances (the integer rounding adds at most 1 per term, added to be safe).
    """
    if len(scales) == 1:
        return gaussian_accuracy95(scales[0])
    sigma = math.sqrt(sum(s * s for s in scales))
    return _Z95 * sigma + len(scales)


def ratio_accuracy95(
    numerator: float, denominator: float, numerator_scale: float, denominator_scale: float
) -> float:
    """Approximate 95% accuracy of numerator / denominator (delta method).

    Returns `inf` when the denominator is too small for the approximation to mean anything.
    """
    if denominator <= 2 * denominator_scale or denominator <= 0:
        return math.inf
    ratio = numerator / denominator
    variance = (numerator_scale**2 + (ratio**2) * denominator_scale**2) / denominator**2
    return _Z95 * math.sqrt(variance)
