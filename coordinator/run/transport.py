"""The coordinator's side of the seam to the nodes: what a transport must do, and what comes back.

Requests go out as `AnalysisRequest`s and come back as `NodeReply`s, each a release or a typed
refusal (`analyses.reply`). Two transports implement `Transport`: the Flower link
(`coordinator.deploy.flower`) and the in-process twin (`coordinator.embedded.twin`), which calls
each node's own reply path, so both run the same node code. Nothing else builds or parses wire
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from analyses.reply import NodeRelease, Refusal, Reply
from analyses.request import AnalysisRequest

__all__ = ["FedAvgResult", "NodeReply", "Transport", "timed_out"]


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

    def broadcast(self, request: AnalysisRequest, timeout: float) -> list[NodeReply]:
        """Send `request` to every node and return one reply each (a refusal of kind
        `timeout` for a node that did not answer in `timeout` seconds)."""
        ...

    def fedavg(
        self, request: AnalysisRequest, initial: npt.NDArray[np.float64], rounds: int, timeout: float
    ) -> FedAvgResult:
        """Train by FedAvg for `rounds` rounds from `initial` weights: each round every node gets
        the weights and `request` (with the round number) and answers with its release, its local
        model and its weight (its noisy row count)."""
        ...


def timed_out(node: str, seconds: float) -> NodeReply:
    """The reply of a node that did not answer in time."""
    return NodeReply(node, Refusal(node, "timeout", "Timeout", f"no reply within {seconds:.0f} s"))
