"""The DPO console in process (httpx over ASGI): who may see it and act, and that its decisions
are the inbox's and the audit log's (the browser test is tests/e2e/test_node_console.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from node_agent.agent import NodeAgent, Pending
from node_agent.config import load_node_config
from node_agent.console import COOKIE, ConsoleSecrets, build_console
from node_agent.contact import Contact
from tests.unit.test_node_production import police, request, with_policy  # noqa: F401

HOST = "127.0.0.1:8765"


class Console:
    def __init__(self, config: Path) -> None:
        self.keys = ConsoleSecrets.new()
        self.app = build_console(load_node_config(config), self.keys, frozenset({HOST}))
        self.cookies: dict[str, str] = {}

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport, base_url=f"http://{HOST}", cookies=self.cookies
            ) as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(go())

    def sign_in(self) -> None:
        response = self.call("GET", f"/?login={self.keys.login}")
        assert response.status_code == 303
        assert (
            "httponly" in response.headers["set-cookie"].lower()
            and "samesite=strict" in response.headers["set-cookie"].lower()
        )
        self.cookies = {COOKIE: self.keys.login}

    def decide(self, **form: str) -> httpx.Response:
        return self.call("POST", "/decide", data={"token": self.keys.form, **form})


@pytest.fixture
def waiting(police: Path) -> Path:  # noqa: F811
    config = with_policy(police, approval="manual")
    agent = NodeAgent(load_node_config(config))
    try:
        assert isinstance(agent.handle(request(rid="wait-1")), Pending)
        assert isinstance(agent.handle(request(rid="wait-2")), Pending)
        Contact(Path(agent.config.state_dir)).touch()
    finally:
        agent.close()
    return config


def test_the_page_needs_the_printed_link_and_shows_inbox_budget_and_contact(waiting: Path) -> None:
    console = Console(waiting)
    assert console.call("GET", "/").status_code == 401
    assert console.call("GET", "/?login=guess").status_code == 401
    console.sign_in()
    page = console.call("GET", "/")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    text = page.text
    assert "data-request='wait-1'" in text and "data-request='wait-2'" in text
    assert "sum of harm in [0, 100]" in text and "rho 0.1" in text
    assert "data-population='incidents'" in text and "remaining" in text
    assert "s ago)" in text.split("last-contact")[1][:80], "the contact the node recorded"


def test_approve_and_deny_are_the_inboxs_and_audited_as_the_consoles(waiting: Path) -> None:
    console = Console(waiting)
    console.sign_in()
    approved = console.decide(request="wait-1", decision="approve")
    assert approved.status_code == 303 and "wait-1 approved" in approved.headers["location"].replace(
        "%20", " "
    )
    assert console.decide(request="wait-2", decision="deny").status_code == 400, "a denial needs a reason"
    assert console.decide(request="wait-2", decision="deny", reason="not in our DPIA").status_code == 303
    again = console.decide(request="wait-1", decision="approve")
    assert again.status_code == 409 and "wait-1" in again.text
    agent = NodeAgent(load_node_config(waiting))
    try:
        assert {i.request_id: i.status for i in agent.inbox.items()} == {
            "wait-1": "approved",
            "wait-2": "denied",
        }
        reasons = [(e.request_id, e.decision, e.reason) for e in agent.audit.entries()[-2:]]
        assert reasons == [
            ("wait-1", "approved", "approved by the DPO console"),
            ("wait-2", "denied", "not in our DPIA"),
        ]
    finally:
        agent.close()


def test_other_sites_other_hosts_and_stale_forms_cannot_act(waiting: Path) -> None:
    console = Console(waiting)
    console.sign_in()
    forged = console.call(
        "POST", "/decide", data={"token": "old", "request": "wait-1", "decision": "approve"}
    )
    assert forged.status_code == 403 and "stale" in forged.text
    cross_site = console.call(
        "POST",
        "/decide",
        data={"token": console.keys.form, "request": "wait-1", "decision": "approve"},
        headers={"origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    rebound = console.call("GET", "/", headers={"host": "evil.example:8765"})
    assert rebound.status_code == 403
    unsigned = Console(waiting)
    unsigned.keys = console.keys  # knows the form token, not the cookie
    assert unsigned.decide(request="wait-1", decision="approve").status_code == 403
    agent = NodeAgent(load_node_config(waiting))
    try:
        assert {i.status for i in agent.inbox.items()} == {"waiting"}
    finally:
        agent.close()


def test_the_console_refuses_to_listen_off_loopback(waiting: Path) -> None:
    from node_agent.console import serve_console
    from privacy.errors import ConfigError

    with pytest.raises(ConfigError, match="listens on loopback only; reach it from elsewhere through"):
        serve_console(load_node_config(waiting), "0.0.0.0", 8765, frozenset())  # noqa: S104
