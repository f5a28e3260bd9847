"""The coordinator's side of the seam to the nodes: what a transport must do, and what comes back.

Requests go out as `AnalysisRequest`s and come back as `NodeReply`s, each a release or a typed
refusal (`analyses.reply`). Two transports implement `Transport`: the Flower link
(`coordinator.deploy.flower`) and the in-process twin (`coordinator.embedded.twin`), which calls
each node's own reply path, so both run the same node code. Nothing else builds or parses wire
bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from analyses.reply import NodeRelease, Refusal, Reply
from analyses.request import PROTOCOL_VERSIONS, AnalysisRequest
from privacy.errors import FederationError

__all__ = [
    "FedAvgResult",
    "NodeReply",
    "Quorum",
    "QuorumNotMet",
    "RunCancelled",
    "RunContext",
    "RunWatch",
    "Transport",
    "stop_if_cancelled",
    "timed_out",
]


class RunCancelled(FederationError):
    """The run was cancelled (by its analyst or an admin) or passed its deadline while it waited;
    the nodes that had not answered were told to withdraw the request."""


class QuorumNotMet(FederationError):
    """Fewer partners released than the run needs (or a required partner did not); what those
    that released spent is in the run's manifest, which is written all the same."""


@dataclass(frozen=True)
class Quorum:
    """The partners a run needs: at least `min_partners` releases, and one from each of
    `required` (partner names). The run still waits for every partner up to its deadline."""

    min_partners: int | None = None
    required: tuple[str, ...] = ()

    def unmet(self, released: Sequence[str], missing: Sequence[tuple[str, str]]) -> str | None:
        """Why the quorum is not met by the partners that `released`, or None; `missing` is
        (partner, why) for those that did not."""
        got = set(released)
        problems = []
        if self.min_partners is not None and len(got) < self.min_partners:
            problems.append(f"{len(got)} partner(s) released, the run needs at least {self.min_partners}")
        absent = [p for p in self.required if p not in got]
        if absent:
            problems.append(f"required partner(s) did not release: {', '.join(absent)}")
        if not problems:
            return None
        why = "; ".join(f"{p}: {w}" for p, w in missing) or "none"
        return f"quorum not met: {'; '.join(problems)} (did not release: {why})"

    def to_json(self) -> dict[str, object]:
        return {"min_partners": self.min_partners, "required": list(self.required)}


class RunWatch(Protocol):
    """Someone following a run as it goes (the analyst service): told what went out and what came
    back, and asked, while replies are awaited, whether the run was cancelled."""

    def sent(self, request_id: str, nodes: Sequence[str]) -> None:
        """`request_id` went out to `nodes` (partner names where the transport knows them)."""
        ...

    def replied(self, request_id: str, node: str, reply: NodeReply) -> None:
        """`node` answered `request_id`."""
        ...

    def cancelled(self) -> str | None:
        """Why the run must stop now, or None to go on waiting."""
        ...


def stop_if_cancelled(watch: RunWatch | None) -> None:
    """Raises: RunCancelled with the watch's reason when it cancelled the run."""
    if watch is not None and (why := watch.cancelled()) is not None:
        raise RunCancelled(why)


@dataclass(frozen=True)
class RunContext:
    """Who asks, under which run and why: what every request of one run carries to the nodes
    (their audit logs and inboxes show it), and who follows the run."""

    requester: str = "oda"
    run_id: str | None = None
    purpose: str | None = None
    watch: RunWatch | None = None
    quorum: Quorum | None = None

    def request(
        self,
        request_id: str,
        spec_yaml: str,
        state: dict[str, object] | None = None,
        relay: str | None = None,
    ) -> AnalysisRequest:
        return AnalysisRequest(
            PROTOCOL_VERSIONS[-1],
            request_id,
            self.requester,
            spec_yaml,
            state,
            self.run_id,
            self.purpose,
            relay,
        )


@dataclass(frozen=True)
class NodeReply:
    """One node's reply to one request, as the transport received it."""

    #: The node as the transport knows it: a Flower node id, or a partner name.
    node: str
    reply: Reply

    @property
    def release(self) -> NodeRelease | None:
        return self.reply if isinstance(self.reply, NodeRelease) else None

    @property
    def refusal(self) -> Refusal | None:
        return self.reply if isinstance(self.reply, Refusal) else None

    @property
    def outcome(self) -> Literal["release", "refused", "error", "timeout"]:
        """What happened, in one word: a release; a refusal the requester can act on; a fault
        at the node (or a reply that could not be read); no reply in time."""
        if isinstance(self.reply, NodeRelease):
            return "release"
        if self.reply.kind == "timeout":
            return "timeout"
        return "error" if self.reply.kind == "internal" else "refused"


@dataclass(frozen=True)
class FedAvgResult:
    """Flower's FedAvg over the nodes: the final weights and every reply of every round."""

    weights: npt.NDArray[np.float64]
    replies: list[NodeReply] = field(default_factory=list)


class Transport(Protocol):
    """A way to reach every node of a federation."""

    def broadcast(
        self,
        request: AnalysisRequest,
        timeout: float,
        watch: RunWatch | None = None,
        relays: Mapping[str, str] | None = None,
    ) -> list[NodeReply]:
        """Send `request` to every node and return one reply each (a refusal of kind
        `timeout` for a node that did not answer in `timeout` seconds), telling `watch`.
        With `relays` (node as this transport names it -> relay), only those nodes get the
        request, each with its own relay (an overlap step's hops).

        Raises:
            RunCancelled: `watch` said the run was cancelled while replies were awaited.
        """
        ...

    def fedavg(
        self,
        request: AnalysisRequest,
        initial: npt.NDArray[np.float64],
        rounds: int,
        timeout: float,
        watch: RunWatch | None = None,
    ) -> FedAvgResult:
        """Train by FedAvg for `rounds` rounds from `initial` weights: each round every node gets
        the weights and `request` (with the round number) and answers with its release, its local
        model and its weight (its noisy row count).

        Raises:
            RunCancelled: as for `broadcast`.
        """
        ...


def timed_out(node: str, seconds: float) -> NodeReply:
    """The reply of a node that did not answer in time."""
    return NodeReply(node, Refusal(node, "timeout", "Timeout", f"no reply within {seconds:.0f} s"))
