"""Pure privacy layer: budgets, privacy units, OpenDP mechanisms, accuracy, disclosure rules."""

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
