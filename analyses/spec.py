"""Analysis spec v1: the YAML a central data scientist writes, as validated pydantic models.

Structure is checked here, once and completely. Meaning against a node's data (columns,
types, policy, budget) is checked by the node before anything runs (`analyses.catalog`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from analyses.glm import ModelSpec
from analyses.keysets import load_keyset
from analyses.sgd import n_weights
from privacy.budget import Rho, rho_from_epsilon_delta, shares
from privacy.unit import MAX_ROWS_LIMIT, PrivacyUnit

__all__ = [
    "MAX_CELLS_PER_STEP",
    "SPEC_MAJOR_VERSIONS",
    "AnalysisSpec",
    "CountStep",
    "DisclosureSpec",
    "EvaluateStep",
    "HistogramStep",
    "KeySpec",
    "MeanStep",
    "ModelStep",
    "PrivacySpec",
    "QuantileStep",
    "ScoreStep",
    "SgdStep",
    "Step",
    "SumStep",
    "UnitSpec",
]

#: Spec major versions this code reads; anything else is refused with this list.
SPEC_MAJOR_VERSIONS = (1,)
#: A step may not release more cells than this: each cell is a noisy number to compute and ship.
MAX_CELLS_PER_STEP = 200_000
#: Largest budget one analysis may ask for; beyond it, DP offers next to no protection.
MAX_RHO = 10.0
#: Default quantisation of sums and means: about this many units across half the bounds' width,
#: so rounding moves a value by at most a two-millionth of that half-width.
UNITS_PER_HALF_RANGE = 2**20
#: Most units one row may add to a sum. With at most `MAX_DATASET_ROWS` rows an exact sum stays
#: below 2^62, inside int64 whatever the data: no overflow, no wrapped sign.
MAX_UNITS_PER_ROW = 2**31
#: Most rows a dataset may have (a node refuses to load more).
MAX_DATASET_ROWS = 2**31
#: A step's keys, quantiles or edges: no published list is longer.
MAX_LIST = 10_000

DERIVED_KEYS: dict[str, tuple[str, ...]] = {
    "hour": tuple(f"{h:02d}" for h in range(24)),
    "weekday": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "month": tuple(f"{m:02d}" for m in range(1, 13)),
    "missing": ("present", "missing"),
}

KeyValue = str | int


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeySpec(_Model):
    """One grouping column and its public keys: listed, a shipped key set, or derived buckets."""

    column: str = Field(min_length=1, max_length=200)
    values: tuple[KeyValue, ...] | None = Field(default=None, max_length=MAX_LIST)
    keyset: str | None = Field(default=None, max_length=200)
    derive: Literal["hour", "weekday", "month", "band", "missing"] | None = None
    edges: tuple[float, ...] | None = Field(default=None, max_length=MAX_LIST)
    name: str | None = Field(default=None, max_length=200, description="output column name")

    @model_validator(mode="after")
    def _one_source(self) -> KeySpec:
        sources = [s for s in (self.values, self.keyset, self.derive) if s is not None]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of 'values' (a published list), 'keyset' (a shipped key set) "
                "or 'derive' (hour, weekday, month, band, missing)"
            )
        if self.values is not None:
            if not self.values:
                raise ValueError("'values' must list at least one key")
            if len(set(self.values)) != len(self.values):
                raise ValueError("'values' has duplicate keys")
            if len({type(v) for v in self.values}) > 1:
                raise ValueError("'values' mixes text and numbers: quote every key (text) or none (numbers)")
        if self.derive == "band":
            if self.edges is None or len(self.edges) < 2:
                raise ValueError("derive: band needs 'edges' with at least two numbers")
            if any(b <= a for a, b in itertools.pairwise(self.edges)):
                raise ValueError("'edges' must increase strictly")
            if not all(math.isfinite(e) for e in self.edges):
                raise ValueError("'edges' must be finite numbers")
        elif self.edges is not None:
            raise ValueError("'edges' is only for derive: band")
        if self.keyset is not None:
            load_keyset(self.keyset)
        return self

    @property
    def output(self) -> str:
        """Name of the key column in result tables."""
        if self.name:
            return self.name
        return f"{self.column}_{self.derive}" if self.derive else self.column

    def keys(self) -> tuple[KeyValue, ...]:
        """The public keys, in the canonical order every node and the coordinator use."""
        if self.values is not None:
            return self.values
        if self.keyset is not None:
            return load_keyset(self.keyset)
        if self.derive == "band":
            return band_labels(self.edges or ())
        return DERIVED_KEYS[self.derive or ""]


def band_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """`[0, 18, 65]` -> `("0-18", "18-65")`: half-open intervals [low, high)."""
    return tuple(f"{_fmt(a)}-{_fmt(b)}" for a, b in itertools.pairwise(edges))


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class UnitSpec(_Model):
    """Who is protected: one identifier, at most `max_rows` rows each (enforced by truncation)."""

    identifier: str = Field(min_length=1)
    max_rows: int = Field(ge=1, le=MAX_ROWS_LIMIT)

    def to_unit(self) -> PrivacyUnit:
        return PrivacyUnit(self.identifier, self.max_rows)


class _StepBase(_Model):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    by: tuple[KeySpec, ...] = Field(default=(), max_length=8)
    dataset: str | None = Field(default=None, max_length=200, description="overrides the analysis dataset")
    weight: float = Field(default=1.0, gt=0, le=1000, description="share of the budget")
    unit: UnitSpec | None = Field(default=None, description="overrides the analysis privacy unit")

    def key_columns(self) -> tuple[str, ...]:
        return tuple(k.output for k in self.by)

    def groups(self) -> int:
        """Number of cells of the `by` keys alone."""
        return math.prod(len(k.keys()) for k in self.by)

    def cells(self) -> int:
        """Number of values each measurement of this step releases."""
        return self.groups()

    def measurements(self) -> tuple[str, ...]:
        raise NotImplementedError

    def measurement_weights(self) -> tuple[float, ...]:
        """How a request's budget is shared among the step's measurements (equally by default)."""
        return (1.0,) * len(self.measurements())

    def requests(self) -> int:
        """How many releases a node makes for this step (one, but for models: every round)."""
        return 1


class _Bounded(_StepBase):
    column: str = Field(min_length=1, max_length=200)
    bounds: tuple[float, float]
    precision: float | None = Field(
        default=None,
        gt=0,
        description="values are summed in units of this; default: derived from the bounds (a power "
        "of two giving about a million units across half their width), so rounding is negligible",
    )

    @field_validator("bounds", mode="before")
    @classmethod
    def _bounds_present(cls, value: object) -> object:
        if value is None:
            raise ValueError("numeric steps need bounds: [lower, upper]")
        return value

    @model_validator(mode="after")
    def _bounds_order(self) -> _Bounded:
        low, high = self.bounds
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("bounds must be finite numbers")
        if low >= high:
            raise ValueError(f"bounds must be [lower, upper] with lower < upper, got {list(self.bounds)}")
        if max(abs(low), abs(high)) > 1e15:
            raise ValueError("bounds must lie within +/-1e15")
        if self.precision is not None and (high - low) / self.precision > 2 * MAX_UNITS_PER_ROW:
            raise ValueError(
                f"bounds / precision is over {2 * MAX_UNITS_PER_ROW:,} units: sums could overflow; "
                "use a coarser precision, or leave it out to derive one from the bounds"
            )
        return self

    def quantum(self) -> float:
        """The unit values are summed in: `precision`, or a power of two from the bounds."""
        if self.precision is not None:
            return self.precision
        half = (self.bounds[1] - self.bounds[0]) / 2
        return float(2.0 ** math.floor(math.log2(max(half / UNITS_PER_HALF_RANGE, 2.0**-1000))))

    def centre(self) -> float:
        """The point values are centred on before summing: the bounds' midpoint on the unit grid.

        Centred values need only half the bounds' width of sensitivity each, whatever their
        magnitude (bounds [44.85, 45.06] cost 0.105 per row, not 45.06).
        """
        quantum = self.quantum()
        return quantum * round((self.bounds[0] + self.bounds[1]) / 2 / quantum)

    def units_per_row(self) -> int:
        """Most units (in absolute value) one row's centred value can round to."""
        quantum, centre = self.quantum(), self.centre()
        low, high = self.bounds
        return max(1, math.ceil(max(high - centre, centre - low) / quantum))


class CountStep(_StepBase):
    """Noisy number of rows in each cell."""

    kind: Literal["count"]

    def measurements(self) -> tuple[str, ...]:
        return ("count",)


class SumStep(_Bounded):
    """Noisy sum of a bounded numeric column in each cell, released as the sum of the values
    centred on `centre()` and the count of rows with a value; the published sum is
    `centred sum + centre x count`. The budget is split between the two in proportion to what
    each contributes to the sum's noise, which makes that noise exactly what a plain sum's would
    be, and the count bounds the rounding error."""

    kind: Literal["sum"]

    def measurements(self) -> tuple[str, ...]:
        return ("sum", "count")

    def measurement_weights(self) -> tuple[float, ...]:
        """Budget weights of (sum, count): the noise of `sum + centre x count` is smallest when
        each gets a share proportional to its standard deviation per unit of budget (the count
        keeps at least a ninth, so it can bound the rounding)."""
        spread = self.units_per_row() * self.quantum()
        return (spread, max(abs(self.centre()), spread / 8))


class MeanStep(_Bounded):
    """Noisy mean: a noisy sum over a noisy count of rows with a value."""

    kind: Literal["mean"]

    def measurements(self) -> tuple[str, ...]:
        return ("sum", "count")


class HistogramStep(_StepBase):
    """Noisy counts of a numeric column in bins, optionally crossed with group keys."""

    kind: Literal["histogram"]
    column: str = Field(min_length=1, max_length=200)
    edges: tuple[float, ...] = Field(min_length=2, max_length=MAX_LIST)

    @model_validator(mode="after")
    def _edges(self) -> HistogramStep:
        if any(b <= a for a, b in itertools.pairwise(self.edges)):
            raise ValueError("histogram edges must increase strictly")
        return self

    def band(self) -> KeySpec:
        return KeySpec(column=self.column, derive="band", edges=self.edges)

    def key_columns(self) -> tuple[str, ...]:
        return (self.band().output, *super().key_columns())

    def cells(self) -> int:
        return (len(self.edges) - 1) * self.groups()

    def measurements(self) -> tuple[str, ...]:
        return ("count",)


class QuantileStep(_Bounded):
    """Quantiles from a noisy fine histogram of a bounded column (poolable across partners)."""

    kind: Literal["quantile"]
    quantiles: tuple[float, ...] = Field(min_length=1, max_length=99)
    bins: int = Field(default=100, ge=2, le=10_000)

    @field_validator("quantiles")
    @classmethod
    def _q_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < q < 1 for q in value):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        return value

    def cells(self) -> int:
        return self.bins * self.groups()

    def measurements(self) -> tuple[str, ...]:
        return ("histogram",)


class ModelStep(_StepBase):
    """A GLM fitted by federated Newton: `model.rounds` releases of gradient and Hessian sums,
    then one release of score histograms for evaluation. The step's budget covers all of them,
    in equal shares, and a node refuses before the first round if it cannot afford them all."""

    kind: Literal["model"]
    model: ModelSpec
    evaluate_bins: int = Field(
        default=40, ge=2, le=1000, description="score bins (equal on the logit scale) for AUC and calibration"
    )

    @model_validator(mode="after")
    def _no_keys(self) -> ModelStep:
        if self.by:
            raise ValueError("a model step has no 'by' keys: put categories in model.features")
        return self

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


class _FittedModelStep(_StepBase):
    """A step that applies a fitted model (its spec and coefficients) to each node's records."""

    kind: str
    model: ModelSpec
    coefficients: tuple[float, ...] = Field(min_length=1)
    bins: int = Field(default=40, ge=2, le=1000)

    @model_validator(mode="after")
    def _fits(self) -> _FittedModelStep:
        if self.by:
            raise ValueError(f"{'an' if self.kind[0] in 'aeiou' else 'a'} {self.kind} step has no 'by' keys")
        if len(self.coefficients) != self.model.dimension():
            raise ValueError(
                f"{len(self.coefficients)} coefficients for a model with {self.model.dimension()} terms "
                f"({', '.join(self.model.names())})"
            )
        if not all(math.isfinite(c) for c in self.coefficients):
            raise ValueError("coefficients must be finite")
        return self


class ScoreStep(_FittedModelStep):
    """Scores every record at each node with a fitted model. The scores stay at the node (a
    local file next to its ledger); only a DP histogram of them, in `bins` bins equal on the
    logit scale, leaves."""

    kind: Literal["score"]

    def columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.model.features)

    def key_columns(self) -> tuple[str, ...]:
        return ("score_from", "score_to")

    def cells(self) -> int:
        return self.bins

    def measurements(self) -> tuple[str, ...]:
        return ("count",)


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


class SgdStep(_StepBase):
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

    def cells(self) -> int:
        return n_weights(self.model, self.hidden)

    def measurements(self) -> tuple[str, ...]:
        return ("gradient", "count")


AnyStep = (
    CountStep
    | SumStep
    | MeanStep
    | HistogramStep
    | QuantileStep
    | ModelStep
    | ScoreStep
    | EvaluateStep
    | SgdStep
)
Step = Annotated[AnyStep, Field(discriminator="kind")]


class PrivacySpec(_Model):
    """This analysis's total budget at each node: rho, or epsilon and delta."""

    rho: float | None = Field(default=None, gt=0, le=MAX_RHO)
    epsilon: float | None = Field(default=None, gt=0, le=50)
    delta: float | None = Field(default=None, gt=0, le=1e-3)
    unit: UnitSpec

    @model_validator(mode="after")
    def _one_budget(self) -> PrivacySpec:
        if (self.rho is None) == (self.epsilon is None):
            raise ValueError("give the budget as 'rho', or as 'epsilon' with 'delta', not both")
        if self.epsilon is not None and self.delta is None:
            raise ValueError("'epsilon' needs 'delta' (for example 1e-6)")
        if self.delta is not None and self.epsilon is None:
            raise ValueError("'delta' is only used with 'epsilon'")
        return self

    def budget(self) -> Rho:
        if self.rho is not None:
            return Rho(self.rho)
        return rho_from_epsilon_delta(self.epsilon or 0.0, self.delta or 0.0)


class DisclosureSpec(_Model):
    """Publication rules applied to results (post-processing, no budget)."""

    min_cell: int = Field(default=10, ge=0, le=1000)
    round_to: int = Field(default=1, ge=1, le=1000)


class AnalysisSpec(_Model):
    """A federated analysis: what to compute, on which logical dataset, at what privacy cost."""

    version: int
    name: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = Field(default="", max_length=10_000)
    dataset: str | None = Field(
        default=None, max_length=200, description="logical dataset partners map to data"
    )
    combine: Literal["pool", "by_partner", "join"] = "pool"
    privacy: PrivacySpec
    disclosure: DisclosureSpec = DisclosureSpec()
    law_enforcement_only: bool = Field(
        default=False,
        description="only partners whose policy.law_enforcement is true take part; others refuse",
    )
    steps: tuple[Step, ...] = Field(min_length=1, max_length=50)

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in SPEC_MAJOR_VERSIONS:
            known = ", ".join(str(v) for v in SPEC_MAJOR_VERSIONS)
            raise ValueError(f"spec version {value} is not supported; this release reads {known}")
        return value

    @model_validator(mode="after")
    def _meaning(self) -> AnalysisSpec:
        problems: list[str] = []
        ids = [s.id for s in self.steps]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            problems.append(f"step id {dup!r} is used twice")
        for step in self.steps:
            identifier = self.unit_of(step).identifier
            if step.dataset is None and self.dataset is None:
                problems.append(f"step {step.id!r} has no dataset: set 'dataset' on the analysis")
            cols = [k.column for k in step.by]
            if isinstance(step, _FittedModelStep):
                cols += list(step.columns())
            if isinstance(step, ModelStep | SgdStep):
                cols += list(step.columns())
                if len(self.steps) > 1:
                    problems.append(f"{step.kind} step {step.id!r} must be the only step of its analysis")
            if identifier in cols or getattr(step, "column", None) == identifier:
                problems.append(
                    f"step {step.id!r} uses the identifier {identifier!r} as a key or value: "
                    "identifiers are never published"
                )
            outputs = step.key_columns()
            if len(set(outputs)) != len(outputs):
                problems.append(f"step {step.id!r} has two key columns with the same name")
            cells = step.cells()
            if cells > MAX_CELLS_PER_STEP:
                problems.append(
                    f"step {step.id!r} would release {cells:,} cells, over the limit of "
                    f"{MAX_CELLS_PER_STEP:,}: use fewer or coarser keys"
                )
        if self.combine != "join" and any(s.dataset not in (None, self.dataset) for s in self.steps):
            problems.append("steps on different datasets need combine: join")
        if self.combine == "join":
            shared = set.intersection(*(set(s.key_columns()) for s in self.steps))
            if not shared:
                problems.append("combine: join needs key columns shared by every step")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model_step(self) -> ModelStep | None:
        """The model step, when this analysis fits a model."""
        return next((s for s in self.steps if isinstance(s, ModelStep)), None)

    def sgd_step(self) -> SgdStep | None:
        """The sgd step, when this analysis trains a classifier by FedAvg."""
        return next((s for s in self.steps if isinstance(s, SgdStep)), None)

    def dataset_of(self, step: AnyStep) -> str:
        """The logical dataset a step reads."""
        return step.dataset or self.dataset or ""

    def unit_of(self, step: AnyStep) -> UnitSpec:
        """The privacy unit a step protects: its own, or the analysis's."""
        return step.unit or self.privacy.unit

    def step_budget(self, step_id: str) -> Rho:
        """The share of the analysis budget given to one step (by weight); the shares of all
        steps add up, exactly, to at most the analysis budget."""
        index = next(i for i, s in enumerate(self.steps) if s.id == step_id)
        return shares(self.privacy.budget(), [s.weight for s in self.steps])[index]

    def request_budget(self, step_id: str) -> Rho:
        """What one request debits for a step: its whole share, or for a model step one round's
        (every round's together never more than the step's share)."""
        step = next(s for s in self.steps if s.id == step_id)
        return self.step_budget(step_id).split(step.requests())

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the validated spec: what the nodes agreed to run."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
