"""Disclosure rules applied after noise: suppression of small cells and rounding.

They are post-processing of DP outputs, so they cost no budget; they exist because publication
rules in the public sector require them.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

__all__ = [
    "DOMINANCE_K",
    "DOMINANCE_N",
    "DOMINANCE_P",
    "OUTCOMES",
    "RESIDUAL_DF",
    "Outcome",
    "dominance_floor",
    "lower_bound",
    "noise_aware_threshold",
    "round_to",
    "suppress_small",
    "too_small",
]

#: ACRO's defaults for magnitude tables: a cell is dominated when its `n` largest contributors
#: hold more than `k` of its total (the n-k rule), or when the total less its two largest is under
#: `p` of the largest (the p% rule: the second could estimate the first too closely).
DOMINANCE_N = 2
DOMINANCE_K = 0.9
DOMINANCE_P = 0.1
#: Least residual degrees of freedom of a published model (ONS SRS, ACRO).
RESIDUAL_DF = 10

#: What the checks said of a published cell or model: published, suppressed by a named rule, or
#: published for a person to review (no rule can decide it from what was released).
Outcome = Literal[
    "pass",
    "review",
    "suppressed:min_cell",
    "suppressed:threshold",
    "suppressed:dominance",
    "suppressed:residual_df",
]
OUTCOMES: tuple[str, ...] = get_args(Outcome)


def suppress_small(value: float, count: float, least: float) -> float:
    """`value`, or NaN when its (noisy) count is missing or below `least`, the least count a
    published cell has (a minimum cell, or a noise-aware threshold; 0 or less turns it off).

    Noisy counts may be negative; they are left as they are (clamping would bias pooled sums).
    """
    return math.nan if too_small(count, least) else value


def too_small(count: float, least: float) -> bool:
    """Whether a cell of (noisy) `count` is suppressed under the least count `least` (a missing
    count is; 0 or less turns the rule off)."""
    return least > 0 and (math.isnan(count) or count < least)


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


def lower_bound(noisy: float, sd: float, false_publication: float) -> float:
    """A value `noisy` of `sd`-subgaussian noise less the margin that it exceeds the truth by
    with probability at most `false_publication` (the same margin as `noise_aware_threshold`)."""
    return noisy - sd * math.sqrt(2 * math.log(1 / false_publication))


def dominance_floor(
    contributor_max: float, n: int = DOMINANCE_N, k: float = DOMINANCE_K, p: float = DOMINANCE_P
) -> float:
    """The least total of a non-negative cell that neither dominance rule can flag, when no
    contributor adds more than `contributor_max` (a person's rows times the clipping bound).

    The `n` largest contributors hold at most `n * contributor_max`, so a total of at least
    `n * contributor_max / k` passes the n-k rule whatever the data; the total less the two
    largest is least when both are `contributor_max`, so one of at least `(2 + p) *
    contributor_max` passes the p% rule. A node never looks at its exact contributions: the
    check is a function of the released noisy sum and public bounds, so it costs no budget.
    """
    return contributor_max * max(n / k, 2 + p)
