"""What a node answers, and its only serialisation (node -> coordinator).

A reply is a release (noisy vectors with mechanism, scale, sensitivity, cost and 95% accuracy
of each measurement, no rows) or a typed refusal (why nothing was released: policy, budget,
approval, protocol, spec, data, or an internal error). The release's bytes are produced once:
the node audits exactly those bytes, and its audit stamp (chain position and head) travels
beside them, so the coordinator can hold each release against the node's audit entry.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

from analyses.request import PROTOCOL_VERSIONS, known_fields
from privacy.disclosure import OUTCOMES
from privacy.errors import (
    ApprovalDenied,
    ApprovalPending,
    BudgetExhausted,
    ConfigError,
    DataError,
    FederationError,
    PolicyRefusal,
    ProtocolError,
    SpecError,
    UserError,
)

__all__ = [
    "MAX_REPLY_BYTES",
    "REFUSAL_KINDS",
    "AuditStamp",
    "MeasurementRelease",
    "NodeRelease",
    "Refusal",
    "RefusalKind",
    "Reply",
    "StepRelease",
    "decode_reply",
    "encode_release",
    "refusal_of",
]

#: The outcomes a node may give a withheld cell.
SUPPRESSED = tuple(o for o in OUTCOMES if o.startswith("suppressed:"))
#: Largest reply a coordinator reads (a 200,000-cell release is a few MB).
MAX_REPLY_BYTES = 64_000_000

RefusalKind = Literal[
    "policy",
    "budget",
    "approval_pending",
    "approval_denied",
    "protocol",
    "spec",
    "data",
    "config",
    "internal",
    "timeout",
]
REFUSAL_KINDS: tuple[str, ...] = get_args(RefusalKind)
#: The error each refusal kind stands for, both ways (a node's error -> kind, a refusal -> the
#: coordinator's error); the more specific first (approvals are policy refusals). Other kinds:
#: `internal` and `timeout` are a `FederationError` at the coordinator.
_ERRORS: tuple[tuple[RefusalKind, type[UserError]], ...] = (
    ("approval_pending", ApprovalPending),
    ("approval_denied", ApprovalDenied),
    ("budget", BudgetExhausted),
    ("policy", PolicyRefusal),
    ("protocol", ProtocolError),
    ("spec", SpecError),
    ("data", DataError),
    ("config", ConfigError),
)


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
    #: Cells of a `by_partner` table the node withheld under its own rules before release, by
    #: row of the step's table, with the rule (`suppressed:threshold`): their values are sent
    #: as 0. Left out when empty. A coordinator that does not know it refuses the release (it
    #: changes the values' meaning), naming the field.
    withheld: tuple[tuple[int, str], ...] = ()
    #: What this node passes on, through the coordinator, to other partners (an overlap step's
    #: blinded points, as JSON text): opaque to the coordinator. Left out when empty.
    relay: str = ""

    def measurement(self, name: str) -> MeasurementRelease:
        return next(m for m in self.measurements if m.name == name)


@dataclass(frozen=True)
class AuditStamp:
    """Where a release stands in its node's audit chain: entry number and chain head."""

    seq: int
    head: str


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
    #: Not part of the release's bytes: the audit entry's payload hash covers those bytes.
    audit_seq: int | None = None
    audit_head: str | None = None
    #: Per dataset the release read, an id of the node's loaded snapshot of it: random, chosen
    #: when the node loaded the data, so it says nothing about the rows (the node's own audit
    #: log keeps each snapshot's content hash).
    snapshots: dict[str, str] = field(default_factory=dict)

    def stamped(self, stamp: AuditStamp | None) -> NodeRelease:
        """This release with its audit stamp filled in."""
        if stamp is None:
            return self
        return replace(self, audit_seq=stamp.seq, audit_head=stamp.head)

    def stamp(self) -> AuditStamp | None:
        if self.audit_seq is None or self.audit_head is None:
            return None
        return AuditStamp(self.audit_seq, self.audit_head)


@dataclass(frozen=True)
class Refusal:
    """Why a node released nothing for a request, typed by what a person can do about it."""

    partner: str
    kind: RefusalKind
    #: The node's error type, for people reading it (`BudgetExhausted`).
    error: str
    message: str
    #: The request refused (the coordinator fills it in for the rounds of a model run).
    request_id: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    def exception(self) -> UserError:
        """The error this refusal is on the coordinator's side (its exit code follows the kind)."""
        text = f"{self.partner}: {self.message}"
        return dict(_ERRORS).get(self.kind, FederationError)(text)


Reply = NodeRelease | Refusal


def refusal_of(exc: BaseException, partner: str, message: str) -> Refusal:
    """The typed refusal for an error a node raised (`message` is what the reply may say)."""
    kind: RefusalKind = next((k for k, error in _ERRORS if isinstance(exc, error)), "internal")
    return Refusal(partner, kind, type(exc).__name__, message)


def encode_release(release: NodeRelease) -> bytes:
    """A release's bytes (canonical JSON, the audit stamp left out): made once, audited, sent."""
    body = asdict(release)
    del body["audit_seq"], body["audit_head"]
    for step in body["steps"]:
        if not step["withheld"]:
            del step["withheld"]
        if not step["relay"]:
            del step["relay"]
    return json.dumps(body, sort_keys=True).encode()


def decode_reply(payload: bytes | str, *, refused: bool = False, stamp: AuditStamp | None = None) -> Reply:
    """A node's reply: its release (with `stamp`), or its refusal when `refused` (the transport
    says which: Flower delivers refusals as error replies).

    Raises:
        ProtocolError: malformed, too large, or of a protocol version this side does not speak.
    """
    if len(payload) > MAX_REPLY_BYTES:
        raise ProtocolError(f"a reply is over {MAX_REPLY_BYTES:,} bytes")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed reply: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("malformed reply: not an object")
    if refused:
        return _refusal(data)
    try:
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
                    MeasurementRelease(**{**_known(m, MeasurementRelease), "values": tuple(m["values"])})
                    for m in s["measurements"]
                ),
                withheld=_withheld(s.get("withheld", [])),
                relay=_relay(s.get("relay", "")),
            )
            for s in map(_known_step, data["steps"])
        )
        return NodeRelease(**{**_known(data, NodeRelease), "steps": steps}).stamped(stamp)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed release: {exc}") from exc


#: Most withheld cells a release may list (the most cells a step has).
MAX_WITHHELD = 200_000


def _withheld(data: object) -> tuple[tuple[int, str], ...]:
    """A release's withheld cells: [row, rule] pairs, each rule a suppression outcome."""
    if not isinstance(data, list) or len(data) > MAX_WITHHELD:
        raise ValueError(f"withheld must be a list of at most {MAX_WITHHELD:,} [row, rule] pairs")
    out = []
    for pair in data:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError("each withheld cell is a [row, rule] pair")
        row, rule = pair
        if type(row) is not int or row < 0 or rule not in SUPPRESSED:
            raise ValueError(
                f"withheld cell {str(pair)[:80]} is not [row >= 0, one of {', '.join(SUPPRESSED)}]"
            )
        out.append((row, rule))
    return tuple(out)


def _relay(data: object) -> str:
    """A release's relay: text (its size is bounded by the reply's)."""
    if not isinstance(data, str):
        raise ValueError("relay must be text")
    return data


def _known_step(data: object) -> dict[str, Any]:
    return _known(data, StepRelease)


def _known(data: object, cls: type[MeasurementRelease | StepRelease | NodeRelease]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"a {cls.__name__} must be an object")
    names = frozenset(f.name for f in fields(cls))
    return known_fields(data, names, "release", "coordinator")


def _refusal(data: dict[str, object]) -> Refusal:
    """A refusal; one from a node that predates refusal kinds is typed by its error name."""
    error = str(data.get("error", ""))
    given = data.get("kind")
    by_name: dict[str, RefusalKind] = {
        "BudgetExhausted": "budget",
        "PolicyRefusal": "policy",
        "ProtocolError": "protocol",
        "SignatureError": "protocol",
        "SpecError": "spec",
        "DataError": "data",
        "ConfigError": "config",
    }
    kinds: tuple[RefusalKind, ...] = get_args(RefusalKind)
    kind = next((k for k in kinds if k == given), by_name.get(error, "internal"))
    return Refusal(str(data.get("partner", "")), kind, error, str(data.get("message", "")))
