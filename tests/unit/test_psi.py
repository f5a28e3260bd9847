"""PSI cardinality per area (issue 17, its core): exact sizes at the requester, nothing the
relay could match across runs, sizes hidden by padding, and every bad input refused by name."""

from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("private_set_intersection.python", reason="openmined-psi is installed by ./dev setup")

from privacy.errors import ConfigError, ProtocolError, SpecError
from privacy.psi import OverlapHolder, OverlapRequester, keyed_identifiers, normalise_identifier, padded

KEY = b"k" * 32
AREAS = ("E01009564", "E01009565", "E01009566")


def _sets(ids: dict[str, list[str]], size: int) -> dict[str, list[str]]:
    return {area: padded(keyed_identifiers(ids.get(area, []), KEY), size, area) for area in AREAS}


def _exchange(
    a: dict[str, list[str]], b: dict[str, list[str]], size: int = 64
) -> tuple[list[int], list[bytes]]:
    requester, holder = OverlapRequester(_sets(a, size)), OverlapHolder(_sets(b, size))
    setup = holder.setup(size)
    request = requester.request()
    response = holder.respond(request)
    relayed = [*setup.values(), *request.values(), *response.values()]
    return requester.sizes(setup, response), relayed


POLICE = {
    "E01009564": [f"PNC-{i:08d}" for i in range(30)],
    "E01009565": ["AB 12 3c 456 7890", "NHS-00000000x1", "NHS-00000000x2"],
}
CARE = {
    "E01009564": [f"pnc-{i:08d}" for i in range(20, 50)],  # 10 shared, in another case
    "E01009565": ["ab123C4567890", "NHS-00000000x3"],  # the same person, spelled differently
    "E01009566": ["NHS-00000000y1"],
}


def test_the_requester_learns_each_areas_exact_overlap_and_normalisation_links_spellings() -> None:
    sizes, _ = _exchange(POLICE, CARE)
    assert sizes == [10, 1, 0]
    assert normalise_identifier(" AB 12\t3c ") == normalise_identifier("ab123C") == "ab123c"


def test_two_runs_over_the_same_data_relay_nothing_in_common_and_no_identifier() -> None:
    _, first = _exchange(POLICE, CARE)
    _, second = _exchange(POLICE, CARE)

    def chunks(message: bytes) -> set[bytes]:
        return {message[i : i + 16] for i in range(0, len(message) - 16, 4)}

    shared = set.union(*map(chunks, first)) & set.union(*map(chunks, second))
    assert not {c for c in shared if len(set(c)) > 4}  # no 16-byte run beyond protobuf framing
    everything = b"".join(first + second)
    for ids in (*POLICE.values(), *CARE.values()):
        for raw in ids:
            keyed = keyed_identifiers([raw], KEY)[0]
            unkeyed = hashlib.sha256(normalise_identifier(raw).encode()).hexdigest()
            for needle in (raw, keyed, unkeyed, bytes.fromhex(keyed).hex()):
                assert needle.encode() not in everything
            assert bytes.fromhex(keyed) not in everything and bytes.fromhex(unkeyed) not in everything


def test_padding_makes_every_areas_messages_the_same_size() -> None:
    _, relayed = _exchange(POLICE, CARE)
    setups, requests, responses = relayed[0:3], relayed[3:6], relayed[6:9]
    assert len({len(m) for m in requests}) == 1 and len({len(m) for m in responses}) == 1
    assert max(len(m) for m in setups) - min(len(m) for m in setups) < 16  # compressed random points


def test_bad_inputs_are_refused_with_their_message() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        keyed_identifiers(["x"], b"short")
    with pytest.raises(
        SpecError, match="area 'E01' has more identifiers than the spec's max_per_area \\(2\\)"
    ):
        padded(["a", "b", "c"], 2, "E01")
    assert len(padded(["a", "a", "b"], 3, "E01")) == 3  # duplicates count once
    holder = OverlapHolder(_sets(CARE, 64))
    with pytest.raises(ProtocolError, match="malformed overlap request for area 'E01009564'"):
        holder.respond(dict.fromkeys(AREAS, b"\xff\x00not protobuf"))
    with pytest.raises(ProtocolError, match="areas that are not the spec's"):
        holder.respond({"E0100": b""})
    requester = OverlapRequester(_sets(POLICE, 64))
    with pytest.raises(ProtocolError, match="overlap setup has areas"):
        requester.sizes({}, {})
    with pytest.raises(ProtocolError, match="malformed overlap message for area"):
        requester.sizes(dict.fromkeys(AREAS, b"\x01"), dict.fromkeys(AREAS, b"\x02"))
