"""Empirical privacy audit of every release kind: the claimed privacy loss is an upper bound of
the loss measured on neighbouring datasets (see `privacy_audit`).

For each kind, D is a small seeded dataset and D' adds one person whose rows are placed to move
the release as far as the privacy unit allows (all in one cell, at the farthest value). The
exact vectors, sensitivities and budgets come from the node's own local step; the draws come
from the OpenDP measurement it calls. `ODA_AUDIT_SAMPLES` (default 10,000 per dataset) sets the
draws; a longer profile by hand: `ODA_AUDIT_SAMPLES=40000 ./dev test tests/adversarial`.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from analyses.documents import parse_document
from analyses.glm import RoundState, design
from analyses.local_data import LocalData
from analyses.local_step import plan_releases
from analyses.operators.sgd import SgdStep
from analyses.sgd import exact_gradient
from analyses.spec import AnalysisSpec
from privacy.budget import Rho
from tests.adversarial.privacy_audit import audit_release

SAMPLES = int(os.environ.get("ODA_AUDIT_SAMPLES", "10000"))
MAX_ROWS = 3
VICTIM = 10_000

MODEL = "{family: %s, target: %s, %s features: [{column: x, bounds: [0, 1]}, {column: area, levels: [a]}]}"
LOGISTIC = MODEL % ("logistic", "label", "positive: yes,")
LINEAR = MODEL % ("linear", "v", "target_bounds: [0, 10], clip: 3.0,")
POISSON = MODEL % ("poisson", "v", "target_bounds: [0, 10], clip: 3.0,")

KINDS = {
    "count": ("{kind: count, id: s, by: [{column: area, values: [a, b]}]}", 2.0),
    "sum": ("{kind: sum, id: s, column: v, bounds: [0, 10], by: [{column: area, values: [a, b]}]}", 4.0),
    "mean": ("{kind: mean, id: s, column: v, bounds: [0, 10], by: [{column: area, values: [a, b]}]}", 4.0),
    "histogram": ("{kind: histogram, id: s, column: v, edges: [0, 2.5, 5, 7.5, 10.5]}", 2.0),
    "quantile": ("{kind: quantile, id: s, column: v, bounds: [0, 10], bins: 8, quantiles: [0.5]}", 2.0),
    "glm_stats": (
        "{{kind: model, id: s, model: {}}}".format(LOGISTIC.replace("features", "rounds: 1, features")),
        4.0,
    ),
    "evaluate_logistic": (
        f"{{kind: evaluate, id: s, bins: 4, coefficients: [0.1, 0.5, -0.2], model: {LOGISTIC}}}",
        2.0,
    ),
    "evaluate_linear": (
        f"{{kind: evaluate, id: s, bins: 4, coefficients: [1, 2, 0.5], model: {LINEAR}}}",
        2.0,
    ),
    "evaluate_poisson": (
        f"{{kind: evaluate, id: s, bins: 4, coefficients: [0.5, 1, 0.2], model: {POISSON}}}",
        2.0,
    ),
    "score": (f"{{kind: score, id: s, bins: 4, coefficients: [0.1, 0.5, -0.2], model: {LOGISTIC}}}", 2.0),
}

SPEC = """
version: 1
name: audit
dataset: d
privacy: {{rho: {rho}, unit: {{identifier: pid, max_rows: {max_rows}}}}}
steps:
  - {step}
"""


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """D, and D' = D plus one person with MAX_ROWS rows at the extremes, all in one cell."""
    rng = np.random.default_rng(11)
    n = 300
    d = pd.DataFrame(
        {
            "pid": np.arange(n) // 2,
            "area": rng.choice(["a", "b"], n),
            "v": rng.uniform(0, 10, n),
            "x": rng.uniform(0, 1, n),
            "label": rng.choice(["yes", "no"], n),
        }
    )
    victim = pd.DataFrame(
        {
            "pid": [VICTIM] * MAX_ROWS,
            "area": ["a"] * MAX_ROWS,
            "v": [10.0] * MAX_ROWS,
            "x": [1.0] * MAX_ROWS,
            "label": ["yes"] * MAX_ROWS,
        }
    )
    return d, pd.concat([d, victim], ignore_index=True)


def _planned(kind: str, frame: pd.DataFrame) -> list[tuple[str, np.ndarray, int, Rho]]:
    step_text, rho = KINDS[kind]
    spec = parse_document(SPEC.format(rho=rho, max_rows=MAX_ROWS, step=step_text), AnalysisSpec, source=kind)
    state = None
    if kind == "glm_stats":
        state = RoundState(run="audit", phase="fit", round=0, coefficients=(0.0, 0.0, 0.0))
    return [
        (p.name, p.exact.vector, p.exact.sensitivity, p.budget)
        for p in plan_releases(spec, list(spec.steps), {"d": LocalData(frame)}, state)
    ]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_claimed_privacy_loss_bounds_the_measured_loss(kind: str) -> None:
    d, neighbour = _frames()
    for (name, x, sensitivity, budget), (_, y, _, _) in zip(
        _planned(kind, d), _planned(kind, neighbour), strict=True
    ):
        audit = audit_release(x, y, sensitivity, budget, SAMPLES)
        claimed, measured = audit.epsilons()
        assert audit.shift <= sensitivity, (kind, name, audit)
        assert audit.measured_rho <= audit.claimed_rho, (
            f"{kind}/{name}: measured epsilon {measured:.3g} exceeds the claimed {claimed:.3g} "
            f"(shift {audit.shift:.4g}, claimed sensitivity {sensitivity})"
        )
        assert audit.shift > 0, f"{kind}/{name}: the neighbour must move the release"


@pytest.mark.parametrize("measurement", ["gradient", "rows"])
def test_sgd_gradient_and_row_count_claims_bound_the_measured_loss(measurement: str) -> None:
    spec = parse_document(
        SPEC.format(
            rho=4.0, max_rows=MAX_ROWS, step=f"{{kind: sgd, id: s, hidden: 0, clip: 1.0, model: {LOGISTIC}}}"
        ),
        AnalysisSpec,
        source="sgd",
    )
    step = spec.steps[0]
    assert isinstance(step, SgdStep)
    d, neighbour = _frames()
    weights = np.array([0.3, -1.0, 0.5])
    made = []
    for frame in (d, neighbour):
        x, y = design(step.model, frame)
        made.append(exact_gradient(weights, x, y, 0, step.clip, MAX_ROWS))
    budget = spec.request_budget(step.id).split(2)
    if measurement == "gradient":
        audit = audit_release(
            made[0].gradient, made[1].gradient, made[0].gradient_sensitivity, budget, SAMPLES
        )
    else:
        audit = audit_release(made[0].rows, made[1].rows, made[0].rows_sensitivity, budget, SAMPLES)
    assert 0 < audit.shift <= audit.sensitivity
    assert audit.measured_rho <= audit.claimed_rho, audit


def test_the_audit_catches_a_sensitivity_understated_by_sqrt2() -> None:
    """The bug it found: linear and Poisson evaluations claimed max_rows where a person moves
    the release by sqrt(2) max_rows. Claiming the old figure must fail the audit."""
    d, neighbour = _frames()
    (_, x, honest, budget), (_, y, _, _) = (
        _planned("evaluate_linear", d)[0],
        _planned("evaluate_linear", neighbour)[0],
    )
    old_claim = MAX_ROWS
    assert honest == math.ceil(MAX_ROWS * math.sqrt(2))
    audit = audit_release(x, y, old_claim, budget, SAMPLES)
    assert audit.measured_rho > audit.claimed_rho, audit
