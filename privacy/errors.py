"""The one error hierarchy of oda-federated.

It lives in the lowest layer so that every package can raise and catch it::

    OdaError
    ├── UserError                 a person can fix it: the message says how
    │   ├── SpecError             an analysis spec is malformed or meaningless
    │   ├── ConfigError           a node or coordinator config is malformed
    │   ├── DataError             a data source is missing, unreadable or off-contract
    │   ├── PolicyRefusal         the node's local policy forbids the request
    │   │   ├── ApprovalPending   the request waits for a person at the node (approval: manual)
    │   │   └── ApprovalDenied    a person at the node denied the request
    │   ├── BudgetExhausted       the privacy ledger cannot cover the request
    │   ├── ProtocolError         a peer speaks a version or bundle we do not accept
    │   │   └── SignatureError    a blueprint's hash or signature does not verify
    │   ├── FederationError       the federation could not be started or reached
    │   └── AccessDenied          the analyst service refused the token or its role
    └── InternalError             a bug in oda-federated: please report it

Nodes turn every `UserError` into an error reply; nothing is released for any of them.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "ApprovalDenied",
    "ApprovalPending",
    "BudgetExhausted",
    "ConfigError",
    "DataError",
    "FederationError",
    "InternalError",
    "OdaError",
    "PolicyRefusal",
    "ProtocolError",
    "SignatureError",
    "SpecError",
    "UserError",
]


class OdaError(Exception):
    """Root of every error oda-federated raises on purpose."""


class UserError(OdaError):
    """A mistake or refusal a person can act on."""


class SpecError(UserError):
    """An analysis spec is malformed, or meaningless against the data."""


class ConfigError(UserError):
    """A node or coordinator configuration is malformed."""


class DataError(UserError):
    """A data source is missing, unreadable, or does not match its declaration."""


class PolicyRefusal(UserError):
    """The node's local policy does not allow this request."""


class ApprovalPending(PolicyRefusal):
    """The request was filed for a person's approval at the node and no answer came in time."""


class ApprovalDenied(PolicyRefusal):
    """A person at the node denied the request (the reason is in the message)."""


class BudgetExhausted(UserError):
    """The node's privacy ledger cannot cover the requested cost."""


class ProtocolError(UserError):
    """A peer sent a version, bundle or message this side does not accept."""


class SignatureError(ProtocolError):
    """A published blueprint's content hash or publisher signature does not verify."""


class FederationError(UserError):
    """The federation could not be started, reached or completed."""


class AccessDenied(UserError):
    """The analyst service refused the request: no token, a token it does not know (or revoked),
    a role without the permission, or too many failed logins."""


class InternalError(OdaError):
    """An invariant of oda-federated was broken: a bug, not a user mistake."""
