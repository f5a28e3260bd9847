"""Published key sets: the public lists of group keys an analysis may group by.

Keys must be public: a node never reveals which keys occur in its data. A key set is either
listed in the spec, or named here and shipped inside the package, so every node and the
coordinator read the same bytes.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources

from privacy.errors import SpecError

__all__ = ["available_keysets", "load_keyset"]


def available_keysets() -> list[str]:
    """Names of the key sets shipped with this package."""
    folder = resources.files("analyses") / "keysets"
    return sorted(p.name.removesuffix(".csv") for p in folder.iterdir() if p.name.endswith(".csv"))


@lru_cache(maxsize=32)
def load_keyset(name: str) -> tuple[str, ...]:
    """The keys of the shipped key set `name` (first column of its CSV), in file order.

    Raises:
        SpecError: no key set has that name.
    """
    names = available_keysets()
    if name not in names:
        raise SpecError(f"unknown key set {name!r}; shipped key sets: {', '.join(names)}")
    text = (resources.files("analyses") / "keysets" / f"{name}.csv").read_text("utf-8")
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    reader = csv.reader(rows[1:])
    return tuple(row[0] for row in reader)
