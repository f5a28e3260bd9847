"""The node's key pair: ECDSA on NIST P-384, the kind a Flower SuperLink registers.

The private key (PEM, mode 0600) never leaves the node; the public key (OpenSSH format) is what
partner IT sends to the coordinator.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.errors import ConfigError

__all__ = ["load_private_key", "write_key_pair", "write_private_key"]


def write_key_pair(folder: Path) -> Path:
    """Create `folder/node.key` and `folder/node.pub`; return the public key's path.

    Raises:
        ConfigError: a key already exists there (keys are never overwritten).
    """
    _, public_path = write_private_key(folder, "node", ec.generate_private_key(ec.SECP384R1()), "a node key")
    return public_path


def write_private_key(
    folder: Path, stem: str, key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey, what: str, comment: str = ""
) -> tuple[Path, Path]:
    """Write `key` as `folder/STEM.key` (PEM, created 0600, never overwritten) and its public half
    as `folder/STEM.pub` (OpenSSH, with `comment`); return both paths.

    Raises:
        ConfigError: either file already exists.
    """
    private_path, public_path = folder / f"{stem}.key", folder / f"{stem}.pub"
    if private_path.exists() or public_path.exists():
        raise ConfigError(f"{what} already exists in {folder}; keys are never overwritten")
    folder.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path.write_bytes(public + (f" {comment}" if comment else "").encode() + b"\n")
    return private_path, public_path


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Raises: ConfigError when the file is missing, unreadable or not an EC key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"node key {path} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"node key {path} is not an elliptic-curve key")
    return key
