"""Privacy budgets as types: zCDP rho, with (epsilon, delta) for display.

zCDP composes by addition, which makes the node ledger a sum of `Rho` values. People think in
epsilon, so every budget can also be shown as (epsilon, delta) through OpenDP's own conversion.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from privacy._opendp import dp
from privacy.errors import SpecError

__all__ = [
    "DISPLAY_DELTA",
    "Rho",
    "exact_total",
    "fits",
    "rho_at_least",
    "rho_from_epsilon_delta",
    "shares",
]

#: delta used when a budget is shown as (epsilon, delta) and the user named none.
DISPLAY_DELTA = 1e-6


@dataclass(frozen=True, order=True)
class Rho:
    """A zero-concentrated DP budget or cost. Non-negative and finite."""

    value: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.value) or self.value < 0:
            raise SpecError(f"rho must be a finite number >= 0, got {self.value!r}")

    def __add__(self, other: Rho) -> Rho:
        return Rho(self.value + other.value)

    def __sub__(self, other: Rho) -> Rho:
        return Rho(max(0.0, self.value - other.value))

    def split(self, parts: int) -> Rho:
        """An equal share of this budget among `parts` releases, rounded down so that `parts`
        of them never add up to more than the whole (zCDP adds up exactly)."""
        if parts < 1:
            raise SpecError(f"cannot split a budget into {parts} parts")
        return shares(self, [1.0] * parts)[0]

    def epsilon(self, delta: float = DISPLAY_DELTA) -> float:
        """The (epsilon, delta)-DP guarantee implied by this rho, via OpenDP's conversion."""
        return _epsilon_of(self.value, delta)

    def describe(self, delta: float = DISPLAY_DELTA) -> str:
        """`rho 0.1 (epsilon 2.14 at delta 1e-06)`."""
        return f"rho {self.value:.6g} (epsilon {self.epsilon(delta):.3g} at delta {delta:g})"


def exact_total(values: Iterable[Rho | float]) -> Fraction:
    """The exact sum of budgets (floats are binary fractions, so nothing is rounded)."""
    return sum((Fraction(v.value if isinstance(v, Rho) else v) for v in values), Fraction(0))


def rho_at_least(total: Fraction) -> Rho:
    """The smallest float budget not below an exact total (what a ledger debits for it)."""
    value = float(total)
    if Fraction(value) < total:
        value = math.nextafter(value, math.inf)
    return Rho(value)


def fits(cost: Rho, spent: Iterable[Rho | float], cap: Rho) -> bool:
    """Whether `cost` on top of `spent` stays within `cap`, in exact arithmetic: no tolerance, so
    no number of tiny requests can ever add up to more than the cap."""
    return exact_total([*spent, cost]) <= Fraction(cap.value)


def shares(total: Rho, weights: Sequence[float]) -> tuple[Rho, ...]:
    """`total` split in proportion to `weights`, each share rounded down as needed so that the
    shares add up (exactly) to at most `total`.

    Raises:
        SpecError: no weights, or a weight that is not a finite positive number.
    """
    if not weights or not all(math.isfinite(w) and w > 0 for w in weights):
        raise SpecError(f"budget weights must be finite positive numbers, got {list(weights)}")
    whole = math.fsum(weights)
    parts = [total.value * w / whole for w in weights]
    while exact_total(parts) > Fraction(total.value):
        parts = [math.nextafter(p, 0.0) for p in parts]  # one ulp down each: ends in a few turns
    return tuple(Rho(p) for p in parts)


@lru_cache(maxsize=1024)
def _epsilon_of(rho: float, delta: float) -> float:
    if rho == 0:
        return 0.0
    if not 0 < delta < 1:
        raise SpecError(f"delta must be in (0, 1), got {delta!r}")
    # A unit-sensitivity Gaussian whose zCDP cost is exactly rho stands in for any mechanism
    # with that cost: the conversion depends on rho alone.
    gaussian = dp.m.make_gaussian(
        dp.atom_domain(T=float, nan=False),
        dp.absolute_distance(T=float),
        scale=1.0 / math.sqrt(2.0 * rho),
    )
    curve = dp.c.make_zCDP_to_approxDP(gaussian).map(1.0)  # type: ignore[no-untyped-call]  # OpenDP ships no types
    return float(curve.epsilon(delta))


def rho_from_epsilon_delta(epsilon: float, delta: float) -> Rho:
    """The largest rho whose OpenDP conversion gives at most `epsilon` at `delta`.

    Raises:
        SpecError: epsilon or delta out of range.
    """
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise SpecError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if not 0 < delta < 1:
        raise SpecError(f"delta must be in (0, 1), got {delta!r}")
    # Classical bound eps = rho + 2 sqrt(rho ln(1/delta)) gives a safe starting point;
    # bisection then tightens it against OpenDP's own (tighter) conversion.
    log_term = math.log(1.0 / delta)
    low = (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2
    high = max(low * 4.0, epsilon)
    while _epsilon_of(high, delta) <= epsilon:
        high *= 2.0
    for _ in range(60):
        mid = (low + high) / 2.0
        if _epsilon_of(mid, delta) <= epsilon:
            low = mid
        else:
            high = mid
    return Rho(low)
