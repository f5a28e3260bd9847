"""Synthetic residents known to several agencies, with the true overlaps known (issue 17).

Families live in areas (more of them in some areas than others); each family has a latent need,
and an agency knows a family with a probability that rises with that need, then most of its
members (family-level clustering: agencies know households, not random individuals). Each agency
writes the identifiers it holds its own way (case, spaces), as real systems do, so linkage must
normalise before it matches. Seeded: the same seed gives the same residents, holdings and truth.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["MultiAgency", "multi_agency_residents"]


@dataclass(frozen=True)
class MultiAgency:
    """Each agency's records, and the truth: every resident with their area and who knows them."""

    holdings: dict[str, pd.DataFrame]  # agency -> [resident_id (as the agency spells it), area, ...]
    residents: pd.DataFrame  # resident_id (canonical), family, area, one bool column per agency

    def overlap(self, agencies: Sequence[str]) -> pd.Series:
        """True number of residents known to every one of `agencies`, by area (every area listed)."""
        known = self.residents[list(agencies)].all(axis=1)
        areas = sorted(self.residents["area"].unique())
        return self.residents[known].groupby("area").size().reindex(areas, fill_value=0)

    def known_to(self, how_many: int, at_least: bool = False) -> pd.Series:
        """True number of residents known to exactly (or at least) `how_many` agencies, by area."""
        agencies = [a for a in self.holdings]
        count = self.residents[agencies].sum(axis=1)
        chosen = count >= how_many if at_least else count == how_many
        areas = sorted(self.residents["area"].unique())
        return self.residents[chosen].groupby("area").size().reindex(areas, fill_value=0)

    def combinations(self) -> list[tuple[str, ...]]:
        """Every pair of agencies, and all of them together."""
        names = list(self.holdings)
        return [*itertools.combinations(names, 2), tuple(names)]


def _spelling(rng: np.random.Generator, ids: np.ndarray) -> list[str]:
    """How one agency writes identifiers: some lower-cased, some with a space every four."""
    out = []
    lower, spaced = rng.random(len(ids)) < 0.3, rng.random(len(ids)) < 0.2
    for i, value in enumerate(ids):
        text = str(value)
        if lower[i]:
            text = text.lower()
        if spaced[i]:
            text = " ".join(text[j : j + 4] for j in range(0, len(text), 4))
        out.append(text)
    return out


def multi_agency_residents(
    agencies: Sequence[str],
    areas: Sequence[str],
    families: int,
    seed: int,
    reach: Sequence[float] | None = None,
) -> MultiAgency:
    """`families` families in `areas`, known to each of `agencies` (with base probabilities
    `reach`, default 0.3 each) more often the higher their need.

    Raises:
        ValueError: no agency, no area, or `reach` not one probability per agency.
    """
    if not agencies or not areas:
        raise ValueError("give at least one agency and one area")
    reach = list(reach) if reach is not None else [0.3] * len(agencies)
    if len(reach) != len(agencies) or not all(0 <= r <= 1 for r in reach):
        raise ValueError("reach is one probability in [0, 1] per agency")
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0.0, 0.8, len(areas))  # skewed: some areas hold many more families
    family_area = rng.choice(len(areas), size=families, p=weight / weight.sum())
    need = rng.beta(0.6, 2.0, families)  # most families need little; a few need a lot
    sizes = 1 + rng.poisson(1.6, families)
    family = np.repeat(np.arange(families), sizes)
    residents = pd.DataFrame(
        {
            "resident_id": [f"RES{n:09d}X" for n in rng.permutation(len(family))],
            "family": family,
            "area": np.asarray(areas, dtype=object)[family_area[family]],
        }
    )
    holdings = {}
    for agency, base in zip(agencies, reach, strict=True):
        knows_family = rng.random(families) < np.clip(base * (0.4 + 2.4 * need), 0, 1)
        knows = knows_family[family] & (rng.random(len(family)) < 0.85)
        residents[agency] = knows
        held = residents.loc[knows, ["resident_id", "area"]].reset_index(drop=True)
        held["resident_id"] = _spelling(rng, held["resident_id"].to_numpy())
        holdings[agency] = held.sample(frac=1.0, random_state=int(rng.integers(2**31))).reset_index(drop=True)
    return MultiAgency(holdings, residents)
