"""The FedAvg network's pure parts: per-record gradients, the DP release, the model file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analyses.glm import ModelSpec
from analyses.sgd import (
    SgdModel,
    gradients,
    initial_weights,
    local_update,
    n_weights,
    predict,
    release_gradient,
)
from privacy.budget import Rho
from privacy.errors import SpecError

SPEC = ModelSpec.model_validate(
    {
        "family": "logistic",
        "target": "y",
        "positive": 1,
        "features": [{"column": "a", "bounds": [0, 1]}, {"column": "b", "levels": ["x", "z"]}],
    }
)


def _data(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    x = np.column_stack([np.ones(n), rng.random(n), rng.integers(0, 2, n), rng.integers(0, 2, n)])
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ [-1.0, 2.0, 1.0, -1.0])))).astype(float)
    return x, y


@pytest.mark.parametrize("hidden", [0, 3])
def test_per_record_gradients_match_finite_differences(hidden: int) -> None:
    x, y = _data(5)
    w = initial_weights(SPEC, hidden, seed=1) + 0.1
    assert w.shape == (n_weights(SPEC, hidden),)

    def loss(v: np.ndarray, i: int) -> float:
        p = predict(v, x[i : i + 1], hidden)[0]
        return float(-(y[i] * math.log(p) + (1 - y[i]) * math.log(1 - p)))

    analytic = gradients(w, x, y, hidden)
    for i in range(len(y)):
        numeric = np.array([(loss(w + e, i) - loss(w - e, i)) / 2e-6 for e in np.eye(len(w)) * 1e-6])
        np.testing.assert_allclose(analytic[i], numeric, atol=1e-6)


def test_release_is_clipped_opendp_noise_within_budget() -> None:
    x, y = _data()
    w = initial_weights(SPEC, 3, seed=0)
    gradient, unit, count = release_gradient(w, x, y, 3, 0.5, 2, Rho(0.2))
    assert gradient.cost.value + count.cost.value <= 0.2 + 1e-12
    assert count.sensitivity == 2
    assert gradient.sensitivity == math.ceil(2 * (1_000_000 + 0.5 * math.sqrt(len(w))))
    exact = np.clip(np.linalg.norm(gradients(w, x, y, 3), axis=1), 0, 0.5)
    noisy_norm = np.linalg.norm(np.asarray(gradient.values) * unit)
    assert noisy_norm < exact.sum() + 6 * gradient.scale * unit * math.sqrt(len(w))  # clipped, then noised
    updated, rows = local_update(w, gradient, unit, count, 0.1)
    assert updated.shape == w.shape and abs(rows - len(y)) < 6 * count.scale
    with pytest.raises(SpecError, match="3 weights sent; the network has"):
        release_gradient(w[:3], x, y, 3, 0.5, 1, Rho(0.1))


def test_model_file_round_trips_and_refuses_others() -> None:
    import pandas as pd

    w = initial_weights(SPEC, 3, seed=2)
    model = SgdModel(SPEC, 3, tuple(w), {"rounds": 1})
    frame = pd.DataFrame({"a": [0.1, 0.9], "b": ["x", "z"], "y": [0, 1]})
    again = SgdModel.from_json(model.to_json())
    np.testing.assert_array_equal(again.predict(frame), model.predict(frame))
    with pytest.raises(SpecError, match="not an oda-sgd/1 model"):
        SgdModel.from_json('{"format": "oda-glm/1"}')
    broken = model.to_json().replace('"hidden": 3', '"hidden": 4')
    with pytest.raises(SpecError, match="weights for a network that has"):
        SgdModel.from_json(broken)
