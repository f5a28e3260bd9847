"""Fitting a model step across the federation: federated Newton rounds, then DP evaluation.

Each round is one request to every node carrying the current coefficients; each node releases
its noisy gradient and Hessian sums (debited from its ledger) and the pure optimiser takes a
Newton step on their total. A node that refuses the first round (policy, or a budget that
cannot cover every round) is left out of the fit from the start; one that drops out later is
reported and the fit continues on the others. The evaluation request releases score histograms,
from which AUC, calibration and confusion counts follow, overall and per partner.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from analyses.aggregate import publication_of
from analyses.glm import (
    GlmModel,
    LocalStats,
    NoisyStats,
    intervals95,
    newton_rounds,
    noise_limited,
)
from analyses.operators.glm import ModelStep, evaluation_rows, evaluation_tables
from analyses.operators.sgd import SgdStep
from analyses.reply import NodeRelease, Refusal
from analyses.sgd import SgdModel, initial_weights
from analyses.spec import AnalysisSpec, LoadedSpec
from analyses.tables import CHECK, ModelCheck, ResultTable, model_check
from coordinator.run.replies import collect, require_holders
from coordinator.run.results import AnalysisResult
from coordinator.run.transport import RunContext, Transport
from privacy.budget import DISPLAY_DELTA, Rho
from privacy.errors import FederationError, InternalError

__all__ = ["run_model", "run_sgd", "score_spec"]


def _stats(step: ModelStep, release: NodeRelease) -> LocalStats:
    m = release.steps[0].measurement("stats")
    return NoisyStats(m.values, m.unit_value, m.scale, m.sensitivity, Rho(m.rho)).decode(
        step.model.dimension()
    )


def run_model(
    loaded: LoadedSpec, transport: Transport, context: RunContext, timeout: float
) -> AnalysisResult:
    """Fit a model step: its Newton rounds, then the evaluation, each request to every node.

    Raises:
        UserError: no partner takes part (typed by the refusals), or every partner drops out.
    """
    spec = loaded.spec
    step = spec.rounds_step()
    if not isinstance(step, ModelStep):
        raise InternalError("run_model needs an analysis whose step is a model")
    run_id = uuid.uuid4().hex
    every_release: list[NodeRelease] = []
    refusals: list[Refusal] = []

    def ask(request_id: str, state: dict[str, object]) -> list[NodeRelease]:
        request = context.request(request_id, loaded.text, state)
        replies = transport.broadcast(request, timeout, context.watch)
        collected = collect(spec, replies, request_id)
        refusals.extend(collected.refusals)
        every_release.extend(collected.releases)
        return require_holders(spec, collected, len(replies))

    rounds = newton_rounds(step.model)
    beta = next(rounds)
    partners: set[str] | None = None
    last: list[LocalStats] = []
    index = 0
    while True:
        state = {"run": run_id, "phase": "fit", "round": index, "coefficients": beta.tolist()}
        holders = ask(f"{run_id}-fit{index}", state)
        if partners is None:
            partners = {r.partner for r in holders}  # the fit is over those who took round 0
        holders = [r for r in holders if r.partner in partners]
        if not holders:
            raise FederationError(f"every partner of {spec.name!r} dropped out at round {index}")
        last = [_stats(step, r) for r in holders]
        try:
            beta = rounds.send(last)
        except StopIteration as done:
            beta = np.asarray(done.value)
            break
        index += 1
    evaluation = [
        r
        for r in ask(
            f"{run_id}-evaluate",
            {"run": run_id, "phase": "evaluate", "round": 0, "coefficients": beta.tolist()},
        )
        if partners is None or r.partner in partners
    ]
    hessian = np.sum([s.hessian for s in last], axis=0)
    noise_sd = math.sqrt(sum(s.noise_sd**2 for s in last))
    half = intervals95(step.model, hessian, noise_sd)
    limited = noise_limited(step.model, hessian, noise_sd)
    scores = {r.partner: r.steps[0].measurement("scores") for r in evaluation}
    rows, rows_sd = evaluation_rows(step.model, step.evaluate_bins, scores)
    publication = publication_of(spec, [r.min_cell for r in evaluation])
    check = model_check(publication, rows, rows_sd, step.model.dimension())
    tables = [
        _coefficients(step, beta, half, limited, check),
        *_reviewed(evaluation_tables(step.model, step.evaluate_bins, scores), publication.threshold > 0),
    ]
    spent = _spent(every_release)
    model = GlmModel(
        step.model,
        tuple(float(b) for b in beta),
        tuple(float(h) for h in half),
        {
            "analysis": spec.name,
            "spec_hash": spec.spec_hash(),
            "partners": sorted(partners or ()),
            "rounds": step.model.rounds,
            "rho_spent_per_partner": spent,
            "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    if check.outcome != "pass":
        return AnalysisResult(loaded, run_id, tables, every_release, refusals, model_check=check)
    result = AnalysisResult(loaded, run_id, tables, every_release, refusals, model=model, model_check=check)
    result.model_card = model_card(spec, step, model, tables, spent)
    return result


def run_sgd(loaded: LoadedSpec, transport: Transport, context: RunContext, timeout: float) -> AnalysisResult:
    """Train an sgd step by FedAvg through the transport (Flower's strategy over Flower).

    Raises:
        UserError: no partner trained (typed by the refusals).
    """
    spec = loaded.spec
    step = spec.rounds_step()
    if not isinstance(step, SgdStep):
        raise InternalError("run_sgd needs an analysis whose step is an sgd step")
    run_id = uuid.uuid4().hex
    request = context.request(run_id, loaded.text, {"run": run_id})
    initial = initial_weights(step.model, step.hidden, step.seed)
    trained = transport.fedavg(request, initial, step.rounds, timeout, context.watch)
    collected = collect(spec, trained.replies)
    require_holders(spec, collected, len(trained.replies))
    weights, releases, refusals = trained.weights, collected.releases, collected.refusals
    spent = _spent(releases)
    per_round: dict[str, int] = {}
    for release in releases:
        round_name = release.request_id.rsplit("-", 1)[-1]
        per_round[round_name] = per_round.get(round_name, 0) + 1
    last = (
        [r for r in releases if r.request_id.rsplit("-", 1)[-1] == list(per_round)[-1]] if per_round else []
    )
    counts = [r.steps[0].measurement("count") for r in last]
    check = model_check(
        publication_of(spec, [r.min_cell for r in last]),
        sum(float(sum(m.values)) * m.unit_value for m in counts),
        math.sqrt(sum((m.scale * m.unit_value) ** 2 for m in counts)),
        len(weights),
    )
    table = ResultTable(
        "training",
        pd.DataFrame({"round": list(per_round), "partners": list(per_round.values()), CHECK: check.outcome}),
        (
            f"FedAvg over {step.rounds} rounds; each partner spent: "
            + ", ".join(f"{p} rho {v:.4g}" for p, v in spent.items()),
            check.note() + " (rows: the last round's noisy counts)",
        ),
    )
    model = SgdModel(
        step.model,
        step.hidden,
        tuple(float(w) for w in weights),
        {
            "analysis": spec.name,
            "spec_hash": spec.spec_hash(),
            "rho_spent_per_partner": spent,
            "rounds": step.rounds,
        },
    )
    if check.outcome != "pass":
        return AnalysisResult(loaded, run_id, [table], releases, refusals, model_check=check)
    result = AnalysisResult(loaded, run_id, [table], releases, refusals, model=model, model_check=check)
    result.model_card = (
        f"# Model card: {spec.name}\n\nA {'logistic regression' if step.hidden == 0 else f'network with {step.hidden} hidden units'} "
        f"for `{step.model.target}` = {step.model.positive!r}, trained by FedAvg (Flower) over {step.rounds} rounds; "
        f"per-record gradients clipped to {step.clip:g} and noised at each node by OpenDP.\n\n"
        "Privacy spent per partner: " + ", ".join(f"{p} rho {v:.4g}" for p, v in spent.items()) + "\n"
    )
    return result


def _spent(releases: Sequence[NodeRelease]) -> dict[str, float]:
    spent: dict[str, float] = {}
    for r in releases:
        spent[r.partner] = spent.get(r.partner, 0.0) + r.cost_rho
    return {p: round(v, 12) for p, v in sorted(spent.items())}


def _reviewed(tables: list[ResultTable], threshold: bool) -> list[ResultTable]:
    """A model's evaluation tables with their check column: under a people threshold each row is
    marked `review` (its counts come from score histograms, whose small bins a person checks)."""
    out = []
    for table in tables:
        frame = table.frame.assign(**{CHECK: "review" if threshold else "pass"})
        notes = (
            (*table.notes, "rows are marked review: a person checks that no score bin is a small group")
            if threshold
            else table.notes
        )
        out.append(ResultTable(table.name, frame, notes))
    return out


def _coefficients(
    step: ModelStep, beta: np.ndarray, half: np.ndarray, limited: np.ndarray, check: ModelCheck
) -> ResultTable:
    """The coefficients table; a model that fails its residual degrees of freedom check has
    its estimates and intervals suppressed."""
    hidden = np.full(len(beta), np.nan) if check.outcome != "pass" else None
    frame = pd.DataFrame(
        {
            "term": step.model.names(),
            "estimate": beta if hidden is None else hidden,
            "ci95_low": beta - half if hidden is None else hidden,
            "ci95_high": beta + half if hidden is None else hidden,
            "noise_limited": limited > 0.5 if hidden is None else [None] * len(beta),
            CHECK: check.outcome,
        }
    )
    notes = (
        "numeric features are clamped to their bounds and scaled to [0, 1]: a coefficient is the "
        "change in the linear predictor from the lower bound to the upper",
        "95% intervals include the sampling variance and the DP noise of the last round",
        "noise_limited: the data hold less information on this term than the DP noise; its "
        "estimate is shrunk towards 0 and its interval is optimistic (more budget or rows help)",
        check.note(),
    )
    return ResultTable("coefficients", frame, notes)


def model_card(
    spec: AnalysisSpec, step: ModelStep, model: GlmModel, tables: list[ResultTable], spent: dict[str, float]
) -> str:
    partners = list(spent)
    """A short Markdown card: what the model is, on whose data, at what privacy cost, how good."""
    budget = spec.step_budget(step.id)
    m = step.model
    lines = [
        f"# Model card: {spec.name}",
        "",
        spec.description.strip() or f"A {m.family} regression of `{m.target}`.",
        "",
        f"- Family: {m.family}; target `{m.target}`"
        + (f" (1 = {m.positive!r})" if m.positive is not None else ""),
        f"- Features: {', '.join(f.column for f in m.features)} ({m.dimension()} terms with the intercept)",
        f"- Fitted by federated Newton: {m.rounds} rounds, then one evaluation release",
        f"- Partners: {', '.join(partners)}",
        f"- Privacy: {budget.describe()} per partner for the whole model "
        f"(epsilon {budget.epsilon(DISPLAY_DELTA):.3g} at delta {DISPLAY_DELTA:g}); spent: "
        + ", ".join(f"{p} rho {v:.4g}" for p, v in spent.items()),
        f"- Privacy unit: {spec.privacy.unit.identifier}, at most {spec.privacy.unit.max_rows} records each",
        f"- Spec hash: {spec.spec_hash()}",
        "",
        "## Coefficients (95% intervals include the DP noise)",
        "",
        "| term | estimate | 95% interval |",
        "|---|---:|---|",
    ]
    for name, b, h in zip(m.names(), model.coefficients, model.interval95, strict=True):
        lines.append(f"| {name} | {b:.4f} | [{b - h:.4f}, {b + h:.4f}] |")
    evaluation = next((t for t in tables if t.name == "evaluation"), None)
    if evaluation is not None:
        frame = evaluation.frame
        lines += ["", "## Evaluation (from DP releases)", "", "| " + " | ".join(frame.columns) + " |"]
        lines.append("|" + "---|" * len(frame.columns))
        for row in frame.itertuples(index=False):
            lines.append(
                "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
            )
    return "\n".join(lines) + "\n"


def score_spec(
    model: GlmModel, name: str, dataset: str, rho: float, identifier: str, max_rows: int, kind: str = "score"
) -> str:
    """The analysis spec that scores every record at each node with `model` (scores stay local),
    or with `kind="evaluate"` evaluates it against each node's true outcomes."""
    import yaml

    document = {
        "version": 1,
        "name": name,
        "description": f"Local risk scores from model {model.metadata.get('analysis', '')!s}; "
        "each partner keeps its scores, only a DP histogram of them is published.",
        "dataset": dataset,
        "privacy": {"rho": rho, "unit": {"identifier": identifier, "max_rows": max_rows}},
        "steps": [
            {
                "kind": kind,
                "id": "scores" if kind == "score" else "holdout",
                "model": model.spec.model_dump(mode="json", exclude_defaults=True),
                "coefficients": [float(c) for c in model.coefficients],
            }
        ],
    }
    return str(yaml.safe_dump(document, sort_keys=False))
