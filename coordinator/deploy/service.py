"""The coordinator's processes: a SuperLink on loopback and the public Fleet proxy in front of it.

`CoordinatorService(DIR)` starts both processes for the coordinator folder `DIR` (its
`coordinator.yaml` and PKI, see `coordinator.deploy.config`), with TLS everywhere and node keys
required, and stops them by PID. The embedded federation uses the same service, so the demo runs
the production transport.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, Self

from coordinator.deploy.config import CONFIG_NAME, load_coordinator
from coordinator.deploy.pki import Pki
from privacy.errors import FederationError
from privacy.exit_codes import NO_PHONE_HOME

if TYPE_CHECKING:
    from coordinator.deploy.flower import FlowerLink

__all__ = [
    "WAKE_TOKEN",
    "CoordinatorService",
    "LocalAddress",
    "ProcessGroup",
    "Supervised",
    "coordinator_link",
    "free_port",
    "local_address",
    "port_open",
    "proxy_loopback",
]


#: The secret the coordinator's processes wake the Fleet proxy's held pulls with (new at each start).
WAKE_TOKEN = "wake.token"  # noqa: S105  # a file name, not a secret


class LocalAddress(NamedTuple):
    """Where a process on this machine reaches a listener."""

    host: str
    port: int


def local_address(listen: str) -> LocalAddress:
    """The address to reach a `HOST:PORT` listener from this machine (a wildcard host is loopback)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    return LocalAddress("127.0.0.1" if host in ("0.0.0.0", "::") else host, int(port))  # noqa: S104


def proxy_loopback(fleet_listen: str) -> str:
    """Where a process on the coordinator's machine reaches the Fleet proxy, as HOST:PORT."""
    host, port = local_address(fleet_listen)
    return f"{host}:{port}"


def coordinator_link(folder: Path) -> FlowerLink:
    """A connection to the SuperLink of the coordinator in `folder` (started elsewhere, same machine).

    Raises:
        ConfigError: `folder` is not a coordinator folder.
    """
    config = load_coordinator(folder)
    pki = Pki(folder / "pki").require()
    from coordinator.deploy.flower import FlowerLink  # Flower loads only once the folder is valid

    token = folder / "run" / WAKE_TOKEN
    wake = (proxy_loopback(config.fleet_listen), token.read_text().strip()) if token.is_file() else None
    return FlowerLink(f"127.0.0.1:{config.superlink_port}", pki.ca_cert.read_bytes(), wake)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class ProcessGroup:
    """Child processes started by us, each logging to `log_dir/NAME.log`, stopped by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **NO_PHONE_HOME, "PYTHONUNBUFFERED": "1"}
        with self.log_path(name).open("wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.processes.append((name, proc))
        return proc

    def pid(self, name: str) -> int:
        return next(p.pid for n, p in self.processes if n == name)

    def check_alive(self) -> None:
        """Raises: FederationError naming a process that exited, with its log's last lines."""
        for name, proc in self.processes:
            if proc.poll() is not None:
                raise FederationError(
                    f"{name} exited with code {proc.returncode}; see {self.log_path(name)}\n{self.tail(name)}"
                )

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_path(name)
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Raises: FederationError when `what` did not happen in time, or a process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if predicate():
                return
            time.sleep(0.05)
        tails = "\n".join(f"--- {name}:\n{self.tail(name)}" for name, _ in self.processes)
        raise FederationError(f"{what} did not happen within {timeout:.0f} s. Last log lines:\n{tails}")

    def end(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stop one process by its PID (SIGTERM, or `sig`), wait for it, forget it; its exit code."""
        for i, (n, proc) in enumerate(self.processes):
            if n == name:
                if proc.poll() is None:
                    proc.send_signal(sig)
                try:
                    code = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
                del self.processes[i]
                return code
        raise KeyError(name)

    def stop(self) -> None:
        """Stop every process, newest first: SIGTERM, then SIGKILL after 10 s."""
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


class Supervised:
    """`with X(...) as x:` starts x and always stops it, also when starting fails half-way."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
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


class CoordinatorService(Supervised):
    """`with CoordinatorService(folder) as service:` runs the SuperLink and the Fleet proxy."""

    def __init__(self, folder: Path, processes: ProcessGroup | None = None) -> None:
        self.folder = folder
        self.config = load_coordinator(folder)
        self.pki = Pki(folder / "pki").require()
        self.processes = processes or ProcessGroup(folder / "logs")
        self._owns_processes = processes is None

    @property
    def superlink_address(self) -> str:
        """Control, Runtime and Fleet APIs: loopback only."""
        return f"127.0.0.1:{self.config.superlink_port}"

    @property
    def fleet_listen(self) -> str:
        return self.config.fleet_listen

    @property
    def registry(self) -> Path:
        """The blueprint registry folder the proxy serves."""
        return self.folder / self.config.blueprints

    def start(self) -> None:
        """Start the SuperLink, then the proxy; return once both accept connections.

        Raises:
            FederationError: a port is taken, or a process failed to start (its log lines included).
        """
        fleet = local_address(self.fleet_listen)
        for host, port, what in (
            ("127.0.0.1", self.config.superlink_port, "superlink_port"),
            (fleet.host, fleet.port, "fleet_listen"),
        ):
            if port_open(host, port):
                raise FederationError(
                    f"port {port} on {host} is already in use ({what} in {self.folder / CONFIG_NAME}); "
                    "is the coordinator already running?"
                )
        bindir = Path(sys.executable).parent
        run_dir = self.folder / "run"
        run_dir.mkdir(exist_ok=True)
        token = run_dir / WAKE_TOKEN
        token.unlink(missing_ok=True)
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        self.processes.spawn(
            "superlink",
            [
                str(bindir / "flower-superlink"),
                "--ssl-ca-certfile",
                str(self.pki.ca_cert),
                "--ssl-certfile",
                str(self.pki.server_cert),
                "--ssl-keyfile",
                str(self.pki.server_key),
                "--enable-supernode-auth",
                "--isolation",
                "process",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.config.superlink_port),
                "--database",
                str(self.folder / self.config.database) if self.config.database else ":flwr-in-memory:",
                "--disable-runtime-dependency-installation",
            ],
        )
        self.processes.spawn(
            "fleet-proxy",
            [
                sys.executable,
                "-m",
                "coordinator.deploy.proxy",
                "--listen",
                self.fleet_listen,
                "--upstream",
                self.superlink_address,
                "--pki",
                str(self.pki.folder),
                "--registry",
                str(self.registry),
                "--wake-token",
                str(token),
                "--enrolment",
                str(self.folder),
                "--hold",
                str(self.config.fleet_hold_seconds),
            ],
        )
        self.processes.wait_for(
            lambda: port_open("127.0.0.1", self.config.superlink_port) and port_open(*fleet),
            60,
            f"the SuperLink on {self.superlink_address} and the Fleet proxy on {self.fleet_listen}",
        )
        if self.config.api_listen:
            self.start_api()

    def start_api(self) -> None:
        """Start the analyst API (run store, worker, console) and return once it listens.

        Raises:
            FederationError: its port is taken, or it failed to start.
        """
        listen = str(self.config.api_listen)
        api = local_address(listen)
        if port_open(*api):
            raise FederationError(
                f"port {api.port} on {api.host} is already in use (api_listen in {self.folder / CONFIG_NAME})"
            )
        self.processes.spawn(
            "analyst-api", [sys.executable, "-m", "coordinator.service.serve", str(self.folder.resolve())]
        )
        self.processes.wait_for(lambda: port_open(*api), 90, f"the analyst API on https://{listen}")

    @contextlib.contextmanager
    def enrolments(self) -> Iterator[Callable[[], list[str]]]:
        """`with service.enrolments() as tend:` each `tend()` registers queued partner keys and
        revokes rotated-out ones (`coordinator.deploy.enrolment`); it returns what it changed."""
        from coordinator.deploy.enrolment import Enrolments

        enrolments = Enrolments(self.folder)
        link = coordinator_link(self.folder)

        def tend() -> list[str]:
            try:
                return enrolments.tend(link)
            except FederationError:
                return []  # the SuperLink is restarting: check_alive reports it if it died
            except Exception as exc:
                return [f"enrolment: could not process requests ({type(exc).__name__}: {exc})"]

        try:
            yield tend
        finally:
            link.close()
            enrolments.close()

    def stop(self) -> None:
        if self._owns_processes:
            self.processes.stop()
