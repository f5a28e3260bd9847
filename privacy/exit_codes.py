"""Exit codes of `oda-node` and `oda`, each with the help text partner IT reads, and the
environment both commands set before Flower is imported.

Both commands map the one error hierarchy (`privacy.errors`) to these codes, so they live
below both sides.
"""

from __future__ import annotations

import os
from enum import IntEnum

from privacy.errors import (
    AccessDenied,
    BudgetExhausted,
    ConfigError,
    DataError,
    FederationError,
    PolicyRefusal,
    ProtocolError,
    SpecError,
    UserError,
)

__all__ = ["EXIT_HELP", "NO_PHONE_HOME", "ExitCode", "code_for", "no_phone_home"]

#: Flower would otherwise send telemetry and check for updates; our processes talk to the
#: federation only.
NO_PHONE_HOME = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def no_phone_home() -> None:
    """Switch Flower's telemetry and update check off in this process (unless set explicitly)."""
    for name, value in NO_PHONE_HOME.items():
        os.environ.setdefault(name, value)


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 10
    SPEC = 11
    DATA = 12
    POLICY = 13
    BUDGET = 14
    PROTOCOL = 15
    FEDERATION = 16
    ACCESS = 17
    INTERRUPTED = 130


EXIT_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "Success.",
    ExitCode.INTERNAL: "Internal error: a bug in oda-federated. Please report it with the log.",
    ExitCode.USAGE: "Wrong command-line usage (see --help), or a request the service cannot do as asked (an unknown run, a finished run cancelled).",
    ExitCode.CONFIG: "The node or coordinator config is invalid; the message lists each problem with its field.",
    ExitCode.SPEC: "The analysis spec is invalid; the message lists each problem with its field.",
    ExitCode.DATA: "A data source is missing, unreadable, outside the data folder, or off its declared columns.",
    ExitCode.POLICY: "The node's local policy refuses the request (dataset not allowed, cost over the per-analysis cap).",
    ExitCode.BUDGET: "The privacy budget of a population is exhausted; the message gives requested, remaining and difference.",
    ExitCode.PROTOCOL: "A peer spoke a protocol version or sent an app bundle this side does not accept.",
    ExitCode.FEDERATION: "The federation could not be started or reached, or no partner released anything.",
    ExitCode.ACCESS: "The analyst service refused the token (unknown, revoked, rate-limited) or its role.",
    ExitCode.INTERRUPTED: "Stopped by the user (Ctrl-C or SIGTERM).",
}


def code_for(exc: BaseException) -> ExitCode:
    """The exit code for an error raised by oda-federated."""
    table: list[tuple[type[BaseException], ExitCode]] = [
        (ConfigError, ExitCode.CONFIG),
        (SpecError, ExitCode.SPEC),
        (DataError, ExitCode.DATA),
        (PolicyRefusal, ExitCode.POLICY),
        (BudgetExhausted, ExitCode.BUDGET),
        (ProtocolError, ExitCode.PROTOCOL),
        (FederationError, ExitCode.FEDERATION),
        (AccessDenied, ExitCode.ACCESS),
        (UserError, ExitCode.USAGE),  # e.g. a run id the service does not know, a finished run cancelled
        (KeyboardInterrupt, ExitCode.INTERRUPTED),
    ]
    return next((code for kind, code in table if isinstance(exc, kind)), ExitCode.INTERNAL)
