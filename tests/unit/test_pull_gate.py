"""The Fleet proxy's held pulls: a node's pull waits until the coordinator pushes it something
(or the hold passes); a wake before the pull is not lost; the wake door opens only with the
coordinator's secret."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from coordinator.deploy.proxy import MAX_HELD, WAKE_PATH, PullGate, build_app
from coordinator.deploy.service import free_port

#: Generous: a pull that should pass must not wait anywhere near the hold.
LONG = 60.0


def test_an_idle_nodes_pull_is_held_until_the_coordinator_wakes_it() -> None:
    async def go() -> None:
        gate = PullGate(hold=LONG)
        pull = asyncio.create_task(gate.admit("police-key"))
        await asyncio.sleep(0.05)
        assert not pull.done() and gate.held == 1
        gate.wake(["fire-key"])  # another node's push releases nothing here
        await asyncio.sleep(0.05)
        assert not pull.done()
        gate.wake(["police-key"])
        await asyncio.wait_for(pull, 10)  # released by the wake, long before the hold
        assert gate.held == 0
        # a wake while no pull is held releases the next pull at once: no push waits a hold
        gate.wake(["police-key"])
        await asyncio.wait_for(gate.admit("police-key"), 10)
        later = asyncio.create_task(gate.admit("police-key"))  # that wake is used up
        await asyncio.sleep(0.05)
        assert not later.done()
        later.cancel()

    asyncio.run(go())


def test_a_held_pull_goes_on_when_the_hold_passes() -> None:
    async def go() -> None:
        gate = PullGate(hold=0.05)
        await asyncio.wait_for(gate.admit("council-key"), 10)
        assert gate.held_total == 1

    asyncio.run(go())


@pytest.mark.parametrize("key", [None, "", "k" * 5000])
def test_pulls_without_a_usable_key_pass_unheld(key: str | None) -> None:
    async def go() -> None:
        gate = PullGate(hold=LONG)
        await asyncio.wait_for(gate.admit(key), 10)
        assert gate.held_total == 0

    asyncio.run(go())


def test_no_more_than_max_held_pulls_wait() -> None:
    async def go() -> None:
        gate = PullGate(hold=LONG)
        gate.held = MAX_HELD
        await asyncio.wait_for(gate.admit("one-too-many"), 10)

    asyncio.run(go())


def test_the_wake_door_needs_the_secret_and_the_proxy_holds_pulls_until_woken() -> None:
    upstream = f"127.0.0.1:{free_port()}"  # nothing listens: a forwarded pull is a 502

    async def go() -> None:
        gate = PullGate(hold=LONG)
        app = build_app(upstream, None, wake_token="s3cret", gate=gate)  # noqa: S106  # a test secret
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy", timeout=30) as client:
            for headers in ({}, {"x-oda-wake-token": "guess"}):
                refused = await client.post(WAKE_PATH, json={"keys": ["k"]}, headers=headers)
                assert refused.status_code == 404 and "serves the Fleet API only" in refused.json()["error"]
            bad = await client.post(WAKE_PATH, content=b"[1]", headers={"x-oda-wake-token": "s3cret"})
            assert bad.status_code == 400
            pull = asyncio.create_task(
                client.post("/v1/fleet/pull-messages", content=b"x", headers={"flwr-public-key": "k"})
            )
            await asyncio.sleep(0.1)
            assert not pull.done() and gate.held == 1
            woke = await client.post(WAKE_PATH, json={"keys": ["k"]}, headers={"x-oda-wake-token": "s3cret"})
            assert woke.json() == {"woken": 1}
            response = await asyncio.wait_for(pull, 20)
            assert response.status_code == 502  # forwarded once woken
            other = await client.post(
                "/v1/fleet/push-messages", content=b"x", headers={"flwr-public-key": "z"}
            )
            assert other.status_code == 502 and gate.held_total == 1  # only pulls are ever held

    asyncio.run(go())


def test_without_a_wake_token_nothing_is_held() -> None:
    app = build_app(f"127.0.0.1:{free_port()}", None)
    assert app.state.pull_gate.hold == 0
