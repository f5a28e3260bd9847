"""`coordinator.yaml`: where the coordinator listens, and its creation with the PKI.

`oda coordinator init DIR` writes `DIR/coordinator.yaml`, the CA and the server certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from analyses.documents import load_document
from coordinator.deploy.pki import create_ca, issue_server_certificate
from privacy.errors import ConfigError

__all__ = ["CONFIG_NAME", "CoordinatorConfig", "init_coordinator", "load_coordinator"]

CONFIG_NAME = "coordinator.yaml"


class PopulationPolicy(BaseModel):
    """People several agencies may hold (residents), and the most privacy loss one of them may
    bear over every run, summed over every agency that could hold them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    datasets: dict[str, list[str]] = Field(
        min_length=1,
        max_length=200,
        description="logical dataset -> the partners that may hold it (a resident may be in each)",
    )
    max_rho: float = Field(
        gt=0, le=100, description="the federation-wide cap: zCDP rho one resident may bear"
    )

    @field_validator("datasets")
    @classmethod
    def _holders(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for dataset, partners in value.items():
            if not partners or len(partners) > 1000 or len(set(partners)) != len(partners):
                raise ValueError(f"dataset {dataset!r}: list the partners that may hold it, each once")
        return value

    def holders(self) -> list[str]:
        """Every partner that may hold one of the population's datasets."""
        return sorted({p for partners in self.datasets.values() for p in partners})


class CoordinatorConfig(BaseModel):
    """`coordinator.yaml`: where the coordinator listens. The SuperLink is always on loopback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=120, description="the federation's name (the CA's name)")
    fleet_listen: str = Field(
        default="0.0.0.0:9092",  # the public face is meant to be reachable
        pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="HOST:PORT the public Fleet proxy listens on",
    )
    fleet_address: str = Field(
        pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="HOST:PORT partners put in node.yaml as `coordinator:`",
    )
    fleet_hold_seconds: float = Field(
        default=10.0,
        ge=0,
        le=25,
        description="how long the Fleet proxy holds an idle node's pull for work (0: answer at once, "
        "so every node's poll reaches the SuperLink)",
    )
    superlink_port: int = Field(default=9091, ge=1, le=65535, description="the SuperLink's port on 127.0.0.1")
    database: str | None = Field(
        default="superlink.db",
        description="the SuperLink's state (registered node keys, runs), relative to this folder; "
        "null keeps it in memory, so node keys must be registered again after every start",
    )
    api_listen: str | None = Field(
        default=None,
        pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="HOST:PORT of the analyst API and web console (TLS, tokens); null: no API",
    )
    store_url: str | None = Field(
        default=None,
        max_length=500,
        description="the run store: a SQLAlchemy URL (postgresql+psycopg://...); null: runs.db in this folder",
    )
    concurrency: int = Field(default=2, ge=1, le=32, description="runs the analyst API executes at once")
    populations: dict[str, PopulationPolicy] = Field(
        default_factory=dict,
        max_length=50,
        description="federation-wide accounting: people held by several agencies, each capped in the rho "
        "they may bear over every run (the analyst API refuses a run that would exceed it)",
    )
    blueprints: str = Field(
        default="blueprints",
        description="the blueprint registry folder this coordinator publishes (read-only over HTTPS at "
        "/v1/blueprints), relative to this folder",
    )


def load_coordinator(folder: Path) -> CoordinatorConfig:
    """Raises: ConfigError when `folder/coordinator.yaml` is missing or invalid."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: run `oda coordinator init {folder}` first")
    return load_document(path, CoordinatorConfig, error=ConfigError)


def init_coordinator(
    folder: Path,
    name: str,
    hosts: list[str],
    fleet_listen: str,
    fleet_port: int,
    superlink_port: int,
    api_port: int | None = None,
) -> CoordinatorConfig:
    """Create the CA, the server certificate for `hosts` and `coordinator.yaml` in `folder`.

    Raises:
        ConfigError: `folder` already holds a coordinator, or a host is not a valid name.
    """
    if (folder / CONFIG_NAME).exists():
        raise ConfigError(f"{folder / CONFIG_NAME} already exists; init never overwrites a coordinator")
    if not hosts:
        raise ConfigError(
            "give at least one --host: the name or address partners use to reach the coordinator"
        )
    config = CoordinatorConfig(
        name=name,
        fleet_listen=f"{fleet_listen}:{fleet_port}",
        fleet_address=f"{hosts[0]}:{fleet_port}",
        superlink_port=superlink_port,
        api_listen=f"{fleet_listen}:{api_port}" if api_port else None,
    )
    pki_dir = folder / "pki"
    create_ca(pki_dir, f"{name} CA")
    issue_server_certificate(pki_dir, hosts)
    lines = [
        "# coordinator.yaml: written by `oda coordinator init`. Start with `oda coordinator start DIR`.",
        f"version: {config.version}",
        f"name: {name!r}",
        f"fleet_listen: {config.fleet_listen}      # the public Fleet proxy (TLS); the only open port",
        f"fleet_address: {config.fleet_address}    # what partners write as `coordinator:`",
        f"superlink_port: {superlink_port}         # the SuperLink, on 127.0.0.1 only",
        "fleet_hold_seconds: 10          # an idle node's poll waits here for work (0: answer at once)",
        "database: superlink.db          # registered node keys and runs: back it up",
        "blueprints: blueprints          # published blueprints, served read-only at /v1/blueprints",
    ]
    if config.api_listen:
        lines += [
            f"api_listen: {config.api_listen}      # the analyst API and web console (TLS, tokens)",
            "store_url: null                 # runs and users: runs.db here, or postgresql+psycopg://...",
            "concurrency: 2                  # runs executed at once",
        ]
    (folder / CONFIG_NAME).write_text("\n".join(lines) + "\n")
    return config
