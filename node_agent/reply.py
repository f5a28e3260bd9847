"""The node's reply path: request bytes in, reply payload out.

One path for every transport: the Flower adapter (`node_agent.flower_node`) and the in-process
twin both call these functions with the bytes they received and send back the payload they
return, so a test through the twin runs exactly the code a partner's node runs. Every failure
becomes a typed refusal (audited, with node-local paths removed); nothing raises out of here.

- `answer`: a query (one request of an analysis, or one round of a model);
- `answer_train`: one FedAvg round (Flower's strategy sends the weights and the round number);
- `answer_approved`: a request a person approved in the inbox.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from analyses.reply import AuditStamp, NodeRelease, refusal_of
from analyses.request import AnalysisRequest
from analyses.sgd import TrainState
from node_agent.agent import NodeAgent, Pending, Released
from privacy.errors import ApprovalDenied, ApprovalPending, ProtocolError, UserError

__all__ = [
    "Answer",
    "TrainAnswer",
    "answer",
    "answer_approved",
    "answer_denied",
    "answer_pending",
    "answer_train",
    "refusal_answer",
    "refused",
]

log = logging.getLogger("oda.node")


@dataclass(frozen=True)
class Answer:
    """What a node sends back for one request: a release's payload with its audit stamp, or a
    refusal's payload; or, for a request filed for approval, nothing yet (`pending`)."""

    payload: bytes
    refused: bool
    stamp: AuditStamp | None = None
    #: A refusal for a fault of the node's own, not something the requester can change.
    internal: bool = False
    #: The release the payload carries (to record it as undelivered if sending fails).
    release: NodeRelease | None = None
    pending: Pending | None = None

    @staticmethod
    def of(released: Released) -> Answer:
        return Answer(released.payload, False, released.release.stamp(), release=released.release)


@dataclass(frozen=True)
class TrainAnswer:
    """One FedAvg round's answer: the reply, and for a release the local model and its weight."""

    answer: Answer
    weights: npt.NDArray[np.float64] | None = None
    examples: float = 0.0


def refused(agent: NodeAgent, exc: BaseException) -> Answer:
    """The typed refusal a reply carries for `exc` (logged here; audited by whoever refused)."""
    if isinstance(exc, UserError):
        log.warning("refused: %s", exc)
    else:
        log.error("internal error while handling a request", exc_info=exc)
    refusal = refusal_of(exc, agent.config.partner, agent.public_reason(exc))
    return Answer(refusal.to_bytes(), True, internal=refusal.kind == "internal")


def _unknown(message_id: str) -> AnalysisRequest:
    """The stand-in a refusal is audited under when the request itself could not be read."""
    return AnalysisRequest(0, message_id, "unknown", "")


def answer(agent: NodeAgent, payload: bytes | str, bundle_hash: str = "", message_id: str = "") -> Answer:
    """Answer one query: a release, a typed refusal, or `pending` when filed for approval."""
    try:
        request = AnalysisRequest.from_bytes(payload)
    except Exception as exc:
        return refusal_answer(agent, exc, None, bundle_hash, message_id, what="request")
    try:
        outcome = agent.handle(request, bundle_hash)  # audits its own decisions
    except Exception as exc:  # every failure becomes a reply; the node itself keeps serving
        return refused(agent, exc)
    if isinstance(outcome, Pending):
        return Answer(b"", False, pending=outcome)
    return Answer.of(outcome)


def answer_approved(agent: NodeAgent, request_id: str) -> Answer:
    """The reply to a request a person approved: its release, or why it could not be released."""
    try:
        return Answer.of(agent.run_approved(request_id))
    except Exception as exc:
        return refused(agent, exc)


def answer_denied(agent: NodeAgent, request_id: str) -> Answer:
    """The reply to a request a person denied (the refusal says who denied it and why)."""
    item = agent.inbox.get(request_id)
    return refused(
        agent,
        ApprovalDenied(f"request {request_id} was {item.status} at {agent.config.partner}: {item.reason}"),
    )


def answer_pending(agent: NodeAgent) -> Answer:
    """The reply when a request waits for a person and the transport cannot hold it."""
    why = ApprovalPending(
        f"{agent.config.partner} filed the request for manual approval; it is released only after a "
        "person approves it at the node (`oda-node approve ID`)"
    )
    return refused(agent, why)


def answer_train(
    agent: NodeAgent,
    payload: bytes | str,
    server_round: object,
    weights: npt.NDArray[np.float64],
    bundle_hash: str = "",
    message_id: str = "",
) -> TrainAnswer:
    """Answer one FedAvg round: the request is the run's, the round is Flower's `server-round`;
    the request id becomes the round's own (`RUN-trainN`), so each round is debited once."""
    request: AnalysisRequest | None = None
    try:
        base = AnalysisRequest.from_bytes(payload)
        state = TrainState.model_validate({**(base.state or {}), "round": server_round})
        request = replace(base, request_id=state.request_id(), state=state.model_dump())
        flat = np.asarray(weights, dtype=np.float64).ravel()
    except Exception as exc:
        return TrainAnswer(refusal_answer(agent, exc, request, bundle_hash, message_id, what="train message"))
    try:
        trained = agent.train(request, flat, bundle_hash)
    except Exception as exc:
        return TrainAnswer(refused(agent, exc))
    return TrainAnswer(Answer.of(trained.released), trained.weights, trained.examples)


def refusal_answer(
    agent: NodeAgent,
    exc: BaseException,
    request: AnalysisRequest | None,
    bundle_hash: str,
    message_id: str = "",
    what: str = "message",
) -> Answer:
    """Refuse a message before the agent admitted it: one that could not be read, or that the
    transport found wrong (an app bundle that is not the runner). A failure that is not a
    `UserError` is a malformed `what`. The refusal is audited under the request when it could be
    read, else under the message id."""
    why = exc if isinstance(exc, UserError) else ProtocolError(f"malformed {what}: {exc}")
    agent.refuse(request or _unknown(message_id or "unreadable"), bundle_hash, why)
    return refused(agent, why)
