"""The one place OpenDP is imported and its feature flags are set.

Only "contrib" is enabled. Never "idealized-numerics" (float rounding would be ignored and
sensitivity underestimated) and never "honest-but-curious".
"""

from __future__ import annotations

import opendp.prelude as dp

dp.enable_features("contrib")

__all__ = ["dp", "privacy_map"]


def privacy_map(measurement: dp.Measurement, d_in: float) -> float:
    """OpenDP's privacy map as a float (OpenDP's Python API is untyped)."""
    return float(measurement.map(d_in))  # type: ignore[no-untyped-call]  # OpenDP ships no types
