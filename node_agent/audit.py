"""The node's audit log: append-only, hash-chained, one JSON object per line.

Every decision the node takes about a request is one entry: when, which request, from whom,
the spec and app-bundle hashes, the decision (released, refused, denied, pending, not held),
its cost and the sha256 of the payload that left. Each entry carries the hash of the one before
it and its own hash over both, so editing, deleting or reordering an entry breaks the chain.

Cutting entries off the end leaves a valid shorter chain, so the head (sequence number and
hash) is also written to a second file, `audit.head`, and sent in every reply: a log shorter
than either is truncated. Appends, reads and verification all take one exclusive file lock
(`filelock`: `flock` on POSIX, `msvcrt` on Windows),
so `oda-node approve` or `status` in a shell and the running node never see each other half-way.

Entries are bounded (texts from the coordinator are cut to `MAX_TEXT` characters) and the tail
is found by reading backwards to the last line break, so no entry, however long, can stop the
next append.

An entry may also record, for the partner's eyes only, which data a release read: per dataset
the snapshot id the release carried, the sha256 of its content and its row count.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NamedTuple

from filelock import FileLock

from privacy.errors import DataError

__all__ = ["GENESIS", "MAX_TEXT", "SCHEMA_VERSION", "AuditEntry", "AuditLog", "Decision", "Verified"]

#: Version of the log's layout, the third field of `audit.head` (a head of two fields was written
#: by a release before versions, with entries of the same layout: it is read as version 1 and
#: rewritten with the version at the next append).
SCHEMA_VERSION = 1

#: The `prev` of the first entry.
GENESIS = "0" * 64
#: Longest text field an entry keeps; longer texts (echoes of what a coordinator sent) are cut.
MAX_TEXT = 4000

Decision = Literal["released", "refused", "denied", "pending", "approved", "not_held", "undelivered"]


@dataclass(frozen=True)
class AuditEntry:
    """One decision about one request."""

    seq: int
    time: str
    request_id: str
    requester: str
    spec_hash: str
    bundle_hash: str
    decision: Decision
    reason: str
    cost_rho: float
    payload_sha256: str
    prev: str
    hash: str
    #: dataset -> {"snapshot": id sent in the release, "sha256": content hash, "rows": n}; local only.
    data: dict[str, dict[str, object]] = field(default_factory=dict)
    #: The coordinator's run the request belongs to, and the analyst's stated purpose.
    run_id: str = ""
    purpose: str = ""

    def body(self) -> dict[str, object]:
        """Everything the hash covers (all but the hash itself; `data`, `run_id` and `purpose`
        only when present, so entries written before they existed verify as they were)."""
        body = asdict(self)
        del body["hash"]
        for optional in _OPTIONAL:
            if not body[optional]:
                del body[optional]
        return body


#: Entry fields written (and hashed) only when they hold something.
_OPTIONAL = ("data", "run_id", "purpose")


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 14] + " ...(truncated)"


def _digest(body: dict[str, object]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Verified(NamedTuple):
    """A verified chain: how many entries it holds and the hash of the last one."""

    entries: int
    head: str


class AuditLog:
    """`state_dir/audit.jsonl` and its head file."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "audit.jsonl"
        self.head_path = state_dir / "audit.head"
        self._lock_path = state_dir / "audit.lock"
        state_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # filelock: flock on POSIX, msvcrt.locking on Windows; not reentrant across instances,
        # so two AuditLog objects in one process exclude each other as two processes do
        with FileLock(self._lock_path, thread_local=False, is_singleton=False):
            yield

    def entries(self) -> list[AuditEntry]:
        """Every entry, in file order, parsed but not verified (a consistent snapshot).

        Raises:
            DataError: a line is not an audit entry (the message names the file and line).
        """
        with self._locked():
            return self._entries()

    def _entries(self) -> list[AuditEntry]:
        if not self.path.exists():
            return []
        out = []
        with self.path.open("r", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                try:
                    out.append(AuditEntry(**json.loads(line)))
                except (ValueError, TypeError) as exc:
                    raise DataError(
                        f"audit log {self.path} line {number} is not an audit entry ({exc}): "
                        "the log was edited or damaged; restore it from backup"
                    ) from exc
        return out

    def verify(self) -> Verified:
        """Check the whole chain and the recorded head; return how many entries it holds and its head hash.

        Runs under the log's lock, so an append by the running node cannot fall between reading
        the entries and reading the head.

        Raises:
            DataError: naming the file, the line and what is wrong (edited, deleted,
                reordered or truncated entries).
        """
        with self._locked():
            return self._verify()

    def _verify(self) -> Verified:
        entries = self._entries()
        prev = GENESIS
        for number, entry in enumerate(entries, start=1):
            where = f"audit log {self.path} line {number}"
            if entry.seq != number:
                raise DataError(
                    f"{where}: sequence number {entry.seq}, expected {number}: entries were "
                    "deleted or reordered; restore the log from backup"
                )
            if entry.prev != prev:
                raise DataError(
                    f"{where}: does not chain to the entry before it: entries were deleted, "
                    "inserted or reordered; restore the log from backup"
                )
            if _digest(entry.body()) != entry.hash:
                raise DataError(f"{where}: its hash does not match its content: the entry was edited")
            prev = entry.hash
        recorded = self._recorded_head()
        if recorded is not None:
            seq, head = recorded
            if seq > len(entries) or (seq > 0 and entries[seq - 1].hash != head):
                raise DataError(
                    f"audit log {self.path} ends at entry {len(entries)}, but {self.head_path} "
                    f"records entry {seq}: the log was truncated or replaced; restore it from backup"
                )
        elif entries:
            raise DataError(
                f"audit log {self.path} has {len(entries)} entries but {self.head_path} is missing: "
                "restore both from backup"
            )
        return Verified(len(entries), prev)

    def _recorded_head(self) -> tuple[int, str] | None:
        if not self.head_path.exists():
            return None
        fields = self.head_path.read_text().split()
        try:
            seq, head, version = (*fields, "1") if len(fields) == 2 else fields
            if int(version) > SCHEMA_VERSION:
                raise DataError(
                    f"audit log {self.path} has schema version {version}; this node reads up to "
                    f"{SCHEMA_VERSION}: upgrade oda-federated (never edit or replace the log)"
                )
            return int(seq), head
        except ValueError as exc:
            raise DataError(
                f"audit head {self.head_path} is damaged ({exc}); restore it from backup"
            ) from exc

    def append(
        self,
        *,
        request_id: str,
        requester: str,
        spec_hash: str,
        bundle_hash: str,
        decision: Decision,
        reason: str = "",
        cost_rho: float = 0.0,
        payload: bytes = b"",
        data: dict[str, dict[str, object]] | None = None,
        run_id: str | None = None,
        purpose: str | None = None,
    ) -> AuditEntry:
        """Append one entry (fsynced, then the head file), and return it."""
        with self._locked():
            seq, prev = self._tail()
            body: dict[str, object] = {
                "seq": seq + 1,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "request_id": _bounded(request_id),
                "requester": _bounded(requester),
                "spec_hash": _bounded(spec_hash),
                "bundle_hash": _bounded(bundle_hash),
                "decision": decision,
                "reason": _bounded(reason),
                "cost_rho": cost_rho,
                "payload_sha256": hashlib.sha256(payload).hexdigest() if payload else "",
                "prev": prev,
            }
            if data:
                body["data"] = data
            if run_id:
                body["run_id"] = _bounded(run_id)
            if purpose:
                body["purpose"] = _bounded(purpose)
            entry = AuditEntry(**body, hash=_digest(body))  # type: ignore[arg-type]
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(entry), sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            tmp = self.head_path.with_suffix(".head.tmp")
            tmp.write_text(f"{entry.seq} {entry.hash} {SCHEMA_VERSION}\n")
            os.replace(tmp, self.head_path)
            return entry

    def _tail(self) -> tuple[int, str]:
        """The last entry's (seq, hash), read backwards from the end of the file to the line
        break before it, however long the entry is."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, GENESIS
        with self.path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            chunk, start = 65536, end
            tail = b""
            while start > 0:
                start = max(0, start - chunk)
                f.seek(start)
                tail = f.read(end - start)
                if b"\n" in tail.rstrip(b"\n"):
                    break
            last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            data = json.loads(last)
            return int(data["seq"]), str(data["hash"])
        except (ValueError, KeyError) as exc:
            raise DataError(
                f"audit log {self.path} ends in a damaged line ({exc}); run `oda-node audit verify`"
            ) from exc
