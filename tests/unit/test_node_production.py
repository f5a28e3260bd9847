"""node_agent/ for partner IT: audit chain, policy, approval inbox, contracts, CLI, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analyses.reply import NodeRelease, decode_reply, encode_release
from analyses.request import AnalysisRequest
from node_agent.agent import NodeAgent, Pending, Released
from node_agent.audit import AuditLog
from node_agent.cli import main
from node_agent.config import load_node_config
from privacy import DataError, PolicyRefusal, Rho, SpecError
from privacy.exit_codes import ExitCode
from tests.conftest import release_of

SPEC = """
version: 1
name: {name}
dataset: incidents
privacy: {{rho: 0.1, unit: {{identifier: {identifier}, max_rows: 5}}}}
steps:
  - {{kind: {kind}, id: s, column: harm, bounds: [0, 100], by: [{{column: area, keyset: coventry_lsoa11}}]}}
"""


def request(
    name: str = "road-safety", kind: str = "sum", identifier: str = "person_id", rid: str = "r1"
) -> AnalysisRequest:
    return AnalysisRequest(1, rid, "central", SPEC.format(name=name, kind=kind, identifier=identifier))


@pytest.fixture
def police(federation_data: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the police node.yaml whose state lives in tmp_path (data shared, read-only)."""
    source = federation_data["police"]
    text = source.read_text().replace("data_dir: data", f"data_dir: {source.parent / 'data'}")
    text = text.replace("state_dir: state", f"state_dir: {tmp_path / 'state'}")
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


def with_policy(config: Path, **lines: str) -> Path:
    text = config.read_text()
    for key, value in lines.items():
        text = text.replace("policy:\n", f"policy:\n  {key}: {value}\n", 1)
    config.write_text(text)
    return config


# --- audit log -------------------------------------------------------------------------------


def _log_with(tmp_path: Path, n: int) -> AuditLog:
    log = AuditLog(tmp_path)
    for i in range(n):
        log.append(
            request_id=f"r{i}",
            requester="c",
            spec_hash="h",
            bundle_hash="b",
            decision="released",
            payload=b"x",
        )
    return log


def test_audit_chain_verifies_and_counts(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 4)
    count, head = log.verify()
    assert count == 4 and head == log.entries()[-1].hash


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("edit", "its hash does not match its content: the entry was edited"),
        ("delete", "sequence number 3, expected 2"),
        ("reorder", "sequence number 3, expected 2"),
        ("truncate", "ends at entry 3, but .*audit.head records entry 4: the log was truncated"),
        ("garbage", "line 2 is not an audit entry"),
        ("rechain", "does not chain to the entry before it"),
    ],
)
def test_audit_tampering_is_detected(tmp_path: Path, tamper: str, message: str) -> None:
    log = _log_with(tmp_path, 4)
    lines = log.path.read_text().splitlines()
    if tamper == "edit":
        lines[1] = lines[1].replace('"decision": "released"', '"decision": "refused"')
    elif tamper == "delete":
        del lines[1]
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "truncate":
        lines = lines[:3]
    elif tamper == "garbage":
        lines[1] = "{not json"
    elif tamper == "rechain":  # a forged entry 2 with a valid own hash but the wrong parent
        from node_agent.audit import _digest

        entry = json.loads(lines[1])
        entry["prev"] = "f" * 64
        entry["hash"] = _digest({k: v for k, v in entry.items() if k != "hash"})
        lines[1] = json.dumps(entry)
    log.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        log.verify()


def test_node_refuses_to_open_with_a_damaged_audit_log(police: Path) -> None:
    config = load_node_config(police)
    NodeAgent(config).close()
    log = AuditLog(Path(config.state_dir))
    log.append(request_id="r", requester="c", spec_hash="h", bundle_hash="b", decision="refused")
    log.path.write_text(log.path.read_text().replace('"refused"', '"released"'))
    with pytest.raises(DataError, match=r"audit log .*audit\.jsonl line 1"):
        NodeAgent(config)
    assert main(["status", "--config", str(police)]) == ExitCode.DATA


def test_release_carries_audit_head_and_a_snapshot_id_the_hash_stays_local(police: Path) -> None:
    from node_agent.connectors import content_hash

    agent = NodeAgent(load_node_config(police))
    try:
        outcome = agent.handle(request(), bundle_hash="b" * 64)
        release = release_of(outcome)
        entry = agent.audit.entries()[-1]
        assert (release.audit_seq, release.audit_head) == (entry.seq, entry.hash)
        assert entry.decision == "released" and entry.bundle_hash == "b" * 64
        snapshot = release.snapshots["incidents"]
        digest = content_hash(agent.frame("incidents"))
        assert len(snapshot) == 16 and digest.encode() not in encode_release(
            release
        )  # nothing of the rows leaves
        assert entry.data["incidents"] == {
            "snapshot": snapshot,
            "sha256": digest,
            "rows": len(agent.frame("incidents")),
        }
        # the audit entry's payload hash covers exactly the bytes the node sends (made once)
        import hashlib

        assert isinstance(outcome, Released) and outcome.payload == encode_release(release)
        assert entry.payload_sha256 == hashlib.sha256(outcome.payload).hexdigest()
        assert decode_reply(outcome.payload, stamp=release.stamp()) == release
    finally:
        agent.close()


# --- policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "req", "error", "message"),
    [
        (
            {"allowed_analyses": '["youth-*"]'},
            request(),
            PolicyRefusal,
            "'road-safety' is not in this node's policy.allowed_analyses",
        ),
        (
            {"allowed_steps": "[count]"},
            request(),
            PolicyRefusal,
            "step 's' is a sum, which this node's policy.allowed_steps",
        ),
        (
            {"allowed_columns": "{incidents: [person_id, area]}"},
            request(),
            SpecError,
            "unknown column 'harm'",
        ),
        (
            {},
            request(identifier="age"),
            PolicyRefusal,
            "protects 'age', but this node identifies people in 'incidents' by 'person_id'",
        ),
    ],
)
def test_policy_refusals_name_the_rule_and_release_nothing(
    police: Path, policy: dict[str, str], req: AnalysisRequest, error: type[Exception], message: str
) -> None:
    text = police.read_text()
    if "allowed_analyses" in policy:
        text = text.replace('allowed_analyses: ["*"]', f"allowed_analyses: {policy.pop('allowed_analyses')}")
    police.write_text(text)
    agent = NodeAgent(load_node_config(with_policy(police, **policy)))
    try:
        with pytest.raises(error, match=message):
            agent.handle(req)
        assert agent.ledger.entries() == []
        assert agent.audit.entries()[-1].decision == "refused"
    finally:
        agent.close()


def test_caps_renew_with_the_period(police: Path) -> None:
    agent = NodeAgent(load_node_config(with_policy(police, renewal="{every_days: 30, start: 2020-01-01}")))
    try:
        agent.ledger.reserve(
            request_id="old", costs={"incidents": Rho(4.95)}, caps={"incidents": Rho(5)}, spec_hash="h"
        )
        agent.ledger._db.execute("UPDATE entries SET created = 0")  # spent long ago, in an earlier period
        assert agent.remaining("incidents").value == pytest.approx(5.0)
        assert isinstance(release_of(agent.handle(request())), NodeRelease)
    finally:
        agent.close()


# --- manual approval -------------------------------------------------------------------------


def test_manual_approval_releases_nothing_until_approved(
    police: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = NodeAgent(load_node_config(with_policy(police, approval="manual")))
    try:
        outcome = agent.handle(request(rid="wait-1"))
        assert isinstance(outcome, Pending) and outcome.cost.value == pytest.approx(0.1)
        assert agent.ledger.entries() == []
        assert main(["inbox", "--config", str(police)]) == 0
        shown = capsys.readouterr().out
        assert "wait-1  road-safety  from central" in shown and "sum of harm in [0, 100]" in shown
        assert "cost rho 0.1" in shown and "incidents: rho" in shown
        assert main(["approve", "wait-1", "--config", str(police)]) == 0
        release = release_of(agent.run_approved("wait-1"))
        assert release.status == "released" and len(agent.ledger.entries()) == 1
        decisions = [e.decision for e in agent.audit.entries()]
        assert decisions == ["pending", "approved", "released"]
        assert main(["approve", "wait-1", "--config", str(police)]) == ExitCode.CONFIG  # not waiting any more
    finally:
        agent.close()


def test_denial_is_audited_with_its_reason(police: Path, capsys: pytest.CaptureFixture[str]) -> None:
    agent = NodeAgent(load_node_config(with_policy(police, approval="manual")))
    try:
        agent.handle(request(rid="wait-2"))
        assert (
            main(["deny", "wait-2", "--reason", "not in our data sharing agreement", "--config", str(police)])
            == 0
        )
        item = agent.inbox.get("wait-2")
        assert item.status == "denied" and item.reason == "not in our data sharing agreement"
        assert agent.audit.entries()[-1].decision == "denied"
        assert agent.ledger.entries() == []
        assert main(["deny", "nope", "--reason", "x", "--config", str(police)]) == ExitCode.CONFIG
        assert "no request 'nope' in the approval inbox" in capsys.readouterr().err
    finally:
        agent.close()


TOO_COSTLY = """
version: 1
name: big
dataset: incidents
privacy: {rho: 2.0, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c}
"""

# --- CLI -------------------------------------------------------------------------------------


def test_init_writes_a_commented_config_and_a_key_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "site" / "node.yaml"
    assert main(["init", "--partner", "west-fire", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ecdsa-sha2-nistp384 " in out
    assert (tmp_path / "site" / "keys" / "node.key").stat().st_mode & 0o777 == 0o600
    text = config.read_text()
    assert "partner: west-fire" in text and "# " in text and "approval: manual" in text
    assert main(["init", "--partner", "west-fire", "--config", str(config)]) == ExitCode.CONFIG
    assert "already exists" in capsys.readouterr().err


def test_status_audit_and_report(police: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    agent = NodeAgent(load_node_config(police))
    try:
        agent.handle(request(rid="a"))
        with pytest.raises(PolicyRefusal):
            agent.handle(AnalysisRequest(1, "b", "central", TOO_COSTLY))
    finally:
        agent.close()
    assert main(["status", "--config", str(police)]) == 0
    out = capsys.readouterr().out
    assert "approval auto" in out and "audit log: 2 entries, chain intact" in out
    assert "last contact with the coordinator: never" in out  # no node has run on this state
    assert main(["audit", "verify", "--config", str(police)]) == 0
    export = tmp_path / "audit.csv"
    assert main(["audit", "export", "--out", str(export), "--config", str(police)]) == 0
    assert export.read_text().count("\n") == 3
    report = tmp_path / "report.html"
    assert main(["report", "--out", str(report), "--config", str(police)]) == 0
    page = report.read_text()
    assert "Transparency report: police" in page and "<svg" in page and "<polyline" in page
    assert "refused" in page and "max_rho_per_analysis" in page


def test_every_exit_code_is_documented_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code in ExitCode:
        assert f"{int(code):>3}  " in out


BAD_NODE_FILES = [
    ("broken yaml", "partner: [unclosed\n", "node.yaml"),
    ("unknown key", "version: 1\npartner: p\nfirewall: off\n", "firewall: unknown field"),
    ("python tag", "!!python/object/apply:os.system ['true']\n", "node.yaml"),
]


@pytest.mark.parametrize(("label", "text", "message"), BAD_NODE_FILES, ids=[b[0] for b in BAD_NODE_FILES])
def test_bad_node_files_exit_with_the_config_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], label: str, text: str, message: str
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(text)
    assert main(["check", "--config", str(config)]) == ExitCode.CONFIG
    assert message in capsys.readouterr().err


def test_contract_violations_are_counted_locally_and_fail_check(
    police: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = police.read_text().replace(
        "age: {source: victim_age, type: int}", "age: {source: victim_age, type: int, min: 0, max: 30}"
    )
    text = text.replace(
        "category: {source: offence_group, type: str}",
        "category: {source: offence_group, type: str, allowed: [violence]}",
    )
    police.write_text(text)
    assert "max: 30" in text
    assert main(["check", "--config", str(police)]) == ExitCode.DATA
    captured = capsys.readouterr()
    assert "FAIL age <= 30:" in captured.out and "contract rule(s) fail" in captured.err
    assert "ok   person_id present (identifier): 0 rows" in captured.out


def test_missing_source_column_is_named(police: Path, capsys: pytest.CaptureFixture[str]) -> None:
    police.write_text(police.read_text().replace("source: victim_age", "source: victim_age_years"))
    assert main(["check", "--config", str(police)]) == ExitCode.DATA
    assert "victim_age_years" in capsys.readouterr().err
