"""The embedded federation: a coordinator and three partner nodes on loopback, as real processes.

Started when no coordinator is configured. It runs the production transport: a CA of its own,
the SuperLink on loopback with TLS and node authentication, the Fleet proxy as the only address
nodes reach, and each partner's key registered before its node starts. Every process started
here is recorded by PID and stopped by PID, newest first, when the federation closes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from coordinator.deploy.config import CONFIG_NAME
from coordinator.deploy.flower import FlowerLink
from coordinator.deploy.pki import Pki, create_ca, issue_server_certificate
from coordinator.deploy.service import (
    CoordinatorService,
    ProcessGroup,
    Supervised,
    coordinator_link,
    free_port,
)
from coordinator.embedded.synthetic import PARTNERS, write_federation

__all__ = ["EmbeddedFederation", "free_port"]


def _embedded_coordinator(
    folder: Path,
    api: int = 0,
    hold: float | None = None,
    fleet_host: str = "127.0.0.1",
    database: str | None = None,
) -> None:
    """A coordinator folder on fresh ports; the CA is made once and then reused.

    Its SuperLink keeps state in memory unless `database` names a file (the keys are registered
    at every start): on disk, every Fleet call waits for an SQLite write, which made a warm query
    about 0.25 s slower. `fleet_host` is the one address the Fleet proxy listens on.
    """
    pki = folder / "pki"
    if not (pki / "ca.crt").exists():
        create_ca(pki, "oda embedded federation CA")
    if not (pki / "server.crt").exists() or fleet_host not in Pki(pki).server_hosts():
        issue_server_certificate(pki, [fleet_host, "127.0.0.1", "localhost"])
    fleet = free_port()
    (folder / CONFIG_NAME).write_text(
        "# the embedded federation's coordinator; ports are chosen afresh at each start\n"
        "version: 1\nname: oda embedded federation\n"
        f"fleet_listen: {fleet_host}:{fleet}\nfleet_address: {fleet_host}:{fleet}\n"
        f"superlink_port: {free_port()}\ndatabase: {database or 'null'}\n"
        + (f"fleet_hold_seconds: {hold}\n" if hold is not None else "")
        + (f"api_listen: 127.0.0.1:{free_port()}\nconcurrency: {api}\n" if api else "")
    )


class EmbeddedFederation(Supervised):
    """`with EmbeddedFederation(work_dir) as fed:` then `fed.link()` reaches its SuperLink."""

    def __init__(
        self,
        work_dir: Path,
        rows: int = 60_000,
        seed: int = 7,
        partners: tuple[str, ...] = PARTNERS,
        manual: frozenset[str] = frozenset(),
        partner_configs: Callable[[str, Path], dict[str, Path]] | None = None,
        api: int = 0,
        hold: float | None = None,
        fleet_host: str = "127.0.0.1",
        database: str | None = None,
        node_prefix: Callable[[str], list[str]] | None = None,
    ) -> None:
        """`partner_configs(fleet_address, ca_cert)`, when given, writes the partners' folders
        (node.yaml, data, keys/node.key and keys/node.pub) instead of the synthetic ones and
        returns partner -> node.yaml. `api` > 0 also starts the analyst API, running that many runs
        at once. `hold` overrides the Fleet proxy's `fleet_hold_seconds` (0: no held pulls).
        `fleet_host` is the address the Fleet proxy listens on and nodes connect to; `database` a
        file name for the SuperLink's state (default: in memory); `node_prefix(partner)` the argv
        a node's command is started under (e.g. `ip netns exec NS`)."""
        self.api = api
        self.hold = hold
        self.fleet_host = fleet_host
        self.database = database
        self.node_prefix = node_prefix
        self.partner_configs = partner_configs
        self.work_dir = work_dir
        self.rows = rows
        self.seed = seed
        self.partners = partners
        self.manual = manual
        self.configs: dict[str, Path] = {}
        self.processes = ProcessGroup(work_dir / "logs")
        self.coordinator_dir = work_dir / "coordinator"
        self.service: CoordinatorService | None = None

    @property
    def fleet_address(self) -> str:
        """The address nodes connect to (the proxy)."""
        assert self.service is not None, "the federation is not started"  # noqa: S101
        return self.service.config.fleet_address

    @property
    def superlink_address(self) -> str:
        assert self.service is not None, "the federation is not started"  # noqa: S101
        return self.service.superlink_address

    @property
    def ca_cert(self) -> Path:
        return self.coordinator_dir / "pki" / "ca.crt"

    def link(self) -> FlowerLink:
        """A new connection to the SuperLink's Control and Runtime APIs (close it when done)."""
        return coordinator_link(self.coordinator_dir)

    def start(self) -> None:
        _embedded_coordinator(self.coordinator_dir, self.api, self.hold, self.fleet_host, self.database)
        self.service = CoordinatorService(self.coordinator_dir, processes=self.processes)
        self.service.start()
        if self.partner_configs is not None:
            self.configs = self.partner_configs(self.fleet_address, self.ca_cert)
            self.partners = tuple(self.configs)
        else:
            self.configs = write_federation(
                self.work_dir,
                self.rows,
                self.seed,
                coordinator=self.fleet_address,
                manual=self.manual,
                ca_cert=self.ca_cert,
            )
        self._register_keys()
        for partner in self.partners:
            prefix = self.node_prefix(partner) if self.node_prefix is not None else []
            self.processes.spawn(
                f"node-{partner}",
                [
                    *prefix,
                    sys.executable,
                    "-m",
                    "node_agent.cli",
                    "start",
                    "--config",
                    str(self.configs[partner]),
                ],
            )
        self.processes.wait_for(self._nodes_ready, 90, f"{len(self.partners)} nodes becoming ready")

    def restart_coordinator(self, down: float = 0.0) -> None:
        """Stop the SuperLink and the Fleet proxy by PID, wait `down` seconds, start them again
        on the same ports (the nodes keep running). With `database` the SuperLink keeps its
        registered keys; in memory they are registered again."""
        for name in ("fleet-proxy", "superlink"):
            if any(n == name for n, _ in self.processes.processes):
                self.processes.end(name)
        time.sleep(down)
        self.service = CoordinatorService(self.coordinator_dir, processes=self.processes)
        self.service.start()
        if self.database is None:
            self._register_keys()

    def _register_keys(self) -> None:
        """Register every partner's public key with the SuperLink."""
        link = self.link()
        try:
            for partner in self.partners:
                link.register_node((self.configs[partner].parent / "keys" / "node.pub").read_bytes(), partner)
        finally:
            link.close()

    def _nodes_ready(self) -> bool:
        ready = 0
        for partner in self.partners:
            log = self.processes.log_path(f"node-{partner}")
            if log.exists() and ": ready" in log.read_text(errors="replace"):
                ready += 1
        return ready == len(self.partners)

    def node_pid(self, partner: str) -> int:
        return self.processes.pid(f"node-{partner}")

    def stop(self) -> None:
        """Stop every process this federation started, by PID, newest first."""
        self.processes.stop()
