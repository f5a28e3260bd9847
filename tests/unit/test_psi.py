"""The blinding ring (`privacy.psi`): exact combination counts per area for the counting agency,
normalised spellings linked, nothing the relay could match across runs or invert, sizes hidden
by padding, and every bad message refused by name."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pytest

pytest.importorskip("nacl.bindings", reason="PyNaCl is installed with oda-federated[linkage]")

from privacy.errors import ConfigError, ProtocolError, SpecError
from privacy.psi import (
    POINT_BYTES,
    Blinder,
    combination_masks,
    keyed_identifiers,
    mask_parties,
    normalise_identifier,
    pattern_counts,
    ring_sources,
    sensitivity_cells,
)

KEY = b"k" * 32
AREAS = ("E01009564", "E01009565", "E01009566")
SIZE = 48

POLICE = {
    "E01009564": [f"PNC-{i:08d}" for i in range(30)],
    "E01009565": ["AB 12 3c 456 7890", "NHS-00000000x1", "NHS-00000000x2"],
}
CARE = {
    "E01009564": [f"pnc-{i:08d}" for i in range(20, 50)],  # 10 shared with police, another case
    "E01009565": ["ab123C4567890", "NHS-00000000x3"],  # the same person, spelled differently
    "E01009566": ["NHS-00000000y1"],
}
HEALTH = {
    "E01009564": [f"PNC-{i:08d}" for i in range(25, 27)] + [f"PNC-{i:08d}" for i in range(5, 8)],
    "E01009566": ["NHS-00000000y1", "NHS-00000000x3"],  # x3: care has them in another area
}
HOLDINGS = {"care": CARE, "health": HEALTH, "police": POLICE}


def _ring(holdings: Mapping[str, Mapping[str, Sequence[str]]]) -> tuple[list[bytes], list[bytes]]:
    """The whole ring as the coordinator relays it: the fully blinded lists (name order) and
    every message that crossed the relay."""
    parties = sorted(holdings)
    secrets = {p: Blinder.fresh() for p in parties}
    lists = {
        p: secrets[p].blind([keyed_identifiers(holdings[p].get(a, []), KEY) for a in AREAS], SIZE, AREAS)
        for p in parties
    }
    relayed = list(lists.values())
    for hop in range(1, len(parties)):
        sources = ring_sources(parties, hop)
        lists = {
            owner: secrets[applier].reblind(lists[owner], len(AREAS), SIZE)
            for applier, owner in sources.items()
        }
        relayed += list(lists.values())
    return [lists[p] for p in parties], relayed


def test_the_counting_agency_learns_every_combinations_exact_size_per_area() -> None:
    final, _ = _ring(HOLDINGS)
    counts = pattern_counts(final, len(AREAS), SIZE)
    masks = combination_masks(3)
    named = [mask_parties(m, sorted(HOLDINGS)) for m in masks]
    assert named == [
        ("care", "health"),
        ("care", "police"),
        ("health", "police"),
        ("care", "health", "police"),
    ]
    # E01009564: police 0..29, care 20..49, health 25,26 and 5,6,7
    # care+health only: none; exactly police+care: 20..29 but 25, 26 = 8; police+health only:
    # 5, 6, 7 = 3; all three: 25, 26 = 2
    assert counts[0].tolist() == [0, 8, 3, 2]
    assert counts[1].tolist() == [0, 1, 0, 0]  # AB 12 3c... linked across spellings
    assert counts[2].tolist() == [1, 0, 0, 0]  # y1 at care and health; x3 is in another area at care
    assert normalise_identifier(" AB 12\t3c ") == normalise_identifier("ab123C") == "ab123c"


def test_two_agencies_make_a_ring_of_one_hop() -> None:
    final, relayed = _ring({"care": CARE, "police": POLICE})
    assert len(relayed) == 4
    assert pattern_counts(final, len(AREAS), SIZE)[:, 0].tolist() == [10, 1, 0]


def test_two_runs_relay_nothing_in_common_and_no_identifier_or_hash() -> None:
    _, first = _ring(HOLDINGS)
    _, second = _ring(HOLDINGS)

    def points(messages: list[bytes]) -> set[bytes]:
        return {m[i : i + POINT_BYTES] for m in messages for i in range(0, len(m), POINT_BYTES)}

    assert not points(first) & points(second)  # fresh secrets and fresh padding each run
    everything = b"".join(first + second)
    for held in HOLDINGS.values():
        for ids in held.values():
            for raw in ids:
                keyed = bytes.fromhex(keyed_identifiers([raw], KEY)[0])
                unkeyed = hashlib.sha256(normalise_identifier(raw).encode()).digest()
                for needle in (raw.encode(), keyed, unkeyed, keyed.hex().encode(), unkeyed.hex().encode()):
                    assert needle not in everything


def test_every_message_has_the_public_size_whatever_the_areas_hold() -> None:
    _, relayed = _ring(HOLDINGS)
    assert {len(m) for m in relayed} == {len(AREAS) * SIZE * POINT_BYTES}


def test_sources_rotate_so_every_list_meets_every_other_secret() -> None:
    parties = ["a", "b", "c", "d"]
    met = {p: {p} for p in parties}
    for hop in (1, 2, 3):
        for applier, owner in ring_sources(parties, hop).items():
            assert applier not in met[owner]
            met[owner].add(applier)
    assert all(m == set(parties) for m in met.values())
    assert sensitivity_cells(3) == 1 and sensitivity_cells(4) == 2 and sensitivity_cells(2) == 1


def test_bad_inputs_and_hostile_relays_are_refused_with_their_message() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        keyed_identifiers(["x"], b"short")
    blinder = Blinder.fresh()
    assert "secret" in repr(blinder) and blinder.scalar.hex() not in repr(blinder)
    with pytest.raises(
        SpecError, match="area 'E01' has 3 residents, more than the spec's max_per_area \\(2\\)"
    ):
        blinder.blind([keyed_identifiers(["a", "b", "c"], KEY)], 2, ["E01"])
    assert len(blinder.blind([keyed_identifiers(["a", "A", "b"], KEY)], 2, ["E01"])) == 2 * POINT_BYTES
    with pytest.raises(ProtocolError, match="has 31 bytes; 1 areas of 1 points need 32"):
        blinder.reblind(b"\x01" * 31, 1, 1)
    with pytest.raises(ProtocolError, match="invalid point \\(area 0, item 0\\)"):
        blinder.reblind(b"\x00" * 32, 1, 1)  # small order
    nacl = pytest.importorskip("nacl.bindings")
    point = blinder.blind([keyed_identifiers(["a"], KEY)], 1, ["E01"])
    order_two = bytes.fromhex("ec" + "ff" * 30 + "7f")
    shifted = nacl.crypto_core_ed25519_add(point, order_two)  # a point with a torsion part
    with pytest.raises(ProtocolError, match="invalid point \\(area 0, item 1\\)"):
        blinder.reblind(point + shifted, 1, 2)
    with pytest.raises(SpecError, match="over 4,000,000 points per list"):
        blinder.reblind(b"", 4001, 1000)
    good = blinder.blind([keyed_identifiers(["a"], KEY)], 2, ["E01"])
    with pytest.raises(ProtocolError, match="blinded list 1 holds one point twice"):
        pattern_counts([good, good[:32] * 2], 1, 2)
    with pytest.raises(ProtocolError, match="needs 2 to 8 lists, not 1"):
        pattern_counts([good], 1, 2)
    with pytest.raises(SpecError, match="needs 2 to 8 agencies, not 1"):
        ring_sources(["a"], 1)
    with pytest.raises(SpecError, match=r"hop 2 is outside 1\.\.1"):
        ring_sources(["a", "b"], 2)


def _counts(
    holdings: Mapping[str, Mapping[str, Sequence[str]]], relay: Sequence[int] | None = None
) -> list[int]:
    """The combination counts of a full ring; `relay` picks which list the counter gets in each
    place (a hostile relay may hand it one agency's list twice)."""
    final, _ = _ring(holdings)
    chosen = [final[i] for i in relay] if relay is not None else final
    return [int(v) for v in pattern_counts(chosen, len(AREAS), SIZE).reshape(-1)]


@pytest.mark.parametrize(
    ("homes", "relay"),
    [
        ({"a": "E01009564", "b": "E01009565", "c": "E01009564"}, None),
        ({"a": "E01009564", "b": "E01009564", "c": "E01009564"}, None),
        ({"a": "E01009564", "b": "E01009565", "c": "E01009566", "d": "E01009564"}, None),
        ({"a": "E01009564", "b": "E01009565", "c": "E01009564", "d": "E01009565"}, None),
    ],
)
def test_one_resident_moves_at_most_sensitivity_cells_counts_by_one(
    homes: dict[str, str], relay: list[int] | None
) -> None:
    """The counter's release is calibrated to sensitivity floor(n/2): removing one resident
    (held by every agency, in whichever area each has them) changes the combination counts by at
    most that much in L1."""
    others = {p: {a: [f"{p}-{a}-{i}" for i in range(3)] for a in AREAS} for p in homes}
    shared = {a: [f"SHARED-{a}-{i}" for i in range(4)] for a in AREAS}  # in every agency's lists
    base = {p: {a: others[p][a] + shared[a] for a in AREAS} for p in homes}
    with_x = {p: {a: base[p][a] + (["RESIDENT-X"] if homes[p] == a else []) for a in AREAS} for p in homes}
    change = sum(abs(x - y) for x, y in zip(_counts(with_x, relay), _counts(base, relay), strict=True))
    assert 1 <= change <= sensitivity_cells(len(homes))


def test_a_relay_that_hands_the_counter_one_list_twice_would_move_more_cells() -> None:
    """Why every list carries a tag binding it to its agency (checked by the counter, see
    tests/integration/test_overlap.py): one agency's list in two places makes its padding count
    as matches, so one resident would move two cells, past the calibrated sensitivity."""
    homes = {"a": "E01009564", "b": "E01009565", "c": "E01009564"}
    base = {p: {a: [f"{p}-{a}-{i}" for i in range(3)] for a in AREAS} for p in homes}
    with_x = {p: {a: base[p][a] + (["RESIDENT-X"] if homes[p] == a else []) for a in AREAS} for p in homes}
    change = sum(
        abs(x - y) for x, y in zip(_counts(with_x, [0, 0, 2]), _counts(base, [0, 0, 2]), strict=True)
    )
    assert change == 2 > sensitivity_cells(3)
