"""A run's quorum: the partners it needs, checked after every partner answered or timed out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.embedded.twin import InProcessTransport
from coordinator.run.orchestrator import run_analysis
from coordinator.run.transport import Quorum, QuorumNotMet, RunContext
from node_agent.agent import NodeAgent

SPEC = """
version: 1
name: quorum-check
dataset: incidents
privacy: {rho: 0.05, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c, by: [{column: area, keyset: coventry_lsoa11}]}
"""


@pytest.mark.parametrize("quorum", [Quorum(3), Quorum(None, ("police", "council")), Quorum(1, ("fire",))])
def test_quorum_met_keeps_tables_and_says_so(agents: list[NodeAgent], tmp_path: Path, quorum: Quorum) -> None:
    result = run_analysis(
        SPEC, InProcessTransport(agents), out_dir=tmp_path, context=RunContext(quorum=quorum)
    )
    assert result.tables and result.quorum_unmet is None
    assert json.loads((tmp_path / "manifest.json").read_text())["quorum"]["met"] is True


@pytest.mark.parametrize(
    ("quorum", "message"),
    [
        (Quorum(4), r"3 partner\(s\) released, the run needs at least 4"),
        (Quorum(None, ("ambulance",)), "required partner\\(s\\) did not release: ambulance"),
    ],
)
def test_quorum_unmet_withholds_tables_and_the_manifest_records_every_spend(
    agents: list[NodeAgent], tmp_path: Path, quorum: Quorum, message: str
) -> None:
    with pytest.raises(QuorumNotMet, match=message):
        run_analysis(SPEC, InProcessTransport(agents), out_dir=tmp_path, context=RunContext(quorum=quorum))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["tables"] == [] and not list(tmp_path.glob("*.parquet"))
    assert manifest["quorum"]["met"] is False and "quorum not met" in manifest["quorum"]["why"]
    recorded = {n["partner"]: n["cost_rho"] for n in manifest["nodes"]}
    for agent in agents:  # each node's ledger spend is in the manifest
        assert sum(e.rho for e in agent.ledger.entries()) == pytest.approx(recorded[agent.config.partner])


def test_quorum_names_who_did_not_release_and_why(agents: list[NodeAgent], tmp_path: Path) -> None:
    police = next(a for a in agents if a.config.partner == "police")
    for i in range(5):  # police's cap on incidents is rho 5
        greedy = SPEC.replace("rho: 0.05", "rho: 1.0").replace("quorum-check", f"greedy-{i}")
        run_analysis(greedy, InProcessTransport([police]))
    with pytest.raises(QuorumNotMet) as caught:
        run_analysis(SPEC, InProcessTransport(agents), context=RunContext(quorum=Quorum(3)))
    text = str(caught.value)
    assert "2 partner(s) released, the run needs at least 3" in text
    assert "police: budget: privacy budget exhausted" in text
