"""Enrolment codes and the Fleet proxy's enrolment endpoints, in process (the SuperLink side,
`Enrolments.tend`, runs over real processes in tests/e2e/test_partner_install.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from coordinator.deploy.enrolment import NODES_FILE, Enrolments, enrolment_routes
from coordinator.deploy.pki import create_ca
from privacy.enrolment_code import EnrolmentCode, signed_message
from privacy.errors import ConfigError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    create_ca(tmp_path / "pki", "test CA")
    return tmp_path


def _key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return key, public.decode()


def _code(folder: Path, partner: str = "police", hours: float = 1.0, approval: bool = False) -> EnrolmentCode:
    enrolments = Enrolments(folder)
    try:
        return enrolments.invite(
            partner, "oda.example.org:9092", (folder / "pki" / "ca.crt").read_bytes(), hours, approval
        )
    finally:
        enrolments.close()


def test_a_code_round_trips_and_carries_the_ca_fingerprint(folder: Path) -> None:
    code = _code(folder)
    parsed = EnrolmentCode.parse(str(code))
    assert parsed == code
    assert parsed.address == "oda.example.org:9092" and len(parsed.ca_sha256) == 64
    assert EnrolmentCode.parse("  " + str(code)[:30] + "\n" + str(code)[30:] + " ") == code, (
        "wrapped when pasted"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "not an enrolment code"),
        ("oda1.", "damaged"),
        ("oda1.eyJhIjoiMSJ9", "damaged"),
        ("oda1." + "A" * 3000, "not an enrolment code"),
    ],
)
def test_bad_codes_are_refused_with_what_to_do(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EnrolmentCode.parse(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_code_or_a_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        EnrolmentCode.parse(text)


def test_invite_refuses_bad_names_and_lifetimes(folder: Path) -> None:
    with pytest.raises(ConfigError, match="partner name"):
        _code(folder, partner="police force")
    with pytest.raises(ConfigError, match="expires-hours must be above 0"):
        _code(folder, hours=0)


def test_only_the_hash_of_the_secret_is_stored(folder: Path) -> None:
    code = _code(folder)
    assert code.token.encode() not in (folder / "enrolment.sqlite").read_bytes()


class Client:
    """The enrolment routes as the proxy serves them, called in process (httpx over ASGI)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="https://proxy") as http:
                return await http.request(method, path, **kwargs)

        return asyncio.run(call())

    def get(self, path: str) -> httpx.Response:
        return self._call("GET", path)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._call("POST", path, **kwargs)


@pytest.fixture
def client(folder: Path) -> Client:
    return Client(Starlette(routes=enrolment_routes(folder)))


def test_a_code_enrols_once_and_the_second_use_is_refused(folder: Path, client: Client) -> None:
    code = _code(folder)
    _, public = _key()
    first = client.post("/v1/oda/enrol", json={"token": code.token, "public_key": public})
    assert (
        first.status_code == 202
        and first.json()["status"] == "queued"
        and first.json()["partner"] == "police"
    )
    state = client.get(f"/v1/oda/enrol/{first.json()['request']}").json()
    assert state["status"] == "queued"
    second = client.post("/v1/oda/enrol", json={"token": code.token, "public_key": _key()[1]})
    assert second.status_code == 403 and "already used" in second.json()["error"]


def test_expired_unknown_and_malformed_enrolments_are_refused(folder: Path, client: Client) -> None:
    code = _code(folder, hours=0.0002)
    time.sleep(1.0)
    _, public = _key()
    expired = client.post("/v1/oda/enrol", json={"token": code.token, "public_key": public})
    assert expired.status_code == 403 and "expired" in expired.json()["error"]
    unknown = client.post("/v1/oda/enrol", json={"token": "x" * 43, "public_key": public})
    assert unknown.status_code == 403 and "not one this coordinator issued" in unknown.json()["error"]
    fresh = _code(folder)
    rsa = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO3aE3pMpP8Mb3W7sMnE4N8Rqk5G2i3m6s1u5k1w3o7q"
    wrong_key = client.post("/v1/oda/enrol", json={"token": fresh.token, "public_key": rsa})
    assert wrong_key.status_code == 400 and "P-384" in wrong_key.json()["error"]
    huge = client.post("/v1/oda/enrol", content=b"{" + b" " * 20_000 + b"}")
    assert huge.status_code == 400 and "at most 8 KiB" in huge.json()["error"]
    # the refused key did not use the code up
    ok = client.post("/v1/oda/enrol", json={"token": fresh.token, "public_key": public})
    assert ok.status_code == 202


def test_an_invitation_with_approval_waits_for_the_administrator(folder: Path, client: Client) -> None:
    code = _code(folder, approval=True)
    answer = client.post("/v1/oda/enrol", json={"token": code.token, "public_key": _key()[1]}).json()
    assert answer["status"] == "awaiting approval"
    enrolments = Enrolments(folder)
    try:
        with pytest.raises(ConfigError, match="awaits approval"):
            enrolments.approve("nope")
        enrolments.approve(answer["request"])
        assert client.get(f"/v1/oda/enrol/{answer['request']}").json()["status"] == "queued"
    finally:
        enrolments.close()


def _signed(
    key: ec.EllipticCurvePrivateKey, public: str, purpose: str, extra: str = "", skew: float = 0
) -> dict:
    from cryptography.hazmat.primitives import hashes

    when = round(time.time() + skew, 3)
    signature = key.sign(signed_message(purpose, when, extra), ec.ECDSA(hashes.SHA384())).hex()
    return {"public_key": public, "time": when, "signature": signature}


def _register(folder: Path, public: str, name: str) -> None:
    """What the coordinator's loop writes for a registered key: the SHA-256 of its DER."""
    import hashlib

    der = serialization.load_ssh_public_key(public.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (folder / "run").mkdir(exist_ok=True)
    view = {hashlib.sha256(der).hexdigest(): {"name": name, "node_id": "7", "status": "online"}}
    (folder / "run" / NODES_FILE).write_text(json.dumps(view))


def test_whoami_tells_registered_from_unknown_and_needs_the_private_key(folder: Path, client: Client) -> None:
    key, public = _key()
    assert client.post("/v1/oda/whoami", json=_signed(key, public, "whoami")).json() == {"registered": False}
    _register(folder, public, "police")
    answer = client.post("/v1/oda/whoami", json=_signed(key, public, "whoami")).json()
    assert answer == {"registered": True, "name": "police", "node_id": "7", "status": "online"}
    other, _ = _key()
    forged = client.post("/v1/oda/whoami", json=_signed(other, public, "whoami"))
    assert forged.status_code == 403 and "signature does not match" in forged.json()["error"]
    stale = client.post("/v1/oda/whoami", json=_signed(key, public, "whoami", skew=-900))
    assert stale.status_code == 403 and "clock" in stale.json()["error"]


def test_a_rotation_must_be_signed_by_a_registered_key(folder: Path, client: Client) -> None:
    key, public = _key()
    _, new_public = _key()
    body = {**_signed(key, public, "rotate", new_public), "new_public_key": new_public}
    refused = client.post("/v1/oda/rotate", json=body)
    assert refused.status_code == 403 and "not registered" in refused.json()["error"]
    _register(folder, public, "police")
    accepted = client.post("/v1/oda/rotate", json=body)
    assert accepted.status_code == 202 and accepted.json()["partner"] == "police"
    swapped = {**_signed(key, public, "rotate", new_public), "new_public_key": _key()[1]}
    tampered = client.post("/v1/oda/rotate", json=swapped)
    assert tampered.status_code == 403 and "signature does not match" in tampered.json()["error"]


def test_the_ca_and_the_wheel_are_served_and_nothing_outside_dist(folder: Path, client: Client) -> None:
    assert client.get("/v1/oda/ca.crt").content == (folder / "pki" / "ca.crt").read_bytes()
    (folder / "dist").mkdir()
    (folder / "dist" / "oda_federated-9.9-py3-none-any.whl").write_bytes(b"wheel")
    index = client.get("/v1/oda/dist/").json()
    assert list(index) == ["oda_federated-9.9-py3-none-any.whl"] and index[next(iter(index))]["bytes"] == 5
    assert client.get("/v1/oda/dist/oda_federated-9.9-py3-none-any.whl").content == b"wheel"
    assert client.get("/v1/oda/dist/..%2Fpki%2Fca.key").status_code == 404
    assert client.get("/v1/oda/dist/.hidden").status_code == 404


def test_malformed_signed_requests_are_400_with_what_to_send(client: Client) -> None:
    huge = client.post("/v1/oda/whoami", content=b"[" + b"1," * 9000 + b"1]")
    assert huge.status_code == 400 and "a JSON object of at most 8 KiB" in huge.json()["error"]
    missing = client.post("/v1/oda/rotate", json={"public_key": "x"})
    assert missing.status_code == 400 and missing.json()["error"].startswith("bad rotate request")
