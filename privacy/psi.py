"""Private set intersection cardinality between several agencies, per public area: a ring of
commutative blindings relayed by the coordinator, which learns nothing it can match.

Every agency's residents are keyed identifiers (normalised, then HMAC-SHA256 under the
partnership's linkage key, which partners share and the coordinator never holds), hashed onto
the prime-order group of edwards25519 (libsodium's Elligator 2 map, through PyNaCl). Each agency
draws a fresh secret scalar for the run. With agencies p0..p(n-1) in name order:

    blind    each agency i: its points times k_i, one block per public area, padded with random
             points to the spec's `max_per_area` and shuffled within each block  -> coordinator
    hop h    for h = 1..n-1, agency i multiplies the list of agency (i - h) mod n by k_i and
             shuffles each block again                                           -> coordinator
    count    after n-1 hops every list carries k_0...k(n-1) (the product commutes), so a resident
             held by several agencies is the same point in each of their lists; the counting
             agency finds, per area, how many points appear in exactly which lists

The coordinator relays points under at least one secret it does not hold: under the decisional
Diffie-Hellman assumption they look random, two runs over the same data share nothing, and no
dictionary of likely identifiers helps it (it lacks the linkage key too). Every block has the
public size `max_per_area`, so message sizes say nothing about an area. An agency never sees
its own points come back in an order it can follow: each hop shuffles.

What the counting agency learns: for each area, how many residents are known to exactly each
set of two or more agencies (padding points match nothing, so singletons are not told apart
from padding and are never counted here). Those sizes exist only inside its process:
`pattern_counts` returns them for the DP release, and nothing here stores or logs them.

Every message from the relay is checked before use: its length, each point on the curve and in
the prime-order subgroup (no small-order tricks to learn a secret's low bits), and no point twice
in one list. The counts' sensitivity rests on each of the n lists being its own agency's: a
resident is then at most one point in each list, so in at most floor(n/2) cells of two or more
agencies. The tags (`tag`, checked by every agency at every hop and by the counter) are what
keep a relay from putting one agency's list in two places, which would make its padding count
as matches. Pure: no transport, no files.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from privacy.errors import ConfigError, ProtocolError, SpecError

__all__ = [
    "MAX_ITEMS",
    "MAX_PARTIES",
    "MIN_KEY_BYTES",
    "POINT_BYTES",
    "Blinder",
    "SealKey",
    "combination_masks",
    "keyed_identifiers",
    "mask_parties",
    "normalise_identifier",
    "pattern_counts",
    "ring_sources",
    "sealed_for",
    "sensitivity_cells",
    "tag",
    "tag_matches",
]

#: Bytes of one group element on the wire (a compressed edwards25519 point).
POINT_BYTES = 32
#: Most points (real and padding) one list may hold over all areas.
MAX_ITEMS = 4_000_000
#: Most agencies in one ring (the counts are over 2^n patterns).
MAX_PARTIES = 8
#: A linkage key is at least this many bytes (256 bits).
MIN_KEY_BYTES = 32
_SPACES = re.compile(r"\s+")
#: Domain separation for the map onto the curve, so no other protocol's hashes collide with ours.
_DOMAIN = b"oda-federated/linkage/v1/"


def _nacl() -> Any:  # PyNaCl's bindings module (untyped), imported when an overlap runs
    try:
        from nacl import bindings
    except ImportError as exc:
        raise ConfigError("overlap steps need PyNaCl: pip install 'oda-federated[linkage]'") from exc
    return bindings


def normalise_identifier(value: object) -> str:
    """An identifier as every agency should spell it: text, trimmed, case-folded, no spaces
    (`" AB 12 3c "` and `"ab123C"` are the same person)."""
    return _SPACES.sub("", str(value)).casefold()


def keyed_identifiers(values: Sequence[object], key: bytes) -> list[str]:
    """HMAC-SHA256 of each normalised identifier under the partnership's linkage key (hex).

    Raises:
        ConfigError: the key is shorter than 256 bits.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the linkage key must be at least {MIN_KEY_BYTES} bytes (256 bits), not {len(key)}"
        )
    return [hmac.new(key, normalise_identifier(v).encode(), hashlib.sha256).hexdigest() for v in values]


def tag(key: bytes, *fields: str | bytes) -> str:
    """An authentication tag over `fields` under a key derived from the linkage key: partners
    tag what they relay (run, owner, hop, agencies, content hash), so a relay that holds no
    linkage key cannot forge, reorder or replay a list into another place of the ring.

    Raises:
        ConfigError: the key is shorter than 256 bits.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the linkage key must be at least {MIN_KEY_BYTES} bytes (256 bits), not {len(key)}"
        )
    derived = hmac.new(key, _DOMAIN + b"tag", hashlib.sha256).digest()
    mac = hmac.new(derived, digestmod=hashlib.sha256)
    for part in fields:
        data = part.encode() if isinstance(part, str) else part
        mac.update(len(data).to_bytes(8, "big") + data)
    return mac.hexdigest()


def tag_matches(key: bytes, given: object, *fields: str | bytes) -> bool:
    """Whether `given` is the tag of `fields` (compared in constant time)."""
    return isinstance(given, str) and hmac.compare_digest(given, tag(key, *fields))


@dataclass(frozen=True)
class SealKey:
    """The counting agency's key pair for one run (X25519): the last hop seals each fully
    blinded list to it, so the relay, which could compare such lists, never sees them."""

    private: bytes

    @staticmethod
    def fresh() -> SealKey:
        from nacl.public import PrivateKey

        return SealKey(bytes(PrivateKey.generate()))

    def __repr__(self) -> str:
        return "SealKey(<secret>)"

    @property
    def public(self) -> bytes:
        from nacl.public import PrivateKey

        return bytes(PrivateKey(self.private).public_key)

    def open(self, sealed: bytes) -> bytes:
        """Raises: ProtocolError when `sealed` was not sealed to this key, or was altered."""
        from nacl.exceptions import CryptoError
        from nacl.public import PrivateKey, SealedBox

        try:
            return bytes(SealedBox(PrivateKey(self.private)).decrypt(sealed))
        except (CryptoError, ValueError, TypeError) as exc:
            raise ProtocolError("a sealed list does not open with this run's key: refused") from exc


def sealed_for(public: bytes, data: bytes) -> bytes:
    """`data` sealed to an X25519 public key (libsodium's sealed box: anonymous, authenticated).

    Raises:
        ProtocolError: `public` is not a 32-byte key.
    """
    from nacl.public import PublicKey, SealedBox

    if not isinstance(public, bytes) or len(public) != 32:
        raise ProtocolError("a seal key must be 32 bytes")
    return bytes(SealedBox(PublicKey(public)).encrypt(data))


def ring_sources(parties: Sequence[str], hop: int) -> dict[str, str]:
    """At `hop` (1..n-1), each agency -> the agency whose list it blinds next.

    Raises:
        SpecError: fewer than two agencies, more than MAX_PARTIES, or a hop outside 1..n-1.
    """
    order = sorted(parties)
    n = len(order)
    if not 2 <= n <= MAX_PARTIES:
        raise SpecError(f"an overlap needs 2 to {MAX_PARTIES} agencies, not {n}")
    if not 1 <= hop < n:
        raise SpecError(f"hop {hop} is outside 1..{n - 1} for {n} agencies")
    return {order[i]: order[(i - hop) % n] for i in range(n)}


def combination_masks(n: int) -> list[int]:
    """Every set of two or more of n agencies, as a bit mask over the agencies in name order,
    smallest sets first (pairs, then triples, ...)."""
    masks = [m for m in range(1, 1 << n) if m.bit_count() >= 2]
    return sorted(masks, key=lambda m: (m.bit_count(), [i for i in range(n) if m >> i & 1]))


def mask_parties(mask: int, parties: Sequence[str]) -> tuple[str, ...]:
    """The agencies of a mask over `parties` in name order."""
    order = sorted(parties)
    return tuple(order[i] for i in range(len(order)) if mask >> i & 1)


def sensitivity_cells(n: int) -> int:
    """How many cells of `pattern_counts` one resident can change by one (at most one point in
    each of the n lists, two of them per cell): floor(n/2)."""
    return max(1, n // 2)


def _check_shape(message: bytes, areas: int, size: int, what: str) -> None:
    if not isinstance(message, bytes | bytearray):
        raise ProtocolError(f"the {what} must be bytes")
    if areas * size > MAX_ITEMS:
        raise SpecError(f"{areas:,} areas of {size:,} points is over {MAX_ITEMS:,} points per list")
    if len(message) != areas * size * POINT_BYTES:
        raise ProtocolError(
            f"the {what} has {len(message):,} bytes; {areas:,} areas of {size:,} points need "
            f"{areas * size * POINT_BYTES:,}"
        )


@dataclass(frozen=True)
class Blinder:
    """One agency's secret for one run: a random nonzero scalar of the group's prime order."""

    scalar: bytes

    @staticmethod
    def fresh() -> Blinder:
        nacl = _nacl()
        while True:
            scalar = nacl.crypto_core_ed25519_scalar_reduce(secrets.token_bytes(64))
            if any(scalar):
                return Blinder(scalar)

    def __repr__(self) -> str:  # never print the secret
        return "Blinder(<secret>)"

    def blind(self, sets: Sequence[Sequence[str]], size: int, areas: Sequence[str]) -> bytes:
        """This agency's list: for each area (in the spec's order), its keyed identifiers as
        points times the secret, padded with random points to `size` and shuffled.

        Raises:
            SpecError: an area holds more distinct identifiers than `size` (raise max_per_area).
        """
        nacl = _nacl()
        rng = secrets.SystemRandom()
        blocks = []
        for items, area in zip(sets, areas, strict=True):
            distinct = list(dict.fromkeys(items))
            if len(distinct) > size:
                raise SpecError(
                    f"area {area!r} has {len(distinct):,} residents, more than the spec's "
                    f"max_per_area ({size:,}): raise max_per_area"
                )
            points = [
                nacl.crypto_scalarmult_ed25519_noclamp(
                    self.scalar,
                    nacl.crypto_core_ed25519_from_uniform(
                        hashlib.sha256(_DOMAIN + bytes.fromhex(k)).digest()
                    ),
                )
                for k in distinct
            ]
            points += [
                nacl.crypto_core_ed25519_from_uniform(secrets.token_bytes(32))
                for _ in range(size - len(points))
            ]
            rng.shuffle(points)
            blocks.append(b"".join(points))
        return b"".join(blocks)

    def reblind(self, message: bytes, areas: int, size: int) -> bytes:
        """Another agency's list times this secret, each block shuffled again.

        Raises:
            ProtocolError: not `areas` blocks of `size` points, or a point that is not a valid
                element of the prime-order group.
        """
        _check_shape(message, areas, size, "list to blind")
        nacl = _nacl()
        rng = secrets.SystemRandom()
        out = []
        for a in range(areas):
            block = []
            for i in range(size):
                start = (a * size + i) * POINT_BYTES
                point = bytes(message[start : start + POINT_BYTES])
                try:  # libsodium refuses a non-canonical point, one off the curve, of small
                    # order or outside the prime-order subgroup
                    block.append(nacl.crypto_scalarmult_ed25519_noclamp(self.scalar, point))
                except RuntimeError as exc:
                    raise ProtocolError(
                        f"the list to blind holds an invalid point (area {a}, item {i})"
                    ) from exc
            rng.shuffle(block)
            out.append(b"".join(block))
        return b"".join(out)


def pattern_counts(lists: Sequence[bytes], areas: int, size: int) -> npt.NDArray[np.int64]:
    """For fully blinded lists (one per agency, in name order), how many points each area holds
    in exactly each combination of two or more lists: shape (areas, len(combination_masks(n))).

    Raises:
        ProtocolError: a list of the wrong size, or a point twice in one list.
    """
    n = len(lists)
    if not 2 <= n <= MAX_PARTIES:
        raise ProtocolError(f"an overlap count needs 2 to {MAX_PARTIES} lists, not {n}")
    for index, message in enumerate(lists):
        _check_shape(message, areas, size, f"blinded list {index}")
    masks = combination_masks(n)
    column = {m: j for j, m in enumerate(masks)}
    counts = np.zeros((areas, len(masks)), dtype=np.int64)
    seen: list[set[bytes]] = [set() for _ in range(n)]
    for a in range(areas):
        held: dict[bytes, int] = {}
        for index, message in enumerate(lists):
            bit = 1 << index
            base = a * size * POINT_BYTES
            for i in range(size):
                point = bytes(message[base + i * POINT_BYTES : base + (i + 1) * POINT_BYTES])
                if point in seen[index]:
                    raise ProtocolError(f"blinded list {index} holds one point twice: refused")
                seen[index].add(point)
                held[point] = held.get(point, 0) | bit
        for mask in held.values():
            j = column.get(mask)
            if j is not None:
                counts[a, j] += 1
    return counts
