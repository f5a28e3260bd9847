"""A run's context reaches every node: who asks, under which run and why (audit log, inbox), and
a watch that follows replies and can cancel the run before anything more is spent."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from analyses.request import MAX_PURPOSE_CHARS, AnalysisRequest
from coordinator.embedded.twin import InProcessTransport
from coordinator.run.orchestrator import run_analysis
from coordinator.run.transport import NodeReply, RunCancelled, RunContext
from node_agent.agent import NodeAgent, Pending
from node_agent.audit import AuditLog
from node_agent.inbox import Inbox
from privacy.errors import ProtocolError

SPEC = """
version: 1
name: context-check
dataset: incidents
privacy: {rho: 0.05, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c, by: [{column: area, keyset: coventry_lsoa11}]}
"""


class Watch:
    """A watch that records what it is told and cancels after `cancel_after` replies."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.cancel_after = cancel_after
        self.requests: list[tuple[str, list[str]]] = []
        self.replies: list[tuple[str, str, str]] = []

    def sent(self, request_id: str, nodes: Sequence[str]) -> None:
        self.requests.append((request_id, list(nodes)))

    def replied(self, request_id: str, node: str, reply: NodeReply) -> None:
        self.replies.append((request_id, node, reply.outcome))

    def cancelled(self) -> str | None:
        if self.cancel_after is not None and len(self.replies) >= self.cancel_after:
            return "cancelled by alice@test: wrong area list"
        return None


def test_requester_run_id_and_purpose_reach_every_audit_log(agents: list[NodeAgent]) -> None:
    watch = Watch()
    context = RunContext("alice@west-midlands", "r-0001", "road safety review 2026", watch)
    result = run_analysis(SPEC, InProcessTransport(agents), context=context)
    assert len(result.releases) == 3
    for agent in agents:
        entry = agent.audit.entries()[-1]
        assert (entry.decision, entry.requester, entry.run_id, entry.purpose) == (
            "released",
            "alice@west-midlands",
            "r-0001",
            "road safety review 2026",
        )
        agent.audit.verify()
    assert watch.requests == [(result.request_id, ["police", "fire", "council"])]
    assert [(node, outcome) for _, node, outcome in watch.replies] == [
        ("police", "release"),
        ("fire", "release"),
        ("council", "release"),
    ]


def test_a_cancel_stops_the_run_before_the_next_partner_spends(agents: list[NodeAgent]) -> None:
    watch = Watch(cancel_after=1)
    with pytest.raises(RunCancelled, match="cancelled by alice@test: wrong area list"):
        run_analysis(SPEC, InProcessTransport(agents), context=RunContext("alice@test", "r-2", None, watch))
    spent = [len(agent.ledger.entries()) for agent in agents]
    assert spent == [1, 0, 0]


def test_without_run_fields_a_request_keeps_its_old_bytes() -> None:
    plain = AnalysisRequest(1, "abc", "oda", SPEC)
    assert set(json.loads(plain.to_bytes())) == {"protocol", "request_id", "requester", "spec_yaml", "state"}
    full = AnalysisRequest(1, "abc", "oda", SPEC, None, "r-1", "why")
    assert AnalysisRequest.from_bytes(full.to_bytes()) == full
    assert AnalysisRequest.from_bytes(plain.to_bytes()) == plain


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("run_id", "x" * 129, "run_id must be 1 to 128 letters"),
        ("run_id", "r 1", "run_id must be 1 to 128 letters"),
        ("run_id", 7, "run_id must be 1 to 128 letters"),
        ("purpose", "p" * (MAX_PURPOSE_CHARS + 1), "purpose must be printable text of at most 500"),
        ("purpose", "line\nbreak", "purpose must be printable text"),
        ("purpose", ["list"], "purpose must be printable text"),
    ],
)
def test_run_fields_are_bounded_at_the_node(field: str, value: object, message: str) -> None:
    data = json.loads(AnalysisRequest(1, "abc", "oda", SPEC).to_bytes())
    data[field] = value
    with pytest.raises(ProtocolError, match=message):
        AnalysisRequest.from_bytes(json.dumps(data))


def test_the_inbox_shows_the_run_and_a_cancel_withdraws_it_without_spending(
    agents: list[NodeAgent], tmp_path: Path
) -> None:
    police = agents[0]
    manual = police.config.policy.model_copy(update={"approval": "manual"})
    agent = NodeAgent(police.config.model_copy(update={"policy": manual, "state_dir": str(tmp_path / "m")}))
    try:
        request = AnalysisRequest(1, "r-9.q", "alice@west-midlands", SPEC, None, "r-9", "arson hotspots")
        assert isinstance(agent.handle(request), Pending)
        item = agent.inbox.get("r-9.q")
        assert (item.status, item.run_id, item.purpose) == ("waiting", "r-9", "arson hotspots")
        assert agent.cancel("r-9.q", "the coordinator cancelled it: cancelled by alice") is True
        assert agent.cancel("r-9.q", "again") is False  # settled: nothing more to withdraw
        assert agent.cancel("never-seen", "x") is False
        item = agent.inbox.get("r-9.q")
        assert item.status == "expired" and "cancelled by alice" in item.reason
        assert agent.ledger.entries() == []
        last = agent.audit.entries()[-1]
        assert last.decision == "refused" and "cancelled by alice" in last.reason and last.run_id == "r-9"
    finally:
        agent.close()


def test_an_inbox_written_before_runs_existed_gains_the_columns(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "inbox.sqlite")
    db.execute(
        "CREATE TABLE inbox (request_id TEXT PRIMARY KEY, received REAL NOT NULL, requester TEXT NOT NULL,"
        " analysis TEXT NOT NULL, summary TEXT NOT NULL, cost_rho REAL NOT NULL, request_json TEXT NOT NULL,"
        " bundle_hash TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', decided REAL)"
    )
    db.execute("INSERT INTO inbox VALUES ('old', 1.0, 'oda', 'a', 's', 0.1, '{}', 'b', 'waiting', '', NULL)")
    db.commit()
    db.close()
    inbox = Inbox(tmp_path)
    try:
        item = inbox.get("old")
        assert (item.requester, item.run_id, item.purpose) == ("oda", "", "")
        from node_agent.inbox import SCHEMA_VERSION

        assert inbox._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION, "migrated"
    finally:
        inbox.close()


def test_audit_entries_without_run_fields_verify_as_before(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append(request_id="a", requester="oda", spec_hash="h", bundle_hash="", decision="refused")
    log.append(
        request_id="b", requester="alice@x", spec_hash="h", bundle_hash="", decision="refused", run_id="r-1"
    )
    first, second = log.entries()
    assert "run_id" not in first.body() and second.body()["run_id"] == "r-1"
    assert log.verify().entries == 2
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    tampered = json.loads(lines[1])
    tampered["run_id"] = "r-2"
    (tmp_path / "audit.jsonl").write_text(lines[0] + "\n" + json.dumps(tampered) + "\n")
    with pytest.raises(Exception, match="audit"):
        log.verify()
