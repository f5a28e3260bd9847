"""Key files: a private key written once, readable by its owner only, never overwritten.

Both sides keep keys (a node its ECDSA node key, a publisher its ed25519 signing key), so the
writing lives below both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.errors import ConfigError

__all__ = ["KeyFiles", "write_private_key"]


class KeyFiles(NamedTuple):
    """Where a key pair was written."""

    private: Path
    public: Path


def write_private_key(
    folder: Path, stem: str, key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey, what: str, comment: str = ""
) -> KeyFiles:
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
    return KeyFiles(private_path, public_path)
