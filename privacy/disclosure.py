"""Disclosure rules applied after noise: suppression of small cells and rounding.

They are post-processing of DP outputs, so they cost no budget; they exist because publication
rules in the public sector require them.
"""

from __future__ import annotations

import math

__all__ = ["round_to", "suppress_small"]


def suppress_small(value: float, count: float, min_cell: int) -> float:
    """`value`, or NaN when its (noisy) count is below `min_cell` (0 turns suppression off).

    Noisy counts may be negative; they are left as they are (clamping would bias pooled sums).
    """
    if min_cell <= 0:
        return value
    if math.isnan(count) or count < min_cell:
        return math.nan
    return value


def round_to(value: float, base: int) -> float:
    """Round to the nearest multiple of `base` (1 leaves integers unchanged)."""
    if math.isnan(value) or base <= 1:
        return value
    return float(base * round(value / base))
