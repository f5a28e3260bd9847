"""The embedded federation: a SuperLink and three partner nodes on loopback, as real processes.

Started when no coordinator is configured. Every process started here is recorded by PID and
stopped by PID, in reverse order, when the federation closes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from coordinator.synthetic import PARTNERS, write_federation
from privacy.errors import FederationError

__all__ = ["FLOWER_ENV", "EmbeddedFederation", "free_port"]

#: No phone-home from any Flower process we start.
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(predicate: object, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    tails = "\n".join(
        f"--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
        for p in logs
        if p.exists()
    )
    raise FederationError(f"{what} did not happen within {timeout:.0f} s. Last log lines:\n{tails}")


class EmbeddedFederation:
    """`with EmbeddedFederation(work_dir) as fed:` then `fed.address` is the SuperLink."""

    def __init__(
        self,
        work_dir: Path,
        rows: int = 60_000,
        seed: int = 7,
        partners: tuple[str, ...] = PARTNERS,
        manual: frozenset[str] = frozenset(),
    ) -> None:
        self.work_dir = work_dir
        self.rows = rows
        self.seed = seed
        self.partners = partners
        self.manual = manual
        self.configs: dict[str, Path] = {}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs: list[Path] = []

    def __enter__(self) -> EmbeddedFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log_path = self.work_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **FLOWER_ENV, "PYTHONUNBUFFERED": "1"}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.processes.append((name, proc))
        self.logs.append(log_path)
        return proc

    def start(self) -> None:
        configs = write_federation(
            self.work_dir, self.rows, self.seed, coordinator=self.address, manual=self.manual
        )
        self.configs = configs
        superlink = str(Path(sys.executable).with_name("flower-superlink"))
        self._spawn(
            "superlink",
            [
                superlink,
                "--insecure",
                "--isolation",
                "process",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )
        _wait_for(self._port_open, 30, f"the SuperLink on {self.address}", self.logs)
        for partner in self.partners:
            self._spawn(
                f"node-{partner}",
                [sys.executable, "-m", "node_agent.cli", "start", "--config", str(configs[partner])],
            )
        _wait_for(self._nodes_ready, 90, f"{len(self.partners)} nodes becoming ready", self.logs)

    def _port_open(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _nodes_ready(self) -> bool:
        for name, proc in self.processes:
            if proc.poll() is not None:
                raise FederationError(
                    f"{name} exited with code {proc.returncode}; see {self.work_dir / 'logs' / (name + '.log')}"
                )
        ready = 0
        for partner in self.partners:
            log = self.work_dir / "logs" / f"node-{partner}.log"
            if log.exists() and ": ready" in log.read_text(errors="replace"):
                ready += 1
        return ready == len(self.partners)

    def node_pid(self, partner: str) -> int:
        return next(p.pid for n, p in self.processes if n == f"node-{partner}")

    def stop(self) -> None:
        """Stop every process this federation started, by PID, newest first."""
        for _, proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
