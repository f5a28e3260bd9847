"""Requests waiting for a person's decision (policy `approval: manual`).

One SQLite file, `state_dir/inbox.sqlite`, shared by the running node (which files requests
and acts on decisions) and `oda-node inbox|approve|deny` in a shell (which decide). Nothing is
released for a request until it is approved; a denial's reason goes back to the coordinator.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from node_agent.state_db import open_state_db
from privacy.errors import ConfigError, DataError

__all__ = ["SCHEMA_VERSION", "Inbox", "InboxItem", "InboxStatus"]

#: Version of the inbox's table layout (SQLite `user_version`): 1 lacked `run_id` and `purpose`
#: (a file of version 0, before versions, is read as 1). Older files are migrated on open.
SCHEMA_VERSION = 2

InboxStatus = Literal["waiting", "approved", "denied", "released", "failed", "expired"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    request_id TEXT PRIMARY KEY,
    received REAL NOT NULL,
    requester TEXT NOT NULL,
    analysis TEXT NOT NULL,
    summary TEXT NOT NULL,
    cost_rho REAL NOT NULL,
    request_json TEXT NOT NULL,
    bundle_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('waiting', 'approved', 'denied', 'released', 'failed', 'expired')),
    reason TEXT NOT NULL DEFAULT '',
    decided REAL
);
"""

#: Columns added after the first release, with their definitions (added on open, to new and
#: older files alike).
_ADDED_COLUMNS = {
    "run_id": "TEXT NOT NULL DEFAULT ''",
    "purpose": "TEXT NOT NULL DEFAULT ''",
}

_SELECT = """
SELECT request_id, received, requester, analysis, summary, cost_rho, request_json, bundle_hash, status, reason,
    run_id, purpose
FROM inbox WHERE (? IS NULL OR status = ?) AND (? IS NULL OR request_id = ?) ORDER BY received
"""


@dataclass(frozen=True)
class InboxItem:
    request_id: str
    received: float
    requester: str
    analysis: str
    summary: str
    cost_rho: float
    request_json: str
    bundle_hash: str
    status: InboxStatus
    reason: str
    #: The coordinator's run and the analyst's stated purpose ('' when the request named none).
    run_id: str = ""
    purpose: str = ""


class Inbox:
    """The waiting requests of one node."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "inbox.sqlite"
        self._db = open_state_db(self.path, _SCHEMA, "approval inbox")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            self._db.close()
            raise DataError(
                f"approval inbox {self.path} has schema version {version}; this node reads up to "
                f"{SCHEMA_VERSION}: upgrade oda-federated"
            )
        if version < SCHEMA_VERSION:
            have = {row[1] for row in self._db.execute("PRAGMA table_info(inbox)")}
            for column, definition in _ADDED_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE inbox ADD COLUMN {column} {definition}")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def file(
        self,
        *,
        request_id: str,
        requester: str,
        analysis: str,
        summary: str,
        cost_rho: float,
        request_json: str,
        bundle_hash: str,
        run_id: str = "",
        purpose: str = "",
    ) -> None:
        """Put a request in the inbox, waiting. A request id already seen is refused."""
        try:
            self._db.execute(
                "INSERT INTO inbox (request_id, received, requester, analysis, summary, cost_rho, "
                "request_json, bundle_hash, status, run_id, purpose) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'waiting', ?, ?)",
                (
                    request_id,
                    time.time(),
                    requester,
                    analysis,
                    summary,
                    cost_rho,
                    request_json,
                    bundle_hash,
                    run_id,
                    purpose,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise ConfigError(f"request {request_id} is already in the approval inbox") from exc

    def items(self, status: InboxStatus | None = None) -> list[InboxItem]:
        return self._select(status=status)

    def _select(self, *, status: str | None = None, request_id: str | None = None) -> list[InboxItem]:
        rows = self._db.execute(_SELECT, (status, status, request_id, request_id))
        return [InboxItem(*row) for row in rows]

    def get(self, request_id: str) -> InboxItem:
        """Raises: ConfigError naming the id when it is not in the inbox."""
        found = self._select(request_id=request_id)
        if not found:
            raise ConfigError(f"no request {request_id!r} in the approval inbox; see `oda-node inbox`")
        return found[0]

    def decide(self, request_id: str, status: Literal["approved", "denied"], reason: str = "") -> InboxItem:
        """Approve or deny a waiting request.

        Raises:
            ConfigError: unknown id, or the request is no longer waiting.
        """
        item = self.get(request_id)
        cursor = self._db.execute(
            "UPDATE inbox SET status = ?, reason = ?, decided = ? WHERE request_id = ? AND status = 'waiting'",
            (status, reason, time.time(), request_id),
        )
        if cursor.rowcount != 1:
            raise ConfigError(f"request {request_id} is {item.status}, not waiting; nothing to decide")
        return self.get(request_id)

    def settle(
        self, request_id: str, status: Literal["released", "failed", "expired"], reason: str = ""
    ) -> None:
        """Record what became of a decided (or abandoned) request."""
        self._db.execute(
            "UPDATE inbox SET status = ?, reason = CASE WHEN ? = '' THEN reason ELSE ? END WHERE request_id = ?",
            (status, reason, reason, request_id),
        )

    def expire_waiting(self, why: str) -> int:
        """Mark every waiting or approved request expired (their messages are gone); return how many."""
        cursor = self._db.execute(
            "UPDATE inbox SET status = 'expired', reason = ? WHERE status IN ('waiting', 'approved')", (why,)
        )
        return cursor.rowcount
