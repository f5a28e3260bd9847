"""A small neural network (one hidden tanh layer, sigmoid output) trained by FedAvg, pure.

Each round a node computes every record's gradient of the log-loss at the weights it was sent,
clips each to L2 norm `clip`, sums them in fixed point and releases the sum and its row count
with OpenDP's integer Gaussian. Its local model is one gradient step on the noisy mean; Flower's
FedAvg strategy averages the local models weighted by the noisy counts. `hidden: 0` is logistic
regression trained the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import Field

from analyses.glm import ModelSpec, encode, load_model_document
from analyses.step import RoundLike
from privacy.budget import Rho
from privacy.errors import SpecError
from privacy.mechanisms import NoisyVector, integer_gaussian

__all__ = [
    "ExactGradient",
    "GradientRelease",
    "LocalUpdate",
    "TrainState",
    "exact_gradient",
    "gradients",
    "initial_weights",
    "local_update",
    "n_weights",
    "predict",
    "release_gradient",
]

FloatArray = npt.NDArray[np.float64]
FIXED_POINT_UNITS = 1_000_000


class TrainState(RoundLike):
    """What travels with each FedAvg round besides the weights: the run and the round (from 1)."""

    run: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    round: int = Field(ge=1, le=1000)

    def request_id(self) -> str:
        return f"{self.run}-train{self.round}"

    def opens_run(self) -> bool:
        return self.round == 1

    def first_request_id(self) -> str:
        return f"{self.run}-train1"


def n_weights(model: ModelSpec, hidden: int) -> int:
    return n_weights_from(model.dimension(), hidden)


def initial_weights(model: ModelSpec, hidden: int, seed: int = 0) -> FloatArray:
    """Small random weights (zeros for logistic regression), the same for a given seed."""
    if hidden == 0:
        return np.zeros(model.dimension())
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 0.5 / math.sqrt(model.dimension()), n_weights(model, hidden))


def _split(w: FloatArray, p: int, hidden: int) -> tuple[FloatArray, FloatArray, float]:
    first = w[: hidden * p].reshape(hidden, p)
    return first, w[hidden * p : hidden * p + hidden], float(w[-1])


def predict(w: FloatArray, x: FloatArray, hidden: int) -> FloatArray:
    """Probability of the positive class for each row of the encoded `x`."""
    if hidden == 0:
        eta = x @ w
    else:
        first, second, bias = _split(w, x.shape[1], hidden)
        eta = np.tanh(x @ first.T) @ second + bias
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(eta, -30, 30))), dtype=np.float64)


def gradients(w: FloatArray, x: FloatArray, y: FloatArray, hidden: int) -> FloatArray:
    """Each record's gradient of the log-loss (one row per record)."""
    if hidden == 0:
        return np.asarray(x * (predict(w, x, 0) - y)[:, None], dtype=np.float64)
    p = x.shape[1]
    first, second, _ = _split(w, p, hidden)
    h = np.tanh(x @ first.T)  # n x hidden
    residual = 1.0 / (1.0 + np.exp(-np.clip(h @ second + w[-1], -30, 30))) - y  # n
    d_hidden = residual[:, None] * second[None, :] * (1.0 - h**2)  # n x hidden
    d_first = (d_hidden[:, :, None] * x[:, None, :]).reshape(len(x), hidden * p)
    return np.hstack([d_first, residual[:, None] * h, residual[:, None]])


class ExactGradient(NamedTuple):
    """One round's exact, clipped, fixed-point gradient sum and row count, before noise."""

    gradient: npt.NDArray[np.int64]
    gradient_sensitivity: int
    unit: float
    rows: npt.NDArray[np.int64]
    rows_sensitivity: int


def exact_gradient(
    w: FloatArray, x: FloatArray, y: FloatArray, hidden: int, clip: float, max_rows: int
) -> ExactGradient:
    """The sum of per-record gradients clipped to L2 norm `clip`, in fixed point, and the row
    count, with their sensitivities for one person of `max_rows` records.

    Raises:
        SpecError: the weights do not fit the network.
    """
    if not w.shape == (n_weights_from(x.shape[1], hidden),):
        raise SpecError(f"{w.size} weights sent; the network has {n_weights_from(x.shape[1], hidden)}")
    grads = gradients(w, x, y, hidden)
    norms = np.linalg.norm(grads, axis=1)
    clipped = grads * np.minimum(1.0, clip / np.maximum(norms, 1e-300))[:, None]
    unit = clip / FIXED_POINT_UNITS
    quantised = np.rint(clipped / unit).astype(np.int64).sum(axis=0)
    sensitivity = math.ceil(max_rows * (FIXED_POINT_UNITS + 0.5 * math.sqrt(grads.shape[1])))
    return ExactGradient(quantised, sensitivity, unit, np.array([len(y)], dtype=np.int64), max_rows)


class GradientRelease(NamedTuple):
    """A noisy sum of clipped gradients in fixed point, its unit, and the noisy row count."""

    gradient: NoisyVector
    unit: float
    rows: NoisyVector


class LocalUpdate(NamedTuple):
    """A node's model after one local step, and its FedAvg weight (its noisy row count)."""

    weights: FloatArray
    rows: float


def release_gradient(
    w: FloatArray, x: FloatArray, y: FloatArray, hidden: int, clip: float, max_rows: int, budget: Rho
) -> GradientRelease:
    """(noisy sum of clipped per-record gradients in fixed point, its unit, noisy row count).

    Half of `budget` goes to each; `x`, `y` must already be truncated to `max_rows` per person.
    """
    exact = exact_gradient(w, x, y, hidden, clip, max_rows)
    half = budget.split(2)
    return GradientRelease(
        integer_gaussian(exact.gradient, exact.gradient_sensitivity, half),
        exact.unit,
        integer_gaussian(exact.rows, exact.rows_sensitivity, half),
    )


def n_weights_from(p: int, hidden: int) -> int:
    return p if hidden == 0 else hidden * p + hidden + 1


def local_update(
    w: FloatArray, gradient: NoisyVector, unit: float, count: NoisyVector, learning_rate: float
) -> LocalUpdate:
    """The node's local model after one step on the noisy mean gradient, and its FedAvg weight."""
    rows = max(float(count.values[0]), 1.0)
    mean = np.asarray(gradient.values, dtype=np.float64) * unit / rows
    return LocalUpdate(w - learning_rate * mean, rows)


@dataclass(frozen=True)
class SgdModel:
    """A classifier trained by FedAvg: its encoding, shape and weights; saved as JSON."""

    model: ModelSpec
    hidden: int
    weights: tuple[float, ...]
    metadata: dict[str, object]

    def predict(self, frame: pd.DataFrame) -> FloatArray:
        return predict(np.asarray(self.weights), encode(self.model, frame), self.hidden)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": "oda-sgd/1",
                "model": self.model.model_dump(mode="json"),
                "hidden": self.hidden,
                "weights": list(self.weights),
                "metadata": self.metadata,
            },
            indent=2,
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str) -> SgdModel:
        """Raises: SpecError for anything that is not an oda-sgd/1 document (no code is loaded)."""

        def build(data: dict[str, Any]) -> SgdModel:
            model = ModelSpec.model_validate(data["model"])
            hidden = int(data["hidden"])
            weights = tuple(float(w) for w in data["weights"])
            if len(weights) != n_weights(model, hidden):
                raise SpecError(f"{len(weights)} weights for a network that has {n_weights(model, hidden)}")
            return SgdModel(model, hidden, weights, dict(data.get("metadata", {})))

        return load_model_document(text, "oda-sgd/1", build)
