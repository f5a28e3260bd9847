"""Disclosure rules applied after noise: suppression of small cells and rounding.

They are post-processing of DP outputs, so they cost no budget; they exist because publication
rules in the public sector require them.
"""

from __future__ import annotations

import math

__all__ = ["noise_aware_threshold", "round_to", "suppress_small"]


def suppress_small(value: float, count: float, least: float) -> float:
    """`value`, or NaN when its (noisy) count is missing or below `least`, the least count a
    published cell has (a minimum cell, or a noise-aware threshold; 0 or less turns it off).

    Noisy counts may be negative; they are left as they are (clamping would bias pooled sums).
    """
    if least <= 0:
        return value
    if math.isnan(count) or count < least:
        return math.nan
    return value


def round_to(value: float, base: int) -> float:
    """Round to the nearest multiple of `base` (1 leaves integers unchanged)."""
    if math.isnan(value) or base <= 1:
        return value
    return float(base * round(value / base))


def noise_aware_threshold(threshold: int, max_rows: int, sd: float, false_publication: float) -> float:
    """The noisy count a cell must reach so that a cell of fewer than `threshold` people is
    published with probability at most `false_publication`.

    Such a cell holds at most `(threshold - 1) * max_rows` rows (each person contributes at most
    `max_rows`), and its noisy count adds noise that is `sd`-subgaussian: a discrete Gaussian of
    scale `sd` is (Canonne, Kamath and Steinke 2020), and so is a sum of independent ones with
    `sd` the root of their summed squares. So P(noise >= t) <= exp(-t^2 / (2 sd^2)), and the
    margin `sd * sqrt(2 ln(1 / false_publication))` above the largest such count bounds the
    probability for every count below the threshold. Post-processing of the noisy count: no budget.
    """
    if threshold <= 0:
        return -math.inf
    if not 0 < false_publication < 1:
        raise ValueError(f"false_publication must be in (0, 1), not {false_publication}")
    return (threshold - 1) * max_rows + sd * math.sqrt(2 * math.log(1 / false_publication))
