"""A malicious coordinator against one node: each attack from issue 11 (items 7-15) and the safe
outcome it must meet. Real node agents over real files; no part of the node is replaced."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from analyses.operators.counting import MAX_DATASET_ROWS, MAX_UNITS_PER_ROW, SumStep
from analyses.reply import NodeRelease, encode_release
from analyses.request import AnalysisRequest
from analyses.spec import AnalysisSpec
from coordinator.embedded.twin import InProcessTransport
from node_agent.agent import NodeAgent
from node_agent.audit import AuditLog
from node_agent.config import load_node_config
from node_agent.connectors import content_hash
from node_agent.ledger import Ledger
from privacy import BudgetExhausted, PolicyRefusal, ProtocolError, Rho, SpecError
from tests.conftest import release_of

COUNT = """
version: 1
name: {name}
dataset: incidents
privacy: {{rho: {rho}, unit: {{identifier: person_id, max_rows: 5}}}}
steps:
  - {{kind: count, id: c, by: [{{column: area, keyset: coventry_lsoa11}}]}}
"""


def count(rid: str, rho: float = 0.1, name: str = "attack") -> AnalysisRequest:
    return AnalysisRequest(1, rid, "central", COUNT.format(name=name, rho=rho))


@pytest.fixture
def police(federation_data: dict[str, Path], tmp_path: Path) -> Path:
    source = federation_data["police"]
    text = source.read_text().replace("data_dir: data", f"data_dir: {source.parent / 'data'}")
    text = text.replace("state_dir: state", f"state_dir: {tmp_path / 'state'}")
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def agent(police: Path) -> Iterator[NodeAgent]:
    made = NodeAgent(load_node_config(police))
    yield made
    made.close()


# -- 7. nothing data-dependent leaves unnoised ---------------------------------------------------


def test_a_release_carries_no_function_of_the_rows_only_a_random_snapshot_id(police: Path) -> None:
    """An attacker who knows every row but one cannot test candidates for it against a hash,
    nor tell whether the data changed: the snapshot id is drawn at random when data load."""
    first = NodeAgent(load_node_config(police))
    second = NodeAgent(load_node_config(police))  # the same data, loaded again
    try:
        a = release_of(first.handle(count("h1")))
        b = release_of(second.handle(count("h2")))
        assert isinstance(a, NodeRelease) and isinstance(b, NodeRelease)
        digest = content_hash(first.frame("incidents"))
        for release in (a, b):
            sent = encode_release(release).decode()
            assert digest not in sent and digest[:16] not in sent
        assert a.snapshots["incidents"] != b.snapshots["incidents"]  # same rows, different ids
        fields = set(json.loads(encode_release(a)))
        assert "data_sha256" not in fields
        # the partner can still prove what was read: the hash is in its own audit log
        assert first.audit.entries()[-1].data["incidents"]["sha256"] == digest
    finally:
        first.close()
        second.close()


# -- 8. coordinator-controlled strings are bounded -----------------------------------------------


def test_a_long_request_id_is_refused_at_the_door_and_the_node_keeps_working(agent: NodeAgent) -> None:
    with pytest.raises(ProtocolError, match="request_id must be 1 to 128"):
        agent.handle(count("x" * 70_000))
    entry = agent.audit.entries()[-1]
    assert entry.decision == "refused" and entry.request_id.startswith("invalid-id:")
    assert agent.ledger.entries() == []  # nothing reserved for it
    assert isinstance(release_of(agent.handle(count("after"))), NodeRelease)  # later requests are served
    agent.audit.verify()


def test_an_audit_entry_of_any_length_does_not_stop_the_next_append(tmp_path: Path) -> None:
    """A log written before entries were bounded may end in a 200 KB line: appends go on."""
    log = AuditLog(tmp_path)
    log.append(request_id="r", requester="c", spec_hash="h", bundle_hash="", decision="refused", reason="x")
    # an entry as long as an old node could write (bounding happens at append, so write it raw)
    entries = log.entries()
    body = {**entries[-1].body(), "seq": 2, "prev": entries[-1].hash, "reason": "y" * 200_000}
    from node_agent.audit import _digest

    with log.path.open("a") as f:
        f.write(json.dumps({**body, "hash": _digest(body)}, sort_keys=True) + "\n")
    (tmp_path / "audit.head").write_text(f"2 {_digest(body)}\n")
    log.append(request_id="next", requester="c", spec_hash="h", bundle_hash="", decision="refused")
    assert log.verify()[0] == 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("requester", "a" * 500, "requester must be printable text"),
        ("requester", "alice\x00\n", "requester must be printable text"),
        ("spec_yaml", 42, "spec_yaml must be YAML text"),
        ("spec_yaml", "x" * 1_000_001, "spec_yaml is over"),
        ("protocol", True, "request protocol True is not supported"),
        ("state", {"coefficients": [0.1] * 5000}, "state holds more than"),
        ("state", {"run": {"nested": 1}}, "must hold numbers or short text"),
    ],
)
def test_every_request_field_is_bounded_and_the_refusal_is_audited(
    agent: NodeAgent, field: str, value: object, message: str
) -> None:
    data = json.loads(count("bounded").to_json())
    data[field] = value
    with pytest.raises(ProtocolError, match=message):
        AnalysisRequest.from_bytes(json.dumps(data))
    bad = AnalysisRequest(**data)
    with pytest.raises(ProtocolError, match=message):
        agent.handle(bad)
    assert agent.audit.entries()[-1].decision == "refused"
    assert agent.ledger.entries() == []


# -- 9. no request can freeze the node ------------------------------------------------------------


def test_a_nearly_free_release_is_refused_before_anything_is_reserved(agent: NodeAgent) -> None:
    """rho 1e-30 would make the noise scale about 1e15 units; its accuracy used to take time
    linear in the scale (hours), with the agent's lock held."""
    with pytest.raises(SpecError, match="over the limit of 1e\\+15"):
        agent.handle(count("free", rho=1e-30))
    assert agent.ledger.entries() == []


def test_huge_bounds_release_in_bounded_time_with_closed_form_accuracy(agent: NodeAgent) -> None:
    spec = COUNT.format(name="wide", rho=0.001).replace(
        "{kind: count, id: c,", "{kind: sum, id: c, column: harm, bounds: [-1e15, 1e15],"
    )
    release = release_of(agent.handle(AnalysisRequest(1, "wide", "central", spec)))
    assert isinstance(release, NodeRelease)
    measurement = release.steps[0].measurement("sum")
    assert measurement.scale > 1e6 and np.isfinite(measurement.accuracy95)


# -- 10. exact sums cannot wrap ---------------------------------------------------------------------


def test_no_spec_can_make_an_exact_sum_overflow() -> None:
    from analyses.documents import parse_document

    base = COUNT.format(name="o", rho=0.1)
    with pytest.raises(SpecError, match="sums could overflow"):
        parse_document(
            base.replace(
                "{kind: count, id: c,", "{kind: sum, id: c, column: harm, bounds: [0, 1e12], precision: 1,"
            ),
            AnalysisSpec,
            source="s",
        )
    spec = parse_document(
        base.replace("{kind: count, id: c,", "{kind: sum, id: c, column: harm, bounds: [-1e15, 1e15],"),
        AnalysisSpec,
        source="s",
    )
    step = spec.steps[0]
    assert isinstance(step, SumStep) and step.units_per_row() <= MAX_UNITS_PER_ROW
    assert MAX_UNITS_PER_ROW * MAX_DATASET_ROWS < 2**63  # so no cell can wrap int64


def test_a_dataset_over_the_row_limit_is_refused(police: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from node_agent import connectors

    monkeypatch.setattr(connectors, "MAX_DATASET_ROWS", 100)  # the real limit is 2^31 rows
    agent = NodeAgent(load_node_config(police))
    try:
        with pytest.raises(Exception, match="over the limit of 100"):
            agent.handle(count("big"))
        assert agent.ledger.entries() == []
    finally:
        agent.close()


# -- 12. caps cannot be bypassed -----------------------------------------------------------------


def test_a_replayed_request_is_refused_and_spends_nothing(agent: NodeAgent) -> None:
    agent.handle(count("once"))
    spent = agent.ledger.spent("incidents").value
    with pytest.raises(PolicyRefusal, match="was answered before"):
        agent.handle(count("once"))
    assert agent.ledger.spent("incidents").value == spent


#: A three-round federated logistic model on the synthetic partners' incidents.
GLM_SPEC = """
version: 1
name: glm
dataset: incidents
privacy: {rho: 0.5, unit: {identifier: person_id, max_rows: 5}}
steps:
  - kind: model
    id: m
    model: {family: logistic, target: category, positive: violence, rounds: 3, features: [{column: age, bounds: [0, 100]}]}
"""


def test_a_glm_round_cannot_be_replayed(agent: NodeAgent) -> None:
    spec = GLM_SPEC
    state = {"run": "run1", "phase": "fit", "round": 0, "coefficients": [0.0, 0.0]}
    first = release_of(agent.handle(AnalysisRequest(1, "run1-fit0", "c", spec, state)))
    assert isinstance(first, NodeRelease)
    for _ in range(5):
        with pytest.raises(PolicyRefusal, match="was answered before"):
            agent.handle(AnalysisRequest(1, "run1-fit0", "c", spec, state))
    assert agent.ledger.spent("incidents").value == pytest.approx(0.5 / 4)


def test_sgd_rounds_past_the_spec_are_refused(agent: NodeAgent) -> None:
    spec = """
version: 1
name: sgd
dataset: incidents
privacy: {rho: 0.8, unit: {identifier: person_id, max_rows: 5}}
steps:
  - kind: sgd
    id: net
    rounds: 2
    hidden: 0
    model: {family: logistic, target: category, positive: violence, features: [{column: age, bounds: [0, 100]}]}
"""
    weights = np.zeros(2)
    for round_ in range(1, 9):
        request = AnalysisRequest(1, f"r-train{round_}", "c", spec, {"run": "r", "round": round_})
        if round_ <= 2:
            agent.train(request, weights)
        else:
            with pytest.raises(PolicyRefusal, match=f"round {round_} is past the 2 rounds"):
                agent.train(request, weights)
    assert agent.ledger.spent("incidents").value <= 0.8  # what round 1 admitted, never more


def test_a_cap_is_a_cap_for_any_number_of_tiny_requests(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.reserve(request_id="fill", costs={"p": Rho(1.0)}, caps={"p": Rho(1.0)}, spec_hash="h")
    refused = 0
    for i in range(300):
        try:
            ledger.reserve(request_id=f"t{i}", costs={"p": Rho(1e-12)}, caps={"p": Rho(1.0)}, spec_hash="h")
        except BudgetExhausted:
            refused += 1
    assert refused == 300 and ledger.spent("p").value == 1.0


def test_a_renewal_that_starts_in_the_future_does_not_open_the_caps(police: Path) -> None:
    text = police.read_text().replace(
        "policy:\n", "policy:\n  renewal: {every_days: 30, start: 2999-01-01}\n", 1
    )
    text = text.replace("incidents: 5.0", "incidents: 0.25")
    police.write_text(text)
    agent = NodeAgent(load_node_config(police))
    try:
        agent.handle(count("f1", rho=0.2))
        with pytest.raises(BudgetExhausted, match=r"remaining rho 0\.05"):
            agent.handle(count("f2", rho=0.2))
    finally:
        agent.close()


def test_mixed_key_types_are_refused_before_any_budget(agent: NodeAgent) -> None:
    """`values: [E01..., 2]` once crashed the release ("Expected bytes, got a 'int'") after the
    budget was reserved."""
    spec = COUNT.format(name="mixed", rho=0.1).replace("keyset: coventry_lsoa11", "values: [E01009577, 2]")
    with pytest.raises(SpecError, match="mixes text and numbers"):
        agent.handle(AnalysisRequest(1, "mixed", "central", spec))
    assert agent.ledger.entries() == []


# -- 13. the parsers are bounded --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_yaml", "message"),
    [
        ("[" * 3000 + "]" * 3000, "nested more than 32 levels"),
        ("a: &a [1, 2]\nb: [*a, *a]\n", "anchors and aliases"),
        ("version: " + "9" * 5000, "an integer with 5,000 digits"),
        ("name: \ud800", "not valid Unicode"),
    ],
)
def test_hostile_specs_get_a_typed_audited_refusal(agent: NodeAgent, spec_yaml: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        agent.handle(AnalysisRequest(1, "hostile", "central", spec_yaml))
    assert agent.audit.entries()[-1].decision == "refused"
    assert agent.ledger.entries() == []


def test_a_deeply_nested_request_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match=r"nested too deeply|malformed request"):
        AnalysisRequest.from_bytes("[" * 100_000 + "]" * 100_000)


def test_the_fleet_proxy_caps_chunked_bodies_without_buffering_them() -> None:
    """Three 60 MB chunked bodies at once: each is refused once it passes the cap, and the
    proxy never holds more than its budget."""
    import asyncio

    import httpx

    from coordinator.deploy.proxy import MAX_BODY_BYTES, MAX_BUFFERED_BYTES, build_app

    app = build_app("127.0.0.1:9", None)

    async def body() -> object:
        chunk = b"x" * (1 << 20)
        for _ in range(60):
            yield chunk

    async def send() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            response = await client.post("/v1/fleet/push-messages", content=body())
            return response.status_code

    async def main() -> list[int]:
        return list(await asyncio.gather(send(), send(), send()))

    assert asyncio.run(main()) == [413, 413, 413]
    peak = app.state.body_budget.peak
    assert peak <= min(MAX_BUFFERED_BYTES, 3 * MAX_BODY_BYTES)
    assert app.state.body_budget.held == 0


# -- 14. the partner's own CLI never races the node: tests/e2e/test_node_operations.py (a second process)


# -- 15. replies say what, not where ----------------------------------------------------------------


def test_refusals_carry_no_node_local_paths(police: Path, tmp_path: Path) -> None:
    config = load_node_config(police)
    text = police.read_text().replace("path: incidents.parquet", "path: missing.parquet")
    police.write_text(text)
    agent = NodeAgent(load_node_config(police))
    try:
        replies = InProcessTransport([agent]).broadcast(count("where"), timeout=5)
        assert [r.outcome for r in replies] == ["refused"]
        refusal = replies[0].refusal
        assert refusal is not None and refusal.kind == "data"
        body = refusal.message
        assert "does not exist" in body
        for place in (config.state_dir, config.data_dir, str(tmp_path), os.path.expanduser("~")):
            assert place not in body
        assert not re.search(r"(/[\w.-]+){2,}", body), body
        # the partner's own log keeps the full path
        assert config.data_dir in agent.audit.entries()[-1].reason
    finally:
        agent.close()


def test_a_node_keeps_serving_after_every_refusal_above(agent: NodeAgent) -> None:
    """After a round of hostile requests the node still releases, its chain intact."""
    for rid in ("x" * 300, "ok-1"):
        with contextlib.suppress(ProtocolError):
            agent.handle(count(rid))
    assert isinstance(release_of(agent.handle(count("ok-2"))), NodeRelease)
    assert agent.audit.verify()[0] == len(agent.audit.entries())
