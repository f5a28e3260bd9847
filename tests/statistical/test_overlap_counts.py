"""Overlap counts on synthetic multi-agency residents (issue 17): the generator's truth is
consistent and clustered by family; the blinding ring over each agency's own spellings finds
exactly the residents known to each combination of agencies, per area; and DP counts of them
(OpenDP's integer Gaussian, as the counting node releases them) cover the truth at their stated
95% accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from analyses import load_keyset
from coordinator.embedded.residents import multi_agency_residents
from privacy import Rho
from privacy.mechanisms import integer_gaussian

AREAS = list(load_keyset("coventry_lsoa11"))[:40]
KEY = b"partnership-linkage-key-32-bytes"


def test_the_generator_is_seeded_consistent_and_clustered_by_family() -> None:
    first = multi_agency_residents(["police", "care", "health"], AREAS, 2000, seed=3)
    again = multi_agency_residents(["police", "care", "health"], AREAS, 2000, seed=3)
    assert first.residents.equals(again.residents)
    other = multi_agency_residents(["police", "care", "health"], AREAS, 2000, seed=4)
    assert not first.residents.equals(other.residents)
    for agency, held in first.holdings.items():
        assert len(held) == int(first.residents[agency].sum())
        assert held["resident_id"].str.contains(" ").any() and held["resident_id"].str.islower().any()
    r = first.residents
    both = float((r.police & r.care).mean())
    assert both > 1.2 * float(r.police.mean() * r.care.mean())  # need makes agencies co-know families
    per_area = r.groupby("area").size()
    assert per_area.max() > 3 * per_area.median()  # skewed areas
    total = sum(int(first.known_to(k).sum()) for k in range(4))
    assert total == len(r) and int(first.known_to(2, at_least=True).sum()) == int(
        first.known_to(2).sum() + first.known_to(3).sum()
    )


def test_the_ring_finds_every_true_combination_and_dp_counts_cover_them() -> None:
    pytest.importorskip("nacl.bindings", reason="PyNaCl is installed with oda-federated[linkage]")
    from privacy.psi import (
        Blinder,
        combination_masks,
        keyed_identifiers,
        mask_parties,
        pattern_counts,
        ring_sources,
    )

    world = multi_agency_residents(["police", "care", "health"], AREAS, 1500, seed=7)
    parties = sorted(world.holdings)
    size = 96
    secrets = {p: Blinder.fresh() for p in parties}

    def sets(agency: str) -> list[list[str]]:
        held = world.holdings[agency]
        return [keyed_identifiers(held.loc[held.area == area, "resident_id"].tolist(), KEY) for area in AREAS]

    lists = {p: secrets[p].blind(sets(p), size, AREAS) for p in parties}
    for hop in range(1, len(parties)):
        lists = {
            owner: secrets[applier].reblind(lists[owner], len(AREAS), size)
            for applier, owner in ring_sources(parties, hop).items()
        }
    counts = pattern_counts([lists[p] for p in parties], len(AREAS), size)
    masks = combination_masks(len(parties))
    r = world.residents.set_index("area")
    for j, mask in enumerate(masks):  # exactly these agencies, every spelling normalised
        chosen = mask_parties(mask, parties)
        others = [p for p in parties if p not in chosen]
        exact = r[r[list(chosen)].all(axis=1) & ~r[others].any(axis=1)].groupby(level=0).size()
        assert counts[:, j].tolist() == exact.reindex(AREAS, fill_value=0).tolist(), chosen
    assert int(counts.sum()) > 100

    truth = counts.reshape(-1)
    covered, tight = [], []
    for _ in range(4):  # 640 DP releases of the 40 areas' 4 combination counts
        noisy = integer_gaussian(truth, 1, Rho(0.05))
        error = np.abs(np.asarray(noisy.values) - truth)
        covered.append(float(np.mean(error <= noisy.accuracy95)))
        tight.append(float(np.mean(error <= noisy.accuracy95 / 3)))
    # 640 cells at 95% nominal: under 90% has probability below 1e-7; a third of the stated
    # accuracy covers far less (the check can fail)
    assert float(np.mean(covered)) >= 0.90
    assert float(np.mean(tight)) < 0.80
