"""Secure transport over real processes on loopback, set up the way partner IT and the
coordinator do it: `oda coordinator init/start/register-node`, then `oda-node start`.

The SuperLink listens on loopback with TLS and node authentication; nodes reach it only
through the Fleet proxy, which forwards nothing but `/v1/fleet/*` and `/health`.
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from coordinator.deploy.pki import create_ca, issue_server_certificate
from coordinator.deploy.service import coordinator_link, free_port
from coordinator.embedded.synthetic import write_federation
from coordinator.run.orchestrator import run_analysis
from privacy.exit_codes import ExitCode

pytestmark = pytest.mark.e2e

ODA = [sys.executable, "-m", "coordinator.cli"]
NODE = [sys.executable, "-m", "node_agent.cli"]
SPEC = """\
version: 1
name: enrolled
dataset: incidents
privacy: {rho: 0.01, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c, by: [{column: area, keyset: coventry_lsoa11}]}
"""


@dataclass
class Coordinator:
    folder: Path
    fleet: str
    superlink_port: int
    configs: dict[str, Path]

    @property
    def ca(self) -> Path:
        return self.folder / "pki" / "ca.crt"


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(
        f"{text!r} not in {path}:\n{path.read_text(errors='replace') if path.exists() else ''}"
    )


@contextlib.contextmanager
def running_coordinator(
    folder: Path, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`oda coordinator start FOLDER` (under `env`, from `cwd`) until the block ends, once its
    Fleet API listens; stopped by SIGTERM, by its PID."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*ODA, "coordinator", "start", str(folder)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        _wait_for_text(log, "Fleet API on", proc, 60)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    root = tmp_path_factory.mktemp("secure")
    folder = root / "coordinator"
    port, superlink_port = free_port(), free_port()
    init = [*ODA, "coordinator", "init", str(folder), "--host", "127.0.0.1", "--listen", "127.0.0.1"]
    init += ["--port", str(port), "--superlink-port", str(superlink_port), "--api-port", "0"]
    init += ["--name", "test federation"]  # no analyst API: its default port may be another test's
    done = subprocess.run(init, capture_output=True, text=True, check=True)
    assert f"partners reach it at 127.0.0.1:{port}" in done.stdout and "oda coordinator invite" in done.stdout
    with running_coordinator(folder, root / "coordinator.log"):
        configs = write_federation(
            root / "partners", rows=3_000, coordinator=f"127.0.0.1:{port}", ca_cert=folder / "pki" / "ca.crt"
        )
        yield Coordinator(folder, f"127.0.0.1:{port}", superlink_port, configs)
    # The coordinator stopped its SuperLink and proxy (by PID) when it stopped.
    assert not _port_open(superlink_port) and not _port_open(port)


def _port_open(port: int) -> bool:
    from coordinator.deploy.service import port_open

    return port_open("127.0.0.1", port)


def _register(coordinator: Coordinator, partner: str) -> str:
    public_key = coordinator.configs[partner].parent / "keys" / "node.pub"
    done = subprocess.run(
        [*ODA, "coordinator", "register-node", str(coordinator.folder), str(public_key), "--name", partner],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextlib.contextmanager
def _running_node(config: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`oda-node start` in the background, logging to node.log, once it is ready; stopped by
    SIGTERM at the end if it is still running."""
    log = config.parent / "node.log"
    with log.open("wb") as sink:
        node = subprocess.Popen(
            [*NODE, "start", "--config", str(config)], stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_text(log, ": ready", node, 60)
        yield node, log
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            node.wait(20)


def _start_node(config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NODE, "start", "--config", str(config)], capture_output=True, text=True, timeout=timeout
    )


def _start_edited(config: Path, *edits: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    """`oda-node start` with `config` edited (each old text must be there), then restored."""
    original = config.read_text()
    edited = original
    for old, new in edits:
        assert old in edited, old
        edited = edited.replace(old, new)
    try:
        config.write_text(edited)
        return _start_node(config)
    finally:
        config.write_text(original)


def test_registered_node_connects_through_the_proxy_and_releases(coordinator: Coordinator) -> None:
    out = _register(coordinator, "police")
    assert "registered police as node" in out
    assert "registered police" in _register(coordinator, "police"), "registering again is harmless"
    config = coordinator.configs["police"]
    check = subprocess.run([*NODE, "check", "--config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert f"coordinator {coordinator.fleet}: reachable, TLS, trusting" in check.stdout
    with _running_node(config) as (_, log):
        listed = subprocess.run(
            [*ODA, "coordinator", "nodes", str(coordinator.folder)], capture_output=True, text=True
        )
        assert "police" in listed.stdout and "online" in listed.stdout, listed.stdout
        link = coordinator_link(coordinator.folder)
        try:
            result = run_analysis(SPEC, link, timeout=30)
        finally:
            link.close()
        assert [r.partner for r in result.releases] == ["police"]
        assert len(result.tables[0].frame) == 195
        assert "HTTP Request:" not in log.read_text(), "the node logs each poll"


def test_unregistered_node_is_refused_with_what_to_do(coordinator: Coordinator) -> None:
    done = _start_node(coordinator.configs["fire"])
    assert done.returncode == ExitCode.FEDERATION, done.stderr
    assert "does not know this node's key" in done.stderr
    assert "oda coordinator register-node" in done.stderr


def test_node_cannot_register_itself_through_the_public_port(coordinator: Coordinator) -> None:
    """Fleet self-registration (Flower's default for nodes without keys) is off."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.proto.fleet_pb2 import RegisterNodeFleetRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    key = ec.generate_private_key(ec.SECP384R1())
    client = FleetHttpClient.from_server_address(
        coordinator.fleet,
        False,
        coordinator.ca.read_bytes(),
        interceptors=[NodeAuthHttpInterceptor(key, key.public_key())],
    )
    try:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            client.RegisterNode(RegisterNodeFleetRequest(public_key=public_key_to_bytes(key.public_key())))
    finally:
        client.close()
    assert refused.value.response.status_code == 412
    assert "must be registered via the CLI" in refused.value.response.text


def test_plain_http_node_is_refused(coordinator: Coordinator) -> None:
    _register(coordinator, "council")  # the key is fine; only the transport is wrong
    done = _start_edited(
        coordinator.configs["council"],
        (
            "transport: {ca_cert: keys/ca.crt, node_key: keys/node.key}",
            "transport: {insecure: true, node_key: keys/node.key}",
        ),
    )
    assert done.returncode == ExitCode.FEDERATION, done.stderr
    assert "refused plain HTTP" in done.stderr and "transport.ca_cert" in done.stderr
    # And on the wire: the public port does not speak plain HTTP at all.
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://{coordinator.fleet}/health", timeout=5)


def test_node_trusting_another_ca_is_refused(coordinator: Coordinator, tmp_path: Path) -> None:
    other = create_ca(tmp_path / "other", "someone else's CA")
    issue_server_certificate(tmp_path / "other", ["127.0.0.1"])
    done = _start_edited(
        coordinator.configs["council"], ("ca_cert: keys/ca.crt", f"ca_cert: {other.ca_cert}")
    )
    assert done.returncode == ExitCode.FEDERATION, done.stderr
    assert "does not vouch for" in done.stderr


def test_control_and_runtime_apis_are_unreachable_through_the_public_port(coordinator: Coordinator) -> None:
    from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest
    from flwr.supercore.control import ControlHttpClient

    ca = coordinator.ca.read_bytes()
    public = ControlHttpClient.from_server_address(
        server_address=coordinator.fleet, insecure=False, root_certificates=ca, interceptors=[]
    )
    try:
        for call, request in (
            (public.ListNodes, ListNodesRequest()),
            (public.RegisterNode, RegisterNodeRequest(public_key=b"x")),
        ):
            with pytest.raises(httpx.HTTPStatusError) as refused:
                call(request)
            assert refused.value.response.status_code == 404
            assert "Fleet API only" in refused.value.response.text
    finally:
        public.close()
    with httpx.Client(verify=ssl.create_default_context(cafile=coordinator.ca), timeout=5) as raw:
        for method, path in [
            ("POST", "/v1/control/start-run"),
            ("POST", "/v1/runtime/acquire-task"),
            ("GET", "/v1/fleet/pull-messages"),  # Fleet calls are POSTs
            ("POST", "/v1/fleet/../control/list-nodes"),
            ("GET", "/docs"),
        ]:
            assert raw.request(method, f"https://{coordinator.fleet}{path}").status_code == 404, path
        assert raw.get(f"https://{coordinator.fleet}/health").status_code == 200
    # The same Control call succeeds on loopback, where the coordinator's own tools reach it.
    link = coordinator_link(coordinator.folder)
    try:
        assert link.list_nodes(), "the loopback Control API answers"
    finally:
        link.close()


def test_coordinator_commands_fail_clearly(coordinator: Coordinator, tmp_path: Path) -> None:
    again = subprocess.run(
        [*ODA, "coordinator", "init", str(coordinator.folder), "--host", "127.0.0.1"],
        capture_output=True,
        text=True,
    )
    assert again.returncode == ExitCode.CONFIG and "never overwrites" in again.stderr
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO3aE3pMpP8Mb3W7sMnE4N8Rqk5G2i3m6s1u5k1w3o7q x\n")
    wrong = subprocess.run(
        [*ODA, "coordinator", "register-node", str(coordinator.folder), str(bad_key), "--name", "x"],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == ExitCode.CONFIG and "P-384" in wrong.stderr, wrong.stderr
    nowhere = subprocess.run([*ODA, "coordinator", "nodes", str(tmp_path)], capture_output=True, text=True)
    assert nowhere.returncode == ExitCode.CONFIG and "oda coordinator init" in nowhere.stderr


def test_unregistered_key_stops_a_running_node(coordinator: Coordinator) -> None:
    """Revocation: `unregister-node` cuts a connected node off, and it says why."""
    out = _register(coordinator, "fire")
    node_id = out.split("as node ")[1].split(";")[0]
    config = coordinator.configs["fire"]
    with _running_node(config) as (node, log):
        subprocess.run([*ODA, "coordinator", "unregister-node", str(coordinator.folder), node_id], check=True)
        assert node.wait(30) == ExitCode.FEDERATION
    assert "no longer accepts this node's key" in log.read_text()


def test_unreachable_coordinator_is_given_up_after_connect_timeout(coordinator: Coordinator) -> None:
    closed = f"127.0.0.1:{free_port()}"
    done = _start_edited(
        coordinator.configs["council"],
        (f"coordinator: {coordinator.fleet}", f"coordinator: {closed}"),
        (
            "transport: {ca_cert: keys/ca.crt, node_key: keys/node.key}",
            "transport: {ca_cert: keys/ca.crt, node_key: keys/node.key, connect_timeout: 2}",
        ),
    )
    assert done.returncode == ExitCode.FEDERATION, done.stderr
    assert f"cannot connect to the coordinator at {closed}" in done.stderr
    assert "stayed unreachable (transport.connect_timeout)" in done.stderr
