"""Blueprint registries: publish signed blueprints, and pull them from another office, verified.

A published blueprint is its exact bytes (`blueprint.yaml`, addressed by their sha256) and a
`signature.json`: the publisher's ed25519 signature over the format, name, version and sha256.
A registry is a folder, `ROOT/NAME/VERSION/{blueprint.yaml,signature.json}`; a coordinator
serves its folder read-only over HTTPS (`GET /v1/blueprints`, see `coordinator.deploy.proxy`).

Verification refuses, with what is wrong and how to fix it: bytes whose hash is not the signed
hash (tampered or corrupted), a signature that does not verify, a key that is not trusted, or a
name or version different from what was signed. Published versions never change.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from analyses.blueprint import LoadedBlueprint, SignedBlueprint, content_hash, parse_blueprint
from privacy.errors import ConfigError, FederationError, SignatureError, SpecError

__all__ = [
    "SIGNATURE_FORMAT",
    "LocalRegistry",
    "Pulled",
    "RegistryEntry",
    "StoredBlueprint",
    "key_id",
    "load_public_key",
    "pull",
    "sign",
    "verify",
    "write_publisher_key",
]

SIGNATURE_FORMAT = "oda-blueprint-signature/1"
BLUEPRINT_FILE = "blueprint.yaml"
SIGNATURE_FILE = "signature.json"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
#: No blueprint is near this size; a larger download is refused unread.
MAX_BLUEPRINT_BYTES = 1_000_000


if TYPE_CHECKING:
    import httpx


class StoredBlueprint(NamedTuple):
    """A stored blueprint's bytes, its signature document and its version."""

    data: bytes
    signature: dict[str, object]
    version: str


class Pulled(NamedTuple):
    """A blueprint pulled from another registry: where it is stored here, and what it is."""

    entry: RegistryEntry
    blueprint: LoadedBlueprint


def _signature_document(value: object, source: str) -> dict[str, object]:
    """Raises: SignatureError when a signature document is not a JSON object."""
    if not isinstance(value, dict):
        raise SignatureError(f"{source}: the signature is not a JSON object; refused, nothing was stored")
    return {str(k): v for k, v in value.items()}


def _message(name: str, version: str, sha256: str) -> bytes:
    return f"{SIGNATURE_FORMAT}\n{name}\n{version}\n{sha256}\n".encode()


def key_id(key: Ed25519PublicKey) -> str:
    """A short fingerprint: sha256 of the raw public key, first 16 hex digits."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def write_publisher_key(folder: Path, publisher: str) -> tuple[Path, Path]:
    """Create `publisher.key` (PEM, 0600) and `publisher.pub` (OpenSSH) in `folder`.

    Raises:
        ConfigError: a key already exists there (keys are never overwritten).
    """
    from privacy.keyfiles import write_private_key

    return write_private_key(folder, "publisher", Ed25519PrivateKey.generate(), "a publisher key", publisher)


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the publisher key: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: a publisher key must be ed25519 (`oda blueprint keygen`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An ed25519 public key in OpenSSH form (`publisher.pub`).

    Raises:
        ConfigError: missing, unreadable, or not an ed25519 public key.
    """
    try:
        key = serialization.load_ssh_public_key(b" ".join(path.read_bytes().split()[:2]))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the public key: {exc.strerror}") from exc
    except (ValueError, IndexError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not an OpenSSH public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: a publisher key must be ed25519")
    return key


def sign(data: bytes, key_path: Path, publisher: str) -> dict[str, str]:
    """The signature document for blueprint bytes `data`.

    Raises:
        SpecError: the bytes are not a valid blueprint (nothing invalid is ever signed).
        ConfigError: the key cannot be used.
    """
    loaded = parse_blueprint(data, "the blueprint to sign")
    key = _load_private_key(key_path)
    bp = loaded.blueprint
    signature = key.sign(_message(bp.name, bp.version, loaded.sha256))
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "format": SIGNATURE_FORMAT,
        "name": bp.name,
        "version": bp.version,
        "sha256": loaded.sha256,
        "publisher": publisher,
        "public_key": base64.b64encode(public).decode(),
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(signature).decode(),
    }


def verify(
    data: bytes, signature: Mapping[str, object], trusted: list[Ed25519PublicKey], source: str
) -> LoadedBlueprint:
    """Check a blueprint's bytes against its signature document and the trusted keys.

    Raises:
        SignatureError: tampered bytes, a bad or untrusted signature, or a mismatched name or version.
    """
    if signature.get("format") != SIGNATURE_FORMAT:
        raise SignatureError(f"{source}: the signature is not an {SIGNATURE_FORMAT} document")
    digest = content_hash(data)
    if digest != signature.get("sha256"):
        raise SignatureError(
            f"{source}: content hash {digest[:16]}… does not match the signed hash "
            f"{str(signature.get('sha256'))[:16]}…: the blueprint was changed after it was signed "
            "(tampered or corrupted); refused, nothing was stored"
        )
    try:
        public = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(str(signature.get("public_key")), validate=True)
        )
        raw_signature = base64.b64decode(str(signature.get("signature")), validate=True)
    except ValueError as exc:
        raise SignatureError(f"{source}: the signature document is malformed: {exc}") from exc
    fingerprint = key_id(public)
    if fingerprint not in {key_id(k) for k in trusted}:
        raise SignatureError(
            f"{source}: signed by key {fingerprint} ({signature.get('publisher', '?')}), which you do not "
            "trust: get the publisher's publisher.pub by a channel you trust and pass it with --trust"
        )
    name, version = str(signature.get("name")), str(signature.get("version"))
    try:
        public.verify(raw_signature, _message(name, version, digest))
    except InvalidSignature:
        raise SignatureError(
            f"{source}: the signature does not verify with key {fingerprint}: it was not made by that "
            "publisher's key for this blueprint (wrong or forged signature); refused, nothing was stored"
        ) from None
    loaded = parse_blueprint(data, source)
    if (loaded.blueprint.name, loaded.blueprint.version) != (name, version):
        raise SignatureError(
            f"{source}: the signature is for {name} {version}, but the blueprint is "
            f"{loaded.blueprint.name} {loaded.blueprint.version}"
        )
    return loaded


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    version: str
    sha256: str
    publisher: str
    key_id: str
    title: str


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


class LocalRegistry:
    """A folder of published blueprints: `ROOT/NAME/VERSION/{blueprint.yaml,signature.json}`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _folder(self, name: str, version: str) -> Path:
        if not _NAME.match(name) or not _VERSION.match(version):
            raise SpecError(f"not a blueprint name and version: {name!r} {version!r}")
        return self.root / name / version

    @property
    def trusted_dir(self) -> Path:
        return self.root / "trusted"

    def trusted_keys(self) -> list[Ed25519PublicKey]:
        """Publisher keys this registry trusts (`ROOT/trusted/*.pub`: added by publish and pull)."""
        if not self.trusted_dir.is_dir():
            return []
        return [load_public_key(p) for p in sorted(self.trusted_dir.glob("*.pub"))]

    def trust(self, key: Ed25519PublicKey, publisher: str) -> Path:
        """Remember a publisher key as trusted by this registry."""
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        path = self.trusted_dir / f"{key_id(key)}.pub"
        public = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        path.write_bytes(public + f" {publisher}\n".encode())
        return path

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        if not _NAME.match(name) or not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if _VERSION.match(p.name) and (p / SIGNATURE_FILE).exists()]
        return sorted(found, key=_version_key)

    def entries(self) -> list[RegistryEntry]:
        """Every published version, by name then version (read from the signatures)."""
        out: list[RegistryEntry] = []
        if not self.root.is_dir():
            return out
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for version in self.versions(folder.name):
                where = folder / version
                signature = _signature_document(json.loads((where / SIGNATURE_FILE).read_text()), str(where))
                title = ""
                try:
                    title = parse_blueprint(
                        (folder / version / BLUEPRINT_FILE).read_bytes(), "registry"
                    ).blueprint.title
                except (SpecError, OSError):
                    title = "(unreadable)"
                out.append(
                    RegistryEntry(
                        folder.name,
                        version,
                        str(signature.get("sha256")),
                        str(signature.get("publisher")),
                        str(signature.get("key_id")),
                        title,
                    )
                )
        return out

    def read(self, name: str, version: str | None = None) -> StoredBlueprint:
        """The bytes and signature of `name` at `version` (default: the newest), and the version.

        Raises:
            SpecError: no such blueprint or version here.
        """
        versions = self.versions(name)
        if not versions:
            raise SpecError(f"registry {self.root} has no blueprint {name!r}")
        version = version or versions[-1]
        if version not in versions:
            raise SpecError(f"registry {self.root} has {name} versions {', '.join(versions)}, not {version}")
        folder = self._folder(name, version)
        return StoredBlueprint(
            (folder / BLUEPRINT_FILE).read_bytes(),
            _signature_document(json.loads((folder / SIGNATURE_FILE).read_text()), str(folder)),
            version,
        )

    def load(self, name: str, version: str | None, trusted: list[Ed25519PublicKey]) -> SignedBlueprint:
        """A verified blueprint from this registry, and who signed it.

        Raises:
            SpecError, SignatureError: not here, or it no longer verifies.
        """
        data, signature, version = self.read(name, version)
        loaded = verify(data, signature, trusted, f"{self.root}/{name}/{version}")
        return SignedBlueprint(loaded, f"{signature.get('publisher')} (key {signature.get('key_id')})")

    def store(self, data: bytes, signature: Mapping[str, object]) -> RegistryEntry:
        """Store a signed blueprint (already verified by the caller).

        Raises:
            SpecError: this name and version is already published with other content.
        """
        name, version = str(signature["name"]), str(signature["version"])
        folder = self._folder(name, version)
        existing = folder / BLUEPRINT_FILE
        if existing.exists():
            if content_hash(existing.read_bytes()) != signature["sha256"]:
                raise SpecError(
                    f"{name} {version} is already published in {self.root} with different content: "
                    "published versions never change; raise the version"
                )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{BLUEPRINT_FILE}.tmp"
            tmp.write_bytes(data)
            tmp.replace(existing)
        (folder / SIGNATURE_FILE).write_text(json.dumps(signature, indent=2, sort_keys=True) + "\n")
        return RegistryEntry(
            name, version, str(signature["sha256"]), str(signature["publisher"]), str(signature["key_id"]), ""
        )

    def publish(self, data: bytes, key_path: Path, publisher: str) -> RegistryEntry:
        """Sign blueprint bytes, store them, and trust the signing key here.

        Raises:
            SpecError: not a valid blueprint, or this version is already published differently.
        """
        signature = sign(data, key_path, publisher)
        entry = self.store(data, signature)
        self.trust(_load_private_key(key_path).public_key(), publisher)
        return entry


def _client(ca_cert: Path | None) -> httpx.Client:
    import httpx

    verify: ssl.SSLContext | bool = True
    if ca_cert is not None:
        if not ca_cert.is_file():
            raise ConfigError(f"{ca_cert}: no such CA certificate")
        verify = ssl.create_default_context(cafile=str(ca_cert))
    return httpx.Client(verify=verify, timeout=30.0, follow_redirects=False)


def pull(
    url: str,
    name: str,
    version: str | None,
    into: LocalRegistry,
    trusted: list[Ed25519PublicKey],
    ca_cert: Path | None = None,
) -> Pulled:
    """Fetch a blueprint from another office's coordinator, verify it, then store it in `into`.

    Raises:
        SignatureError: tampered, badly signed or untrusted (nothing is stored).
        FederationError: the registry cannot be reached or does not have it.
    """
    import httpx

    base = url.rstrip("/")
    if not base.startswith("https://"):
        raise ConfigError(f"{url}: blueprints are pulled over https:// only")
    with _client(ca_cert) as client:
        try:
            if version is None:
                index = client.get(f"{base}/v1/blueprints")
                index.raise_for_status()
                try:
                    listed = [e["version"] for e in index.json()["blueprints"] if e["name"] == name]
                except (KeyError, TypeError, ValueError) as exc:
                    raise FederationError(f"{base}/v1/blueprints is not a blueprint index: {exc}") from exc
                versions = [v for v in listed if isinstance(v, str) and _VERSION.match(v)]
                if not versions:
                    raise FederationError(f"{base} publishes no blueprint {name!r}")
                version = max(versions, key=_version_key)
            where = f"{base}/v1/blueprints/{name}/{version}"
            blob = client.get(f"{where}/{BLUEPRINT_FILE}")
            sig = client.get(f"{where}/{SIGNATURE_FILE}")
        except httpx.HTTPStatusError as exc:
            raise FederationError(f"{base}: {exc.response.status_code} for {exc.request.url}") from exc
        except httpx.HTTPError as exc:
            raise FederationError(f"cannot reach the registry at {base}: {exc}") from exc
    for response in (blob, sig):
        if response.status_code != 200:
            raise FederationError(f"{response.url}: {response.status_code}: {response.text[:200]}")
        if len(response.content) > MAX_BLUEPRINT_BYTES:
            raise FederationError(f"{response.url}: larger than {MAX_BLUEPRINT_BYTES:,} bytes; refused")
    try:
        signature = _signature_document(json.loads(sig.content), where)
    except ValueError as exc:
        raise SignatureError(f"{where}: the signature is not JSON: {exc}") from exc
    loaded = verify(blob.content, signature, trusted, where)
    entry = into.store(blob.content, signature)
    signer = Ed25519PublicKey.from_public_bytes(base64.b64decode(str(signature["public_key"])))
    into.trust(signer, str(signature.get("publisher")))
    return Pulled(entry, loaded)


def registry_index(root: Path) -> dict[str, list[dict[str, str]]]:
    """What `GET /v1/blueprints` serves."""
    return {
        "blueprints": [
            {
                "name": e.name,
                "version": e.version,
                "sha256": e.sha256,
                "publisher": e.publisher,
                "key_id": e.key_id,
                "title": e.title,
            }
            for e in LocalRegistry(root).entries()
        ]
    }
