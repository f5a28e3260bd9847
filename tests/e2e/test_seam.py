"""The in-process twin answers as a real node does: the same request sent to `oda-node` processes
over Flower and to node agents in this process (same data, their own ledgers) gives replies of
the same structure, field for field, with the same refusal kinds and messages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

import pytest

from analyses.reply import NodeRelease
from analyses.request import AnalysisRequest
from coordinator.embedded.federation import EmbeddedFederation
from coordinator.embedded.twin import InProcessTransport
from coordinator.run.transport import NodeReply
from node_agent.agent import NodeAgent
from node_agent.config import load_node_config

pytestmark = pytest.mark.e2e

RELEASES = """
version: 1
name: seam
dataset: incidents
privacy: {rho: 0.4, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c, by: [{column: area, keyset: coventry_lsoa11}]}
  - {kind: mean, id: m, column: harm, bounds: [0, 100], by: [{column: occurred_at, derive: hour}]}
  - {kind: sum, id: s, column: age, bounds: [0, 120]}
  - {kind: quantile, id: q, column: age, bounds: [0, 120], bins: 60, quantiles: [0.5]}
"""
REQUESTS = {
    "release": RELEASES,
    "policy": RELEASES.replace("rho: 0.4", "rho: 3.0"),  # over policy.max_rho_per_analysis
    "spec": RELEASES.replace("column: age, bounds: [0, 120]}", "column: shoe_size, bounds: [0, 60]}"),
    "not held": RELEASES.replace("dataset: incidents", "dataset: hospital_admissions"),
}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedFederation, InProcessTransport]]:
    work = tmp_path_factory.mktemp("seam")
    with EmbeddedFederation(work / "fed", rows=5_000) as fed:
        agents = [
            NodeAgent(load_node_config(path).model_copy(update={"state_dir": str(work / "twin" / partner)}))
            for partner, path in fed.configs.items()
        ]
        try:
            yield fed, InProcessTransport(agents)
        finally:
            for agent in agents:
                agent.close()


def _shape(reply: NodeReply) -> object:
    """Everything about a reply but its noise, its audit position and its snapshot ids."""
    if isinstance(reply.reply, NodeRelease):
        r = reply.reply
        steps = [
            (
                s.step_id,
                s.kind,
                [
                    (m.name, len(m.values), m.mechanism, m.sensitivity, m.rho, m.unit_value)
                    for m in s.measurements
                ],
            )
            for s in r.steps
        ]
        stamped = r.audit_seq is not None and r.audit_head is not None
        return ("release", sorted(asdict(r)), r.status, r.cost_rho, steps, sorted(r.snapshots), stamped)
    return ("refusal", reply.reply.kind, reply.reply.error, reply.reply.message)


@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_the_twin_replies_as_a_real_node_does(
    both: tuple[EmbeddedFederation, InProcessTransport], case: str
) -> None:
    fed, twin = both
    request = AnalysisRequest(1, f"seam-{case.replace(' ', '-')}", "central", REQUESTS[case])
    link = fed.link()
    try:
        over_flower = {r.reply.partner: _shape(r) for r in link.broadcast(request, timeout=60)}
    finally:
        link.close()
    in_process = {r.reply.partner: _shape(r) for r in twin.broadcast(request, timeout=60)}
    assert over_flower == in_process
    kinds = {shape[0] if shape[0] == "release" else shape[1] for shape in in_process.values()}
    assert kinds == {"release" if case in ("release", "not held") else case}
