"""Private set intersection cardinality (PSI-CA) between two partners, per public area, with
keyed identifiers and padded sets: the pieces the overlap protocol relays through the coordinator.

Built on OpenMined's `openmined-psi` (elliptic-curve Diffie-Hellman PSI on P-256, cardinality
mode: the requester learns how many of its items the other side holds, and nothing about which).
One exchange, for each public area key:

    holder (B)                          coordinator                       requester (A)
    setup = GCS of H(y)^b  ------------>  relays  ------------------------>
                           <------------  relays  <------------  request = shuffled H(x)^a
    response = H(x)^ab     ------------>  relays  ------------------------>  |X ∩ Y| per area

Before anything is hashed, each identifier is normalised (trimmed, case-folded, inner spaces
removed) and keyed with HMAC-SHA256 under the partnership's `linkage_key`, which partners share
and the coordinator never holds: what it relays are curve points of keyed values under fresh
per-run secrets, so two runs over the same data share no byte it could match, and no dictionary
of likely identifiers helps it. Each area's set is padded with random dummies to a public size
(`max_per_area`), so message sizes say nothing of how many residents an area has. A set larger
than that is refused, never truncated silently.

The exact intersection sizes exist only inside the requester's process: `OverlapRequester.sizes`
returns them for the DP release (`privacy.mechanisms.integer_gaussian`) and nothing here stores
or logs them. Pure: no transport, no files.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from privacy.errors import ConfigError, ProtocolError, SpecError

__all__ = [
    "FALSE_POSITIVE_RATE",
    "MAX_ITEMS",
    "OverlapHolder",
    "OverlapRequester",
    "keyed_identifiers",
    "normalise_identifier",
    "padded",
]

#: The holder's Golomb-compressed set answers "is it there?" wrongly for one item in a billion:
#: over a million items, a false match in one run in a thousand, far below the DP noise.
FALSE_POSITIVE_RATE = 1e-9
#: Most items (real and padding) one side may put in one exchange, over all areas.
MAX_ITEMS = 5_000_000
#: Most bytes of one relayed message a side reads (a 1M-item request is about 35 MB).
MAX_MESSAGE_BYTES = 200_000_000
_SPACES = re.compile(r"\s+")
#: A linkage key is at least this many bytes (256 bits).
MIN_KEY_BYTES = 32


def _psi() -> Any:  # the library ships no types
    try:
        import private_set_intersection.python as psi  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigError(
            "overlap steps need openmined-psi: pip install --no-deps openmined-psi==2.0.6 "
            "(its protobuf pin is older than Flower's; it runs with Flower's protobuf)"
        ) from exc
    return psi


def normalise_identifier(value: object) -> str:
    """An identifier as both agencies should spell it: text, trimmed, case-folded, no spaces
    (`" AB 12 3c "` and `"ab123C"` are the same person)."""
    return _SPACES.sub("", str(value)).casefold()


def keyed_identifiers(values: Sequence[object], key: bytes) -> list[str]:
    """HMAC-SHA256 of each normalised identifier under the partnership's linkage key.

    Raises:
        ConfigError: the key is shorter than 256 bits.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the linkage key must be at least {MIN_KEY_BYTES} bytes (256 bits), not {len(key)}"
        )
    return [hmac.new(key, normalise_identifier(v).encode(), hashlib.sha256).hexdigest() for v in values]


def padded(items: Sequence[str], size: int, area: str) -> list[str]:
    """`items` (distinct) and random dummies up to `size`: dummies are fresh 256-bit random values,
    which match nothing on the other side but with negligible probability.

    Raises:
        SpecError: more items than `size` (raise the spec's `max_per_area`).
    """
    distinct = list(dict.fromkeys(items))
    if len(distinct) > size:
        raise SpecError(
            f"area {area!r} has more identifiers than the spec's max_per_area ({size:,}): raise max_per_area"
        )
    return distinct + [secrets.token_hex(32) for _ in range(size - len(distinct))]


def _check_areas(messages: Mapping[str, bytes], areas: Sequence[str], what: str) -> None:
    if list(messages) != list(areas):
        raise ProtocolError(f"the {what} has areas that are not the spec's, or not in its order")
    if sum(len(m) for m in messages.values()) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"the {what} is over {MAX_MESSAGE_BYTES:,} bytes")


@dataclass
class OverlapHolder:
    """The side whose set is compressed and sent (B): one fresh secret for one run."""

    sets: dict[str, list[str]]  # area -> padded keyed identifiers

    def __post_init__(self) -> None:
        self._server = _psi().server.CreateWithNewKey(False)

    def setup(self, requester_size: int) -> dict[str, bytes]:
        """The holder's compressed blinded set per area (`requester_size`: the other side's
        padded set size per area, public)."""
        psi = _psi()
        return {
            area: self._server.CreateSetupMessage(
                FALSE_POSITIVE_RATE, requester_size, items, psi.DataStructure.GCS
            ).SerializeToString()
            for area, items in self.sets.items()
        }

    def respond(self, requests: Mapping[str, bytes]) -> dict[str, bytes]:
        """The requester's blinded items, blinded again with this side's secret, per area.

        Raises:
            ProtocolError: a request that is not the spec's areas, too large, or malformed.
        """
        psi = _psi()
        _check_areas(requests, list(self.sets), "overlap request")
        out = {}
        for area, data in requests.items():
            try:
                request = psi.Request()
                request.ParseFromString(data)
                out[area] = self._server.ProcessRequest(request).SerializeToString()
            except Exception as exc:  # the library raises RuntimeError and protobuf's DecodeError
                raise ProtocolError(f"a malformed overlap request for area {area!r}: {exc}") from exc
        return out


@dataclass
class OverlapRequester:
    """The side that learns the intersection sizes (A), and releases only DP counts of them."""

    sets: dict[str, list[str]]  # area -> padded keyed identifiers

    def __post_init__(self) -> None:
        self._client = _psi().client.CreateWithNewKey(False)

    def request(self) -> dict[str, bytes]:
        """This side's blinded, shuffled items per area."""
        return {
            area: self._client.CreateRequest(items).SerializeToString() for area, items in self.sets.items()
        }

    def sizes(self, setups: Mapping[str, bytes], responses: Mapping[str, bytes]) -> list[int]:
        """The exact intersection size of each area, in the spec's order: for the DP release only.

        Raises:
            ProtocolError: messages that are not the spec's areas, too large, or malformed.
        """
        psi = _psi()
        areas = list(self.sets)
        _check_areas(setups, areas, "overlap setup")
        _check_areas(responses, areas, "overlap response")
        out = []
        for area in areas:
            try:
                setup, response = psi.ServerSetup(), psi.Response()
                setup.ParseFromString(setups[area])
                response.ParseFromString(responses[area])
                out.append(int(self._client.GetIntersectionSize(setup, response)))
            except Exception as exc:  # RuntimeError from the library, DecodeError from protobuf
                raise ProtocolError(f"a malformed overlap message for area {area!r}: {exc}") from exc
        return out
