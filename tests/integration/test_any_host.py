"""The node on any host: no POSIX-only import, one lock that works across processes, and state
files that say which layout they hold (older ones migrated, newer ones refused)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from node_agent import audit, inbox
from node_agent.audit import AuditLog
from node_agent.inbox import Inbox
from privacy.errors import DataError

REPO = Path(__file__).resolve().parents[2]

# Every module of the node agent, imported where `fcntl` (and the other POSIX-only modules) do
# not exist, as on a Windows server; then the audit log is written, locked and verified.
_NO_POSIX = """
import importlib, pkgutil, sys
class NoPosix:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fcntl", "termios", "pwd", "grp", "resource"):
            raise ImportError(f"No module named {name!r} (blocked: this is not a POSIX host)")
        return None
sys.meta_path.insert(0, NoPosix())
for blocked in ("fcntl", "termios", "pwd", "grp", "resource"):
    sys.modules.pop(blocked, None)
import warnings
warnings.simplefilter("ignore")  # filelock says it falls back to its portable lock here
import node_agent
names = sorted(m.name for m in pkgutil.walk_packages(node_agent.__path__, "node_agent."))
for name in names:
    importlib.import_module(name)
from pathlib import Path
from node_agent.audit import AuditLog
log = AuditLog(Path(sys.argv[1]))
log.append(request_id="r1", requester="c", spec_hash="h", bundle_hash="b", decision="released")
print(len(names), "modules;", log.verify().entries, "entry;", "fcntl" in sys.modules)
"""


def test_the_node_agent_imports_and_logs_without_posix_modules(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _NO_POSIX, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    modules, _, rest = done.stdout.strip().partition(" modules; ")
    assert int(modules) >= 15, done.stdout
    assert rest == "1 entry; False", done.stdout


def _append_many(state: str, worker: int, count: int) -> None:
    log = AuditLog(Path(state))
    for i in range(count):
        log.append(
            request_id=f"w{worker}-{i}", requester="c", spec_hash="h", bundle_hash="b", decision="released"
        )


def test_appends_from_several_processes_form_one_chain(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    log = AuditLog(tmp_path)
    entries, head = log.verify()
    assert entries == 160
    assert sorted(e.request_id for e in log.entries()) == sorted(
        f"w{w}-{i}" for w in range(4) for i in range(40)
    )
    assert log.head_path.read_text().split() == ["160", head, str(audit.SCHEMA_VERSION)]


def test_an_audit_head_from_before_versions_is_read_and_upgraded(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    first = log.append(request_id="r1", requester="c", spec_hash="h", bundle_hash="b", decision="released")
    log.head_path.write_text(f"1 {first.hash}\n")  # what a release before schema versions wrote
    assert log.verify().entries == 1
    log.append(request_id="r2", requester="c", spec_hash="h", bundle_hash="b", decision="released")
    assert log.head_path.read_text().split()[2] == str(audit.SCHEMA_VERSION)


def test_a_newer_audit_log_is_refused_with_the_fix(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    first = log.append(request_id="r1", requester="c", spec_hash="h", bundle_hash="b", decision="released")
    log.head_path.write_text(f"1 {first.hash} {audit.SCHEMA_VERSION + 1}\n")
    with pytest.raises(
        DataError, match=r"has schema version 2; this node reads up to 1: upgrade oda-federated"
    ):
        log.verify()


def test_a_newer_inbox_is_refused_with_the_fix(tmp_path: Path) -> None:
    Inbox(tmp_path).close()
    db = sqlite3.connect(tmp_path / "inbox.sqlite")
    db.execute(f"PRAGMA user_version = {inbox.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(DataError, match=r"inbox .* has schema version 3; this node reads up to 2: upgrade"):
        Inbox(tmp_path)
