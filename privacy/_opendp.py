"""The one place OpenDP is imported and its feature flags are set.

Only "contrib" is enabled. Never "idealized-numerics" (float rounding would be ignored and
sensitivity underestimated) and never "honest-but-curious".

`dp` holds just the parts of OpenDP's core that the mechanisms use. `opendp.prelude` would also
import OpenDP's polars, scikit-learn and numpy extras: measured, 172 MiB more in every node
process and 2 s more at its start, for nothing a release needs (issue 14, the lean node).
"""

from __future__ import annotations

from privacy import _opendp_core as dp

dp.enable_features("contrib")

__all__ = ["dp", "privacy_map"]


def privacy_map(measurement: dp.Measurement, d_in: float) -> float:
    """OpenDP's privacy map as a float (OpenDP's Python API is untyped)."""
    return float(measurement.map(d_in))  # type: ignore[no-untyped-call]  # OpenDP ships no types
