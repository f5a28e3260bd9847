"""The coordinator's certificate authority: one CA, one server certificate for its TLS endpoints.

Partners receive `ca.crt` with their enrolment and trust only it for the coordinator's Fleet
address. Keys are ECDSA P-384 and written with mode 0600; nothing here is ever overwritten
silently, because replacing the CA cuts every enrolled partner off.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privacy.errors import ConfigError

__all__ = ["LOOPBACK_HOSTS", "Pki", "create_ca", "issue_server_certificate"]

#: Always in the server certificate: the SuperLink and the proxy talk to each other on loopback.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
CA_DAYS = 3650
SERVER_DAYS = 397  # the longest validity browsers and most TLS stacks accept


@dataclass(frozen=True)
class Pki:
    """The files of a coordinator's PKI folder."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def require(self) -> Pki:
        """Raises: ConfigError naming the first missing file and the command that makes it."""
        for path in (self.ca_cert, self.server_cert, self.server_key):
            if not path.is_file():
                raise ConfigError(
                    f"{path} is missing: run `oda coordinator init` (CA and certificate) "
                    "or `oda coordinator issue-cert` (certificate only)"
                )
        return self

    def server_hosts(self) -> list[str]:
        """The host names and addresses the server certificate is valid for."""
        cert = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(n) for n in names.get_values_for_type(x509.IPAddress)] + list(
            names.get_values_for_type(x509.DNSName)
        )


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    tmp.replace(path)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() or c in "/:@" for c in host):
        raise ConfigError(f"{host!r} is not a host name or IP address")
    return x509.DNSName(host)


def create_ca(folder: Path, name: str) -> Pki:
    """Create `folder/ca.crt` and `folder/ca.key`.

    Raises:
        ConfigError: a CA already exists in `folder`.
    """
    pki = Pki(folder)
    if pki.ca_cert.exists() or pki.ca_key.exists():
        raise ConfigError(
            f"a CA already exists in {folder}; it is never replaced, because every enrolled "
            "partner trusts it. Move the folder away first to start a new federation"
        )
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private(pki.ca_key, key)
    pki.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pki


def issue_server_certificate(folder: Path, hosts: list[str]) -> Pki:
    """Issue (or re-issue) the server certificate for `hosts` plus loopback, signed by the CA.

    Raises:
        ConfigError: no CA in `folder`, or a host that is neither a name nor an address.
    """
    pki = Pki(folder)
    if not pki.ca_key.is_file() or not pki.ca_cert.is_file():
        raise ConfigError(f"no CA in {folder}: run `oda coordinator init` first")
    try:
        ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"the CA in {folder} cannot be read: {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{pki.ca_key} is not an elliptic-curve key")
    names = list(dict.fromkeys([*hosts, *LOOPBACK_HOSTS]))
    general = [_general_name(h) for h in names]
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(pki.server_key, key)
    pki.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pki
