"""Key files: a private key written once, readable by its owner only, never overwritten.

Both sides keep keys (a node its ECDSA node key, a publisher its ed25519 signing key), so the
writing lives below both.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.errors import ConfigError

__all__ = ["KeyFiles", "load_node_public_key", "owner_only", "write_private_key", "write_secret"]


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
    write_secret(private_path, pem)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path.write_bytes(public + (f" {comment}" if comment else "").encode() + b"\n")
    return KeyFiles(private_path, public_path)


def write_secret(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write `data` to `path`, readable by its owner only from its first byte (created 0600, then
    `owner_only`). A new file never overwrites one; with `replace`, the file is written beside
    `path` and moved over it, so a reader sees the old content or the new, never half.

    Raises:
        FileExistsError: `path` exists and `replace` is not set.
        ConfigError: as `owner_only`.
    """
    target = path.with_name(path.name + ".tmp") if replace else path
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    owner_only(target)
    if replace:
        os.replace(target, path)


def owner_only(path: Path) -> None:
    """Make `path` readable and writable by its owner only: mode 0600 on POSIX; on Windows,
    where the mode bits do not protect a file, an ACL that drops inherited entries and grants
    the current user alone full control (`icacls`).

    Raises:
        ConfigError: Windows refused the ACL (the key would stay readable by others).
    """
    if sys.platform != "win32":
        os.chmod(path, 0o600)
        return
    done = subprocess.run(
        ["icacls", str(path), "/inheritance:r", "/grant:r", f"{getpass.getuser()}:F"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(f"cannot restrict {path} to its owner: icacls said {done.stdout}{done.stderr}")


def load_node_public_key(openssh: bytes) -> ec.EllipticCurvePublicKey:
    """A node's public key from its OpenSSH form (`keys/node.pub`), ECDSA on NIST P-384.

    Raises:
        ConfigError: not an OpenSSH public key, or not on P-384.
    """
    try:
        key = serialization.load_ssh_public_key(openssh.strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"not an OpenSSH public key ({exc}); send the node's keys/node.pub") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ConfigError("the node key must be ECDSA on NIST P-384 (what `oda-node init` makes)")
    return key
