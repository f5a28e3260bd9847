"""How the node reaches its coordinator: TLS trusted to the coordinator's CA, and the node key.

`connection_settings` turns `node.yaml` into what the Flower connection needs, refusing plain
HTTP anywhere but loopback. `probe` asks the coordinator's `/health` once, so a wrong CA, a
plain-HTTP node talking to a TLS coordinator, or a wrong address is reported at once with what
to change, instead of as an endless series of reconnection attempts.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from node_agent.config import NodeConfig, is_loopback
from node_agent.keys import load_private_key
from privacy.errors import ConfigError, FederationError

__all__ = ["ConnectionSettings", "connection_settings", "probe"]


@dataclass(frozen=True)
class ConnectionSettings:
    address: str
    insecure: bool
    root_certificates: bytes | None
    private_key: ec.EllipticCurvePrivateKey
    ca_path: Path | None

    @property
    def url(self) -> str:
        return f"{'http' if self.insecure else 'https'}://{self.address}"


def connection_settings(config: NodeConfig, address: str) -> ConnectionSettings:
    """Raises: ConfigError for a missing key or CA file, or plain HTTP off loopback."""
    transport = config.transport
    if transport.insecure and not is_loopback(address):
        raise ConfigError(
            f"transport.insecure is only allowed for a coordinator on loopback, not {address}: "
            "remove it and set transport.ca_cert to the CA certificate the coordinator sent you"
        )
    key_path = Path(transport.node_key)
    if not key_path.is_file():
        raise ConfigError(
            f"transport.node_key: {key_path} does not exist; `oda-node init` creates the key pair "
            "(send keys/node.pub to the coordinator to be registered)"
        )
    key = load_private_key(key_path)
    if not isinstance(key.curve, ec.SECP384R1):
        raise ConfigError(
            f"transport.node_key: {key_path} is on curve {key.curve.name}; the node key must be P-384"
        )
    roots: bytes | None = None
    ca_path = Path(transport.ca_cert) if transport.ca_cert else None
    if ca_path is not None and not transport.insecure:
        try:
            roots = ca_path.read_bytes()
            x509.load_pem_x509_certificates(roots)
        except OSError as exc:
            raise ConfigError(f"transport.ca_cert: {ca_path} cannot be read: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigError(f"transport.ca_cert: {ca_path} is not a PEM certificate: {exc}") from exc
    return ConnectionSettings(address, transport.insecure, roots, key, ca_path)


def probe(settings: ConnectionSettings, timeout: float = 5.0) -> bool:
    """Ask the coordinator's `/health`: True when it answered, False when it is not reachable (yet).

    Raises:
        FederationError: it answered, but not as a coordinator this node can trust, with the fix.
    """
    verify: ssl.SSLContext | bool = False
    if not settings.insecure:
        verify = ssl.create_default_context(cafile=str(settings.ca_path) if settings.ca_path else None)
    try:
        response = httpx.get(f"{settings.url}/health", verify=verify, timeout=timeout)
    except httpx.ConnectError as exc:
        if isinstance(exc.__context__, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY" in str(exc):
            trust = (
                f"transport.ca_cert ({settings.ca_path})" if settings.ca_path else "the system's trusted CAs"
            )
            raise FederationError(
                f"the coordinator at {settings.address} presented a certificate that {trust} does not "
                f"vouch for ({exc}); ask the coordinator for its CA certificate and set transport.ca_cert"
            ) from exc
        if "SSL" in str(exc) or "TLS" in str(exc):
            raise FederationError(
                f"TLS with the coordinator at {settings.address} failed ({exc}); "
                "is this the coordinator's Fleet address?"
            ) from exc
        return False  # refused or unreachable: the coordinator may simply not be up yet
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        if settings.insecure:  # a TLS server hangs up (or resets) on a plain-HTTP request
            raise FederationError(
                f"the coordinator at {settings.address} refused plain HTTP ({exc}); it requires TLS: "
                "remove transport.insecure and set transport.ca_cert"
            ) from exc
        raise FederationError(f"the coordinator at {settings.address} broke the connection: {exc}") from exc
    except httpx.TimeoutException:
        return False
    except httpx.HTTPError as exc:
        raise FederationError(f"cannot talk to the coordinator at {settings.address}: {exc}") from exc
    if response.status_code == 400 and settings.insecure:  # e.g. nginx: "plain HTTP sent to HTTPS port"
        raise FederationError(
            f"the coordinator at {settings.address} refused plain HTTP (400); it requires TLS: "
            "remove transport.insecure and set transport.ca_cert"
        )
    if response.status_code != 200:
        raise FederationError(
            f"{settings.url}/health answered {response.status_code}; is this the coordinator's Fleet address?"
        )
    return True
