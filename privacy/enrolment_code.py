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

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from privacy.errors import ConfigError

__all__ = [
    "CA_PATH",
    "CODE_PREFIX",
    "DIST_PATH",
    "ENROL_PATH",
    "PARTNER_NAME",
    "ROTATE_PATH",
    "WHOAMI_PATH",
    "EnrolmentCode",
    "ca_fingerprint",
    "signed_message",
]

CODE_PREFIX = "oda1."
_ADDRESS = re.compile(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")
#: What a partner's name may be (as node.yaml's `partner:`).
PARTNER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}")
#: The coordinator's enrolment endpoints on its public port (the Fleet proxy serves them).
ENROL_PATH = "/v1/oda/enrol"
ROTATE_PATH = "/v1/oda/rotate"
WHOAMI_PATH = "/v1/oda/whoami"
CA_PATH = "/v1/oda/ca.crt"
DIST_PATH = "/v1/oda/dist"


def ca_fingerprint(pem: bytes) -> str:
    """SHA-256 of the (first) certificate's DER encoding, in hex: what a code pins.

    Raises:
        ValueError: `pem` holds no PEM certificate.
    """
    return x509.load_pem_x509_certificates(pem)[0].fingerprint(hashes.SHA256()).hex()


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
            or not PARTNER_NAME.fullmatch(parsed.partner)
            or not 16 <= len(parsed.token) <= 100
        ):
            raise ConfigError("the enrolment code is damaged: ask the coordinator for a new one")
        return parsed
