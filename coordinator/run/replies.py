"""The replies to one request, sorted into releases and refusals, and the error when nobody
released anything (typed by what the nodes said)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from analyses.reply import NodeRelease, Refusal
from analyses.spec import AnalysisSpec
from coordinator.run.transport import NodeReply
from privacy.errors import FederationError, UserError

__all__ = ["Collected", "collect", "require_holders"]


@dataclass(frozen=True)
class Collected:
    """The replies to one request, sorted: releases of this spec, and refusals."""

    releases: list[NodeRelease]
    refusals: list[Refusal]


def collect(spec: AnalysisSpec, replies: Sequence[NodeReply], request_id: str = "") -> Collected:
    """Sort the replies into releases for this spec and refusals (a release for another spec is
    refused here, as a protocol error)."""
    releases: list[NodeRelease] = []
    refusals: list[Refusal] = []
    for reply in replies:
        refusal, release = reply.refusal, reply.release
        if release is not None:
            if release.spec_hash == spec.hash:
                releases.append(release)
                continue
            refusal = Refusal(
                release.partner, "protocol", "ProtocolError", "release is for a different spec hash"
            )
        if refusal is not None:
            refusals.append(replace(refusal, request_id=request_id) if request_id else refusal)
    return Collected(releases, refusals)


def require_holders(spec: AnalysisSpec, collected: Collected, answered: int) -> list[NodeRelease]:
    """The releases that hold data.

    Raises:
        UserError: none did: the error of the nodes' refusals when they agree on why (a budget
            refusal everywhere is a `BudgetExhausted`), a `FederationError` otherwise; every
            refusal is in the message.
    """
    holders = [r for r in collected.releases if r.status == "released"]
    if holders:
        return holders
    refusals = collected.refusals
    why = (
        "\n".join(f"  {r.partner}: {r.kind}: {r.message}" for r in refusals) or "  (no node held the dataset)"
    )
    datasets = sorted({spec.dataset_of(s) for s in spec.steps})
    message = (
        f"no partner released anything for {spec.name!r} (datasets {', '.join(datasets)}; "
        f"{answered} node(s) answered):\n{why}"
    )
    kinds = {r.kind for r in refusals}
    error: UserError = FederationError(message)
    if len(kinds) == 1 and kinds != {"internal"} and kinds != {"timeout"}:
        error = type(refusals[0].exception())(message)
    raise error
