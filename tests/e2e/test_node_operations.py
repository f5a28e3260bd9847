"""Partner IT operations over real processes: manual approval through Flower, and kill -9."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from analyses.request import AnalysisRequest
from coordinator.embedded.federation import EmbeddedFederation
from coordinator.run.transport import NodeReply
from node_agent.agent import NodeAgent
from node_agent.audit import AuditLog
from node_agent.config import load_node_config
from node_agent.inbox import Inbox
from node_agent.ledger import Ledger
from privacy import Rho
from tests.conftest import release_of

pytestmark = pytest.mark.e2e

SPEC = """
version: 1
name: approval-check
dataset: incidents
privacy: {rho: 0.05, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c, by: [{column: area, keyset: coventry_lsoa11}]}
"""


def _wait_waiting(state: Path, request_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (state / "inbox.sqlite").exists():
            inbox = Inbox(state)
            try:
                if any(i.request_id == request_id for i in inbox.items("waiting")):
                    return
            finally:
                inbox.close()
        time.sleep(0.05)
    raise AssertionError(f"{request_id} never reached the inbox")


def _broadcast_in_background(
    fed: EmbeddedFederation, request_id: str
) -> tuple[threading.Thread, list[NodeReply]]:
    replies: list[NodeReply] = []
    request = AnalysisRequest(1, request_id, "central", SPEC)

    def run() -> None:
        link = fed.link()
        try:
            replies.extend(link.broadcast(request, timeout=60))
        finally:
            link.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, replies


def test_manual_approval_over_flower(tmp_path: Path) -> None:
    with EmbeddedFederation(tmp_path, rows=5_000, partners=("police",), manual=frozenset({"police"})) as fed:
        config = fed.configs["police"]
        state = config.parent / "state"
        cli = [sys.executable, "-m", "node_agent.cli"]

        thread, replies = _broadcast_in_background(fed, "approve-me")
        _wait_waiting(state, "approve-me")
        time.sleep(0.5)
        assert not replies, "a reply left before approval"
        assert Ledger(state / "ledger.sqlite").entries() == []
        subprocess.run([*cli, "approve", "approve-me", "--config", str(config)], check=True)
        thread.join(60)
        assert [r.outcome for r in replies] == ["release"]
        assert replies[0].release is not None and replies[0].release.request_id == "approve-me"

        thread, replies = _broadcast_in_background(fed, "deny-me")
        _wait_waiting(state, "deny-me")
        reason = "outside our information sharing agreement"
        subprocess.run([*cli, "deny", "deny-me", "--reason", reason, "--config", str(config)], check=True)
        thread.join(60)
        assert [r.outcome for r in replies] == ["refused"]
        refusal = replies[0].refusal
        assert refusal is not None and refusal.kind == "approval_denied" and reason in refusal.message
        decisions = [e.decision for e in AuditLog(state).entries()]
        assert decisions == ["pending", "approved", "released", "pending", "denied"]


# --- kill -9 ---------------------------------------------------------------------------------

KILL_SPEC = """
version: 1
name: kill-{i}
dataset: incidents
privacy: {{rho: 0.01, unit: {{identifier: person_id, max_rows: 5}}}}
steps:
  - {{kind: sum, id: s, column: harm, bounds: [0, 100], by: [{{column: area, keyset: coventry_lsoa11}}]}}
"""


def _release_forever(config_path: str, outbox: str, prefix: str) -> None:
    """Child: release request after request; append each release to the outbox as it 'leaves'."""
    agent = NodeAgent(load_node_config(Path(config_path)))
    i = 0
    while True:
        i += 1
        release = release_of(
            agent.handle(AnalysisRequest(1, f"{prefix}-{i}", "central", KILL_SPEC.format(i=i)))
        )
        with open(outbox, "a") as f:
            f.write(json.dumps({"request_id": release.request_id, "rho": release.cost_rho}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def test_kill_9_at_random_points_never_loses_a_debit(
    federation_data: dict[str, Path], tmp_path: Path
) -> None:
    source = federation_data["police"]
    text = source.read_text().replace("data_dir: data", f"data_dir: {source.parent / 'data'}")
    text = text.replace("state_dir: state", f"state_dir: {tmp_path / 'state'}")
    text = text.replace("incidents: 5.0", "incidents: 100.0")
    config = tmp_path / "node.yaml"
    config.write_text(text)
    outbox = tmp_path / "outbox.jsonl"
    NodeAgent(load_node_config(config)).close()  # state created once, before any kill
    fork = multiprocessing.get_context("fork")  # children start warm: the kill points land in releases
    rng = random.Random(20261124)
    spent_before = 0.0
    for trial in range(50):
        children = [
            fork.Process(target=_release_forever, args=(str(config), str(outbox), f"t{trial}c{c}"))
            for c in range(1 + trial % 2)  # every other trial, two processes race on one population
        ]
        for child in children:
            child.start()
        time.sleep(rng.uniform(0.05, 0.6))
        for child in children:
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
            assert child.exitcode == -signal.SIGKILL
        ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
        try:
            entries = {e.request_id: e for e in ledger.entries()}
            spent = ledger.spent("incidents").value
        finally:
            ledger.close()
        released = [json.loads(line) for line in outbox.read_text().splitlines()] if outbox.exists() else []
        for release in released:  # nothing left without its debit, committed before it left
            assert entries[release["request_id"]].status == "committed", release
        assert spent >= spent_before - 1e-12  # never a refund
        assert spent >= sum(r["rho"] for r in released) - 1e-9
        spent_before = spent
        AuditLog(tmp_path / "state").verify()  # the chain survives every kill
    killed_mid_release = sum(e.status == "pending" for e in entries.values())
    assert len(released) > 50 and killed_mid_release >= 5, (len(released), killed_mid_release)


def _inbox_status(state: Path, request_id: str) -> str:
    inbox = Inbox(state)
    try:
        return inbox.get(request_id).status
    finally:
        inbox.close()


def _wait_status(state: Path, request_id: str, status: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _inbox_status(state, request_id) == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"{request_id} never became {status} (is {_inbox_status(state, request_id)})")


def test_requests_the_coordinator_gave_up_on_leave_the_inbox_and_spend_nothing(tmp_path: Path) -> None:
    """The coordinator stops waiting: once at its deadline (it tells the node to withdraw the
    request), once by the message's time to live running out (the node sees it by itself), and
    once by a cancel of the run while a person had not decided. Each entry leaves the inbox with
    its reason, a late approval runs nothing, nothing is spent, and the node keeps serving (it
    used to crash with a raw Flower traceback)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from coordinator.deploy.flower import _push
    from coordinator.run.transport import RunCancelled, RunContext

    with EmbeddedFederation(tmp_path, rows=5_000, partners=("police",), manual=frozenset({"police"})) as fed:
        config = fed.configs["police"]
        state = config.parent / "state"
        cli = [sys.executable, "-m", "node_agent.cli"]

        link = fed.link()
        try:  # the coordinator waits 3 s, then withdraws the request and ends the run
            replies = link.broadcast(AnalysisRequest(1, "ended", "central", SPEC), timeout=3)
            assert [r.outcome for r in replies] == ["timeout"]
            _wait_status(state, "ended", "expired")
            late = subprocess.run([*cli, "approve", "ended", "--config", str(config)], capture_output=True)
            assert late.returncode != 0 and b"not waiting" in late.stderr
            grid, finish = link._open_run()  # a message that expires after 2 s
            try:
                node = next(iter(grid.get_node_ids()))
                request = AnalysisRequest(1, "expired", "central", SPEC).to_json()
                content = RecordDict({"request": ConfigRecord({"json": request})})
                _push(grid, [Message(content, node, "query", ttl=2.0, group_id="")])
                _wait_waiting(state, "expired")
                time.sleep(2.5)
                # the node may have withdrawn it already (it looks every few seconds)
                subprocess.run([*cli, "approve", "expired", "--config", str(config)], capture_output=True)
                _wait_status(state, "expired", "expired")
            finally:
                finish()

            class CancelWhenWaiting:
                def sent(self, request_id: str, nodes: object) -> None:
                    pass

                def replied(self, request_id: str, node: str, reply: NodeReply) -> None:
                    pass

                def cancelled(self) -> str | None:
                    waiting = Inbox(state)
                    try:
                        held = any(i.request_id == "cancel-me" for i in waiting.items("waiting"))
                    finally:
                        waiting.close()
                    return "cancelled by alice@test: wrong areas" if held else None

            context = RunContext("alice@test", "r-cancel", "arson review", CancelWhenWaiting())
            with pytest.raises(RunCancelled, match="wrong areas"):
                link.broadcast(context.request("cancel-me", SPEC), 60, context.watch)
            _wait_status(state, "cancel-me", "expired")
        finally:
            link.close()
        fed.processes.check_alive()  # the node process survived all three
        assert Ledger(state / "ledger.sqlite").entries() == []  # nothing spent
        inbox = Inbox(state)
        try:
            reasons = {i.request_id: i.reason for i in inbox.items("expired")}
            cancelled = inbox.get("cancel-me")
        finally:
            inbox.close()
        # told by the coordinator, or (under load, if the run ended first) seen by the node itself
        assert "no reply within 3 s" in reasons["ended"] or "its run ended" in reasons["ended"], reasons
        assert "expired" in reasons["expired"], reasons
        assert (
            "wrong areas" in reasons["cancel-me"] and "nothing was reserved or spent" in reasons["cancel-me"]
        )
        assert (cancelled.requester, cancelled.run_id, cancelled.purpose) == (
            "alice@test",
            "r-cancel",
            "arson review",
        )
        audited = [e for e in AuditLog(state).entries() if e.request_id == "cancel-me"]
        assert [(e.decision, e.run_id) for e in audited] == [("pending", "r-cancel"), ("refused", "r-cancel")]

        thread, replies = _broadcast_in_background(fed, "fresh")  # and it still answers
        _wait_waiting(state, "fresh")
        subprocess.run([*cli, "approve", "fresh", "--config", str(config)], check=True)
        thread.join(60)
        assert [r.outcome for r in replies] == ["release"]


BIG = """
version: 1
name: slow-release
dataset: incidents
privacy: {{rho: 0.05, unit: {{identifier: person_id, max_rows: 5}}}}
steps:
  - {{kind: histogram, id: h, column: age, edges: [{}], by: [{{column: area, keyset: coventry_lsoa11}}]}}
""".format(", ".join(str(e / 10) for e in range(1001)))


def test_a_reply_the_coordinator_no_longer_takes_is_recorded_spent_not_delivered(tmp_path: Path) -> None:
    """The message's time to live runs out while the node computes a large release: the push of
    the reply fails. The node survives, and its ledger and audit log say "spent, not delivered"
    (the budget was debited before the release was computed, and stays spent)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from coordinator.deploy.flower import _push

    with EmbeddedFederation(tmp_path, rows=5_000, partners=("police",)) as fed:
        state = fed.configs["police"].parent / "state"
        link = fed.link()
        try:
            grid, finish = link._open_run()
            try:
                node = next(iter(grid.get_node_ids()))
                request = AnalysisRequest(1, "too-late", "central", BIG).to_json()
                content = RecordDict({"request": ConfigRecord({"json": request})})
                # through the link's own push, which wakes the node's held pull at once
                _push(grid, [Message(content, node, "query", ttl=0.5, group_id="")])
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    entries = Ledger(state / "ledger.sqlite").entries()
                    if entries and entries[0].status not in ("pending", "committed"):
                        break
                    time.sleep(0.1)
            finally:
                finish()
        finally:
            link.close()
        fed.processes.check_alive()
        assert [e.status for e in Ledger(state / "ledger.sqlite").entries()] == ["undelivered"]
        decisions = [e.decision for e in AuditLog(state).entries()]
        assert decisions[-2:] == ["released", "undelivered"]
        link = fed.link()  # and the node still answers
        try:
            replies = link.broadcast(AnalysisRequest(1, "next", "central", SPEC), timeout=30)
        finally:
            link.close()
        assert [r.outcome for r in replies] == ["release"]


# --- a node killed mid-release, and the partner's CLI racing the node (issue 11, item 14) ---


def _reserve_then_die(path: str) -> None:
    ledger = Ledger(Path(path))
    ledger.reserve(request_id="k", costs={"p": Rho(0.25)}, caps={"p": Rho(1.0)}, spec_hash="h")
    os._exit(9)  # killed mid-release: no commit, no cleanup


def test_node_killed_mid_release_never_refunds(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    proc = multiprocessing.get_context("spawn").Process(target=_reserve_then_die, args=(str(path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9
    assert Ledger(path).spent("p").value == pytest.approx(0.25)


def _append_forever(state: str, n: int) -> None:
    log = AuditLog(Path(state))
    for i in range(n):
        log.append(request_id=f"n{i}", requester="c", spec_hash="h", bundle_hash="", decision="refused")


def test_verifying_while_the_node_appends_never_reports_a_truncated_log(tmp_path: Path) -> None:
    AuditLog(tmp_path).append(
        request_id="0", requester="c", spec_hash="h", bundle_hash="", decision="refused"
    )
    writer = multiprocessing.get_context("spawn").Process(target=_append_forever, args=(str(tmp_path), 400))
    writer.start()
    checks = 0
    try:
        while writer.is_alive() or checks < 50:
            AuditLog(tmp_path).verify()  # would raise "truncated or replaced" on a race
            AuditLog(tmp_path).entries()
            checks += 1
    finally:
        writer.join(120)
    assert writer.exitcode == 0 and AuditLog(tmp_path).verify()[0] == 401
