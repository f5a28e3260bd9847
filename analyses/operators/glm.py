"""GLM steps: fit a model by federated Newton (`model`), score records with a fitted one
(`score`), evaluate a fitted one against each node's true outcomes (`evaluate`).

The mathematics lives in `analyses.glm`; this module is the steps' contract:

- model: runs in rounds the coordinator drives (each request carries a `RoundState`); a fit
  round releases the clipped, fixed-point gradient and Hessian sums (`exact_stats`), the last
  request the evaluation histograms. The step's budget covers every round in equal shares.
- score: every record scored at the node into a local file, only a DP histogram released.
- evaluate: DP score histograms by true class (AUC, calibration, confusion counts) or, for
  linear and Poisson models, of absolute errors and of values (sensitivity sqrt(2) a record).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError, model_validator

from analyses.documents import format_validation_error
from analyses.glm import (
    ModelSpec,
    RoundState,
    auc_from_histograms,
    design,
    encode,
    evaluation_histograms,
    evaluation_sensitivity,
    exact_stats,
    mean_response,
    score_counts,
    score_edges,
)
from analyses.local_data import Exact, FloatArray, LocalData
from analyses.reply import MeasurementRelease, StepRelease
from analyses.step import PartnerRelease, RoundLike, StepBase
from analyses.tables import Publication, Published, ResultTable
from privacy.errors import InternalError, SpecError
from privacy.unit import PrivacyUnit

__all__ = ["STEPS", "EvaluateStep", "ModelStep", "ScoreStep", "evaluation_tables"]


class _ModelBase(StepBase):
    """A step on a model's encoded features."""

    model: ModelSpec

    @model_validator(mode="after")
    def _no_keys(self) -> _ModelBase:
        if self.by:
            article = "an" if self.kind[0] in "aeiou" else "a"
            raise ValueError(f"{article} {self.kind} step has no 'by' keys: put categories in model.features")
        return self

    def numeric_columns(self) -> tuple[str, ...]:
        numeric = [f.column for f in self.model.features if f.bounds is not None]
        if self.model.family != "logistic" and self.model.target in self.columns():
            numeric.append(self.model.target)
        return tuple(numeric)

    def not_numeric(self, column: str, ctype: str) -> str:
        return f"{column!r} is used as a number but is {ctype}"


class ModelStep(_ModelBase):
    """A GLM fitted by federated Newton: `model.rounds` releases of gradient and Hessian sums,
    then one release of score histograms for evaluation. The step's budget covers all of them,
    in equal shares, and a node refuses before the first round if it cannot afford them all."""

    kind: Literal["model"]
    evaluate_bins: int = Field(
        default=40, ge=2, le=1000, description="score bins (equal on the logit scale) for AUC and calibration"
    )

    flow: ClassVar = "rounds"
    exclusive: ClassVar = True

    def requests(self) -> int:
        """How many releases a node makes for this step: every Newton round, and the evaluation."""
        return self.model.rounds + 1

    def columns(self) -> tuple[str, ...]:
        return (self.model.target, *(f.column for f in self.model.features))

    def cells(self) -> int:
        p = self.model.dimension()
        return max(p + p * (p + 1) // 2, 2 * self.evaluate_bins)

    def measurements(self) -> tuple[str, ...]:
        return ("stats",)

    def round_state(self, state: Mapping[str, object] | None, request_id: str) -> RoundLike | None:
        if state is None:
            raise SpecError(f"model step {self.id!r} runs in rounds: the request carries no round state")
        try:
            return RoundState.model_validate(state).check(self.model)
        except ValidationError as exc:
            raise SpecError(format_validation_error(f"request {request_id} state", exc)) from exc

    def exact(self, data: LocalData, unit: PrivacyUnit, state: RoundLike | None) -> dict[str, Exact]:
        if not isinstance(state, RoundState):
            raise SpecError(f"model step {self.id!r} runs in rounds: the request carries no round state")
        x, y = design(self.model, data.frame.loc[data.keep(unit)])
        beta = np.asarray(state.coefficients, dtype=np.float64)
        if state.phase == "fit":
            vector, sensitivity, unit_value = exact_stats(self.model, x, y, beta, unit.max_rows)
            return {"stats": Exact(vector, sensitivity, unit_value)}
        histograms = evaluation_histograms(self.model, x, y, beta, self.evaluate_bins)
        return {"scores": Exact(histograms, evaluation_sensitivity(self.model, unit.max_rows))}

    def tables(
        self, parts: Sequence[PartnerRelease], combine: str, publication: Publication
    ) -> list[ResultTable]:
        raise InternalError("a model step is published by its rounds' driver, not by combine")

    def summary(self) -> str:
        m = self.model
        return (
            f"{m.family} model of {m.target} on {', '.join(f.column for f in m.features)} "
            f"({m.rounds} rounds + evaluation)"
        )


class _FittedModelStep(_ModelBase):
    """A step that applies a fitted model (its spec and coefficients) to each node's records."""

    coefficients: tuple[float, ...] = Field(min_length=1, max_length=2000)
    bins: int = Field(default=40, ge=2, le=1000)

    @model_validator(mode="after")
    def _fits(self) -> _FittedModelStep:
        if len(self.coefficients) != self.model.dimension():
            raise ValueError(
                f"{len(self.coefficients)} coefficients for a model with {self.model.dimension()} terms "
                f"({', '.join(self.model.names())})"
            )
        if not all(math.isfinite(c) for c in self.coefficients):
            raise ValueError("coefficients must be finite")
        return self

    def scores(self, frame: pd.DataFrame) -> FloatArray:
        """The fitted model's mean response for every record of `frame`."""
        return mean_response(self.model, encode(self.model, frame), np.asarray(self.coefficients))


class ScoreStep(_FittedModelStep):
    """Scores every record at each node with a fitted model. The scores stay at the node (a
    local file next to its ledger); only a DP histogram of them, in `bins` bins equal on the
    logit scale, leaves."""

    kind: Literal["score"]

    keeps_local_output: ClassVar = True

    def columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.model.features)

    def key_columns(self) -> tuple[str, ...]:
        return ("score_from", "score_to")

    def key_frame(self) -> pd.DataFrame:
        edges = score_edges(self.bins)
        return pd.DataFrame({"score_from": edges[:-1], "score_to": edges[1:]})

    def cells(self) -> int:
        return self.bins

    def measurements(self) -> tuple[str, ...]:
        return ("count",)

    def exact(self, data: LocalData, unit: PrivacyUnit, state: RoundLike | None) -> dict[str, Exact]:
        scores = self.scores(data.frame.loc[data.keep(unit)])
        return {"count": Exact(score_counts(scores, self.bins), unit.max_rows)}

    def publish(self, releases: Sequence[StepRelease], publication: Publication) -> Published:
        from analyses.operators.counting import count_table

        return count_table(self, releases, publication)

    def summary(self) -> str:
        return (
            f"score every record with a {self.model.family} model of {self.model.target} "
            f"(scores kept in a local file; a {self.bins}-bin histogram is released)"
        )


class EvaluateStep(_FittedModelStep):
    """Evaluates a fitted model on each node's records, with their true outcomes: a DP release of
    score histograms by class (AUC, calibration, confusion counts) or, for linear and Poisson
    models, of absolute errors."""

    kind: Literal["evaluate"]

    def columns(self) -> tuple[str, ...]:
        return (self.model.target, *(f.column for f in self.model.features))

    def key_columns(self) -> tuple[str, ...]:
        return ()

    def cells(self) -> int:
        return 2 * self.bins

    def measurements(self) -> tuple[str, ...]:
        return ("scores",)

    def exact(self, data: LocalData, unit: PrivacyUnit, state: RoundLike | None) -> dict[str, Exact]:
        x, y = design(self.model, data.frame.loc[data.keep(unit)])
        histograms = evaluation_histograms(self.model, x, y, np.asarray(self.coefficients), self.bins)
        return {"scores": Exact(histograms, evaluation_sensitivity(self.model, unit.max_rows))}

    def tables(
        self, parts: Sequence[PartnerRelease], combine: str, publication: Publication
    ) -> list[ResultTable]:
        scores = {p.partner: p.release.measurement("scores") for p in parts}
        return evaluation_tables(self.model, self.bins, scores, prefix=f"{self.id}_") if scores else []

    def summary(self) -> str:
        return f"evaluate a {self.model.family} model of {self.model.target} ({self.cells()} cells)"


def evaluation_rows(
    model: ModelSpec, bins: int, scores: Mapping[str, MeasurementRelease]
) -> tuple[float, float]:
    """The noisy number of records the evaluation counted, pooled over partners, and its noise
    scale: every record lands in one bin of a classifier's histograms, and in one bin of the
    first (error) histogram of a linear or Poisson model."""
    cells = 2 * bins if model.family == "logistic" else bins
    rows = sum(
        float(np.sum(np.asarray(m.values[:cells], dtype=np.float64))) * m.unit_value for m in scores.values()
    )
    sd = math.sqrt(sum(cells * (m.scale * m.unit_value) ** 2 for m in scores.values()))
    return rows, sd


def evaluation_tables(
    model: ModelSpec, bins: int, scores: Mapping[str, MeasurementRelease], prefix: str = ""
) -> list[ResultTable]:
    """Evaluation tables from each partner's DP evaluation histograms (`scores`, by partner):
    AUC (or mean absolute error) overall and per partner; for a classifier also calibration by
    score bin and confusion counts at each bin edge."""
    vectors = {p: np.asarray(m.values, dtype=np.float64) for p, m in scores.items()}
    accuracy = {p: m.accuracy95 for p, m in scores.items()}
    pooled = np.sum(list(vectors.values()), axis=0)
    if model.family != "logistic":
        low, high = model.target_bounds or (0.0, 1.0)
        mids = (np.arange(bins) + 0.5) / bins * (high - low)
        rows = []
        for name, vector in [("all", pooled), *sorted(vectors.items())]:
            errors = np.clip(vector[:bins], 0, None)
            rows.append({"partner": name, "mean_abs_error": float(errors @ mids / max(errors.sum(), 1.0))})
        return [
            ResultTable(f"{prefix}evaluation", pd.DataFrame(rows), ("absolute errors from a DP histogram",))
        ]
    rows = []
    for name, vector in [("all", pooled), *sorted(vectors.items())]:
        clipped = np.clip(vector, 0, None)
        rows.append(
            {
                "partner": name,
                "auc": auc_from_histograms(vector, bins),
                "negatives": float(clipped[:bins].sum()),
                "positives": float(clipped[bins:].sum()),
            }
        )
    edges = score_edges(bins)
    negatives, positives = np.clip(pooled[:bins], 0, None), np.clip(pooled[bins:], 0, None)
    total = negatives + positives
    calibration = pd.DataFrame(
        {
            "score_from": edges[:-1],
            "score_to": edges[1:],
            "records": total,
            "observed_rate": np.where(total > 0, positives / np.maximum(total, 1e-9), np.nan),
        }
    )
    above_pos = np.cumsum(positives[::-1])[::-1]
    above_neg = np.cumsum(negatives[::-1])[::-1]
    thresholds = pd.DataFrame(
        {
            "threshold": edges[:-1],
            "true_positive": above_pos,
            "false_positive": above_neg,
            "false_negative": positives.sum() - above_pos,
            "true_negative": negatives.sum() - above_neg,
        }
    )
    worst = max(accuracy.values(), default=0.0)
    note = f"from DP score histograms ({bins} bins, equal on the logit scale); each count within +/-{worst:.0f} per partner (95%)"
    return [
        ResultTable(f"{prefix}evaluation", pd.DataFrame(rows), (note,)),
        ResultTable(f"{prefix}calibration", calibration, (note,)),
        ResultTable(
            f"{prefix}thresholds",
            thresholds,
            (note, "a record counts as predicted positive at score >= threshold"),
        ),
    ]


#: The step kinds this module owns (the registry reads it).
STEPS = (
    ModelStep,
    ScoreStep,
    EvaluateStep,
)
