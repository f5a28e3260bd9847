"""The wire format of what leaves a node: releases, versioned, plain JSON.

A release carries no rows: per step, noisy values in the canonical cell order of the spec's
public keys, with mechanism, scale, sensitivity, cost and 95% accuracy of each measurement.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from privacy.errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSIONS",
    "AnalysisRequest",
    "MeasurementRelease",
    "NodeRelease",
    "StepRelease",
]

#: Message protocol major versions this code speaks.
PROTOCOL_VERSIONS = (1,)


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
    #: sha256 of the content of each dataset the release read (its local snapshot).
    data_sha256: dict[str, str] = field(default_factory=dict)

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

    @staticmethod
    def from_json(text: str) -> AnalysisRequest:
        """Parse a request, refusing unknown protocol versions.

        Raises:
            ProtocolError: malformed request or unknown protocol version.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"malformed request: {exc}") from exc
        if not isinstance(data, dict) or data.get("protocol") not in PROTOCOL_VERSIONS:
            got = data.get("protocol") if isinstance(data, dict) else None
            raise ProtocolError(
                f"request protocol {got!r} is not supported; this node speaks {list(PROTOCOL_VERSIONS)}"
            )
        try:
            return AnalysisRequest(**data)
        except TypeError as exc:
            raise ProtocolError(f"malformed request: {exc}") from exc
