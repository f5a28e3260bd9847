"""What the steps on one bounded numeric column share (sums, means, quantiles)."""

from __future__ import annotations

import math

from pydantic import Field, field_validator, model_validator

from analyses.step import StepBase

__all__ = ["BoundedStep"]


class BoundedStep(StepBase):
    """A step reading one numeric column, clamped to public `bounds`."""

    column: str = Field(min_length=1, max_length=200)
    bounds: tuple[float, float]

    @field_validator("bounds", mode="before")
    @classmethod
    def _bounds_present(cls, value: object) -> object:
        if value is None:
            raise ValueError("numeric steps need bounds: [lower, upper]")
        return value

    @model_validator(mode="after")
    def _bounds_order(self) -> BoundedStep:
        low, high = self.bounds
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("bounds must be finite numbers")
        if low >= high:
            raise ValueError(f"bounds must be [lower, upper] with lower < upper, got {list(self.bounds)}")
        if max(abs(low), abs(high)) > 1e15:
            raise ValueError("bounds must lie within +/-1e15")
        return self

    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def numeric_columns(self) -> tuple[str, ...]:
        return (self.column,)

    def summary(self) -> str:
        low, high = self.bounds
        keys = ", ".join(self.key_columns()) or "no keys"
        return f"{self.kind} of {self.column} in [{low:g}, {high:g}] by {keys} ({self.cells():,} cells)"
