"""Pure privacy layer: budgets, privacy units, OpenDP mechanisms, accuracy, disclosure rules.

Names are imported on first use, so `from privacy.errors import ...` in a command-line tool does
not pay for importing OpenDP (about 2 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privacy.accuracy import gaussian_accuracy95, pooled_accuracy95, ratio_accuracy95
    from privacy.budget import DISPLAY_DELTA, Rho, rho_from_epsilon_delta
    from privacy.disclosure import round_to, suppress_small
    from privacy.errors import (
        BudgetExhausted,
        ConfigError,
        DataError,
        FederationError,
        InternalError,
        OdaError,
        PolicyRefusal,
        ProtocolError,
        SignatureError,
        SpecError,
        UserError,
    )
    from privacy.mechanisms import (
        MECHANISM_INTEGER_GAUSSIAN,
        NoisyVector,
        calibrate_scale,
        integer_gaussian,
    )
    from privacy.unit import MAX_ROWS_LIMIT, PrivacyUnit, contribution_mask, truncate_contributions

_HOME = {
    **dict.fromkeys(["gaussian_accuracy95", "pooled_accuracy95", "ratio_accuracy95"], "accuracy"),
    **dict.fromkeys(["DISPLAY_DELTA", "Rho", "rho_from_epsilon_delta"], "budget"),
    **dict.fromkeys(["round_to", "suppress_small"], "disclosure"),
    **dict.fromkeys(
        [
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
        ],
        "errors",
    ),
    **dict.fromkeys(
        ["MECHANISM_INTEGER_GAUSSIAN", "NoisyVector", "calibrate_scale", "integer_gaussian"], "mechanisms"
    ),
    **dict.fromkeys(["MAX_ROWS_LIMIT", "PrivacyUnit", "contribution_mask", "truncate_contributions"], "unit"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'privacy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"privacy.{home}"), name)


__all__ = [
    "DISPLAY_DELTA",
    "MAX_ROWS_LIMIT",
    "MECHANISM_INTEGER_GAUSSIAN",
    "BudgetExhausted",
    "ConfigError",
    "DataError",
    "FederationError",
    "InternalError",
    "NoisyVector",
    "OdaError",
    "PolicyRefusal",
    "PrivacyUnit",
    "ProtocolError",
    "Rho",
    "SignatureError",
    "SpecError",
    "UserError",
    "calibrate_scale",
    "contribution_mask",
    "gaussian_accuracy95",
    "integer_gaussian",
    "pooled_accuracy95",
    "ratio_accuracy95",
    "rho_from_epsilon_delta",
    "round_to",
    "suppress_small",
    "truncate_contributions",
]
