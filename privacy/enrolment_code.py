"""The enrolment code, and what a node signs: one format for both sides.

A code is `oda1.` and the URL-safe base64 of a small JSON object: the coordinator's Fleet address
(`a`), the SHA-256 fingerprint of its CA certificate (`f`), the partner's name (`p`), the expiry
in Unix seconds (`x`) and a one-time secret (`t`). It lives below both sides, as the key files do.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from privacy.errors import ConfigError

__all__ = ["CODE_PREFIX", "EnrolmentCode", "signed_message"]

CODE_PREFIX = "oda1."
_ADDRESS = re.compile(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")
_PARTNER = re.compile(r"[A-Za-z0-9_.-]{1,80}")


def signed_message(purpose: str, when: float, extra: str = "") -> bytes:
    """What a node signs (ECDSA P-384, SHA-384) to `rotate` its key or ask `whoami`."""
    return f"oda-{purpose}\n{when:.3f}\n{extra}".encode()


@dataclass(frozen=True)
class EnrolmentCode:
    """What an enrolment code carries; `str(code)` is the code itself."""

    address: str
    ca_sha256: str
    partner: str
    expires: float
    token: str

    def __str__(self) -> str:
        body = {
            "a": self.address,
            "f": self.ca_sha256,
            "p": self.partner,
            "x": int(self.expires),
            "t": self.token,
        }
        raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return CODE_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, code: str) -> EnrolmentCode:
        """Raises: ConfigError when `code` is not a whole enrolment code (e.g. cut short when pasted)."""
        code = "".join(code.split())
        if not code.startswith(CODE_PREFIX) or len(code) > 2000:
            raise ConfigError(
                f"not an enrolment code (it starts with {CODE_PREFIX!r}): paste the whole code "
                "the coordinator sent (`oda coordinator invite`)"
            )
        raw = code[len(CODE_PREFIX) :]
        try:
            body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            parsed = cls(str(body["a"]), str(body["f"]), str(body["p"]), float(body["x"]), str(body["t"]))
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ConfigError(
                "the enrolment code is damaged (was it cut short when pasted?): ask for it again"
            ) from exc
        if (
            not re.fullmatch(r"[0-9a-f]{64}", parsed.ca_sha256)
            or not _ADDRESS.fullmatch(parsed.address)
            or not _PARTNER.fullmatch(parsed.partner)
            or not 16 <= len(parsed.token) <= 100
        ):
            raise ConfigError("the enrolment code is damaged: ask the coordinator for a new one")
        return parsed
