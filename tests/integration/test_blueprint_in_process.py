"""A blueprint through every line of node and coordinator logic, in one process."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from analyses.blueprint import load_bundled, parse_blueprint
from coordinator.blueprints.runner import run_blueprint
from coordinator.embedded.example_data import write_blueprint_federation
from coordinator.embedded.twin import InProcessTransport
from node_agent.agent import NodeAgent
from node_agent.config import load_node_config


@pytest.fixture
def arson_agents(tmp_path: Path) -> Iterator[list[NodeAgent]]:
    blueprint = load_bundled("arson").blueprint
    configs = write_blueprint_federation(tmp_path / "partners", [(blueprint, blueprint.resolve())])
    agents = [NodeAgent(load_node_config(path)) for path in configs.values()]
    yield agents
    for agent in agents:
        agent.close()


def test_parameters_reach_the_nodes_and_set_what_they_debit(
    arson_agents: list[NodeAgent], tmp_path: Path
) -> None:
    run = run_blueprint(
        load_bundled("arson"), {"rho": "0.2"}, InProcessTransport(arson_agents), tmp_path / "out"
    )
    assert not run.failures
    assert run.debited() == {"fire": pytest.approx(0.2), "police": pytest.approx(0.2)}
    for agent in arson_agents:
        (entry,) = agent.ledger.entries()
        assert entry.rho == pytest.approx(0.2) and entry.population == "deliberate_fires"
    table = run.table("arson_profile.by_type").frame
    # planted shares: refuse 30%, vehicles 20%, ... schools 4%
    assert table.set_index("building_type")["count"].idxmax() == "refuse"


def test_an_output_that_cannot_be_drawn_says_why_and_the_rest_render(
    arson_agents: list[NodeAgent], tmp_path: Path
) -> None:
    text = (resources.files("analyses") / "blueprints" / "arson.yaml").read_bytes()
    broken = text.replace(b"x: building_type, value: count}", b"x: building_type, value: nonexistent}", 1)
    assert broken != text
    run = run_blueprint(
        parse_blueprint(broken, "arson-edited"), {}, InProcessTransport(arson_agents), tmp_path / "out"
    )
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Not available: column &#x27;nonexistent&#x27; not found" in report
    assert report.count('class="area"') == len(run.table("arson_profile.by_area").frame)


def test_an_analysis_nobody_holds_fails_alone(tmp_path: Path) -> None:
    """Partners of another blueprint hold none of arson's datasets: every analysis fails with the
    reason, nothing is debited, and the report still says what happened."""
    road = load_bundled("road_safety").blueprint
    configs = write_blueprint_federation(tmp_path / "partners", [(road, road.resolve())])
    agents = [NodeAgent(load_node_config(path)) for path in configs.values()]
    try:
        run = run_blueprint(load_bundled("arson"), {}, InProcessTransport(agents), tmp_path / "out")
        assert [agent.ledger.entries() for agent in agents] == [[], []]
    finally:
        for agent in agents:
            agent.close()
    assert list(run.failures) == ["arson_profile"]
    assert "no partner released anything" in run.failures["arson_profile"]
    assert run.debited() == {}
    assert "Not available" in (tmp_path / "out" / "report.html").read_text()
