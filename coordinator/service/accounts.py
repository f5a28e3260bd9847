"""Analysts' accounts: tokens, roles, and what each role may do.

A token is `oda_<id>_<secret>`: `id` finds the account, `secret` (32 random bytes) proves it.
Only `sha256(salt + secret)` is stored; the secret is printed once by `oda coordinator user add`.
A slow password hash is not needed because the secret is random, not chosen by a person; the
comparison is constant-time. Failed logins are limited per client address (`LoginLimiter`).

Roles:

    admin     users and nodes, and everything an analyst and a reviewer can do
    analyst   submit runs, cancel its own, read its own runs and results (and the reviews of
              their outputs)
    reviewer  read every run and result, and approve, reject or ask for changes to each output
              of a run they did not submit (output checking, `coordinator.service.review`)
    reader    the blueprint catalogue and published (approved) outputs only

Every role reads published outputs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque
from typing import Literal, NamedTuple

from coordinator.service.store import ROLES, Role, RunRow, RunStore, UserRow
from privacy.errors import ConfigError

__all__ = [
    "USER_NAME",
    "Account",
    "IssuedToken",
    "LoginLimiter",
    "Permission",
    "add_user",
    "allowed",
    "authenticate",
    "may_read_run",
]

USER_NAME = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_TOKEN = re.compile(r"oda_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")

Permission = Literal[
    "submit", "read_runs", "read_all_runs", "cancel_any", "admin", "catalogue", "review", "published"
]
_GRANTS: dict[Role, frozenset[Permission]] = {
    "admin": frozenset(
        {"submit", "read_runs", "read_all_runs", "cancel_any", "admin", "catalogue", "review", "published"}
    ),
    "analyst": frozenset({"submit", "read_runs", "catalogue", "published"}),
    "reviewer": frozenset({"read_runs", "read_all_runs", "catalogue", "review", "published"}),
    "reader": frozenset({"catalogue", "published"}),
}


class Account(NamedTuple):
    """Who made a request, once authenticated."""

    name: str
    role: Role


class IssuedToken(NamedTuple):
    """A new account and its token (shown once, never stored)."""

    account: Account
    token: str


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def add_user(store: RunStore, name: str, role: str) -> IssuedToken:
    """Create an account and its token.

    Raises:
        ConfigError: a bad name or role, or the name is taken.
    """
    if not USER_NAME.fullmatch(name):
        raise ConfigError(
            f"user name {name!r}: use 1 to 64 lower-case letters, digits, '.', '_' or '-', starting with a letter"
        )
    if role not in ROLES:
        raise ConfigError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    token_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_hex(16)
    store.add_user(
        UserRow(
            name=name,
            role=role,
            token_id=token_id,
            salt=salt,
            token_hash=_digest(salt, secret),
            created_at=time.time(),
        )
    )
    return IssuedToken(Account(name, role), f"oda_{token_id}_{secret}")  # checked above


def authenticate(store: RunStore, token: str) -> Account | None:
    """The account a bearer token belongs to, or None (malformed, unknown, wrong or revoked)."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    user = store.user_by_token_id(match.group(1))
    if user is None or user.revoked_at is not None:
        return None
    if not hmac.compare_digest(_digest(user.salt, match.group(2)), user.token_hash):
        return None
    return Account(user.name, user.role)  # type: ignore[arg-type]  # the store only holds ROLES


def allowed(account: Account, permission: Permission) -> bool:
    return permission in _GRANTS[account.role]


def may_read_run(account: Account, run: RunRow) -> bool:
    """Analysts read their own runs; reviewers and admins read every run."""
    return allowed(account, "read_all_runs") or (allowed(account, "read_runs") and run.owner == account.name)


class LoginLimiter:
    """At most `limit` failed logins per client address in `window` seconds; beyond it the
    address is refused (429) until the window has passed, whatever token it sends."""

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] < now - self.window:
            failures.popleft()
        return failures

    def blocked(self, client: str) -> float:
        """Seconds `client` must wait, or 0."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(client, now)
            if len(failures) < self.limit:
                return 0.0
            return max(0.0, failures[0] + self.window - now)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(client, now).append(now)
            if len(self._failures) > 10_000:  # an address sweep must not grow this without bound
                stale = [c for c, f in self._failures.items() if not f or f[-1] < now - self.window]
                for c in stale:
                    del self._failures[c]
