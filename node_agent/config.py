"""`node.yaml`: what partner IT writes. Data sources, local policy, budget, coordinator.

Fail closed: a dataset not listed under `policy.allowed_datasets` is never read, and a
population without a cap cannot be queried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from analyses.catalog import ColumnType
from analyses.documents import load_document
from privacy.errors import ConfigError

__all__ = ["ColumnSpec", "DatasetConfig", "NodeConfig", "PolicyConfig", "load_node_config"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Model):
    """A logical column: where it comes from in the source, and its type."""

    source: str | None = Field(default=None, description="source column; default: same name")
    type: ColumnType


class DatasetConfig(_Model):
    """A logical dataset the partner offers, mapped onto a local file."""

    path: str = Field(min_length=1, description="CSV or Parquet file, relative to data_dir")
    format: Literal["csv", "parquet"] | None = None
    columns: dict[str, ColumnSpec] = Field(min_length=1)
    identifier: str = Field(min_length=1, description="the logical column identifying a person")
    population: str | None = Field(default=None, description="budget pool; default: dataset name")

    @model_validator(mode="after")
    def _identifier_declared(self) -> DatasetConfig:
        if self.identifier not in self.columns:
            raise ValueError(f"identifier {self.identifier!r} is not one of the declared columns")
        return self

    def file_format(self) -> Literal["csv", "parquet"]:
        if self.format is not None:
            return self.format
        return "parquet" if self.path.endswith((".parquet", ".pq")) else "csv"


class PolicyConfig(_Model):
    """Local rules the node enforces whatever the coordinator asks."""

    allowed_datasets: tuple[str, ...] = Field(min_length=1)
    max_rho_per_analysis: float = Field(gt=0, le=10)
    total_rho_cap: dict[str, float] = Field(min_length=1, description="population -> rho cap")
    min_cell: int = Field(default=10, ge=0, le=1000)

    @model_validator(mode="after")
    def _caps_positive(self) -> PolicyConfig:
        for population, cap in self.total_rho_cap.items():
            if not 0 < cap <= 100:
                raise ValueError(f"total_rho_cap[{population!r}] must be in (0, 100], got {cap}")
        return self


class NodeConfig(_Model):
    """The whole of `node.yaml`."""

    version: Literal[1] = 1
    partner: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$")
    data_dir: str = Field(default=".", description="every dataset path must stay inside it")
    state_dir: str = Field(default="./state", description="ledger and local state")
    coordinator: str | None = Field(default=None, description="SuperLink Fleet address host:port")
    poll_interval: float = Field(default=1.0, ge=0.02, le=60)
    datasets: dict[str, DatasetConfig] = Field(min_length=1)
    policy: PolicyConfig

    @model_validator(mode="after")
    def _policy_matches(self) -> NodeConfig:
        problems = []
        for name in self.policy.allowed_datasets:
            if name not in self.datasets:
                problems.append(f"policy.allowed_datasets names {name!r}, which is not under datasets")
        for name in self.datasets:
            population = self.population_of(name)
            if name in self.policy.allowed_datasets and population not in self.policy.total_rho_cap:
                problems.append(
                    f"dataset {name!r} belongs to population {population!r}, which has no "
                    "policy.total_rho_cap: add one (the node refuses uncapped populations)"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def population_of(self, dataset: str) -> str:
        return self.datasets[dataset].population or dataset

    def resolve(self, base: Path) -> NodeConfig:
        """Make data_dir and state_dir absolute, relative to the config file's folder."""
        data_dir = (base / self.data_dir).resolve()
        state_dir = (base / self.state_dir).resolve()
        return self.model_copy(update={"data_dir": str(data_dir), "state_dir": str(state_dir)})


def load_node_config(path: Path) -> NodeConfig:
    """Load and validate `node.yaml`, resolving folders relative to it.

    Raises:
        ConfigError: unreadable, unsafe or invalid config (every problem listed).
    """
    config = load_document(path, NodeConfig, error=ConfigError)
    return config.resolve(path.resolve().parent)
