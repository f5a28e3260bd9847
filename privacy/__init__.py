"""Pure privacy layer: budgets, privacy units, OpenDP mechanisms, accuracy, disclosure rules.

Names are imported on first use, so `from privacy.errors import ...` in a command-line tool does
not pay for importing OpenDP (about 2 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privacy.accuracy import (
        Z95,
        discrete_gaussian_variance,
        gaussian_accuracy95,
        integer_noise_accuracy95,
        pooled_accuracy95,
        ratio_accuracy95,
    )
    from privacy.budget import (
        DISPLAY_DELTA,
        Rho,
        exact_total,
        fits,
        rho_at_least,
        rho_from_epsilon_delta,
        shares,
    )
    from privacy.disclosure import round_to, suppress_small
    from privacy.errors import (
        ApprovalDenied,
        ApprovalPending,
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
        MAX_SCALE,
        MAX_SENSITIVITY,
        MECHANISM_INTEGER_GAUSSIAN,
        NoisyVector,
        calibrate_scale,
        integer_gaussian,
        integer_gaussian_samples,
    )
    from privacy.unit import MAX_ROWS_LIMIT, PrivacyUnit, contribution_mask, truncate_contributions

_HOME = {
    **dict.fromkeys(
        [
            "Z95",
            "discrete_gaussian_variance",
            "gaussian_accuracy95",
            "integer_noise_accuracy95",
            "pooled_accuracy95",
            "ratio_accuracy95",
        ],
        "accuracy",
    ),
    **dict.fromkeys(
        ["DISPLAY_DELTA", "Rho", "exact_total", "fits", "rho_at_least", "rho_from_epsilon_delta", "shares"],
        "budget",
    ),
    **dict.fromkeys(["round_to", "suppress_small"], "disclosure"),
    **dict.fromkeys(
        [
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
        ],
        "errors",
    ),
    **dict.fromkeys(
        [
            "MAX_SCALE",
            "MAX_SENSITIVITY",
            "MECHANISM_INTEGER_GAUSSIAN",
            "NoisyVector",
            "calibrate_scale",
            "integer_gaussian",
            "integer_gaussian_samples",
        ],
        "mechanisms",
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
    "MAX_SCALE",
    "MAX_SENSITIVITY",
    "MECHANISM_INTEGER_GAUSSIAN",
    "Z95",
    "ApprovalDenied",
    "ApprovalPending",
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
    "discrete_gaussian_variance",
    "exact_total",
    "fits",
    "gaussian_accuracy95",
    "integer_gaussian",
    "integer_gaussian_samples",
    "integer_noise_accuracy95",
    "pooled_accuracy95",
    "ratio_accuracy95",
    "rho_at_least",
    "rho_from_epsilon_delta",
    "round_to",
    "shares",
    "suppress_small",
    "truncate_contributions",
]
