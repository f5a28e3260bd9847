"""The wire format of what leaves a node: releases, versioned, plain JSON.

A release carries no rows: per step, noisy values in the canonical cell order of the spec's
public keys, with mechanism, scale, sensitivity, cost and 95% accuracy of each measurement.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Literal

from privacy.errors import ProtocolError

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_SPEC_CHARS",
    "PROTOCOL_VERSIONS",
    "REQUEST_ID",
    "AnalysisRequest",
    "MeasurementRelease",
    "NodeRelease",
    "StepRelease",
]

#: Message protocol major versions this code speaks.
PROTOCOL_VERSIONS = (1,)
#: What a request id may look like: it is written to the audit log and echoed in replies.
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
#: Longest requester name (`alice@west-midlands`).
MAX_REQUESTER_CHARS = 200
#: Longest spec a request may carry.
MAX_SPEC_CHARS = 1_000_000
#: Largest request message, before it is parsed.
MAX_REQUEST_BYTES = 2_000_000
#: Most entries in a request's round state (a model's coefficients and a few fields).
MAX_STATE_ITEMS = 4096


@dataclass(frozen=True)
class MeasurementRelease:
    """One noisy vector: a measurement of one step in canonical cell order."""

    name: str
    values: tuple[int, ...]
    mechanism: str
    scale: float
    sensitivity: int
    rho: float
    accuracy95: float
    unit_value: float = 1.0  # each released integer counts this many units (sum precision)
    rounding: float = 0.0  # the most rounding moved one row's contribution, in value units


@dataclass(frozen=True)
class StepRelease:
    """The measurements of one step at one node."""

    step_id: str
    kind: str
    rows_used: Literal["hidden"]
    measurements: tuple[MeasurementRelease, ...]

    def measurement(self, name: str) -> MeasurementRelease:
        return next(m for m in self.measurements if m.name == name)


@dataclass(frozen=True)
class NodeRelease:
    """Everything one node released for one analysis request."""

    protocol: int
    partner: str
    node_version: str
    request_id: str
    spec_hash: str
    status: Literal["released", "not_held"]
    steps: tuple[StepRelease, ...]
    cost_rho: float
    epsilon: float
    delta: float
    min_cell: int
    ledger_entry: int | None
    #: The node's audit chain head after this release was logged (sequence number and hash).
    #: The audit entry's payload hash covers this JSON with both fields null.
    audit_seq: int | None = None
    audit_head: str | None = None
    #: Per dataset the release read, an id of the node's loaded snapshot of it: random, chosen
    #: when the node loaded the data, so it says nothing about the rows (the node's own audit
    #: log keeps each snapshot's content hash).
    snapshots: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> NodeRelease:
        """Parse a release, refusing any protocol version this side does not speak.

        Raises:
            ProtocolError: malformed JSON, missing fields, or an unknown protocol version.
        """
        try:
            data = json.loads(text)
            if data.get("protocol") not in PROTOCOL_VERSIONS:
                raise ProtocolError(
                    f"release protocol {data.get('protocol')!r} is not supported; "
                    f"this coordinator speaks {list(PROTOCOL_VERSIONS)}"
                )
            steps = tuple(
                StepRelease(
                    step_id=s["step_id"],
                    kind=s["kind"],
                    rows_used="hidden",
                    measurements=tuple(
                        MeasurementRelease(**{**m, "values": tuple(m["values"])}) for m in s["measurements"]
                    ),
                )
                for s in data["steps"]
            )
            return NodeRelease(**{**data, "steps": steps})
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed release: {exc}") from exc


@dataclass(frozen=True)
class AnalysisRequest:
    """What the coordinator sends: the spec as YAML text, which each node parses itself, and for
    a model step the round state (phase, round, coefficients), which the node validates."""

    protocol: int
    request_id: str
    requester: str
    spec_yaml: str
    state: dict[str, object] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

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
    def from_json(text: str | bytes) -> AnalysisRequest:
        """Parse and check a request, refusing unknown protocol versions.

        Raises:
            ProtocolError: too large, malformed, a field of the wrong type or out of bounds, or an
                unknown protocol version.
        """
        if not isinstance(text, str | bytes) or len(text) > MAX_REQUEST_BYTES:
            raise ProtocolError(f"a request must be JSON text of at most {MAX_REQUEST_BYTES:,} bytes")
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
        unknown = sorted(set(data) - {"protocol", "request_id", "requester", "spec_yaml", "state"})
        if unknown:
            raise ProtocolError(f"malformed request: unknown field {_preview(unknown[0])}")
        try:
            request = AnalysisRequest(**data)
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
