"""Group keys: the public lists a step may group by, and the buckets derived from a column.

Keys must be public: a node never reveals which keys occur in its data. A key is listed in the
spec (`values`), a key set shipped inside the package (`keyset`), or derived from a column
(`derive`: hour, weekday, month of a time; `band` of a number between `edges`; `missing`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from analyses._model import Model
from analyses.keysets import load_keyset

__all__ = ["DERIVED_KEYS", "MAX_LIST", "KeySpec", "KeyValue", "band_labels"]

#: A step's keys, quantiles or edges: no published list is longer.
MAX_LIST = 10_000

DERIVED_KEYS: dict[str, tuple[str, ...]] = {
    "hour": tuple(f"{h:02d}" for h in range(24)),
    "weekday": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "month": tuple(f"{m:02d}" for m in range(1, 13)),
    "missing": ("present", "missing"),
}

KeyValue = str | int


class KeySpec(Model):
    """One grouping column and its public keys: listed, a shipped key set, or derived buckets."""

    column: str = Field(min_length=1, max_length=200)
    values: tuple[KeyValue, ...] | None = Field(default=None, max_length=MAX_LIST)
    keyset: str | None = Field(default=None, max_length=200)
    derive: Literal["hour", "weekday", "month", "band", "missing"] | None = None
    edges: tuple[float, ...] | None = Field(default=None, max_length=MAX_LIST)
    name: str | None = Field(default=None, max_length=200, description="output column name")

    @model_validator(mode="after")
    def _one_source(self) -> KeySpec:
        sources = [s for s in (self.values, self.keyset, self.derive) if s is not None]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of 'values' (a published list), 'keyset' (a shipped key set) "
                "or 'derive' (hour, weekday, month, band, missing)"
            )
        if self.values is not None:
            if not self.values:
                raise ValueError("'values' must list at least one key")
            if len(set(self.values)) != len(self.values):
                raise ValueError("'values' has duplicate keys")
            if len({type(v) for v in self.values}) > 1:
                raise ValueError("'values' mixes text and numbers: quote every key (text) or none (numbers)")
        if self.derive == "band":
            if self.edges is None or len(self.edges) < 2:
                raise ValueError("derive: band needs 'edges' with at least two numbers")
            if any(b <= a for a, b in itertools.pairwise(self.edges)):
                raise ValueError("'edges' must increase strictly")
            if not all(math.isfinite(e) for e in self.edges):
                raise ValueError("'edges' must be finite numbers")
        elif self.edges is not None:
            raise ValueError("'edges' is only for derive: band")
        if self.keyset is not None:
            load_keyset(self.keyset)
        return self

    @property
    def output(self) -> str:
        """Name of the key column in result tables."""
        if self.name:
            return self.name
        return f"{self.column}_{self.derive}" if self.derive else self.column

    def keys(self) -> tuple[KeyValue, ...]:
        """The public keys, in the canonical order every node and the coordinator use."""
        if self.values is not None:
            return self.values
        if self.keyset is not None:
            return load_keyset(self.keyset)
        if self.derive == "band":
            return band_labels(self.edges or ())
        return DERIVED_KEYS[self.derive or ""]


def band_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """`[0, 18, 65]` -> `("0-18", "18-65")`: half-open intervals [low, high)."""
    return tuple(f"{_fmt(a)}-{_fmt(b)}" for a, b in itertools.pairwise(edges))


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
