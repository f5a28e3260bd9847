"""Running one analysis across the federation: send, collect, combine, write.

Transport-agnostic: anything with `broadcast(request_json, timeout) -> list[NodeReply]` will
do. `FlowerLink` is the real one; `InProcessTransport` calls node agents directly, so
integration tests exercise every line of node and coordinator logic without processes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from analyses.aggregate import ResultTable, combine
from analyses.documents import parse_document
from analyses.glm import GlmModel
from analyses.release import PROTOCOL_VERSIONS, AnalysisRequest, NodeRelease
from analyses.sgd import SgdModel
from analyses.spec import AnalysisSpec
from coordinator.outputs import write_outputs
from coordinator.replies import NodeReply
from privacy.errors import FederationError, ProtocolError, UserError

if TYPE_CHECKING:
    from node_agent.agent import NodeAgent

__all__ = ["AnalysisResult", "InProcessTransport", "Transport", "collect", "require_holders", "run_analysis"]


class Transport(Protocol):
    def broadcast(self, request_json: str, timeout: float) -> list[NodeReply]: ...


@dataclass
class InProcessTransport:
    """Node agents called directly, with Flower's reply semantics (errors become replies)."""

    agents: Sequence[NodeAgent]

    def broadcast(self, request_json: str, timeout: float) -> list[NodeReply]:
        from node_agent.agent import Pending

        replies = []
        for i, agent in enumerate(self.agents):
            try:
                outcome = agent.handle(AnalysisRequest.from_json(request_json))
                if isinstance(outcome, Pending):  # in process, nobody can approve it in time
                    message = f"{agent.config.partner} filed the request for manual approval"
                    replies.append(NodeReply(i, "timeout", json.dumps({"message": message})))
                else:
                    replies.append(NodeReply(i, "release", outcome.to_json()))
            except UserError as exc:
                body = json.dumps(
                    {
                        "partner": agent.config.partner,
                        "error": type(exc).__name__,
                        "message": agent.public_reason(exc),
                    }
                )
                replies.append(NodeReply(i, "refused", body))
        return replies


@dataclass
class AnalysisResult:
    """The outcome of one run: tables, the releases behind them, and who refused why."""

    spec: AnalysisSpec
    request_id: str
    tables: list[ResultTable]
    releases: list[NodeRelease]
    refusals: list[dict[str, str]] = field(default_factory=list)
    out_dir: Path | None = None
    seconds: float = 0.0
    model: GlmModel | SgdModel | None = None
    model_card: str = ""


def run_analysis(
    spec_text: str,
    transport: Transport,
    *,
    source: str = "spec",
    out_dir: Path | None = None,
    requester: str = "oda",
    timeout: float = 60.0,
) -> AnalysisResult:
    """Validate a spec, send it to the federation, combine the releases, write the outputs.

    Raises:
        SpecError: the spec is invalid (nothing is sent).
        FederationError: no node released anything (every refusal is in the message).
    """
    started = time.perf_counter()
    spec = parse_document(spec_text, AnalysisSpec, source=source)
    if spec.model_step() is not None:
        from coordinator.models import run_model

        result = run_model(spec, spec_text, transport, requester=requester, timeout=timeout)
    elif spec.sgd_step() is not None:
        from coordinator.models import run_sgd

        result = run_sgd(spec, spec_text, transport, requester=requester, timeout=timeout)
    else:
        request = AnalysisRequest(PROTOCOL_VERSIONS[-1], uuid.uuid4().hex, requester, spec_text)
        replies = transport.broadcast(request.to_json(), timeout)
        releases, refusals = collect(spec, replies)
        holders = require_holders(spec, releases, refusals, len(replies))
        result = AnalysisResult(spec, request.request_id, combine(spec, holders), releases, refusals)
    result.seconds = time.perf_counter() - started
    if out_dir is not None:
        write_outputs(result, out_dir)
        result.out_dir = out_dir
    return result


def collect(
    spec: AnalysisSpec, replies: Sequence[NodeReply]
) -> tuple[list[NodeRelease], list[dict[str, str]]]:
    """Parse the replies into releases for this spec, and refusals with their reasons."""
    releases: list[NodeRelease] = []
    refusals: list[dict[str, str]] = []
    for reply in replies:
        if reply.outcome == "release":
            try:
                release = NodeRelease.from_json(reply.body)
            except ProtocolError as exc:
                refusals.append({"node": str(reply.node_id), "outcome": "error", "message": str(exc)})
                continue
            if release.spec_hash != spec.spec_hash():
                refusals.append(
                    {
                        "node": release.partner,
                        "outcome": "error",
                        "message": "release is for a different spec hash",
                    }
                )
                continue
            releases.append(release)
        else:
            try:
                detail = json.loads(reply.body)
            except ValueError:
                detail = {"message": reply.body}
            refusals.append(
                {
                    "node": str(detail.get("partner", reply.node_id)),
                    "outcome": reply.outcome,
                    "error": str(detail.get("error", "")),
                    "message": str(detail.get("message", "")),
                }
            )
    return releases, refusals


def require_holders(
    spec: AnalysisSpec, releases: list[NodeRelease], refusals: list[dict[str, str]], answered: int
) -> list[NodeRelease]:
    """The releases that hold data.

    Raises:
        FederationError: none did (every refusal is in the message).
    """
    holders = [r for r in releases if r.status == "released"]
    if not holders:
        why = (
            "\n".join(f"  {r['node']}: {r['outcome']}: {r['message']}" for r in refusals)
            or "  (no node held the dataset)"
        )
        datasets = sorted({spec.dataset_of(s) for s in spec.steps})
        raise FederationError(
            f"no partner released anything for {spec.name!r} (datasets {', '.join(datasets)}; "
            f"{answered} node(s) answered):\n{why}"
        )
    return holders
