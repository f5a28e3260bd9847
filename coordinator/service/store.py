"""The run store: analysts' accounts, their runs as state machines, and each run's events.

SQLAlchemy 2 over SQLite in the coordinator folder by default (`runs.db`), or PostgreSQL by URL
(`store_url:` in `coordinator.yaml`). The schema is created and upgraded by the Alembic
migrations shipped in `coordinator/service/migrations` (`RunStore.open` runs them), so a store
written by an older release is upgraded in place, never recreated.

A run moves through

    queued -> running -> waiting -> done | failed | cancelled | interrupted
       \\________________________/
                cancelled

(`waiting`: a request has been out longer than a few seconds with partners still to answer,
typically a person deciding on a manual approval). Every terminal state has a reason. Times are
UTC seconds since the epoch. Nothing here knows Flower or HTTP.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, cast, get_args

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from privacy.errors import BudgetExhausted, ConfigError

__all__ = [
    "ACTIVE",
    "MIGRATIONS",
    "ROLES",
    "STATES",
    "TERMINAL",
    "Base",
    "EventRow",
    "PartnerSeenRow",
    "PopulationChargeRow",
    "ReviewRow",
    "Role",
    "RunRow",
    "RunStore",
    "State",
    "UserRow",
    "default_store_url",
]

Role = Literal["admin", "analyst", "reviewer", "reader"]
ROLES: tuple[Role, ...] = get_args(Role)
State = Literal["queued", "running", "waiting", "done", "failed", "cancelled", "interrupted"]
STATES: tuple[State, ...] = get_args(State)
TERMINAL: frozenset[State] = frozenset({"done", "failed", "cancelled", "interrupted"})
#: States of a run the worker is executing.
ACTIVE: frozenset[State] = frozenset({"running", "waiting"})


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    """An account. The token is `oda_<token_id>_<secret>`; only a salted hash of the secret is kept."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    token_id: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    salt: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RunRow(Base):
    """One run of a spec or a blueprint, from submission to its terminal state."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16))  # "spec" | "blueprint"
    name: Mapped[str] = mapped_column(String(200))
    blueprint: Mapped[str | None] = mapped_column(String(200), nullable=True)  # NAME@VERSION
    parameters_json: Mapped[str] = mapped_column(Text, default="{}")
    spec_yaml: Mapped[str] = mapped_column(Text, default="")
    purpose: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The error type a failed run ended with (`BudgetExhausted`, `PolicyRefusal`, ...).
    error: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deadline_at: Mapped[float] = mapped_column(Float)
    cancel_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: {min_partners, required}: the partners the run needs (migration 0002).
    quorum_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: analysis -> dataset -> rho each partner holding the dataset is debited.
    planned_json: Mapped[str] = mapped_column(Text, default="{}")
    #: partner -> {state, cost_rho, requests, message, node_version}.
    progress_json: Mapped[str] = mapped_column(Text, default="{}")
    #: [{partner, analysis, kind, message}]
    refusals_json: Mapped[str] = mapped_column(Text, default="[]")
    #: [{name, analysis, file, rows}] with `file` a Parquet path relative to `results_dir`.
    tables_json: Mapped[str] = mapped_column(Text, default="[]")
    results_dir: Mapped[str | None] = mapped_column(Text, nullable=True)

    def progress(self) -> dict[str, dict[str, object]]:
        return cast(dict[str, dict[str, object]], json.loads(self.progress_json))

    def debited(self) -> dict[str, float]:
        """partner -> rho its node debited for this run so far (from the releases received)."""
        return {p: float(cast(float, v.get("cost_rho", 0.0))) for p, v in self.progress().items()}

    def spent(self) -> str:
        """What each partner debited so far, in words (`police rho 0.05, fire rho 0.05`)."""
        return ", ".join(f"{p} rho {v:.6g}" for p, v in sorted(self.debited().items()) if v) or "nothing"


class EventRow(Base):
    """Something that happened to a run, in order: what the live event stream sends."""

    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(40), ForeignKey("runs.id"), index=True)
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    data_json: Mapped[str] = mapped_column(Text, default="{}")


class ReviewRow(Base):
    """One reviewer's decision on one output of a run: `approve`, `reject` or `changes` (request
    changes), with the reason; a reviewer's latest decision on an output is the one that counts."""

    __tablename__ = "output_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(40), ForeignKey("runs.id"), index=True)
    output: Mapped[str] = mapped_column(String(300))
    reviewer: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[float] = mapped_column(Float)


class PopulationChargeRow(Base):
    """What one run may cost one resident of a shared population: planned when it is queued
    (every partner that may hold them, at the run's planned rho), lowered to what those partners
    actually debited once the run ends (`settled`)."""

    __tablename__ = "population_charges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(40), ForeignKey("runs.id"), index=True)
    population: Mapped[str] = mapped_column(String(64), index=True)
    rho: Mapped[float] = mapped_column(Float)
    holders_json: Mapped[str] = mapped_column(Text)
    settled: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[float] = mapped_column(Float)


class PartnerSeenRow(Base):
    """What the coordinator last heard from a partner (the fleet view)."""

    __tablename__ = "partners_seen"

    partner: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    protocol: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_reply_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_run: Mapped[str | None] = mapped_column(String(40), nullable=True)
    last_refusal: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_refusal_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def default_store_url(folder: Path) -> str:
    """The SQLite store in a coordinator folder."""
    return f"sqlite:///{(folder / 'runs.db').resolve()}"


class RunStore:
    """Users, runs and events in one database. Thread-safe: one engine, a session per call."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        #: Bumped after every write in this process: event streams wait for it to change
        #: instead of querying the database (the worker and the API share the process).
        self.version = 0
        #: Serialises the federation cap's check-then-write (one service process writes runs).
        self._caps = threading.Lock()

    @classmethod
    def open(cls, url: str) -> RunStore:
        """Connect to the store at `url` and bring its schema up to date (Alembic).

        Raises:
            ConfigError: the URL is not a database SQLAlchemy can reach, or migrating failed.
        """
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise ConfigError(f"store_url {_safe(url)}: cannot use it: {exc}") from exc
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        try:
            _upgrade(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise ConfigError(f"store_url {_safe(url)}: cannot open or migrate the run store: {exc}") from exc
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session
        self.version += 1  # after the commit (an int bump: atomic enough for a change signal)

    # --- users -------------------------------------------------------------------------------

    def add_user(self, row: UserRow) -> None:
        """Raises: ConfigError when the name is taken."""
        with self.session() as s:
            if s.get(UserRow, row.name) is not None:
                raise ConfigError(f"user {row.name!r} already exists; revoke it first or choose another name")
            s.add(row)

    def users(self) -> list[UserRow]:
        with self.session() as s:
            return list(s.scalars(select(UserRow).order_by(UserRow.name)))

    def user_by_token_id(self, token_id: str) -> UserRow | None:
        with self.session() as s:
            return s.scalars(select(UserRow).where(UserRow.token_id == token_id)).first()

    def revoke_user(self, name: str) -> None:
        """Raises: ConfigError for an unknown user."""
        with self.session() as s:
            user = s.get(UserRow, name)
            if user is None:
                raise ConfigError(f"no user {name!r}; `oda coordinator user list` shows them")
            user.revoked_at = user.revoked_at or time.time()

    # --- runs --------------------------------------------------------------------------------

    def add_run(self, row: RunRow) -> RunRow:
        self.add_run_within_caps(row, [], {})
        return row

    def run(self, run_id: str) -> RunRow | None:
        with self.session() as s:
            return s.get(RunRow, run_id)

    def runs(
        self,
        *,
        owner: str | None = None,
        states: Sequence[str] = (),
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRow]:
        """Runs newest first, filtered by owner, states and a name substring."""
        query = select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id.desc())
        if owner is not None:
            query = query.where(RunRow.owner == owner)
        if states:
            query = query.where(RunRow.state.in_(list(states)))
        if name:
            query = query.where(RunRow.name.contains(name, autoescape=True))
        with self.session() as s:
            return list(s.scalars(query.limit(limit).offset(offset)))

    def next_queued(self) -> RunRow | None:
        """Claim the oldest queued run: it becomes `running` (atomically, so no two workers take it)."""
        with self.session() as s:
            for row in s.scalars(select(RunRow).where(RunRow.state == "queued").order_by(RunRow.created_at)):
                now = time.time()
                claimed = s.execute(
                    update(RunRow)
                    .where(RunRow.id == row.id, RunRow.state == "queued")
                    .values(state="running", started_at=now)
                )
                if getattr(claimed, "rowcount", 0) == 1:
                    row.state, row.started_at = "running", now
                    s.add(EventRow(run_id=row.id, at=now, kind="state", data_json=_state_data(row)))
                    return row
        return None

    def set_state(self, run_id: str, state: State, reason: str | None = None, **fields: object) -> RunRow:
        """Move a run to `state` (with `reason`, and other columns), recording the event. A run
        already in a terminal state stays there.

        Raises:
            KeyError: no such run.
        """
        with self.session() as s:
            row = _locked(s, run_id)
            if row.state in TERMINAL:
                return row
            for key, value in fields.items():
                setattr(row, key, value)
            _move(s, row, state, reason)
            return row

    def request_cancel(self, run_id: str, why: str) -> RunRow:
        """Cancel a queued run now; ask the worker to stop a running one (it withdraws the
        requests still out at the nodes). A finished run is left as it is.

        Raises:
            KeyError: no such run.
        """
        with self.session() as s:
            row = _locked(s, run_id)
            if row.state in TERMINAL:
                return row
            row.cancel_reason = why
            if row.state == "queued":
                _move(s, row, "cancelled", why)
            return row

    def update_progress(self, run_id: str, partner: str, **values: object) -> dict[str, dict[str, object]]:
        """Merge `values` into one partner's progress (adding `cost_rho` to what it spent)."""
        with self.session() as s:
            row = _locked(s, run_id)
            progress = row.progress()
            entry = progress.setdefault(partner, {"state": "pending", "cost_rho": 0.0, "requests": 0})
            spent = cast(float, values.pop("cost_rho", 0.0))
            entry["cost_rho"] = cast(float, entry.get("cost_rho", 0.0)) + spent
            entry.update(values)
            row.progress_json = json.dumps(progress, sort_keys=True)
            s.add(
                EventRow(
                    run_id=run_id,
                    at=time.time(),
                    kind="partner",
                    data_json=json.dumps({"partner": partner, **entry}, sort_keys=True),
                )
            )
            return progress

    def add_event(self, run_id: str, kind: str, data: dict[str, object]) -> None:
        with self.session() as s:
            s.add(
                EventRow(run_id=run_id, at=time.time(), kind=kind, data_json=json.dumps(data, sort_keys=True))
            )

    def events(self, run_id: str, after: int = 0, limit: int = 500) -> list[EventRow]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(EventRow)
                    .where(EventRow.run_id == run_id, EventRow.id > after)
                    .order_by(EventRow.id)
                    .limit(limit)
                )
            )

    # --- federation-wide accounting ----------------------------------------------------------

    def add_run_within_caps(
        self, row: RunRow, charges: list[PopulationChargeRow], caps: dict[str, float]
    ) -> None:
        """Queue `row` with its population charges, unless one would take a population over its
        cap (checked and written under one lock: two submissions cannot both slip under it).

        Raises:
            BudgetExhausted: naming the population, what it has spent, the run's charge and the cap.
        """
        with self._caps:
            spent = self.population_spent()
            for charge in charges:
                total = spent.get(charge.population, 0.0) + charge.rho
                if total > caps[charge.population] + 1e-12:
                    raise BudgetExhausted(
                        f"federation cap: this run may cost a resident of {charge.population!r} rho "
                        f"{charge.rho:.6g} over every agency that may hold them; {spent.get(charge.population, 0.0):.6g} "
                        f"of the cap of {caps[charge.population]:g} is spent, so it would reach {total:.6g}. "
                        "Nothing was queued or sent: ask for less (a smaller rho) or ask the federation to raise the cap"
                    )
            with self.session() as s:
                s.add(row)
                s.flush()  # the run before its first event and its charges (the foreign keys)
                s.add(EventRow(run_id=row.id, at=row.created_at, kind="state", data_json=_state_data(row)))
                for charge in charges:
                    s.add(charge)

    def population_spent(self) -> dict[str, float]:
        """population -> rho one resident may have borne over every run so far."""
        with self.session() as s:
            rows = s.execute(
                select(PopulationChargeRow.population, func.sum(PopulationChargeRow.rho)).group_by(
                    PopulationChargeRow.population
                )
            )
            return {str(p): float(v or 0.0) for p, v in rows}

    # --- output review -----------------------------------------------------------------------

    def add_review(self, row: ReviewRow) -> None:
        """Record a decision, and an event on the run (its analyst's stream shows it)."""
        with self.session() as s:
            s.add(row)
            data = {
                "output": row.output,
                "reviewer": row.reviewer,
                "decision": row.decision,
                "reason": row.reason,
            }
            s.add(
                EventRow(
                    run_id=row.run_id, at=row.at, kind="review", data_json=json.dumps(data, sort_keys=True)
                )
            )

    def reviews(self, run_id: str) -> list[ReviewRow]:
        with self.session() as s:
            return list(s.scalars(select(ReviewRow).where(ReviewRow.run_id == run_id).order_by(ReviewRow.id)))

    def reviewed_runs(self) -> list[str]:
        """The runs with at least one approval, oldest decision first."""
        with self.session() as s:
            ids = s.scalars(
                select(ReviewRow.run_id).where(ReviewRow.decision == "approve").order_by(ReviewRow.id)
            )
            return list(dict.fromkeys(ids))

    def partner_seen(
        self,
        partner: str,
        run_id: str,
        *,
        node_version: str | None = None,
        protocol: int | None = None,
        refusal: str | None = None,
        replied: bool = True,
    ) -> None:
        """Record a partner's reply (its version and protocol), or a refusal (`replied` False:
        the partner did not answer at all, e.g. a timeout)."""
        now = time.time()
        with self.session() as s:
            row = s.get(PartnerSeenRow, partner[:64], with_for_update=True)
            if row is None:
                row = PartnerSeenRow(partner=partner[:64])
                s.add(row)
            row.last_run = run_id
            if replied:
                row.last_reply_at = now
            if node_version is not None:
                row.node_version, row.protocol = node_version[:64], protocol
            if refusal is not None:
                row.last_refusal, row.last_refusal_at = refusal[:1000], now

    def partners_seen(self) -> dict[str, PartnerSeenRow]:
        with self.session() as s:
            return {r.partner: r for r in s.scalars(select(PartnerSeenRow))}

    def last_event_id(self, run_id: str) -> int:
        with self.session() as s:
            found = s.scalars(
                select(EventRow.id).where(EventRow.run_id == run_id).order_by(EventRow.id.desc()).limit(1)
            ).first()
            return int(found or 0)

    def interrupt_in_flight(self) -> list[RunRow]:
        """Mark every run left running or waiting by a stopped coordinator as interrupted, with
        what each partner had spent; return them."""
        with self.session() as s:
            rows = list(s.scalars(select(RunRow).where(RunRow.state.in_(sorted(ACTIVE)))))
        out = []
        for row in rows:
            out.append(
                self.set_state(
                    row.id,
                    "interrupted",
                    f"the coordinator stopped while this run was in flight; partners spent: {row.spent()}",
                )
            )
        return out


def _locked(s: Session, run_id: str) -> RunRow:
    """Raises: KeyError when there is no such run."""
    row = s.get(RunRow, run_id, with_for_update=True)
    if row is None:
        raise KeyError(run_id)
    return row


def _settle(s: Session, run: RunRow) -> None:
    """Lower a run's population charges, as it ends, to what the partners that may hold each
    population actually debited (a partner's whole debit for the run: an upper bound on its
    share), in the same transaction as its terminal state."""
    debited = run.debited()
    for charge in s.scalars(
        select(PopulationChargeRow).where(
            PopulationChargeRow.run_id == run.id, PopulationChargeRow.settled.is_(False)
        )
    ):
        charge.rho = min(charge.rho, sum(debited.get(p, 0.0) for p in json.loads(charge.holders_json)))
        charge.settled = True


def _move(s: Session, row: RunRow, state: State, reason: str | None) -> None:
    """Put `row` in `state` (timing a terminal one, and settling its population charges) and
    record the change as an event."""
    row.state = state
    if reason is not None:
        row.reason = reason
    if state in TERMINAL:
        row.finished_at = time.time()
        _settle(s, row)
    s.add(EventRow(run_id=row.id, at=time.time(), kind="state", data_json=_state_data(row)))


def _state_data(row: RunRow) -> str:
    return json.dumps({"state": row.state, "reason": row.reason}, sort_keys=True)


#: The schema migrations (Alembic: `env.py` and `versions/NNNN_what.py`), shipped as package
#: data. Migrations only add: a store written by an older release opens in a newer one.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _upgrade(engine: Engine) -> None:
    """Bring the store at `engine` to the newest schema (no alembic.ini needed)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _safe(url: str) -> str:
    """A store URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"


def _sqlite_pragmas(connection: object, _: object) -> None:
    # WAL lets the API read while the worker writes; busy_timeout waits instead of failing
    cursor = connection.cursor()  # type: ignore[attr-defined]  # a DB-API connection
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
