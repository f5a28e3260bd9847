"""Generalised linear models fitted by federated Newton (IRLS), pure.

Each round, every node computes on its own rows the gradient and Hessian sums of the
log-likelihood at the current coefficients (`local_stats`); with DP on, each record's
contribution is clipped in L2, quantised to fixed point and the integer sum is released with
OpenDP's integer Gaussian (`release_stats`). The coordinator adds the nodes' sums and takes a
Newton step (`newton_rounds`, a generator of rounds, so it runs the same on exact partial sums in
a test as on releases in a federation).

Features are encoded from a declared contract only: numeric columns are clamped to their bounds
and scaled to [0, 1]; categories are one-hot on their declared levels (unlisted values are all
zeros). So every encoded row has a known L2 bound, which is what makes the clipping bound honest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import Field, model_validator

from analyses._model import Model
from analyses.step import RoundLike
from privacy.budget import Rho
from privacy.errors import SpecError
from privacy.mechanisms import integer_gaussian

__all__ = [
    "Design",
    "FeatureSpec",
    "GlmModel",
    "LocalStats",
    "ModelSpec",
    "NoisyStats",
    "RoundState",
    "auc_from_histograms",
    "design",
    "encode",
    "evaluation_histograms",
    "evaluation_sensitivity",
    "exact_stats",
    "hessian_floor",
    "intervals95",
    "load_model_document",
    "local_stats",
    "mean_response",
    "newton_rounds",
    "noise_limited",
    "release_stats",
    "score_counts",
    "score_edges",
    "score_histograms",
]

Family = Literal["logistic", "linear", "poisson"]
FloatArray = npt.NDArray[np.float64]
M = TypeVar("M")

#: Quantisation: the clipped contribution of one record is at most this many fixed-point units.
FIXED_POINT_UNITS = 1_000_000


class FeatureSpec(Model):
    """One model input: a numeric column with bounds, or a category with its levels."""

    column: str = Field(min_length=1)
    bounds: tuple[float, float] | None = None
    levels: tuple[str | int, ...] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_encoding(self) -> FeatureSpec:
        if (self.bounds is None) == (self.levels is None):
            raise ValueError(
                f"feature {self.column!r}: give 'bounds' (numeric) or 'levels' (category), not both"
            )
        if self.bounds is not None and not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"feature {self.column!r}: bounds must be [lower, upper] with lower < upper")
        return self

    def names(self) -> list[str]:
        if self.levels is None:
            return [self.column]
        return [f"{self.column}={level}" for level in self.levels]


class ModelSpec(Model):
    """What a `model` step fits: family, target, features, rounds and the clipping bound."""

    family: Family
    target: str = Field(min_length=1)
    positive: str | int | None = Field(default=None, description="logistic: the target value that is 1")
    target_bounds: tuple[float, float] | None = Field(default=None, description="linear/poisson: clamp y")
    features: tuple[FeatureSpec, ...] = Field(min_length=1, max_length=40)
    rounds: int = Field(default=5, ge=1, le=30)
    ridge: float = Field(default=1e-6, ge=0, description="added to the Hessian's diagonal, per row")
    clip: float | None = Field(default=None, gt=0, description="L2 bound per record (default: exact bound)")

    @model_validator(mode="after")
    def _target_fits(self) -> ModelSpec:
        if self.family == "logistic" and self.positive is None:
            raise ValueError("a logistic model needs 'positive': the target value counted as 1")
        if self.family != "logistic" and self.target_bounds is None:
            raise ValueError(f"a {self.family} model needs 'target_bounds': [lower, upper]")
        return self

    def names(self) -> list[str]:
        return ["(intercept)", *[n for f in self.features for n in f.names()]]

    def dimension(self) -> int:
        return len(self.names())

    def row_norm_bound(self) -> float:
        """Largest L2 norm of an encoded row: intercept, numerics in [0,1], one level per category."""
        return math.sqrt(1 + len(self.features))

    def clip_bound(self) -> float:
        """L2 bound on one record's (gradient, Hessian) contribution."""
        if self.clip is not None:
            return self.clip
        if self.family != "logistic":
            raise SpecError(f"a {self.family} model released with DP needs 'clip' (L2 bound per record)")
        b = self.row_norm_bound()
        return math.sqrt(b**2 + (b**2 / 4) ** 2)  # |y - mu| <= 1 and mu(1 - mu) <= 1/4: never binds


class RoundState(RoundLike):
    """What the coordinator sends with each request of a model step: the phase, the round, and
    the coefficients to evaluate at. Data only: the node builds everything else from the spec."""

    run: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the model run, chosen by the coordinator"
    )
    phase: Literal["fit", "evaluate"]
    round: int = Field(ge=0, le=100)
    coefficients: tuple[float, ...] = Field(max_length=2000)

    @model_validator(mode="after")
    def _finite(self) -> RoundState:
        if not all(math.isfinite(b) and abs(b) <= 1e4 for b in self.coefficients):
            raise ValueError("coefficients must be finite and at most 1e4 in size")
        return self

    def request_id(self) -> str:
        """The only request id this state may travel under (one ledger entry per round)."""
        return f"{self.run}-fit{self.round}" if self.phase == "fit" else f"{self.run}-evaluate"

    def opens_run(self) -> bool:
        return self.phase == "fit" and self.round == 0

    def first_request_id(self) -> str:
        return f"{self.run}-fit0"

    def check(self, spec: ModelSpec) -> RoundState:
        """Raises: SpecError when the state does not fit `spec` (wrong length, round past the end)."""
        if len(self.coefficients) != spec.dimension():
            raise SpecError(f"{len(self.coefficients)} coefficients sent; the model has {spec.dimension()}")
        if self.phase == "fit" and self.round >= spec.rounds:
            raise SpecError(f"round {self.round} is past the model's {spec.rounds} rounds")
        return self


def encode(spec: ModelSpec, frame: pd.DataFrame) -> FloatArray:
    """The design matrix: intercept, numerics clamped and scaled to [0, 1], one-hot categories."""
    columns: list[FloatArray] = [np.ones(len(frame))]
    for feature in spec.features:
        values = frame[feature.column]
        if feature.bounds is not None:
            low, high = feature.bounds
            numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            columns.append(np.nan_to_num((np.clip(numeric, low, high) - low) / (high - low), nan=0.0))
        else:
            text = values.astype("string")
            for level in feature.levels or ():
                columns.append(np.asarray((text == str(level)).fillna(False), dtype=np.float64))
    return np.column_stack(columns)


class Design(NamedTuple):
    """A model's design matrix and target."""

    x: FloatArray
    y: FloatArray


def design(spec: ModelSpec, frame: pd.DataFrame) -> Design:
    """(X, y) encoded from the declared contract; rows with a missing target are dropped."""
    frame = frame.loc[frame[spec.target].notna().to_numpy()]
    y_raw = frame[spec.target]
    if spec.family == "logistic":
        y = np.asarray((y_raw.astype("string") == str(spec.positive)).fillna(False), dtype=np.float64)
    else:
        low, high = spec.target_bounds or (0.0, 0.0)
        y = np.clip(pd.to_numeric(y_raw, errors="coerce").to_numpy(dtype=np.float64), low, high)
    return Design(encode(spec, frame), y)


def _mean_and_weight(family: Family, eta: FloatArray) -> tuple[FloatArray, FloatArray]:
    if family == "logistic":
        mu = 1.0 / (1.0 + np.exp(-np.clip(eta, -30, 30)))
        return mu, mu * (1.0 - mu)
    if family == "poisson":
        mu = np.exp(np.clip(eta, -30, 30))
        return mu, mu
    return eta, np.ones_like(eta)


@dataclass(frozen=True)
class LocalStats:
    """Gradient and Hessian sums of one node at the current coefficients (exact or noisy)."""

    gradient: FloatArray
    hessian: FloatArray
    noise_sd: float = 0.0  # standard deviation of the DP noise per coordinate (0: exact)


def _upper(p: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    return np.triu_indices(p)


def local_stats(spec: ModelSpec, x: FloatArray, y: FloatArray, beta: FloatArray) -> LocalStats:
    """Exact sums, no clipping: what DP-off federated Newton adds up."""
    mu, w = _mean_and_weight(spec.family, x @ beta)
    return LocalStats(x.T @ (y - mu), (x * w[:, None]).T @ x)


def _contributions(spec: ModelSpec, x: FloatArray, y: FloatArray, beta: FloatArray) -> FloatArray:
    """One row per record: its gradient and the upper triangle of its Hessian."""
    mu, w = _mean_and_weight(spec.family, x @ beta)
    rows, cols = _upper(x.shape[1])
    return np.hstack([x * (y - mu)[:, None], (x[:, rows] * x[:, cols]) * w[:, None]])


@dataclass(frozen=True)
class NoisyStats:
    """One node's released statistics: integers in fixed point, with their noise."""

    values: tuple[int, ...]
    unit_value: float  # each integer counts this much
    scale: float  # noise standard deviation, in integers
    sensitivity: int
    cost: Rho

    def decode(self, p: int) -> LocalStats:
        vector = np.asarray(self.values, dtype=np.float64) * self.unit_value
        rows, cols = _upper(p)
        hessian = np.zeros((p, p))
        hessian[rows, cols] = vector[p:]
        hessian[cols, rows] = vector[p:]
        return LocalStats(vector[:p], hessian, self.scale * self.unit_value)


class ExactStats(NamedTuple):
    """One node's clipped, quantised gradient and Hessian sums, before noise."""

    vector: npt.NDArray[np.int64]
    sensitivity: int
    unit_value: float


def exact_stats(spec: ModelSpec, x: FloatArray, y: FloatArray, beta: FloatArray, max_rows: int) -> ExactStats:
    """Clip each record's contribution to `spec.clip_bound()`, quantise and sum: the exact
    integer vector `release_stats` noises, with its L2 sensitivity for one person of `max_rows`
    records and what one integer is worth. `x`, `y` must already be truncated."""
    contributions = _contributions(spec, x, y, beta)
    clip = spec.clip_bound()
    norms = np.linalg.norm(contributions, axis=1)
    factor = np.minimum(1.0, clip / np.maximum(norms, 1e-300))
    clipped = contributions * factor[:, None]
    dimension = contributions.shape[1]
    unit_value = clip / FIXED_POINT_UNITS
    quantised = np.rint(clipped / unit_value).astype(np.int64)
    # One record moves the sum by at most its clipped norm in units plus the rounding of each
    # coordinate (0.5 each); one person by `max_rows` records.
    per_record = FIXED_POINT_UNITS + 0.5 * math.sqrt(dimension)
    sensitivity = math.ceil(max_rows * per_record)
    return ExactStats(quantised.sum(axis=0).astype(np.int64), sensitivity, unit_value)


def release_stats(
    spec: ModelSpec, x: FloatArray, y: FloatArray, beta: FloatArray, max_rows: int, budget: Rho
) -> NoisyStats:
    """`exact_stats`, released with OpenDP's integer Gaussian at `budget`."""
    exact = exact_stats(spec, x, y, beta, max_rows)
    noisy = integer_gaussian(exact.vector, exact.sensitivity, budget)
    return NoisyStats(noisy.values, exact.unit_value, noisy.scale, noisy.sensitivity, noisy.cost)


def _psd(hessian: FloatArray, floor: float) -> FloatArray:
    sym = (hessian + hessian.T) / 2
    values, vectors = np.linalg.eigh(sym)
    return np.asarray((vectors * np.maximum(values, floor)) @ vectors.T, dtype=np.float64)


def newton_rounds(spec: ModelSpec) -> Generator[FloatArray, list[LocalStats], FloatArray]:
    """Federated Newton as a generator: it yields the coefficients to evaluate, receives the
    nodes' statistics at them, and returns the final coefficients after `spec.rounds` steps.

    With noisy statistics the summed Hessian is made positive definite with its eigenvalues
    floored at three noise standard deviations per dimension, so noise cannot flip a direction
    of little information into a wild step.
    """
    p = spec.dimension()
    beta = np.zeros(p)
    for _ in range(spec.rounds):
        stats = yield beta
        if not stats:
            raise SpecError("no node released statistics for this round")
        gradient = np.sum([s.gradient for s in stats], axis=0)
        noise_sd = math.sqrt(sum(s.noise_sd**2 for s in stats))
        hessian = np.sum([s.hessian for s in stats], axis=0)
        step = np.linalg.solve(
            _psd(hessian, hessian_floor(spec, noise_sd)) if noise_sd else hessian + spec.ridge * np.eye(p),
            gradient,
        )
        beta = beta + step
    return beta


@dataclass(frozen=True)
class GlmModel:
    """A fitted model: what it is, its coefficients with noise-aware 95% intervals; saved as JSON."""

    spec: ModelSpec
    coefficients: tuple[float, ...]
    interval95: tuple[float, ...]
    metadata: dict[str, object]

    def predict(self, frame: pd.DataFrame) -> FloatArray:
        """Mean response for each row (probability for logistic); rows need every feature column."""
        mu, _ = _mean_and_weight(self.spec.family, encode(self.spec, frame) @ np.asarray(self.coefficients))
        return mu

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": "oda-glm/1",
                "spec": self.spec.model_dump(mode="json"),
                "coefficients": dict(zip(self.spec.names(), self.coefficients, strict=True)),
                "interval95": dict(zip(self.spec.names(), self.interval95, strict=True)),
                "metadata": self.metadata,
            },
            indent=2,
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str) -> GlmModel:
        """Raises: SpecError for anything that is not an oda-glm/1 document (no code is loaded)."""

        def build(data: dict[str, Any]) -> GlmModel:
            spec = ModelSpec.model_validate(data["spec"])
            names = spec.names()
            return GlmModel(
                spec,
                tuple(float(data["coefficients"][n]) for n in names),
                tuple(float(data["interval95"][n]) for n in names),
                dict(data.get("metadata", {})),
            )

        return load_model_document(text, "oda-glm/1", build)


def load_model_document(text: str, fmt: str, build: Callable[[dict[str, Any]], M]) -> M:
    """Parse a saved model (JSON of format `fmt`) with `build`; no code is ever loaded.

    Raises:
        SpecError: another format, or a malformed document.
    """
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != fmt:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise SpecError(f"not an {fmt} model (format {got!r})")
        return build(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"malformed model file: {exc}") from exc


def hessian_floor(spec: ModelSpec, noise_sd: float) -> float:
    """Smallest eigenvalue the noisy summed Hessian is allowed, in the fit and in its intervals:
    three noise sd per root dimension (the noise's largest eigenvalue is about two), so noise
    cannot turn a direction of little information into a wild step. Directions below it are
    shrunk towards the previous coefficients."""
    return max(spec.ridge, 3.0 * noise_sd * math.sqrt(spec.dimension()), 1e-12)


def noise_limited(spec: ModelSpec, hessian: FloatArray, noise_sd: float) -> FloatArray:
    """Per coefficient, the share of it that lies in directions where the data carry less
    information than the noise (Hessian eigenvalue below the floor): there the estimate is
    shrunk and its interval optimistic. 0 with DP off."""
    if noise_sd == 0:
        return np.zeros(hessian.shape[0])
    values, vectors = np.linalg.eigh((hessian + hessian.T) / 2)
    weak = values < hessian_floor(spec, noise_sd)
    return np.asarray((vectors[:, weak] ** 2).sum(axis=1), dtype=np.float64)


def intervals95(spec: ModelSpec, hessian: FloatArray, noise_sd: float) -> FloatArray:
    """Half-widths of 95% intervals: sampling variance H^-1 plus the DP noise's H^-1 S H^-1,
    with the noisy Hessian floored as in the fit."""
    p = hessian.shape[0]
    inverse = np.linalg.inv(_psd(hessian, hessian_floor(spec, noise_sd)))
    covariance = inverse + noise_sd**2 * inverse @ inverse
    return np.asarray(1.959964 * np.sqrt(np.clip(np.diag(covariance), 0, None)), dtype=np.float64).reshape(p)


def evaluation_histograms(
    spec: ModelSpec, x: FloatArray, y: FloatArray, beta: FloatArray, bins: int
) -> npt.NDArray[np.int64]:
    """What a node counts to evaluate a model: for logistic, score histograms by true class
    (AUC, calibration, confusion at thresholds); otherwise a histogram of absolute errors over
    the target's range, then one of the target's values (error and spread)."""
    mu, _ = _mean_and_weight(spec.family, x @ beta)
    if spec.family == "logistic":
        return score_histograms(mu, y, bins)
    low, high = spec.target_bounds or (0.0, 1.0)
    width = high - low
    errors = np.clip((np.abs(y - np.clip(mu, low, high)) / width * bins).astype(np.int64), 0, bins - 1)
    values = np.clip(((y - low) / width * bins).astype(np.int64), 0, bins - 1)
    return np.concatenate([np.bincount(errors, minlength=bins), np.bincount(values, minlength=bins)]).astype(
        np.int64
    )


def evaluation_sensitivity(spec: ModelSpec, max_rows: int) -> int:
    """L2 sensitivity of `evaluation_histograms` for one person of `max_rows` records.

    A classifier's record lands in one bin of its class's histogram: `max_rows`. A linear or
    Poisson model's record lands in one bin of the error histogram AND one of the value
    histogram, so it moves the vector by sqrt(2) per record.
    """
    if spec.family == "logistic":
        return max_rows
    return math.ceil(max_rows * math.sqrt(2))


def mean_response(spec: ModelSpec, x: FloatArray, beta: FloatArray) -> FloatArray:
    mu, _ = _mean_and_weight(spec.family, x @ beta)
    return mu


#: Score bins are equal on the logit scale over this range (the outer bins reach 0 and 1), so
#: rare outcomes, whose scores crowd near 0, still spread over many bins.
LOGIT_RANGE = 7.0


def score_edges(bins: int) -> FloatArray:
    """The `bins + 1` probability edges of the score bins: 0, then equal logit steps, then 1."""
    inner = 1.0 / (1.0 + np.exp(-np.linspace(-LOGIT_RANGE, LOGIT_RANGE, bins + 1)[1:-1]))
    return np.concatenate([[0.0], inner, [1.0]])


def score_counts(scores: FloatArray, bins: int) -> npt.NDArray[np.int64]:
    """Counts of scores in the `score_edges(bins)` bins."""
    return np.bincount(_score_bins(scores, bins), minlength=bins).astype(np.int64)


def _score_bins(scores: FloatArray, bins: int) -> npt.NDArray[np.intp]:
    return np.clip(np.searchsorted(score_edges(bins), scores, side="right") - 1, 0, bins - 1)


def score_histograms(scores: FloatArray, labels: FloatArray, bins: int) -> npt.NDArray[np.int64]:
    """Counts of scores in the `score_edges(bins)` bins: negatives first, then positives."""
    index = _score_bins(scores, bins)
    positive = labels > 0.5
    return np.concatenate(
        [np.bincount(index[~positive], minlength=bins), np.bincount(index[positive], minlength=bins)]
    ).astype(np.int64)


def auc_from_histograms(histograms: Sequence[float] | FloatArray, bins: int) -> float:
    """ROC AUC from (possibly noisy) score histograms: P(positive scores above negative), ties half."""
    values = np.clip(np.asarray(histograms, dtype=np.float64), 0, None)
    negatives, positives = values[:bins], values[bins:]
    n_neg, n_pos = negatives.sum(), positives.sum()
    if n_neg <= 0 or n_pos <= 0:
        return math.nan
    below = np.concatenate([[0.0], np.cumsum(negatives)[:-1]])
    return float(np.sum(positives * (below + 0.5 * negatives)) / (n_pos * n_neg))
