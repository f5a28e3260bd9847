"""The sgd step: a classifier (one hidden tanh layer, or logistic regression with `hidden: 0`)
trained by FedAvg through Flower's strategy.

Each round a node releases its noisy sum of clipped per-record gradients and its noisy row
count (each with half the round's budget) and returns its one-step local model, which FedAvg
averages by those counts. The mathematics is in `analyses.sgd`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from analyses.documents import format_validation_error
from analyses.glm import ModelSpec, design
from analyses.local_data import Exact, FloatArray, LocalData
from analyses.sgd import ExactGradient, TrainState, exact_gradient, n_weights
from analyses.step import PartnerRelease, RoundLike, StepBase
from analyses.tables import Publication, ResultTable
from privacy.errors import InternalError, PolicyRefusal, SpecError
from privacy.unit import PrivacyUnit

__all__ = ["STEPS", "SgdStep"]


class SgdStep(StepBase):
    """A classifier (a one-hidden-layer network; `hidden: 0` is logistic regression) trained by
    FedAvg through Flower's strategy: each round every node releases its noisy sum of clipped
    per-record gradients and its noisy row count, and returns the one-step local model."""

    kind: Literal["sgd"]
    model: ModelSpec
    hidden: int = Field(default=8, ge=0, le=64)
    rounds: int = Field(default=20, ge=1, le=200)
    learning_rate: float = Field(default=1.0, gt=0, le=100)
    clip: float = Field(default=1.0, gt=0, le=100, description="L2 bound on one record's gradient")
    seed: int = Field(default=0, ge=0, description="initial weights")

    flow: ClassVar = "fedavg"
    exclusive: ClassVar = True

    @model_validator(mode="after")
    def _classifier(self) -> SgdStep:
        if self.by:
            raise ValueError("an sgd step has no 'by' keys: put categories in model.features")
        if self.model.family != "logistic":
            raise ValueError("an sgd step trains a classifier: model.family must be logistic")
        return self

    def requests(self) -> int:
        return self.rounds

    def columns(self) -> tuple[str, ...]:
        return (self.model.target, *(f.column for f in self.model.features))

    def numeric_columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.model.features if f.bounds is not None)

    def not_numeric(self, column: str, ctype: str) -> str:
        return f"{column!r} is used as a number but is {ctype}"

    def cells(self) -> int:
        return n_weights(self.model, self.hidden)

    def measurements(self) -> tuple[str, ...]:
        return ("gradient", "count")

    def round_state(self, state: Mapping[str, object] | None, request_id: str) -> RoundLike | None:
        """Raises: SpecError without a valid state; PolicyRefusal for a round past `rounds`."""
        if state is None:
            raise SpecError(f"sgd step {self.id!r} runs in FedAvg rounds: the request carries no round state")
        try:
            train = TrainState.model_validate(state)
        except ValidationError as exc:
            raise SpecError(format_validation_error(f"request {request_id} state", exc)) from exc
        if train.round > self.rounds:
            raise PolicyRefusal(
                f"round {train.round} is past the {self.rounds} rounds of sgd step {self.id!r} that this "
                "node agreed to: nothing was spent"
            )
        return train

    def exact(self, data: LocalData, unit: PrivacyUnit, state: RoundLike | None) -> dict[str, Exact]:
        raise SpecError("an sgd step is trained by FedAvg train messages (`oda run` sends them), not queries")

    def gradient(self, weights: FloatArray, data: LocalData, unit: PrivacyUnit) -> ExactGradient:
        """One round's exact clipped gradient sum and row count on the rows kept for `unit`.

        Raises:
            SpecError: the weights are not this network's, or not finite numbers of at most 1e4.
        """
        expected = n_weights(self.model, self.hidden)
        if weights.shape != (expected,) or not np.all(np.isfinite(weights)) or np.abs(weights).max() > 1e4:
            raise SpecError(f"the weights sent are not {expected} finite numbers of at most 1e4")
        x, y = design(self.model, data.frame.loc[data.keep(unit)])
        return exact_gradient(weights, x, y, self.hidden, self.clip, unit.max_rows)

    def tables(
        self, parts: Sequence[PartnerRelease], combine: str, publication: Publication
    ) -> list[ResultTable]:
        raise InternalError("an sgd step is published by its FedAvg driver, not by combine")

    def summary(self) -> str:
        shape = "logistic regression" if self.hidden == 0 else f"network with {self.hidden} hidden units"
        return f"{shape} for {self.model.target} by FedAvg ({self.rounds} rounds)"


#: The step kinds this module owns (the registry reads it).
STEPS = (SgdStep,)
