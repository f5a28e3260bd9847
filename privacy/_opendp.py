"""The one place OpenDP is imported and its feature flags are set.

Only "contrib" is enabled. Never "idealized-numerics" (float rounding would be ignored and
sensitivity underestimated) and never "honest-but-curious".
"""

from __future__ import annotations

import opendp.prelude as dp

dp.enable_features("contrib")

__all__ = ["dp"]
