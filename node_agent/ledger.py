"""The persistent privacy ledger: reserve before running, commit after; never refund.

One SQLite file per node. A reservation is written (and fsynced) before any data is read; a
pending entry counts as spent, so a node killed mid-release loses that budget rather than
risking a release that was never accounted for. Concurrent requests are serialised by SQLite's
write lock (`BEGIN IMMEDIATE`), so two of them cannot overspend one population.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from node_agent.state_db import open_state_db
from privacy.budget import Rho
from privacy.errors import BudgetExhausted

__all__ = ["Ledger", "LedgerEntry"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    population TEXT NOT NULL,
    rho REAL NOT NULL CHECK (rho >= 0),
    status TEXT NOT NULL CHECK (status IN ('pending', 'committed', 'failed')),
    spec_hash TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_population ON entries (population);
"""


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
        self._db = open_state_db(path, _SCHEMA, "privacy ledger")

    def close(self) -> None:
        self._db.close()

    def spent(self, population: str, since: float = 0.0) -> Rho:
        """Everything reserved for `population` from `since` (a Unix time) on: committed,
        pending and failed alike."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(rho), 0) FROM entries WHERE population = ? AND created >= ?",
            (population, since),
        ).fetchone()
        return Rho(float(row[0]))

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
            BudgetExhausted: requested, remaining and the difference are in the message.
        """
        now = time.time()
        ids: list[int] = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for population, cost in sorted(costs.items()):
                remaining = caps[population] - self.spent(population, since)
                if cost.value > remaining.value + 1e-12:
                    raise BudgetExhausted(
                        f"privacy budget exhausted for population {population!r}: requested "
                        f"{cost.describe()}, remaining {remaining.describe()}, short by "
                        f"rho {cost.value - remaining.value:.6g}. Ask for a smaller budget, or "
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

    def _mark(self, entry_id: int, status: str) -> None:
        self._db.execute(
            "UPDATE entries SET status = ?, updated = ? WHERE id = ? AND status = 'pending'",
            (status, time.time(), entry_id),
        )

    def commit(self, entry_id: int) -> None:
        """Mark a reservation as released."""
        self._mark(entry_id, "committed")

    def fail(self, entry_id: int) -> None:
        """Mark a reservation whose release failed. The budget stays spent: no refunds."""
        self._mark(entry_id, "failed")

    def released(self, request_id: str, spec_hash: str) -> bool:
        """Whether a release of `request_id` for `spec_hash` was committed."""
        row = self._db.execute(
            "SELECT 1 FROM entries WHERE request_id = ? AND spec_hash = ? AND status = 'committed' LIMIT 1",
            (request_id, spec_hash),
        ).fetchone()
        return row is not None

    def entries(self) -> list[LedgerEntry]:
        rows = self._db.execute(
            "SELECT id, request_id, population, rho, status, spec_hash, created FROM entries ORDER BY id"
        ).fetchall()
        return [LedgerEntry(*row) for row in rows]
