"""OpenDP releases, calibrated directly.

Every release is an OpenDP measurement: the integer Gaussian mechanism on a vector of exact
aggregates, whose L2 sensitivity follows from the enforced privacy unit and the declared bounds.
The scale is computed in closed form from the budget (rho = d_in^2 / (2 scale^2)) and then
checked against OpenDP's own privacy map, so there is no scale search per call. The cost
reported is what OpenDP's map says, never our formula.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from privacy._opendp import dp, privacy_map
from privacy.accuracy import gaussian_accuracy95
from privacy.budget import Rho
from privacy.errors import InternalError, SpecError

__all__ = [
    "MAX_SCALE",
    "MAX_SENSITIVITY",
    "MECHANISM_INTEGER_GAUSSIAN",
    "NoisyVector",
    "calibrate_scale",
    "integer_gaussian",
    "integer_gaussian_samples",
]

MECHANISM_INTEGER_GAUSSIAN = "integer_gaussian"
#: Largest L2 sensitivity (in integer units) a release may have: 1,000 rows per person of 2^31
#: units each, with room to spare. Anything larger is a spec asking for overflow.
MAX_SENSITIVITY = 2**42
#: Largest noise scale (in integer units): exact sums stay below 2^62 and noise at 1e15 keeps
#: every noisy value inside int64. A scale this large releases nothing of use anyway.
MAX_SCALE = 1e15

# OpenDP's map rounds outward; nudge the scale up until its map fits inside the budget.
_SCALE_NUDGE = 1.0 + 1e-9


@dataclass(frozen=True)
class NoisyVector:
    """A released vector and everything needed to interpret it."""

    values: tuple[int, ...]
    mechanism: str
    scale: float
    sensitivity: int
    cost: Rho
    accuracy95: float


def _measurement(scale: float) -> dp.Measurement:
    measurement = dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l2_distance(T=dp.i64), scale=scale
    )
    if measurement.output_measure != dp.zero_concentrated_divergence():
        raise InternalError(f"expected a zCDP measurement, OpenDP built {measurement.output_measure}")
    return measurement


def calibrate_scale(sensitivity: int, budget: Rho) -> float:
    """The smallest integer-Gaussian scale whose OpenDP cost at `sensitivity` is within budget.

    Raises:
        SpecError: the budget is zero, the sensitivity is not positive or too large, or the noise
            would be larger than `MAX_SCALE` (a budget so small the release would mean nothing).
    """
    if sensitivity < 1:
        raise SpecError(f"sensitivity must be a positive integer, got {sensitivity}")
    if sensitivity > MAX_SENSITIVITY:
        raise SpecError(
            f"sensitivity {sensitivity:,} is over the limit of {MAX_SENSITIVITY:,} units: "
            "use coarser bounds or precision"
        )
    if budget.value <= 0:
        raise SpecError("a release needs a budget above zero")
    scale = sensitivity / math.sqrt(2.0 * budget.value)
    if scale > MAX_SCALE:
        raise SpecError(
            f"a budget of rho {budget.value:.3g} for this release gives noise of scale {scale:.3g} units, "
            f"over the limit of {MAX_SCALE:.0e}: the release would carry no information; raise the "
            "budget, or use fewer steps or rounds"
        )
    for _ in range(64):
        if privacy_map(_measurement(scale), sensitivity) <= budget.value:
            return scale
        scale *= _SCALE_NUDGE
    raise InternalError(f"could not calibrate a scale for rho {budget.value}")


def integer_gaussian(
    exact: Sequence[int] | npt.NDArray[np.int64], sensitivity: int, budget: Rho
) -> NoisyVector:
    """Release `exact` under integer Gaussian noise costing at most `budget`.

    `sensitivity` is the L2 distance between the `exact` vectors of two datasets that differ
    in one privacy unit; the caller derives it from the enforced unit and bounds.

    Raises:
        SpecError: as `calibrate_scale`.
    """
    scale = calibrate_scale(sensitivity, budget)
    measurement = _measurement(scale)
    cost = Rho(privacy_map(measurement, sensitivity))
    noisy = measurement([int(v) for v in np.asarray(exact, dtype=np.int64)])
    return NoisyVector(
        values=tuple(int(v) for v in noisy),
        mechanism=MECHANISM_INTEGER_GAUSSIAN,
        scale=scale,
        sensitivity=sensitivity,
        cost=cost,
        accuracy95=gaussian_accuracy95(scale),
    )


def integer_gaussian_samples(
    exact: Sequence[int] | npt.NDArray[np.int64], sensitivity: int, budget: Rho, samples: int
) -> npt.NDArray[np.int64]:
    """`samples` independent releases of `exact` (one per row) by the very measurement
    `integer_gaussian` uses, drawn in one OpenDP call: what privacy audits sample from.

    Raises:
        SpecError: as `calibrate_scale`.
    """
    measurement = _measurement(calibrate_scale(sensitivity, budget))
    vector = np.asarray(exact, dtype=np.int64)
    tiled = np.tile(vector, samples)
    noisy = np.asarray(measurement([int(v) for v in tiled]), dtype=np.int64)
    return noisy.reshape(samples, len(vector))
