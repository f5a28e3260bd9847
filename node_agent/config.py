"""`node.yaml`: what partner IT writes. Data sources, local policy, budget, coordinator.

Fail closed: a dataset not listed under `policy.allowed_datasets` is never read, and a
population without a cap cannot be queried.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from analyses.documents import load_document
from analyses.operators import STEP_KINDS
from analyses.step import ColumnType
from privacy.errors import ConfigError

__all__ = [
    "ALL_STEP_KINDS",
    "ColumnSpec",
    "DatasetConfig",
    "LinkageConfig",
    "NodeConfig",
    "PolicyConfig",
    "RenewalConfig",
    "SqlSource",
    "TransportConfig",
    "check_zone",
    "is_loopback",
    "load_node_config",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Model):
    """A logical column: where it comes from in the source, its type, and its contract."""

    source: str | None = Field(default=None, description="source column; default: same name")
    type: ColumnType
    required: bool = Field(default=False, description="contract: no missing values")
    min: float | None = Field(default=None, description="contract: smallest valid value")
    max: float | None = Field(default=None, description="contract: largest valid value")
    allowed: tuple[str | int, ...] | None = Field(default=None, description="contract: the valid values")
    timezone: str | None = Field(
        default=None,
        description="datetime: the zone its local times are in (IANA name); default: the dataset's",
    )
    format: str | None = Field(
        default=None,
        description="datetime: strptime pattern of the text (e.g. '%d/%m/%Y %H:%M'); default: ISO 8601",
    )

    @model_validator(mode="after")
    def _rules_fit(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"min/max apply to int or float columns, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if (self.timezone is not None or self.format is not None) and self.type != "datetime":
            raise ValueError(f"timezone and format apply to datetime columns, not {self.type}")
        if self.timezone is not None:
            check_zone(self.timezone)
        return self


def check_zone(name: str) -> ZoneInfo:
    """Raises: ValueError naming the zone when it is not an IANA time zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/London or America/Chicago"
        ) from exc


class SqlSource(_Model):
    """A table or query in a database reachable by SQLAlchemy (PostgreSQL, MariaDB, ...)."""

    url: str = Field(min_length=1, description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db")
    password_env: str | None = Field(default=None, description="environment variable holding the password")
    table: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    query: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> SqlSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' or 'query'")
        return self


class DatasetConfig(_Model):
    """A logical dataset the partner offers, mapped onto a local file or a database."""

    path: str | None = Field(default=None, description="CSV or Parquet file, relative to data_dir")
    sql: SqlSource | None = None
    format: Literal["csv", "parquet"] | None = None
    columns: dict[str, ColumnSpec] = Field(min_length=1)
    identifier: str = Field(min_length=1, description="the logical column identifying a person")
    population: str | None = Field(default=None, description="budget pool; default: dataset name")
    timezone: str = Field(
        default="Europe/London",
        description="the zone of local times without an offset, and the zone hours, weekdays and "
        "months are derived in (IANA name)",
    )

    @model_validator(mode="after")
    def _identifier_declared(self) -> DatasetConfig:
        if (self.path is None) == (self.sql is None):
            raise ValueError("give exactly one source: 'path' (CSV or Parquet) or 'sql'")
        if self.identifier not in self.columns:
            raise ValueError(f"identifier {self.identifier!r} is not one of the declared columns")
        check_zone(self.timezone)
        return self

    def zone_of(self, column: str) -> ZoneInfo:
        """The time zone of a datetime column: its own, or the dataset's."""
        return ZoneInfo(self.columns[column].timezone or self.timezone)

    def file_format(self) -> Literal["csv", "parquet"]:
        if self.format is not None:
            return self.format
        return "parquet" if (self.path or "").endswith((".parquet", ".pq")) else "csv"


#: Every step kind the installed release knows (from the registry of step kinds).
ALL_STEP_KINDS: tuple[str, ...] = STEP_KINDS


class RenewalConfig(_Model):
    """The total caps renew: spending counts from the start of the current period only."""

    every_days: int = Field(ge=1, le=3660)
    start: date = Field(description="first day of the first period (YYYY-MM-DD)")

    def period_start(self, now: datetime) -> datetime:
        """Midnight UTC of the first day of the period containing `now`.

        Before `start`, all spending since the node began counts (one period from the epoch):
        a start date in the future must not leave the caps open until it comes.
        """
        origin = datetime.combine(self.start, datetime.min.time(), tzinfo=UTC)
        if now < origin:
            return datetime.fromtimestamp(0, UTC)
        periods = (now - origin).days // self.every_days
        return origin + timedelta(days=periods * self.every_days)


class PolicyConfig(_Model):
    """Local rules the node enforces whatever the coordinator asks."""

    allowed_datasets: tuple[str, ...] = Field(min_length=1)
    allowed_analyses: tuple[str, ...] = Field(
        min_length=1, description="analysis names this node answers (shell patterns; '*' for any)"
    )
    allowed_steps: tuple[str, ...] = Field(
        default=ALL_STEP_KINDS,
        min_length=1,
        description="step kinds analyses may use",
        json_schema_extra={"items": {"enum": list(STEP_KINDS)}},
    )
    allowed_columns: dict[str, tuple[str, ...]] | None = Field(
        default=None, description="dataset -> columns analyses may read; default: all declared"
    )
    max_rho_per_analysis: float = Field(gt=0, le=10)
    total_rho_cap: dict[str, float] = Field(min_length=1, description="population -> rho cap")
    renewal: RenewalConfig | None = Field(default=None, description="default: caps never renew")
    min_cell: int = Field(default=10, ge=0, le=1000)
    approval: Literal["auto", "manual"] = "auto"
    law_enforcement: bool = Field(
        default=False,
        description="this partner processes for law enforcement purposes (a competent authority under "
        "DPA 2018 Part 3); analyses marked law_enforcement_only run only where this is true",
    )

    @field_validator("allowed_steps")
    @classmethod
    def _known_steps(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [k for k in value if k not in STEP_KINDS]
        if unknown:
            raise ValueError(f"unknown step kind {unknown[0]!r}; known: {', '.join(STEP_KINDS)}")
        return value

    @model_validator(mode="after")
    def _caps_positive(self) -> PolicyConfig:
        for population, cap in self.total_rho_cap.items():
            if not 0 < cap <= 100:
                raise ValueError(f"total_rho_cap[{population!r}] must be in (0, 100], got {cap}")
        return self

    def allows_analysis(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed_analyses)


def is_loopback(address: str) -> bool:
    """Whether `host:port` (or `[v6]:port`) names this machine."""
    host = address.rsplit(":", 1)[0].strip("[]") if address.count(":") == 1 or "]" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TransportConfig(_Model):
    """How the node reaches the coordinator: TLS, and the key the coordinator registered."""

    ca_cert: str | None = Field(
        default=None,
        description="the coordinator's CA certificate (PEM) sent with your enrolment; "
        "default: the system's trusted CAs",
    )
    node_key: str = Field(
        default="keys/node.key", description="this node's private key; its public half is registered"
    )
    insecure: bool = Field(
        default=False, description="plain HTTP, no TLS: development on loopback only, refused otherwise"
    )
    connect_timeout: float | None = Field(
        default=None,
        gt=0,
        description="seconds to keep trying an unreachable coordinator at start; default: forever",
    )


class LinkageConfig(_Model):
    """The partnership's linkage key, which every partner holds and the coordinator never does:
    overlap steps key identifiers with it before anything is blinded (`privacy.psi`)."""

    key_file: str = Field(
        min_length=1,
        description="file holding the key (64 or more hex digits), relative to node.yaml; "
        "`oda-node linkage-key NEW_FILE` makes one to share with the other partners out of band",
    )


class NodeConfig(_Model):
    """The whole of `node.yaml`."""

    version: Literal[1] = 1
    partner: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$")
    data_dir: str = Field(default=".", description="every dataset path must stay inside it")
    state_dir: str = Field(default="./state", description="ledger and local state")
    coordinator: str | None = Field(default=None, description="the coordinator's Fleet address host:port")
    poll_interval: float = Field(default=1.0, ge=0.02, le=60)
    transport: TransportConfig = TransportConfig()
    datasets: dict[str, DatasetConfig] = Field(min_length=1)
    policy: PolicyConfig
    linkage: LinkageConfig | None = Field(
        default=None, description="overlap steps only: the partnership's linkage key; default: none (refused)"
    )

    @model_validator(mode="after")
    def _policy_matches(self) -> NodeConfig:
        problems = []
        if self.transport.insecure and self.coordinator and not is_loopback(self.coordinator):
            problems.append(
                f"transport.insecure is only allowed for a coordinator on loopback, not {self.coordinator}: "
                "remove it and set transport.ca_cert to the CA certificate the coordinator sent you"
            )
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
        for name, columns in (self.policy.allowed_columns or {}).items():
            if name not in self.datasets:
                problems.append(f"policy.allowed_columns names {name!r}, which is not under datasets")
                continue
            unknown = sorted(set(columns) - set(self.datasets[name].columns))
            if unknown:
                problems.append(f"policy.allowed_columns[{name!r}] names undeclared columns {unknown}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def population_of(self, dataset: str) -> str:
        return self.datasets[dataset].population or dataset

    def resolve(self, base: Path) -> NodeConfig:
        """Make data_dir, state_dir and key paths absolute, relative to the config file's folder."""
        data_dir = (base / self.data_dir).resolve()
        state_dir = (base / self.state_dir).resolve()
        transport = self.transport.model_copy(
            update={
                "node_key": str((base / self.transport.node_key).resolve()),
                "ca_cert": str((base / self.transport.ca_cert).resolve()) if self.transport.ca_cert else None,
            }
        )
        linkage = (
            self.linkage.model_copy(update={"key_file": str((base / self.linkage.key_file).resolve())})
            if self.linkage is not None
            else None
        )
        return self.model_copy(
            update={
                "data_dir": str(data_dir),
                "state_dir": str(state_dir),
                "transport": transport,
                "linkage": linkage,
            }
        )


def load_node_config(path: Path) -> NodeConfig:
    """Load and validate `node.yaml`, resolving folders relative to it.

    Raises:
        ConfigError: unreadable, unsafe or invalid config (every problem listed).
    """
    config = load_document(path, NodeConfig, error=ConfigError)
    return config.resolve(path.resolve().parent)
