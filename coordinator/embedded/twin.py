"""The in-process twin of the Flower transport: node agents called directly, through their own
reply path.

It implements `coordinator.run.transport.Transport` as the Flower link does: each request is
turned into the bytes a node receives, handed to the node's reply path (`node_agent.reply`), and
the payload that comes back is decoded by the coordinator's own serde (`analyses.reply`). So an
integration test through the twin runs the node code a partner's node runs, FedAvg included,
without processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from analyses.reply import decode_reply
from analyses.request import AnalysisRequest
from coordinator.run.transport import FedAvgResult, NodeReply, RunWatch, stop_if_cancelled
from node_agent.agent import NodeAgent
from node_agent.reply import Answer, answer, answer_pending, answer_train

__all__ = ["InProcessTransport"]


def _decoded(agent: NodeAgent, ans: Answer) -> NodeReply:
    return NodeReply(agent.config.partner, decode_reply(ans.payload, refused=ans.refused, stamp=ans.stamp))


@dataclass
class InProcessTransport:
    """Node agents in this process, with Flower's reply semantics (errors become replies)."""

    agents: Sequence[NodeAgent]

    def broadcast(
        self,
        request: AnalysisRequest,
        timeout: float,
        watch: RunWatch | None = None,
        relays: Mapping[str, str] | None = None,
    ) -> list[NodeReply]:
        """Every agent answers `request` (with `relays`, only those named, each with its own
        relay); one filed for manual approval is refused as pending (nobody can approve it
        while the call waits)."""
        agents = [a for a in self.agents if relays is None or a.config.partner in relays]
        replies = []
        if watch is not None:
            watch.sent(request.request_id, [a.config.partner for a in agents])
        for agent in agents:
            stop_if_cancelled(watch)
            sent = request if relays is None else replace(request, relay=relays[agent.config.partner])
            ans = answer(agent, sent.to_bytes())
            replies.append(_decoded(agent, answer_pending(agent) if ans.pending is not None else ans))
            if watch is not None:
                watch.replied(request.request_id, agent.config.partner, replies[-1])
        return replies

    def fedavg(
        self,
        request: AnalysisRequest,
        initial: npt.NDArray[np.float64],
        rounds: int,
        timeout: float,
        watch: RunWatch | None = None,
    ) -> FedAvgResult:
        """FedAvg as Flower's strategy runs it: each round every agent trains from the current
        weights, and the new weights are the average of the local models weighted by their
        noisy row counts (unchanged in a round where nobody trained)."""
        payload = request.to_bytes()
        weights = np.asarray(initial, dtype=np.float64)
        replies: list[NodeReply] = []
        for round_ in range(1, rounds + 1):
            local: list[tuple[npt.NDArray[np.float64], float]] = []
            for agent in self.agents:
                stop_if_cancelled(watch)
                trained = answer_train(agent, payload, round_, weights)
                replies.append(_decoded(agent, trained.answer))
                if watch is not None:
                    watch.replied(request.request_id, agent.config.partner, replies[-1])
                if trained.weights is not None:
                    local.append((trained.weights, trained.examples))
            total = sum(n for _, n in local)
            if local and total > 0:
                weights = np.sum([w * n for w, n in local], axis=0) / total
        return FedAvgResult(weights, replies)
