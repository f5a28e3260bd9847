"""What the API's routes share: the store, the registry, and hooks into the running coordinator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.deploy.config import PopulationPolicy
from coordinator.service.accounts import LoginLimiter
from coordinator.service.store import RunStore
from coordinator.service.submission import DEFAULT_DEADLINE_SECONDS

__all__ = ["ServiceState"]


@dataclass
class ServiceState:
    """What the routes need: the store, the registry, the federation's name, and hooks into
    the running coordinator (a worker to wake, the node list)."""

    store: RunStore
    federation: str
    results: Path
    registry: Path | None = None
    wake: Callable[[], None] = lambda: None
    nodes: Callable[[], list[dict[str, object]]] | None = None
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    default_deadline: int = DEFAULT_DEADLINE_SECONDS
    #: Federation-wide accounting (`coordinator.yaml` `populations:`).
    populations: dict[str, PopulationPolicy] = field(default_factory=dict)
