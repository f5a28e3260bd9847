"""Analysis spec v1: the YAML a central data scientist writes, as validated pydantic models.

Structure is checked here, once and completely. Meaning against a node's data (columns,
types, policy, budget) is checked by the node before anything runs (`analyses.catalog`).

The steps are the registry's (`analyses.operators`); nothing here asks which kind a step is.
A spec is parsed once into a `LoadedSpec` (its text, model, source and hash), which is what
travels: the text to the nodes, the model to the aggregate step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from analyses._model import Model, canonical, since
from analyses.documents import parse_document
from analyses.operators import STEP_KINDS, Step
from analyses.step import StepBase, UnitSpec
from privacy.budget import Rho, rho_from_epsilon_delta, shares
from privacy.errors import SpecError

__all__ = [
    "MAX_CELLS_PER_STEP",
    "MAX_RHO",
    "SPEC_MAJOR_VERSIONS",
    "AnalysisSpec",
    "DisclosureSpec",
    "LoadedSpec",
    "PrivacySpec",
    "UnitSpec",
    "load_spec",
    "read_spec",
]

#: Spec major versions this code reads; anything else is refused with this list.
SPEC_MAJOR_VERSIONS = (1,)
#: A step may not release more cells than this: each cell is a noisy number to compute and ship.
MAX_CELLS_PER_STEP = 200_000
#: Largest budget one analysis may ask for; beyond it, DP offers next to no protection.
MAX_RHO = 10.0


class PrivacySpec(Model):
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


#: The threshold of the `tre` profile: at least this many people under every published cell.
TRE_THRESHOLD = 10
#: The default largest probability that a cell below the threshold is published (`tre`).
TRE_FALSE_PUBLICATION = 0.01


class DisclosureSpec(Model):
    """Publication rules applied to results (post-processing, no budget).

    `profile: open` suppresses cells whose noisy count is under `min_cell`. `profile: tre`
    follows UK trusted-research-environment output rules: a cell is published only when its
    noisy count clears `noise_aware_threshold`, so a cell of fewer than `threshold` (10) people is
    published with probability at most `false_publication` (1%); no negative count or sum is
    published; sum and mean cells follow the dominance rules (`privacy.disclosure`); models need
    10 residual degrees of freedom. `custom` sets `threshold`, `false_publication`,
    `non_negative` and `dominance` itself.
    """

    min_cell: int = Field(default=10, ge=0, le=1000)
    round_to: int = Field(default=1, ge=1, le=1000)
    profile: Literal["open", "tre", "custom"] = Field(default="open", json_schema_extra=since("1.1"))
    threshold: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        json_schema_extra=since("1.1"),
        description="people under a published cell (tre: at least 10); noise-aware",
    )
    false_publication: float = Field(
        default=TRE_FALSE_PUBLICATION,
        gt=0,
        le=0.2,
        json_schema_extra=since("1.1"),
        description="largest probability that a cell below the threshold is published",
    )
    non_negative: bool | None = Field(
        default=None,
        json_schema_extra=since("1.1"),
        description="publish no negative count or sum (default: true under tre)",
    )
    dominance: bool | None = Field(
        default=None,
        json_schema_extra=since("1.1"),
        description="suppress sum and mean cells one or two people could dominate (n-k and p% rules; "
        "default: true under tre)",
    )

    @model_validator(mode="after")
    def _profile(self) -> DisclosureSpec:
        if self.profile == "tre" and self.threshold is not None and self.threshold < TRE_THRESHOLD:
            raise ValueError(
                f"the tre profile's threshold is at least {TRE_THRESHOLD}; use profile: custom for less"
            )
        if self.profile == "custom" and self.threshold is None:
            raise ValueError("profile: custom needs a threshold (people under a published cell)")
        if self.profile == "open" and any(
            v is not None for v in (self.threshold, self.non_negative, self.dominance)
        ):
            raise ValueError("threshold, non_negative and dominance belong to the tre and custom profiles")
        return self

    def people_threshold(self) -> int:
        """People under a published cell (0: the open profile, which thresholds noisy counts)."""
        if self.profile == "open":
            return 0
        return self.threshold if self.threshold is not None else TRE_THRESHOLD

    def clamps(self) -> bool:
        """Whether negative counts and sums are published as 0."""
        return self.non_negative if self.non_negative is not None else self.profile == "tre"

    def dominates(self) -> bool:
        """Whether sum and mean cells follow the dominance rules."""
        return self.dominance if self.dominance is not None else self.profile == "tre"


class AnalysisSpec(Model):
    """A federated analysis: what to compute, on which logical dataset, at what privacy cost."""

    #: The discriminator values of `steps`: error paths leave them out (`steps[0].bounds`).
    union_tags: ClassVar[tuple[str, ...]] = STEP_KINDS

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
            if step.exclusive and len(self.steps) > 1:
                problems.append(f"{step.kind} step {step.id!r} must be the only step of its analysis")
            if identifier in {k.column for k in step.by} | set(step.columns()):
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

    def rounds_step(self) -> StepBase | None:
        """The step that runs in rounds (a model, or FedAvg training), when this analysis has one:
        it is then the analysis's only step."""
        return next((s for s in self.steps if s.flow != "once"), None)

    def step(self, step_id: str) -> StepBase:
        """Raises: SpecError when the spec has no step of that id."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise SpecError(f"analysis {self.name!r} has no step {step_id!r}")

    def dataset_of(self, step: StepBase) -> str:
        """The logical dataset a step reads."""
        return step.dataset or self.dataset or ""

    def unit_of(self, step: StepBase) -> UnitSpec:
        """The privacy unit a step protects: its own, or the analysis's."""
        return step.unit or self.privacy.unit

    def step_budget(self, step_id: str) -> Rho:
        """The share of the analysis budget given to one step (by weight); the shares of all
        steps add up, exactly, to at most the analysis budget."""
        index = next(i for i, s in enumerate(self.steps) if s.id == step_id)
        return shares(self.privacy.budget(), [s.weight for s in self.steps])[index]

    def dataset_cost(self) -> dict[str, Rho]:
        """dataset -> the budget this analysis's steps on it take at a partner holding it."""
        per: dict[str, Rho] = {}
        for step in self.steps:
            dataset = self.dataset_of(step)
            per[dataset] = per.get(dataset, Rho(0.0)) + self.step_budget(step.id)
        return per

    def request_budget(self, step_id: str) -> Rho:
        """What one request debits for a step: its whole share, or for a model step one round's
        (every round's together never more than the step's share)."""
        return self.step_budget(step_id).split(self.step(step_id).requests())

    @cached_property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the validated spec: what the nodes agreed to run. A
        field added after the first release (`since`) is left out while at its default, so the
        hash of a spec that does not use it is the same in every release."""
        text = json.dumps(canonical(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def spec_hash(self) -> str:
        """`hash` (computed once per spec)."""
        return self.hash


@dataclass(frozen=True)
class LoadedSpec:
    """A spec parsed once: the text nodes are sent, its validated model, where it came from."""

    text: str
    spec: AnalysisSpec
    source: str

    @property
    def hash(self) -> str:
        return self.spec.hash


def load_spec(text: str, source: str) -> LoadedSpec:
    """Raises: SpecError listing every problem of the text (see `parse_document`)."""
    return LoadedSpec(text, parse_document(text, AnalysisSpec, source=source), source)


def read_spec(path: Path) -> LoadedSpec:
    """Raises: SpecError for a file that cannot be read or is not a valid spec."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror}") from exc
    return load_spec(text, str(path))
