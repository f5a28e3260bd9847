"""`oda-node enrol CODE`, `rotate-key` and the registration check of `oda-node check`.

Enrolment pins the coordinator's CA by the fingerprint the code carries: the CA is fetched
without trusting anything, kept only when its SHA-256 matches, and every later call trusts it
alone. The node then sends its public key with the code's secret and waits until the coordinator
registered it (or an administrator approved it). Nothing private leaves: the private key stays in
`keys/node.key`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node_agent.keys import load_private_key, write_key_pair
from privacy.enrolment_code import (
    CA_PATH,
    ENROL_PATH,
    ROTATE_PATH,
    WHOAMI_PATH,
    EnrolmentCode,
    ca_fingerprint,
    signed_message,
)
from privacy.errors import ConfigError, FederationError

__all__ = ["enrol", "registration", "rotate_key"]

#: Longest the node waits for its key to be registered (an approval may take a person).
WAIT_SECONDS = 600.0
#: Most bytes read for the CA certificate from a peer not yet trusted (a chain is a few KB).
MAX_CA_BYTES = 64 * 1024


def _pinned_ca(address: str, fingerprint: str, timeout: float) -> bytes:
    """The coordinator's CA certificate, once its SHA-256 is `fingerprint`.

    Raises:
        FederationError: unreachable, or a CA that is not the one the code names.
    """
    try:
        # Trust nothing yet: the certificate is checked against the code's fingerprint below,
        # and an unverified peer may send anything, so at most MAX_CA_BYTES are read.
        url = f"https://{address}{CA_PATH}"
        with httpx.stream("GET", url, verify=False, timeout=timeout) as response:  # noqa: S501
            status, content = response.status_code, b""
            for chunk in response.iter_bytes():
                content += chunk
                if len(content) > MAX_CA_BYTES:
                    raise FederationError(
                        f"{address} sent more than {MAX_CA_BYTES:,} bytes for a CA certificate"
                    )
    except httpx.HTTPError as exc:
        raise FederationError(f"cannot reach the coordinator at {address} to enrol: {exc}") from exc
    if status != 200:
        raise FederationError(
            f"https://{address}{CA_PATH} answered {status}: is this coordinator older "
            "than enrolment codes? ask for its CA certificate and register by hand"
        )
    try:
        got = ca_fingerprint(content)
    except ValueError as exc:
        raise FederationError(f"the coordinator at {address} sent no CA certificate ({exc})") from exc
    if got != fingerprint:
        raise FederationError(
            f"the CA certificate at {address} has fingerprint {got}, not the {fingerprint} the enrolment "
            "code names: someone may be intercepting the connection; nothing was sent"
        )
    return content


def _set_coordinator(config_path: Path, address: str) -> None:
    """Point `node.yaml` at `address` and the pinned CA, editing only the lines it must."""
    text = config_path.read_text()
    line = f"coordinator: {address}        # set by `oda-node enrol`"
    if re.search(r"^coordinator:", text, re.M):
        text = re.sub(r"^coordinator:.*$", line, text, count=1, flags=re.M)
    elif re.search(r"^# coordinator:.*$", text, re.M):
        text = re.sub(r"^# coordinator:.*$", line, text, count=1, flags=re.M)
    else:
        text = re.sub(r"^(partner:.*)$", rf"\1\n{line}", text, count=1, flags=re.M)
    if not re.search(r"^transport:", text, re.M):
        text = re.sub(
            r"^(coordinator:.*)$",
            r"\1\ntransport: {ca_cert: keys/ca.crt, node_key: keys/node.key}",
            text,
            count=1,
            flags=re.M,
        )
    config_path.write_text(text)


def enrol(config_path: Path, code: str, wait: float = WAIT_SECONDS, timeout: float = 10.0) -> str:
    """Enrol this node with the coordinator the code names; the lines to print.

    Writes `node.yaml` (from the template) and the key pair when missing, pins the CA in
    `keys/ca.crt`, sends `keys/node.pub` and waits until the key is registered.

    Raises:
        ConfigError: a damaged code, or a node.yaml for another partner.
        FederationError: the code is refused (used, expired, unknown), the CA does not match,
            or the registration did not happen within `wait` seconds.
    """
    parsed = EnrolmentCode.parse(code)
    address, partner = parsed.address, parsed.partner
    lines = []
    folder = config_path.parent
    if not config_path.exists():
        from node_agent.templates import node_yaml

        folder.mkdir(parents=True, exist_ok=True)
        config_path.write_text(node_yaml(partner, address))
        (folder / "data").mkdir(exist_ok=True)
        lines.append(
            f"wrote {config_path} for {partner}: describe your datasets in it, then `oda-node check`"
        )
    else:
        named = re.search(r"^partner:\s*([A-Za-z0-9_.-]+)", config_path.read_text(), re.M)
        if named and named.group(1) != partner:
            raise ConfigError(
                f"this enrolment code is for partner {partner!r}, but {config_path} is for {named.group(1)!r}"
            )
    keys = folder / "keys"
    if not (keys / "node.key").exists():
        write_key_pair(keys)
        lines.append(f"made the node key pair in {keys} (node.key stays here)")
    if parsed.expires < time.time():
        raise FederationError(
            "this enrolment code has expired: ask the coordinator for a new one (`oda coordinator invite`)"
        )
    ca = _pinned_ca(address, parsed.ca_sha256, timeout)
    (keys / "ca.crt").write_bytes(ca)
    lines.append(f"pinned the coordinator's CA in {keys / 'ca.crt'} (SHA-256 {parsed.ca_sha256[:16]}...)")
    client = httpx.Client(base_url=f"https://{address}", verify=_context(keys / "ca.crt"), timeout=timeout)
    try:
        public = (keys / "node.pub").read_text().strip()
        answer = _post(client, ENROL_PATH, {"token": parsed.token, "public_key": public})
        state = _wait_registered(client, str(answer["request"]), wait)
    finally:
        client.close()
    _set_coordinator(config_path, address)
    lines.append(f"registered as {partner} (node {state['node_id']}); {config_path} points at {address}")
    lines.append("next: `oda-node check`, then `oda-node start`")
    return "\n".join(lines)


def _context(ca: Path) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(ca))


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        response = client.post(path, json=body)
    except httpx.HTTPError as exc:
        raise FederationError(f"the coordinator did not answer {path}: {exc}") from exc
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code >= 400:
        raise FederationError(f"the coordinator refused: {data.get('error', response.status_code)}")
    return dict(data)


def _wait_registered(client: httpx.Client, request_id: str, wait: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            state = dict(client.get(f"{ENROL_PATH}/{request_id}").json())
        except (httpx.HTTPError, ValueError) as exc:
            raise FederationError(f"lost the coordinator while waiting for registration: {exc}") from exc
        if state.get("status") in ("registered", "done"):
            return state
        if state.get("status") == "refused":
            raise FederationError(f"the coordinator could not register the key: {state.get('message')}")
        if state.get("status") == "awaiting approval" and not told:
            print("waiting for the coordinator's administrator to approve this enrolment...", flush=True)
            told = True
        if time.monotonic() > deadline:
            raise FederationError(
                f"the key was not registered within {wait:.0f} s (state: {state.get('status')}); the code "
                f"is used now, so ask the coordinator to look at `oda coordinator enrolments` (request "
                f"{request_id})"
            )
        time.sleep(0.5)


def _signed(key: ec.EllipticCurvePrivateKey, purpose: str, extra: str = "") -> dict[str, Any]:
    when = round(time.time(), 3)
    message = signed_message(purpose, when, extra)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return {
        "public_key": public.decode(),
        "time": when,
        "signature": key.sign(message, ec.ECDSA(hashes.SHA384())).hex(),
    }


def registration(
    address: str, ca: Path | None, key_path: Path, timeout: float = 5.0
) -> dict[str, Any] | None:
    """What the coordinator says of this node's key (`registered`, and its name and node id), or
    None when the coordinator does not answer the question (a coordinator before enrolment)."""
    body = _signed(load_private_key(key_path), "whoami")
    verify: Any = _context(ca) if ca else True
    try:
        response = httpx.post(f"https://{address}{WHOAMI_PATH}", json=body, verify=verify, timeout=timeout)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return dict(response.json())


def rotate_key(address: str, ca: Path | None, keys: Path, wait: float = WAIT_SECONDS) -> str:
    """Replace this node's key: the next key is registered, then swapped in; the coordinator
    revokes the old key once the node has connected with the new one. The lines to print.

    Raises:
        FederationError: the coordinator refused or did not register the new key in time.
    """
    current = keys / "node.key"
    nxt = keys / "next"
    if not (nxt / "node.key").exists():
        write_key_pair(nxt)
    new_public = (nxt / "node.pub").read_text().strip()
    body = {**_signed(load_private_key(current), "rotate", new_public), "new_public_key": new_public}
    client = httpx.Client(base_url=f"https://{address}", verify=_context(ca) if ca else True, timeout=10.0)
    try:
        answer = _post(client, ROTATE_PATH, body)
        state = _wait_registered(client, str(answer["request"]), wait)
    finally:
        client.close()
    retired = keys / "retired"
    retired.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for name in ("node.key", "node.pub"):
        (keys / name).replace(retired / f"{stamp}-{name}")
        (nxt / name).replace(keys / name)
    nxt.rmdir()
    return (
        f"the new key is registered (node {state['node_id']}) and in {current}\n"
        "restart the node (`oda-node start`); the coordinator revokes the old key once the new one "
        f"connects (the old key is kept in {retired})"
    )
