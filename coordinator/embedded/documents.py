"""What the coordinator's commands need to know of partners' documents: the JSON Schemas the
project publishes (the node's among them), and what a partner's `node.yaml` says it holds."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from analyses.blueprint import Blueprint
from analyses.spec import AnalysisSpec
from coordinator.deploy.config import CoordinatorConfig
from node_agent.config import NodeConfig, load_node_config

__all__ = ["node_partners", "schema_models"]


def schema_models() -> list[tuple[str, type[BaseModel]]]:
    """The documents whose JSON Schemas are published in configs/schema (file name, model)."""
    return [
        ("analysis-spec.v1.json", AnalysisSpec),
        ("node-config.v1.json", NodeConfig),
        ("coordinator-config.v1.json", CoordinatorConfig),
        ("blueprint.v1.json", Blueprint),
    ]


def node_partners(paths: list[Path]) -> dict[str, tuple[set[str], bool]]:
    """partner -> (the datasets its node may analyse, whether it is law enforcement), from each
    `node.yaml`.

    Raises:
        ConfigError: a config that cannot be read or is invalid.
    """
    out = {}
    for path in paths:
        config = load_node_config(path)
        held = set(config.datasets) & set(config.policy.allowed_datasets)
        out[config.partner] = (held, config.policy.law_enforcement)
    return out
