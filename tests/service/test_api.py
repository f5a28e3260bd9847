"""The analyst API over in-process partners, served for real: submit, follow, fetch, roles,
cancel, restart, and every error a JSON body that says what to do."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pandas as pd
import pytest

from analyses.blueprint import load_bundled
from coordinator.embedded.example_data import write_blueprint_federation
from coordinator.embedded.twin import InProcessTransport
from coordinator.service.accounts import LoginLimiter
from coordinator.service.api import openapi_document
from coordinator.service.client import Client
from coordinator.service.worker import RunWorker
from node_agent.agent import NodeAgent
from node_agent.config import load_node_config
from privacy.errors import AccessDenied, BudgetExhausted, FederationError, UserError
from tests.service.conftest import Service, running_service

SPEC = """
version: 1
name: incidents-by-area
dataset: incidents
privacy: {rho: 0.05, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c, by: [{column: area, keyset: coventry_lsoa11}]}
"""
ROOT = Path(__file__).resolve().parents[2]


def test_analyst_submits_waits_and_reads_tables_in_every_format(service: Service) -> None:
    alice = service.client("alice")
    cost = alice.cost(SPEC)
    assert cost["analyses"] == {
        "incidents-by-area": {"incidents": {"rho": 0.05, "epsilon": pytest.approx(1.4716, abs=1e-3)}}
    }
    run = alice.submit(SPEC, purpose="road safety review").wait()
    assert run.state == "done"
    assert {p: v["state"] for p, v in run.partners.items()} == {
        "police": "released",
        "fire": "released",
        "council": "released",
    }
    assert run.data["debited"] == {"police": 0.05, "fire": 0.05, "council": 0.05}
    assert run.data["planned"] == {"incidents-by-area": {"incidents": 0.05}}
    frame = run.tables["c"]
    assert {"count", "count_accuracy95"} <= set(frame.columns) and len(frame) > 100
    http = service.http("alice")
    as_json = http.get(f"/api/v1/runs/{run.id}/tables/c").json()
    assert as_json["columns"] == list(frame.columns) and len(as_json["rows"]) == len(frame)
    as_csv = pd.read_csv(
        io.StringIO(http.get(f"/api/v1/runs/{run.id}/tables/c", params={"format": "csv"}).text)
    )
    assert list(as_csv.columns) == list(frame.columns) and len(as_csv) == len(frame)
    manifest: dict = run.manifest()
    assert {n["partner"] for n in manifest["nodes"]} == {"police", "fire", "council"}
    assert all(
        m["mechanism"] and m["accuracy95"] > 0
        for n in manifest["nodes"]
        for s in n["steps"]
        for m in s["measurements"]
    )
    kinds = [kind for _, kind, _ in run.events()]
    assert kinds[0] == "state" and kinds.count("partner") >= 6


def test_the_nodes_audit_logs_and_the_run_name_the_analyst_and_run(service: Service) -> None:
    a = service.client("alice").submit(SPEC, purpose="first").wait()
    b = service.client("bob").submit(SPEC, purpose="second").wait()
    for agent in service.agents:
        released = [e for e in agent.audit.entries() if e.decision == "released"]
        assert [(e.requester, e.run_id, e.purpose) for e in released] == [
            ("alice@test-fed", a.id, "first"),
            ("bob@test-fed", b.id, "second"),
        ]


def test_roles_reader_cannot_submit_unknown_token_is_401_analysts_see_their_own(service: Service) -> None:
    run = service.client("alice").submit(SPEC).wait()
    with pytest.raises(AccessDenied, match="403: role reader may not do this"):
        service.client("rex").submit(SPEC)
    with pytest.raises(AccessDenied, match="403: role reader"):
        service.client("rex").runs()
    assert [b["ref"] for b in service.client("rex").blueprints()][:1] == ["adverse_childhood_experiences"]
    stranger = Client(service.url, "oda_0123456789abcdef_" + "x" * 43)
    service.opened.append(stranger)
    with pytest.raises(AccessDenied, match="401: the token is not valid"):
        stranger.runs()
    with pytest.raises(UserError, match=f"no run '{run.id}' that you can read"):
        service.client("bob").run(run.id)
    assert service.client("bob").runs() == []
    assert [r.id for r in service.client("rita").runs()] == [run.id]  # a reviewer reads every run
    with pytest.raises(AccessDenied, match="403: role reviewer"):
        service.client("rita").submit(SPEC)
    with pytest.raises(AccessDenied, match="only the run's analyst or an admin"):
        service.client("rita").run(run.id).cancel()
    with pytest.raises(UserError, match="should match pattern"):  # NUL: PostgreSQL's text cannot hold it
        service.client("alice").runs(name="\x00")
    response = httpx.get(f"{service.url}/api/v1/runs")
    assert response.status_code == 401 and response.json() == {
        "error": "no token: send `Authorization: Bearer oda_...`"
    }


def test_failed_logins_are_rate_limited_per_address(service: Service) -> None:
    service.state.limiter = LoginLimiter(limit=3, window=60)
    for _ in range(3):
        assert (
            httpx.get(f"{service.url}/api/v1/me", headers={"Authorization": "Bearer nope"}).status_code == 401
        )
    blocked = httpx.get(
        f"{service.url}/api/v1/me", headers={"Authorization": f"Bearer {service.tokens['alice']}"}
    )
    assert blocked.status_code == 429 and "too many failed logins" in blocked.json()["error"]
    assert int(blocked.headers["retry-after"]) > 0


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 422, "give exactly one of spec_yaml and blueprint"),
        ({"spec_yaml": SPEC, "blueprint": "road_safety"}, 422, "give exactly one"),
        ({"spec_yaml": "version: 1\nname: x\n"}, 400, "submitted spec"),
        ({"spec_yaml": SPEC, "parameters": {"rho": 1}}, 422, "parameters are for blueprints"),
        ({"blueprint": "no_such_blueprint"}, 400, "no_such_blueprint"),
        ({"blueprint": "../../etc/passwd"}, 422, "blueprint: String should match pattern"),
        ({"blueprint": "road_safety", "parameters": {"rho": "lots"}}, 400, "rho"),
        ({"spec_yaml": SPEC, "purpose": "two\nlines"}, 422, "purpose must be printable"),
        (
            {"spec_yaml": SPEC, "deadline_seconds": 1},
            422,
            "deadline_seconds: Input should be greater than or equal to 10",
        ),
        ({"spec_yaml": SPEC, "extra": 1}, 422, "extra: Extra inputs are not permitted"),
    ],
)
def test_bad_submissions_are_refused_with_a_json_message(
    service: Service, body: dict, status: int, message: str
) -> None:
    response = httpx.post(
        f"{service.url}/api/v1/runs",
        json=body,
        headers={"Authorization": f"Bearer {service.tokens['alice']}"},
    )
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert service.store.runs() == [], "nothing was queued"


def test_a_budget_failure_reaches_the_client_as_budget_exhausted(service: Service) -> None:
    greedy = SPEC.replace("rho: 0.05", "rho: 1.0").replace("incidents-by-area", "greedy")
    for i in range(5):  # the partners' cap on incidents is rho 5
        service.client("alice").submit(greedy.replace("greedy", f"greedy-{i}")).wait()
    with pytest.raises(BudgetExhausted, match=r"(?s)failed: .*privacy budget exhausted"):
        service.client("alice").submit(greedy.replace("greedy", "one-too-many")).wait()
    assert all(sum(e.rho for e in a.ledger.entries()) <= 5.0 + 1e-9 for a in service.agents)


def test_cancel_a_queued_run_and_cancel_twice(service: Service) -> None:
    service.worker.stop()  # nothing runs: the run stays queued
    alice = service.client("alice")
    run = alice.submit(SPEC)
    assert run.cancel("wrong areas").state == "cancelled"
    assert run.data["reason"] == "cancelled by alice@test-fed: wrong areas"
    with pytest.raises(UserError, match="is cancelled already"):
        run.cancel()
    assert all(a.ledger.entries() == [] for a in service.agents)


def test_restart_interrupts_in_flight_runs_runs_queued_ones_and_keeps_finished_tables(
    service: Service, tmp_path: Path
) -> None:
    finished = service.client("alice").submit(SPEC).wait()
    service.worker.stop()
    queued = service.client("alice").submit(SPEC.replace("incidents-by-area", "queued"))
    # a run the stopped coordinator left in flight, after police had released
    flying = service.client("bob").submit(SPEC.replace("incidents-by-area", "flying"))
    service.store.set_state(flying.id, "running")
    service.store.update_progress(flying.id, "police", state="released", cost_rho=0.05)
    service.store.update_progress(flying.id, "council", state="sent")
    restarted = RunWorker(
        service.store, lambda: InProcessTransport(service.agents), tmp_path / "results", "test-fed", poll=0.2
    )
    assert [r.id for r in restarted.start()] == [flying.id]
    try:
        assert "partners spent: police rho 0.05" in str(service.client("bob").run(flying.id).data["reason"])
        assert service.client("alice").run(queued.id).wait().state == "done"
        again = service.client("alice").run(finished.id)
        assert len(again.tables["c"]) == len(finished.tables["c"])
    finally:
        restarted.stop()


def test_blueprint_run_has_report_exports_and_named_tables(tmp_path: Path) -> None:
    road = load_bundled("road_safety").blueprint
    configs = write_blueprint_federation(tmp_path / "partners", [(road, road.resolve())])
    agents = [
        NodeAgent(load_node_config(p).model_copy(update={"state_dir": str(tmp_path / "state" / k)}))
        for k, p in configs.items()
    ]
    try:
        with running_service(agents, tmp_path) as service:
            run = service.client("alice").run_blueprint("road_safety", purpose="forum review", rho=0.2).wait()
            assert run.state == "done", run.data["reason"]
            names = list(run.tables)
            assert "road_safety_where.collisions" in names or any(
                n.startswith("road_safety_where.") for n in names
            )
            for name in names:  # every table listed is served, derived ones too
                assert len(run.tables[name]) == next(
                    t["rows"] for t in run.data["tables"] if t["name"] == name
                )
            assert b"<html" in run.file("report.html")[:300].lower()
            assert run.manifest()["parameters"]["rho"] == 0.2
            assert sum(run.data["planned"]["road_safety_where"].values()) > 0
    finally:
        for agent in agents:
            agent.close()


def test_the_committed_openapi_document_is_current() -> None:
    committed = json.loads((ROOT / "configs" / "openapi" / "analyst-api.json").read_text())
    assert committed == json.loads(json.dumps(openapi_document())), "run `oda coordinator openapi`"


def test_a_run_that_misses_its_quorum_fails_with_the_reason_and_keeps_its_manifest(service: Service) -> None:
    alice = service.client("alice")
    run = alice.submit(SPEC, min_partners=4, required=["police"])
    assert run.data["quorum"] == {"min_partners": 4, "required": ["police"]}
    with pytest.raises(
        FederationError, match=r"quorum not met: 3 partner\(s\) released, the run needs at least 4"
    ):
        run.wait()
    assert run.data["error"] == "QuorumNotMet" and run.data["tables"] == []
    manifest: dict = run.manifest()
    assert manifest["quorum"]["met"] is False and len(manifest["nodes"]) == 3
    assert alice.submit(SPEC.replace("incidents-by-area", "enough"), min_partners=3).wait().state == "done"


def test_the_fleet_view_shows_each_partners_version_protocol_and_last_refusal(service: Service) -> None:
    from coordinator.deploy.flower import RegisteredNode
    from coordinator.service.fleet import fleet, fleet_lines

    service.client("alice").submit(SPEC).wait()
    greedy = SPEC.replace("rho: 0.05", "rho: 1.0")
    for i in range(4):  # 0.05 + 4 x 1.0 of the cap of 5: the next one is refused everywhere
        service.client("alice").submit(greedy.replace("incidents-by-area", f"g{i}")).wait()
    with pytest.raises(BudgetExhausted):
        service.client("alice").submit(greedy.replace("incidents-by-area", "refused")).wait()
    seen = service.store.partners_seen()
    assert set(seen) == {"police", "fire", "council"}
    registered = [
        RegisteredNode(i, name, "online", b"", "2026-12-03T07:00:00Z", 0.0) for i, name in enumerate(seen)
    ]
    registered.append(RegisteredNode(99, "ambulance", "offline", b""))
    entries = {e["name"]: e for e in fleet(registered, seen)}
    assert entries["police"]["version"] and entries["police"]["protocol"] == 1
    assert "privacy budget exhausted" in str(entries["police"]["last_refusal"])
    assert entries["ambulance"]["version"] is None and entries["ambulance"]["last_reply"] is None
    text = "\n".join(fleet_lines(list(entries.values())))
    assert "ambulance" in text and "version unknown; last reply never" in text and "last refusal" in text


def test_wait_with_progress_draws_a_bar_per_partner(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    run = service.client("alice").submit(SPEC).wait(progress=True)
    assert run.state == "done"
    drawn = capsys.readouterr().out
    assert all(partner in drawn for partner in ("police", "fire", "council")) and "released" in drawn


def test_a_run_whose_deadline_passed_in_the_queue_fails_without_sending(service: Service) -> None:
    service.worker.stop()
    run = service.client("alice").submit(SPEC, deadline=10)
    service.store.set_state(run.id, "queued", deadline_at=0.0)  # as if it had waited past its deadline
    restarted = RunWorker(
        service.store, lambda: InProcessTransport(service.agents), service.state.results, "test-fed", poll=0.2
    )
    restarted.start()
    try:
        with pytest.raises(
            FederationError, match="its deadline passed before it could start; nothing was sent"
        ):
            run.wait(timeout=60)
    finally:
        restarted.stop()
    assert all(a.ledger.entries() == [] for a in service.agents)
