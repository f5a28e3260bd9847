"""Enrolment: partners register their node key with a one-time code, not by email.

`oda coordinator invite DIR PARTNER` writes an invitation and prints its **enrolment code**: the
coordinator's Fleet address, the SHA-256 fingerprint of its CA certificate, the partner's name,
the expiry and a 256-bit secret. Only the secret's SHA-256 is stored. The partner runs `oda-node
enrol CODE`: the node fetches the CA from the coordinator, keeps it only if its fingerprint is the
one in the code (so the first contact cannot be intercepted), and sends its public key over TLS
trusting that CA. The Fleet proxy (`enrolment_routes`) checks the code (unknown, used and expired
codes are refused and say so) and queues the key; the coordinator's own loop
(`Enrolments.tend`, in `oda coordinator start`) registers it with the SuperLink under the name
the invitation gave, once an administrator approved it when the invitation asked for approval.

**Rotation** (`oda-node rotate-key`): the node sends its next public key signed with its current
key; the coordinator registers the new key under the same name, and revokes the old one once the
new one has connected. **Registration check** (`oda-node check`): the node signs a timestamp; the
proxy answers from `run/nodes.json`, the registered keys as the coordinator's loop last read them.

The proxy never talks to the SuperLink's Control API: it only writes to and reads from
`enrolment.sqlite` and `run/nodes.json` in the coordinator folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from privacy.enrolment_code import (
    CA_PATH,
    DIST_PATH,
    ENROL_PATH,
    PARTNER_NAME,
    ROTATE_PATH,
    WHOAMI_PATH,
    EnrolmentCode,
    ca_fingerprint,
    signed_message,
)
from privacy.errors import ConfigError, FederationError
from privacy.keyfiles import load_node_public_key

if TYPE_CHECKING:
    from starlette.routing import Route

    from coordinator.deploy.flower import FlowerLink

__all__ = ["NODES_FILE", "Enrolments", "enrolment_routes"]

#: The registered keys as the coordinator's loop last read them (for the proxy's `whoami`).
NODES_FILE = "nodes.json"
#: How far a signed timestamp may be from the coordinator's clock.
CLOCK_SKEW = 300.0
#: Largest enrolment request body (a P-384 OpenSSH key is about 250 bytes).
MAX_BODY = 8 * 1024
MAX_HOURS = 24 * 30

_SCHEMA = """
CREATE TABLE IF NOT EXISTS invites (
    token_sha256 TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    approval INTEGER NOT NULL,
    used REAL,
    request_id TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('enrol', 'rotate')),
    partner TEXT NOT NULL,
    public_key TEXT NOT NULL,
    old_public_key TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('awaiting approval', 'queued', 'registered', 'done', 'refused')),
    node_id TEXT,  -- Flower's node ids are unsigned 64-bit
    message TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
"""


def _key_id(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of a public key's DER (SubjectPublicKeyInfo): how `run/nodes.json` names a key."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


class Enrolments:
    """The coordinator folder's invitations and key requests (`DIR/enrolment.sqlite`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "enrolment.sqlite"
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- the administrator ---------------------------------------------------------------

    def invite(
        self, partner: str, address: str, ca_pem: bytes, hours: float, approval: bool
    ) -> EnrolmentCode:
        """Raises: ConfigError for a bad partner name or lifetime."""
        if not (0 < hours <= MAX_HOURS):
            raise ConfigError(
                f"--expires-hours must be above 0 and at most {MAX_HOURS} (30 days), not {hours:g}"
            )
        if not PARTNER_NAME.fullmatch(partner):
            raise ConfigError(f"partner name {partner!r}: use letters, digits, '_', '.', '-' (at most 80)")
        token = secrets.token_urlsafe(32)
        now = time.time()
        expires = float(int(now + hours * 3600))  # whole seconds: what the code carries
        self._db.execute(
            "INSERT INTO invites VALUES (?, ?, ?, ?, ?, NULL, NULL)",
            (hashlib.sha256(token.encode()).hexdigest(), partner, now, expires, int(approval)),
        )
        return EnrolmentCode(address, ca_fingerprint(ca_pem), partner, expires, token)

    def requests(self, status: str | None = None) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, kind, partner, status, node_id, message, created FROM requests"
            " WHERE ? IS NULL OR status = ? ORDER BY created",
            (status, status),
        ).fetchall()
        keys = ("id", "kind", "partner", "status", "node_id", "message", "created")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def approve(self, request_id: str) -> None:
        """Raises: ConfigError when no request with that id awaits approval."""
        changed = self._db.execute(
            "UPDATE requests SET status = 'queued', updated = ? WHERE id = ? AND status = 'awaiting approval'",
            (time.time(), request_id),
        ).rowcount
        if not changed:
            raise ConfigError(
                f"no enrolment {request_id!r} awaits approval: see `oda coordinator enrolments DIR`"
            )

    # --- the Fleet proxy (partners) -------------------------------------------------------

    def enrol(self, token: str, public_key: str) -> dict[str, Any]:
        """Take a node's key for the invitation `token` is the secret of; the request's state.

        Raises:
            PermissionError: unknown, used or expired code (the message says which and what to do).
            ConfigError: the key is not a P-384 OpenSSH public key.
        """
        load_node_public_key(public_key.encode())
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(
                "SELECT partner, expires, approval, used FROM invites WHERE token_sha256 = ?", (digest,)
            ).fetchone()
            if row is None:
                raise PermissionError("this enrolment code is not one this coordinator issued")
            partner, expires, approval, used = row
            if used is not None:
                raise PermissionError(
                    f"this enrolment code was already used ({_when(used)}): each code enrols one node "
                    "once; ask the coordinator for a new one (`oda coordinator invite`)"
                )
            if now > expires:
                raise PermissionError(
                    f"this enrolment code expired {_when(expires)}: ask the coordinator for a new one "
                    "(`oda coordinator invite`)"
                )
            request_id = secrets.token_hex(16)
            status = "awaiting approval" if approval else "queued"
            self._db.execute(
                "INSERT INTO requests (id, kind, partner, public_key, status, created, updated)"
                " VALUES (?, 'enrol', ?, ?, ?, ?, ?)",
                (request_id, partner, public_key.strip(), status, now, now),
            )
            self._db.execute(
                "UPDATE invites SET used = ?, request_id = ? WHERE token_sha256 = ?",
                (now, request_id, digest),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return {"request": request_id, "partner": partner, "status": status}

    def rotate(self, old_key: str, new_key: str, when: float, signature: bytes) -> dict[str, Any]:
        """Queue `new_key` to replace `old_key`, proven by `signature` of the old key.

        Raises:
            PermissionError: bad signature, stale time, or the old key is not registered.
            ConfigError: a key is not a P-384 OpenSSH public key.
        """
        old = _verify(old_key, "rotate", when, signature, new_key.strip())
        load_node_public_key(new_key.encode())
        entry = self.registered().get(_key_id(old))
        if entry is None:
            raise PermissionError("the key that signed this rotation is not registered here")
        request_id = secrets.token_hex(16)
        now = time.time()
        self._db.execute(
            "INSERT INTO requests (id, kind, partner, public_key, old_public_key, status, created, updated)"
            " VALUES (?, 'rotate', ?, ?, ?, 'queued', ?, ?)",
            (request_id, entry["name"], new_key.strip(), old_key.strip(), now, now),
        )
        return {"request": request_id, "partner": entry["name"], "status": "queued"}

    def status(self, request_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT partner, status, node_id, message FROM requests WHERE id = ?", (request_id[:64],)
        ).fetchone()
        if row is None:
            return None
        return {"partner": row[0], "status": row[1], "node_id": row[2], "message": row[3]}

    def whoami(self, public_key: str, when: float, signature: bytes) -> dict[str, Any]:
        """Raises: PermissionError for a bad signature or stale time."""
        entry = self.registered().get(_key_id(_verify(public_key, "whoami", when, signature)))
        if entry is None:
            return {"registered": False}
        return {"registered": True, **entry}

    def registered(self) -> dict[str, dict[str, Any]]:
        path = self.folder / "run" / NODES_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # --- the coordinator's loop ----------------------------------------------------------

    def tend(self, link: FlowerLink) -> list[str]:
        """Register queued keys, revoke rotated-out keys whose successor connected, and write
        `run/nodes.json`; return one line per change, for the coordinator's log."""
        lines: list[str] = []
        for request_id, kind, partner, key in self._db.execute(
            "SELECT id, kind, partner, public_key FROM requests WHERE status = 'queued'"
        ).fetchall():
            try:
                node_id = link.register_node(key.encode(), partner)
            except (ConfigError, FederationError) as exc:
                self._set(request_id, "refused", message=str(exc))
                lines.append(f"enrolment {request_id[:8]} for {partner} refused: {exc}")
                continue
            self._set(request_id, "registered", node_id=str(node_id))
            lines.append(f"{kind}: registered {partner}'s key as node {node_id}")
        nodes = link.list_nodes()
        for request_id, partner, old_key, node_id in self._db.execute(
            "SELECT id, partner, old_public_key, node_id FROM requests WHERE kind = 'rotate' AND status = 'registered'"
        ).fetchall():
            new = next((n for n in nodes if str(n.node_id) == node_id), None)
            if new is None or not new.last_activated_at:
                continue  # the new key has not connected yet: the old one stays valid
            old_pem = load_node_public_key(old_key.encode()).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for node in nodes:
                if node.public_key_pem == old_pem and node.status != "unregistered":
                    link.unregister_node(node.node_id)
                    lines.append(f"rotate: revoked {partner}'s old key (node {node.node_id})")
            self._set(request_id, "done")
            nodes = link.list_nodes()
        self._write_nodes(nodes)
        return lines

    def _set(self, request_id: str, status: str, node_id: str | None = None, message: str = "") -> None:
        self._db.execute(
            "UPDATE requests SET status = ?, node_id = COALESCE(?, node_id), message = ?, updated = ? WHERE id = ?",
            (status, node_id, message[:500], time.time(), request_id),
        )

    def _write_nodes(self, nodes: list[Any]) -> None:
        view = {
            _key_id(cast(ec.EllipticCurvePublicKey, serialization.load_pem_public_key(n.public_key_pem))): {
                "name": n.name,
                "node_id": n.node_id,
                "status": n.status,
            }
            for n in nodes
            if n.status != "unregistered"
        }
        path = self.folder / "run" / NODES_FILE
        text = json.dumps(view, sort_keys=True)
        if path.exists() and path.read_text() == text:
            return
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def _verify(
    public_key: str, purpose: str, when: float, signature: bytes, extra: str = ""
) -> ec.EllipticCurvePublicKey:
    """The key, once `signature` over `signed_message(purpose, when, extra)` checks out.

    Raises:
        PermissionError: stale timestamp or bad signature.
        ConfigError: not a P-384 OpenSSH key.
    """
    key = load_node_public_key(public_key.encode())
    if abs(time.time() - when) > CLOCK_SKEW:
        raise PermissionError(
            f"the signed time is more than {CLOCK_SKEW:.0f} s from the coordinator's clock: set the clock"
        )
    try:
        key.verify(signature, signed_message(purpose, when, extra), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise PermissionError("the signature does not match the key") from exc
    return key


def enrolment_routes(folder: Path) -> list[Route]:
    """The proxy's enrolment endpoints for the coordinator in `folder` (see the module text)."""
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    enrolments = Enrolments(folder)
    ca = folder / "pki" / "ca.crt"
    dist = folder / "dist"

    async def body_of(request: Request) -> dict[str, Any] | None:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or not all(
            isinstance(v, str | int | float) and len(str(v)) <= 2048 for v in data.values()
        ):
            return None
        return data

    def refused(message: str, status: int = 403) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    async def enrol(request: Request) -> Response:
        data = await body_of(request)
        if (
            data is None
            or not isinstance(data.get("token"), str)
            or not isinstance(data.get("public_key"), str)
        ):
            return refused('send {"token": ..., "public_key": ...} (at most 8 KiB)', 400)
        try:
            return JSONResponse(enrolments.enrol(data["token"], data["public_key"]), status_code=202)
        except PermissionError as exc:
            return refused(str(exc))
        except ConfigError as exc:
            return refused(str(exc), 400)

    async def enrol_status(request: Request) -> Response:
        state = enrolments.status(request.path_params["request_id"])
        return JSONResponse(state) if state is not None else refused("no such enrolment", 404)

    async def signed(request: Request, purpose: str) -> Response:
        data = await body_of(request)
        if data is None:
            return refused(f"bad {purpose} request: send a JSON object of at most 8 KiB", 400)
        try:
            key, when, signature = (
                str(data["public_key"]),
                float(data["time"]),
                bytes.fromhex(str(data["signature"])),
            )
            if purpose == "rotate":
                answer = enrolments.rotate(key, str(data["new_public_key"]), when, signature)
                return JSONResponse(answer, status_code=202)
            return JSONResponse(enrolments.whoami(key, when, signature))
        except (KeyError, ValueError, TypeError, ConfigError) as exc:
            return refused(f"bad {purpose} request: {exc}", 400)
        except PermissionError as exc:
            return refused(str(exc))

    async def rotate(request: Request) -> Response:
        return await signed(request, "rotate")

    async def whoami(request: Request) -> Response:
        return await signed(request, "whoami")

    async def ca_cert(_: Request) -> Response:
        return Response(ca.read_bytes(), media_type="application/x-pem-file")

    async def dist_index(_: Request) -> Response:
        files = sorted(dist.glob("*.whl")) + sorted(dist.glob("*.tar.gz")) if dist.is_dir() else []
        return JSONResponse(
            {
                f.name: {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "bytes": f.stat().st_size}
                for f in files
            }
        )

    async def dist_file(request: Request) -> Response:
        name = request.path_params["file"]
        path = dist / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return refused(f"no file {name!r} here: see {DIST_PATH}/", 404)
        return FileResponse(path)

    return [
        Route(ENROL_PATH, enrol, methods=["POST"]),
        Route(ENROL_PATH + "/{request_id}", enrol_status, methods=["GET"]),
        Route(ROTATE_PATH, rotate, methods=["POST"]),
        Route(WHOAMI_PATH, whoami, methods=["POST"]),
        Route(CA_PATH, ca_cert, methods=["GET"]),
        Route(DIST_PATH + "/", dist_index, methods=["GET"]),
        Route(DIST_PATH + "/{file}", dist_file, methods=["GET"]),
    ]
