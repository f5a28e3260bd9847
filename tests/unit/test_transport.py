"""Secure transport pieces without processes: the PKI, node transport settings, the Fleet proxy's
routing, coordinator.yaml, and the `oda coordinator` errors."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from coordinator.deploy.config import init_coordinator, load_coordinator
from coordinator.deploy.pki import Pki, create_ca, issue_server_certificate
from coordinator.deploy.proxy import MAX_BODY_BYTES, build_app
from coordinator.deploy.service import free_port
from node_agent.config import NodeConfig, is_loopback, load_node_config
from node_agent.keys import write_key_pair
from node_agent.transport import connection_settings, probe
from privacy.errors import ConfigError, FederationError
from privacy.exit_codes import ExitCode

NODE_YAML = """\
version: 1
partner: police
coordinator: {coordinator}
{transport}
datasets:
  incidents:
    path: incidents.csv
    identifier: person_id
    columns:
      person_id: {{type: int}}
      area: {{type: str}}
policy:
  allowed_datasets: [incidents]
  allowed_analyses: ["*"]
  max_rho_per_analysis: 0.5
  total_rho_cap: {{incidents: 1.0}}
"""


def _node(tmp_path: Path, coordinator: str = "127.0.0.1:9092", transport: str = "") -> NodeConfig:
    path = tmp_path / "node.yaml"
    path.write_text(NODE_YAML.format(coordinator=coordinator, transport=transport))
    return load_node_config(path)


# --- PKI ------------------------------------------------------------------------------------


def test_server_certificate_is_signed_by_the_ca_for_the_hosts_and_loopback(tmp_path: Path) -> None:
    create_ca(tmp_path, "test CA")
    pki = issue_server_certificate(tmp_path, ["oda.example.gov.uk", "10.1.2.3"])
    assert set(pki.server_hosts()) == {"oda.example.gov.uk", "10.1.2.3", "127.0.0.1", "localhost"}
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (pki.ca_key, pki.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # Python's own TLS stack accepts the pair for the names it was issued to.
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_verify_locations(cafile=str(pki.ca_cert))
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(str(pki.server_cert), str(pki.server_key))


def test_ca_is_never_replaced(tmp_path: Path) -> None:
    create_ca(tmp_path, "test CA")
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(ConfigError, match="never replaced, because every enrolled partner trusts it"):
        create_ca(tmp_path, "another")
    assert (tmp_path / "ca.crt").read_bytes() == before


def test_certificate_needs_a_ca_and_valid_hosts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no CA in .*: run `oda coordinator init` first"):
        issue_server_certificate(tmp_path, ["example.org"])
    create_ca(tmp_path, "test CA")
    with pytest.raises(ConfigError, match="'https://x' is not a host name or IP address"):
        issue_server_certificate(tmp_path, ["https://x"])
    with pytest.raises(ConfigError, match=r"server.crt is missing: run `oda coordinator init`"):
        Pki(tmp_path).require()


# --- node transport settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:9092", True),
        ("127.3.4.5:1", True),
        ("localhost:9092", True),
        ("[::1]:9092", True),
        ("127.evil.example:9092", False),
        ("10.0.0.1:9092", False),
        ("oda.example.gov.uk:443", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_plain_http_is_refused_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"transport.insecure is only allowed for a coordinator on loopback"
    ):
        _node(tmp_path, "oda.example.gov.uk:9092", "transport: {insecure: true}")
    config = _node(tmp_path, "127.0.0.1:9092", "transport: {insecure: true}")
    write_key_pair(tmp_path / "keys")
    with pytest.raises(
        ConfigError, match=r"not oda.example.gov.uk:9092: remove it and set transport.ca_cert"
    ):
        connection_settings(config, "oda.example.gov.uk:9092")  # `start --coordinator` overrides the file


def test_missing_or_bad_key_and_ca_are_named(tmp_path: Path) -> None:
    config = _node(tmp_path, transport="transport: {ca_cert: keys/ca.crt}")
    with pytest.raises(ConfigError, match=r"transport.node_key: .*node.key does not exist; `oda-node init`"):
        connection_settings(config, "127.0.0.1:9092")
    write_key_pair(tmp_path / "keys")
    with pytest.raises(ConfigError, match=r"transport.ca_cert: .*ca.crt cannot be read"):
        connection_settings(config, "127.0.0.1:9092")
    (tmp_path / "keys" / "ca.crt").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"transport.ca_cert: .*ca.crt is not a PEM certificate"):
        connection_settings(config, "127.0.0.1:9092")
    create_ca(tmp_path / "pki", "test CA")
    (tmp_path / "keys" / "ca.crt").write_bytes((tmp_path / "pki" / "ca.crt").read_bytes())
    settings = connection_settings(config, "127.0.0.1:9092")
    assert settings.root_certificates is not None and settings.url == "https://127.0.0.1:9092"
    (tmp_path / "keys" / "node.key").write_text("garbage")
    with pytest.raises(ConfigError, match=r"node key .*node.key cannot be read"):
        connection_settings(config, "127.0.0.1:9092")


def test_probe_of_a_closed_port_means_not_up_yet(tmp_path: Path) -> None:
    config = _node(tmp_path, transport="transport: {insecure: true}")
    write_key_pair(tmp_path / "keys")
    assert probe(connection_settings(config, f"127.0.0.1:{free_port()}"), timeout=2) is False


# --- the Fleet proxy's routing (no SuperLink behind it) --------------------------------------


def test_proxy_forwards_nothing_but_fleet_and_health() -> None:
    upstream = f"127.0.0.1:{free_port()}"  # nothing listens: any forwarded call would be a 502

    async def calls() -> None:
        transport = httpx.ASGITransport(app=build_app(upstream, None))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            for method, path in [
                ("POST", "/v1/control/start-run"),
                ("POST", "/v1/control/register-node"),
                ("POST", "/v1/runtime/acquire-task"),
                ("GET", "/v1/fleet/pull-messages"),
                ("POST", "/v1/fleet/../control/list-nodes"),
                ("POST", "/v1/fleetx/pull-messages"),
                ("GET", "/"),
            ]:
                response = await client.request(method, path)
                assert response.status_code == 404, path
                assert "serves the Fleet API only" in response.json()["error"]
            assert (await client.post("/v1/fleet/pull-messages", content=b"x")).status_code == 502
            assert (await client.get("/health")).status_code == 502
            too_big = b"x" * (MAX_BODY_BYTES + 1)
            assert (await client.post("/v1/fleet/push-object", content=too_big)).status_code == 413

    asyncio.run(calls())


# --- coordinator.yaml and the `oda coordinator` command ----------------------------------------


def test_coordinator_init_writes_a_loadable_config(tmp_path: Path) -> None:
    config = init_coordinator(tmp_path / "c", "test", ["oda.example.gov.uk"], "0.0.0.0", 9092, 9091)  # noqa: S104
    assert load_coordinator(tmp_path / "c") == config
    assert config.fleet_address == "oda.example.gov.uk:9092"
    with pytest.raises(ConfigError, match="never overwrites a coordinator"):
        init_coordinator(tmp_path / "c", "test", ["x"], "0.0.0.0", 9092, 9091)  # noqa: S104
    (tmp_path / "c" / "coordinator.yaml").write_text(
        "version: 1\nname: x\nfleet_address: x:1\nsuperlink: 3\n"
    )
    with pytest.raises(ConfigError, match="superlink: unknown field"):
        load_coordinator(tmp_path / "c")


def test_register_node_without_a_running_coordinator_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from coordinator.cli import main

    port = free_port()
    assert (
        main(["coordinator", "init", str(tmp_path), "--host", "127.0.0.1", "--superlink-port", str(port)])
        == 0
    )
    public = write_key_pair(tmp_path / "keys")
    code = main(["coordinator", "register-node", str(tmp_path), str(public), "--name", "police"])
    assert code == ExitCode.FEDERATION
    assert "is the coordinator running?" in capsys.readouterr().err


def test_probe_reports_a_tls_server_to_a_plain_http_node(tmp_path: Path) -> None:
    """A one-shot TLS server on loopback: the plain-HTTP probe is told to use TLS."""
    import socket
    import threading

    create_ca(tmp_path / "pki", "test CA")
    pki = issue_server_certificate(tmp_path / "pki", ["127.0.0.1"])
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_once() -> None:
        conn, _ = listener.accept()
        try:
            server_side.wrap_socket(conn, server_side=True)
        except ssl.SSLError:
            pass  # the plain-HTTP client is not speaking TLS
        finally:
            conn.close()

    thread = threading.Thread(target=serve_once)
    thread.start()
    config = _node(tmp_path, transport="transport: {insecure: true}")
    write_key_pair(tmp_path / "keys")
    try:
        with pytest.raises(FederationError, match=r"refused plain HTTP .*remove transport.insecure"):
            probe(connection_settings(config, f"127.0.0.1:{port}"), timeout=5)
    finally:
        thread.join(10)
        listener.close()
