"""What the coordinator sends a node, and its only serialisation (coordinator -> node).

A request carries the analysis spec as YAML text, which each node parses itself (no plan or
OpenDP JSON is ever accepted), and for a model step the round state. Every field is bounded
when a node reads it (`from_bytes`): a coordinator may be hostile.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass

from privacy.errors import ProtocolError

__all__ = [
    "MAX_PURPOSE_CHARS",
    "MAX_RELAY_CHARS",
    "MAX_REQUESTER_CHARS",
    "MAX_REQUEST_BYTES",
    "MAX_SPEC_CHARS",
    "PROTOCOL_VERSIONS",
    "REQUEST_ID",
    "AnalysisRequest",
    "known_fields",
]

#: Message protocol major versions this code speaks.
PROTOCOL_VERSIONS = (1,)
#: What a request id may look like: it is written to the audit log and echoed in replies.
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
#: Longest requester name (`alice@west-midlands`).
MAX_REQUESTER_CHARS = 200
#: Longest spec a request may carry.
MAX_SPEC_CHARS = 1_000_000
#: Largest request message, before it is parsed (besides a relay, below).
MAX_REQUEST_BYTES = 2_000_000
#: Longest relay a request may carry: what the coordinator passes on from other partners for an
#: overlap step (blinded points, base64), at most a 4M-point list and its tag.
MAX_RELAY_CHARS = 180_000_000
#: Most entries in a request's round state (a model's coefficients and a few fields).
MAX_STATE_ITEMS = 4096
#: Longest purpose an analyst may state for a run (shown in the node's inbox and audit log).
MAX_PURPOSE_CHARS = 500
#: Fields a request may carry; `run_id` and `purpose` are optional and left out when unset, so
#: a request without them has the same bytes as before they existed.
_FIELDS = frozenset(
    {"protocol", "request_id", "requester", "spec_yaml", "state", "run_id", "purpose", "relay"}
)
#: The field in which a message lists its fields a receiver that does not know them may ignore.
OPTIONAL = "optional"


def known_fields(data: dict[str, object], names: frozenset[str], what: str, side: str) -> dict[str, object]:
    """`data`'s fields this release knows, for a message of a minor version newer or older.

    **Minor versions.** A sender leaves out every optional field that holds its default (so an
    older receiver sees the message it always saw), and lists under `optional` the new fields
    a receiver may ignore (each object of the message its own). A field neither known here nor
    listed there changes the message's meaning: it is refused, naming it, rather than guessed
    at. Fields known here but missing are filled with their defaults by the caller.

    Raises:
        ProtocolError: a field this side does not know and may not ignore, or a bad `optional`.
    """
    optional = data.get(OPTIONAL, [])
    if not isinstance(optional, list) or len(optional) > 64 or not all(isinstance(o, str) for o in optional):
        raise ProtocolError(f"malformed {what}: `optional` must be a short list of field names")
    unknown = sorted(set(data) - names - {OPTIONAL})
    critical = [f for f in unknown if f not in optional]
    if critical:
        raise ProtocolError(
            f"the {what} has field {_preview(critical[0])}, which this {side} does not know and may not "
            "ignore (a newer minor version of the protocol): upgrade oda-federated on this side"
        )
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class AnalysisRequest:
    """What the coordinator sends: the spec as YAML text, which each node parses itself, and for
    a model step the round state (phase, round, coefficients), which the node validates."""

    protocol: int
    request_id: str
    requester: str
    spec_yaml: str
    state: dict[str, object] | None = None
    #: The coordinator's run this request belongs to (the analyst service's run id).
    run_id: str | None = None
    #: Why the analyst runs it, in their words.
    purpose: str | None = None
    #: What the coordinator relays to this node from other partners (an overlap step's blinded
    #: lists, as JSON text the step's node code reads with its own bounds); different per node.
    relay: str | None = None

    def to_bytes(self) -> bytes:
        """The request as the node receives it (canonical JSON; unset optional fields left out)."""
        data = asdict(self)
        for optional in ("run_id", "purpose", "relay"):
            if data[optional] is None:
                del data[optional]
        return json.dumps(data, sort_keys=True).encode()

    def to_json(self) -> str:
        """`to_bytes` as text (what a Flower record holds)."""
        return self.to_bytes().decode()

    def check(self) -> AnalysisRequest:
        """Every field of the right type and within its bounds, checked before anything else
        reads it (a coordinator may be hostile: an unbounded id once bricked the audit log).

        Raises:
            ProtocolError: naming the field and the limit.
        """
        if type(self.protocol) is not int or self.protocol not in PROTOCOL_VERSIONS:
            raise ProtocolError(
                f"request protocol {self.protocol!r} is not supported; this node speaks {list(PROTOCOL_VERSIONS)}"
            )
        if not isinstance(self.request_id, str) or not REQUEST_ID.fullmatch(self.request_id):
            raise ProtocolError(
                "request_id must be 1 to 128 letters, digits or _.:- characters"
                f" (got {_preview(self.request_id)})"
            )
        if (
            not isinstance(self.requester, str)
            or not 0 < len(self.requester) <= MAX_REQUESTER_CHARS
            or not self.requester.isprintable()
        ):
            raise ProtocolError(
                f"requester must be printable text of 1 to {MAX_REQUESTER_CHARS} characters"
                f" (got {_preview(self.requester)})"
            )
        if self.run_id is not None and (
            not isinstance(self.run_id, str) or not REQUEST_ID.fullmatch(self.run_id)
        ):
            raise ProtocolError(
                f"run_id must be 1 to 128 letters, digits or _.:- characters (got {_preview(self.run_id)})"
            )
        if self.purpose is not None and (
            not isinstance(self.purpose, str)
            or len(self.purpose) > MAX_PURPOSE_CHARS
            or not self.purpose.isprintable()
        ):
            raise ProtocolError(
                f"purpose must be printable text of at most {MAX_PURPOSE_CHARS} characters"
                f" (got {_preview(self.purpose)})"
            )
        if self.relay is not None and (not isinstance(self.relay, str) or len(self.relay) > MAX_RELAY_CHARS):
            raise ProtocolError(f"relay must be text of at most {MAX_RELAY_CHARS:,} characters")
        if not isinstance(self.spec_yaml, str):
            raise ProtocolError(f"spec_yaml must be YAML text, got {type(self.spec_yaml).__name__}")
        if len(self.spec_yaml) > MAX_SPEC_CHARS:
            raise ProtocolError(f"spec_yaml is over {MAX_SPEC_CHARS:,} characters")
        if self.state is not None:
            if not isinstance(self.state, dict):
                raise ProtocolError(f"state must be an object, got {type(self.state).__name__}")
            _check_state(self.state)
        return self

    @staticmethod
    def from_bytes(text: str | bytes) -> AnalysisRequest:
        """Parse and check a request, refusing unknown protocol versions.

        Raises:
            ProtocolError: too large, malformed, a field of the wrong type or out of bounds, or an
                unknown protocol version.
        """
        if not isinstance(text, str | bytes) or len(text) > MAX_REQUEST_BYTES + MAX_RELAY_CHARS:
            raise ProtocolError(
                f"a request must be JSON text of at most {MAX_REQUEST_BYTES:,} bytes and a relay"
            )
        try:
            data = json.loads(text)
        except RecursionError as exc:
            raise ProtocolError("malformed request: nested too deeply") from exc
        except ValueError as exc:
            raise ProtocolError(f"malformed request: {exc}") from exc
        if not isinstance(data, dict) or data.get("protocol") not in PROTOCOL_VERSIONS:
            got = data.get("protocol") if isinstance(data, dict) else None
            raise ProtocolError(
                f"request protocol {_preview(got)} is not supported; this node speaks {list(PROTOCOL_VERSIONS)}"
            )
        try:
            request = AnalysisRequest(**known_fields(data, _FIELDS, "request", "node"))  # type: ignore[arg-type]
        except TypeError as exc:
            raise ProtocolError(f"malformed request: {exc}") from exc
        return request.check()


def _preview(value: object) -> str:
    """A short, safe rendering of a value a peer sent, for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_state(state: dict[str, object]) -> None:
    """Raises: ProtocolError for a round state that is too large or holds non-plain values."""
    items = 0
    for key, value in state.items():
        if not isinstance(key, str) or len(key) > 64:
            raise ProtocolError("state keys must be short text")
        values = value if isinstance(value, list) else [value]
        items += len(values)
        if items > MAX_STATE_ITEMS:
            raise ProtocolError(f"state holds more than {MAX_STATE_ITEMS} values")
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ProtocolError(f"state field {key!r} holds a number that is not finite")
            if not isinstance(v, str | int | float | bool) or (isinstance(v, str) and len(v) > 256):
                raise ProtocolError(f"state field {key!r} must hold numbers or short text")
