"""Shared fixtures: a three-partner synthetic federation on disk, and its node agents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from analyses.reply import NodeRelease
from coordinator.embedded.synthetic import write_federation
from node_agent.agent import NodeAgent, Released
from node_agent.config import load_node_config

SPECS = Path(__file__).resolve().parent.parent / "configs" / "analyses"


@pytest.fixture(scope="session")
def federation_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Seeded synthetic data and node.yaml for police, fire and council (read-only use)."""
    return write_federation(tmp_path_factory.mktemp("federation"), rows=30_000, seed=11)


@pytest.fixture
def agents(federation_data: dict[str, Path], tmp_path: Path) -> Iterator[list[NodeAgent]]:
    """Fresh node agents (each with an empty ledger in tmp_path) over the shared data."""
    made = []
    for partner, path in federation_data.items():
        config = load_node_config(path).model_copy(update={"state_dir": str(tmp_path / partner)})
        made.append(NodeAgent(config))
    yield made
    for agent in made:
        agent.close()


def release_of(outcome: object) -> NodeRelease:
    """The release a node agent's `handle` or `run_approved` returned (failing the test otherwise)."""
    assert isinstance(outcome, Released), outcome
    return outcome.release
