"""The run store on SQLite and on the machine's PostgreSQL, and an analyst service over
in-process node agents, served for real on loopback."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx
import pytest

from coordinator.embedded.twin import InProcessTransport
from coordinator.service.accounts import add_user
from coordinator.service.api import ServiceState, build_app
from coordinator.service.client import Client
from coordinator.service.store import RunStore
from coordinator.service.worker import RunWorker
from node_agent.agent import NodeAgent
from tests.service.server import serving

PG = ("127.0.0.1", 5432)


def _postgres_up() -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(PG) == 0


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store URL: a SQLite file, or a new database on the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
        return
    if not _postgres_up():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (`.ci/run` starts it)")
    import psycopg

    name = f"oda_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Service:
    url: str
    store: RunStore
    worker: RunWorker
    tokens: dict[str, str]
    agents: list[NodeAgent]
    state: ServiceState
    opened: list[Client | httpx.Client] = field(default_factory=list)

    def client(self, user: str) -> Client:
        """A client as `user` (closed with the service)."""
        self.opened.append(Client(self.url, self.tokens[user]))
        return cast(Client, self.opened[-1])

    def http(self, user: str) -> httpx.Client:
        """Plain HTTP calls as `user` (closed with the service)."""
        self.opened.append(
            httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[user]}"})
        )
        return cast(httpx.Client, self.opened[-1])

    def close(self) -> None:
        for opened in self.opened:
            opened.close()


USERS = {"alice": "analyst", "bob": "analyst", "rita": "reviewer", "rex": "reader", "ada": "admin"}


@contextmanager
def running_service(
    agents: list[NodeAgent], tmp_path: Path, store_url: str | None = None
) -> Iterator[Service]:
    """The analyst API over in-process partners, with one account per role (its store a SQLite
    file unless `store_url` is given)."""
    store = RunStore.open(store_url or f"sqlite:///{tmp_path / 'runs.db'}")
    tokens = {name: add_user(store, name, role).token for name, role in USERS.items()}
    worker = RunWorker(store, lambda: InProcessTransport(agents), tmp_path / "results", "test-fed", poll=0.2)
    worker.start()
    state = ServiceState(store, "test-fed", tmp_path / "results", None, worker.wake)
    try:
        with serving(build_app(state)) as url:
            running = Service(url, store, worker, tokens, agents, state)
            try:
                yield running
            finally:
                running.close()
    finally:
        worker.stop()
        store.close()


@pytest.fixture
def service(agents: list[NodeAgent], tmp_path: Path, store_url: str) -> Iterator[Service]:
    """The analyst API over the three synthetic partners (police, fire, council), its run store
    on SQLite and on PostgreSQL."""
    with running_service(agents, tmp_path, store_url) as running:
        yield running
