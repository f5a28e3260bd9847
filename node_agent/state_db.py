"""The node's SQLite state files (ledger, approval inbox): opened one way, refused one way."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from privacy.errors import DataError

__all__ = ["open_state_db"]


def open_state_db(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """Open (or create) `path` in WAL mode with fsync on commit, and apply `schema`.

    Raises:
        DataError: the file is not a usable database; the message names `what` and the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except sqlite3.DatabaseError as exc:
        raise DataError(
            f"{what} {path} is unreadable ({exc}): restore it from backup; the node will not run without it"
        ) from exc
    return db
