"""The node's key pair: ECDSA on NIST P-384, the kind a Flower SuperLink registers.

The private key (PEM, mode 0600) never leaves the node; the public key (OpenSSH format) is what
partner IT sends to the coordinator.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from privacy.errors import ConfigError
from privacy.keyfiles import write_private_key

__all__ = ["load_private_key", "write_key_pair"]


def write_key_pair(folder: Path) -> Path:
    """Create `folder/node.key` and `folder/node.pub`; return the public key's path.

    Raises:
        ConfigError: a key already exists there (keys are never overwritten).
    """
    _, public_path = write_private_key(folder, "node", ec.generate_private_key(ec.SECP384R1()), "a node key")
    return public_path


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Raises: ConfigError when the file is missing, unreadable or not an EC key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"node key {path} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"node key {path} is not an elliptic-curve key")
    return key
