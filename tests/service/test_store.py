"""The run store's state machine, accounts and migrations, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
import time

import pytest

from coordinator.service.accounts import Account, add_user, authenticate
from coordinator.service.store import RunRow, RunStore
from privacy.errors import ConfigError


def _row(run_id: str, owner: str = "alice", created: float | None = None) -> RunRow:
    now = created or time.time()
    return RunRow(
        id=run_id,
        owner=owner,
        source="spec",
        name="incidents",
        blueprint=None,
        parameters_json="{}",
        spec_yaml="version: 1",
        purpose="test",
        state="queued",
        created_at=now,
        deadline_at=now + 60,
        planned_json="{}",
        progress_json="{}",
        refusals_json="[]",
        tables_json="[]",
    )


def test_store_runs_move_queued_running_done_with_events(store_url: str) -> None:
    store = RunStore.open(store_url)
    try:
        store.add_run(_row("r1", created=1.0))
        store.add_run(_row("r2", created=2.0))
        claimed = store.next_queued()
        assert claimed is not None and claimed.id == "r1" and claimed.state == "running"
        store.update_progress("r1", "police", state="released", cost_rho=0.05)
        store.update_progress("r1", "police", cost_rho=0.01)
        done = store.set_state("r1", "done", "3 release(s)")
        assert done.finished_at is not None
        assert store.set_state("r1", "failed", "late").state == "done", "a terminal state is final"
        assert store.run("r1").debited() == {"police": pytest.approx(0.06)}  # type: ignore[union-attr]
        kinds = [(e.kind, json.loads(e.data_json).get("state")) for e in store.events("r1")]
        assert kinds == [
            ("state", "queued"),
            ("state", "running"),
            ("partner", "released"),
            ("partner", "released"),
            ("state", "done"),
        ]
        assert [r.id for r in store.runs()] == ["r2", "r1"]
        assert [r.id for r in store.runs(states=["queued"])] == ["r2"]
        assert store.runs(owner="bob") == []
    finally:
        store.close()


def test_store_cancel_queued_is_immediate_and_running_is_requested(store_url: str) -> None:
    store = RunStore.open(store_url)
    try:
        store.add_run(_row("q"))
        assert store.request_cancel("q", "cancelled by alice@x: wrong areas").state == "cancelled"
        assert store.next_queued() is None
        store.add_run(_row("r"))
        store.next_queued()
        row = store.request_cancel("r", "cancelled by alice@x")
        assert (row.state, row.cancel_reason) == ("running", "cancelled by alice@x")
        with pytest.raises(KeyError):
            store.request_cancel("nope", "x")
    finally:
        store.close()


def test_store_reopened_marks_in_flight_runs_interrupted_with_what_each_partner_spent(store_url: str) -> None:
    store = RunStore.open(store_url)
    store.add_run(_row("flying"))
    store.add_run(_row("waiting-in-line", created=time.time() + 1))
    store.next_queued()
    store.update_progress("flying", "police", state="released", cost_rho=0.05)
    store.update_progress("flying", "council", state="sent")
    store.close()
    again = RunStore.open(store_url)  # the migrations run again, and change nothing
    try:
        interrupted = again.interrupt_in_flight()
        assert [r.id for r in interrupted] == ["flying"]
        assert interrupted[0].state == "interrupted"
        assert "police rho 0.05" in str(interrupted[0].reason) and "council" not in str(interrupted[0].reason)
        assert again.run("waiting-in-line").state == "queued"  # type: ignore[union-attr]
    finally:
        again.close()


def test_store_two_workers_never_claim_the_same_run(store_url: str) -> None:
    store = RunStore.open(store_url)
    try:
        for i in range(6):
            store.add_run(_row(f"r{i}", created=float(i + 1)))
        import threading

        claimed: list[str] = []

        def take() -> None:
            while (row := store.next_queued()) is not None:
                claimed.append(row.id)

        threads = [threading.Thread(target=take) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(claimed) == [f"r{i}" for i in range(6)]
    finally:
        store.close()


def test_accounts_token_shown_once_hash_stored_revocation_works(store_url: str) -> None:
    store = RunStore.open(store_url)
    try:
        issued = add_user(store, "alice", "analyst")
        assert authenticate(store, issued.token) == Account("alice", "analyst")
        row = store.users()[0]
        assert issued.token.split("_")[2] not in (row.token_hash, row.salt), "the secret is not stored"
        wrong = issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")
        assert authenticate(store, wrong) is None
        assert authenticate(store, "oda_0000000000000000_" + "x" * 43) is None
        assert authenticate(store, "Bearer nonsense") is None
        store.revoke_user("alice")
        assert authenticate(store, issued.token) is None
    finally:
        store.close()


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [
        ("Alice", "analyst", "user name 'Alice'"),
        ("alice smith", "analyst", "lower-case letters"),
        ("alice", "superuser", "role 'superuser': choose one of admin, analyst, reviewer, reader"),
    ],
)
def test_accounts_bad_name_or_role_refused(tmp_path, name: str, role: str, message: str) -> None:
    store = RunStore.open(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        with pytest.raises(ConfigError, match=message):
            add_user(store, name, role)
        add_user(store, "alice", "analyst")
        with pytest.raises(ConfigError, match="user 'alice' already exists"):
            add_user(store, "alice", "reader")
        with pytest.raises(ConfigError, match="no user 'zed'"):
            store.revoke_user("zed")
    finally:
        store.close()


def test_store_bad_url_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="store_url nosuchdb://x: cannot use it"):
        RunStore.open("nosuchdb://x")
    with pytest.raises(ConfigError, match=r"postgresql\+psycopg://oda:\*\*\*@127.0.0.1:1/x: cannot open"):
        RunStore.open("postgresql+psycopg://oda:secret@127.0.0.1:1/x")


def test_a_store_written_by_the_first_schema_is_upgraded_in_place(store_url: str) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from coordinator.service.store import MIGRATIONS

    engine = create_engine(store_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO runs (id, owner, source, name, parameters_json, spec_yaml, state, created_at, "
                "deadline_at, planned_json, progress_json, refusals_json, tables_json) VALUES "
                "('old', 'alice', 'spec', 'old run', '{}', '', 'done', 1.0, 2.0, '{}', '{}', '[]', '[]')"
            )
        )
    engine.dispose()
    store = RunStore.open(store_url)
    try:
        old = store.run("old")
        assert old is not None and old.state == "done" and old.quorum_json is None
        with store.engine.connect() as connection:
            head = max(p.name[:4] for p in (MIGRATIONS / "versions").glob("0*.py"))
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    finally:
        store.close()
