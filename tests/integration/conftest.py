"""Fixtures of the integration tests: small federations of real node agents over data a test
writes (claims with fractional costs and ages, one row per person)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from node_agent.agent import NodeAgent
from node_agent.config import load_node_config

MakeAgents = Callable[[dict[str, tuple[pd.DataFrame, int]]], list[NodeAgent]]

NODE_YAML = """
version: 1
partner: {partner}
data_dir: data
state_dir: state
datasets:
  claims:
    path: claims.parquet
    identifier: person_id
    columns:
      person_id: {{source: person_id, type: int}}
      category: {{source: category, type: str}}
      cost: {{source: cost, type: float}}
      age: {{source: age, type: float}}
      flag: {{source: flag, type: str}}
policy:
  allowed_datasets: [claims]
  allowed_analyses: ["*"]
  max_rho_per_analysis: 10.0
  total_rho_cap: {{claims: 100.0}}
  min_cell: {floor}
"""


def claims(seed: int, rows: dict[str, list[float]]) -> pd.DataFrame:
    """One row per person: each category's listed costs, with fractional ages and a flag."""
    rng = np.random.default_rng(seed)
    records = [(category, cost) for category, costs in rows.items() for cost in costs]
    return pd.DataFrame(
        {
            "person_id": np.arange(len(records)) + 1000 * seed,
            "category": [c for c, _ in records],
            "cost": [v for _, v in records],
            "age": rng.uniform(18, 90, len(records)).round(1),
            "flag": rng.choice(["yes", "no"], len(records)),
        }
    )


@pytest.fixture
def make_agents(tmp_path: Path) -> Iterator[MakeAgents]:
    made: list[NodeAgent] = []

    def make(partners: dict[str, tuple[pd.DataFrame, int]]) -> list[NodeAgent]:
        for partner, (frame, floor) in partners.items():
            folder = tmp_path / partner
            (folder / "data").mkdir(parents=True)
            frame.to_parquet(folder / "data" / "claims.parquet", index=False)
            (folder / "node.yaml").write_text(NODE_YAML.format(partner=partner, floor=floor))
            made.append(NodeAgent(load_node_config(folder / "node.yaml")))
        return made

    yield make
    for agent in made:
        agent.close()
