"""The persistent privacy ledger: reserve before running, commit after; never refund.

One SQLite file per node. A reservation is written (and fsynced) before any data is read; a
pending entry counts as spent, so a node killed mid-release loses that budget rather than
risking a release that was never accounted for. Concurrent requests are serialised by SQLite's
write lock (`BEGIN IMMEDIATE`), so two of them cannot overspend one population.

Admission is exact: costs are binary fractions and are added as such, so a cap is a cap, and no
number of tiny requests adds up to more than it. A request id is debited once only: a replayed
request (a model round sent again) is refused before anything is computed.

Statuses: `pending` (reserved, being computed), `committed` (released), `failed` (the release
failed after its reservation), `undelivered` (released, but the reply could not be delivered).
All four count as spent.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from node_agent.state_db import open_state_db
from privacy.budget import Rho, exact_total
from privacy.errors import BudgetExhausted, DataError, PolicyRefusal

__all__ = ["SCHEMA_VERSION", "Ledger", "LedgerEntry"]

#: Version of the ledger's table layout (SQLite `user_version`).
SCHEMA_VERSION = 1

_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    population TEXT NOT NULL,
    rho REAL NOT NULL CHECK (rho >= 0),
    status TEXT NOT NULL CHECK (status IN ('pending', 'committed', 'failed', 'undelivered')),
    spec_hash TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
"""
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS entries_population ON entries (population)",
    "CREATE INDEX IF NOT EXISTS entries_request ON entries (request_id)",
)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring a ledger written by an earlier release to `SCHEMA_VERSION`, keeping every entry.

    Version 0 (no `user_version`) lacked the `undelivered` status: SQLite cannot change a CHECK
    constraint in place, so the table is copied into the new layout in one transaction.

    Raises:
        DataError: the ledger is newer than this node (downgrading would lose meaning).
    """
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise DataError(
            f"privacy ledger {path} has schema version {version}; this node reads up to "
            f"{SCHEMA_VERSION}: upgrade oda-federated (never edit or replace the ledger)"
        )
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")  # single statements: executescript would commit half-way
    try:
        old = db.execute("SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()
        if old is not None and "undelivered" not in old[0]:
            db.execute(_TABLE.format(name="entries_v1"))
            db.execute("INSERT INTO entries_v1 SELECT * FROM entries")
            db.execute("DROP TABLE entries")
            db.execute("ALTER TABLE entries_v1 RENAME TO entries")
        db.execute(_TABLE.format(name="entries"))
        for index in _INDEXES:
            db.execute(index)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    request_id: str
    population: str
    rho: float
    status: str
    spec_hash: str
    created: float


class Ledger:
    """A node's privacy spending, per population, on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_state_db(path, "", "privacy ledger")
        try:
            _migrate(self._db, path)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise DataError(
                f"privacy ledger {path} cannot be upgraded ({exc}): restore it from backup"
            ) from exc

    def close(self) -> None:
        self._db.close()

    def spent_exactly(self, population: str, since: float = 0.0) -> Fraction:
        """Everything reserved for `population` from `since` (a Unix time) on, whatever its
        status, as an exact sum."""
        rows = self._db.execute(
            "SELECT rho FROM entries WHERE population = ? AND created >= ?", (population, since)
        ).fetchall()
        return exact_total(float(r[0]) for r in rows)

    def spent(self, population: str, since: float = 0.0) -> Rho:
        """`spent_exactly`, as a budget (for display)."""
        return Rho(float(self.spent_exactly(population, since)))

    def reserve(
        self,
        *,
        request_id: str,
        costs: dict[str, Rho],
        caps: dict[str, Rho],
        spec_hash: str,
        since: float = 0.0,
    ) -> list[int]:
        """Write pending debits for every population at once, or refuse them all.

        `caps` apply to spending from `since` (the start of the current renewal period) on.

        Raises:
            PolicyRefusal: `request_id` was debited before (a replay).
            BudgetExhausted: requested, remaining and the difference are in the message.
        """
        now = time.time()
        ids: list[int] = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._db.execute(
                "SELECT 1 FROM entries WHERE request_id = ? LIMIT 1", (request_id,)
            ).fetchone():
                raise PolicyRefusal(
                    f"request {request_id} was answered before: a request is released once, so a "
                    "repeated request (or model round) is refused and nothing is spent"
                )
            for population, cost in sorted(costs.items()):
                spent = self.spent_exactly(population, since)
                cap = Fraction(caps[population].value)
                if spent + Fraction(cost.value) > cap:
                    remaining = max(cap - spent, Fraction(0))
                    raise BudgetExhausted(
                        f"privacy budget exhausted for population {population!r}: requested "
                        f"{cost.describe()}, remaining {Rho(float(remaining)).describe()}, short by "
                        f"rho {float(Fraction(cost.value) - remaining):.6g}. Ask for a smaller budget, or "
                        "raise policy.total_rho_cap if your data protection officer agrees."
                    )
                cursor = self._db.execute(
                    "INSERT INTO entries (request_id, population, rho, status, spec_hash, created,"
                    " updated) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                    (request_id, population, cost.value, spec_hash, now, now),
                )
                ids.append(int(cursor.lastrowid or 0))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return ids

    def _mark(self, entry_id: int, status: str, was: str = "pending") -> None:
        self._db.execute(
            "UPDATE entries SET status = ?, updated = ? WHERE id = ? AND status = ?",
            (status, time.time(), entry_id, was),
        )

    def commit(self, entry_id: int) -> None:
        """Mark a reservation as released."""
        self._mark(entry_id, "committed")

    def fail(self, entry_id: int) -> None:
        """Mark a reservation whose release failed. The budget stays spent: no refunds."""
        self._mark(entry_id, "failed")

    def undelivered(self, request_id: str) -> int:
        """Mark a released request whose reply could not be delivered (the run had ended, the
        coordinator was gone): spent, not delivered. Returns how many entries were marked."""
        cursor = self._db.execute(
            "UPDATE entries SET status = 'undelivered', updated = ? WHERE request_id = ? AND status = 'committed'",
            (time.time(), request_id),
        )
        return cursor.rowcount

    def released(self, request_id: str, spec_hash: str) -> bool:
        """Whether a release of `request_id` for `spec_hash` was committed (delivered or not)."""
        row = self._db.execute(
            "SELECT 1 FROM entries WHERE request_id = ? AND spec_hash = ? "
            "AND status IN ('committed', 'undelivered') LIMIT 1",
            (request_id, spec_hash),
        ).fetchone()
        return row is not None

    def entries(self) -> list[LedgerEntry]:
        rows = self._db.execute(
            "SELECT id, request_id, population, rho, status, spec_hash, created FROM entries ORDER BY id"
        ).fetchall()
        return [LedgerEntry(*row) for row in rows]
