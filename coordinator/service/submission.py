"""What an analyst submits, checked completely before it is queued, and its planned cost.

A submission is a spec's YAML, or a blueprint by name (`NAME` from the shipped catalogue, or
`NAME@VERSION` from the coordinator's registry, verified against its trusted keys) with
parameters. Never a path: the service reads no file an analyst names.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from analyses.blueprint import LoadedBlueprint, SignedBlueprint, load_bundled
from analyses.spec import LoadedSpec, load_spec
from coordinator.run.transport import Quorum
from privacy.budget import DISPLAY_DELTA, Rho
from privacy.errors import SpecError

__all__ = [
    "DEFAULT_DEADLINE_SECONDS",
    "MAX_DEADLINE_SECONDS",
    "CostPreview",
    "Prepared",
    "Submission",
    "new_run_id",
    "prepare",
    "quorum_of",
    "resolve_blueprint",
]

#: How long a run waits for its partners by default: a day, long enough for a person to approve.
DEFAULT_DEADLINE_SECONDS = 24 * 3600
MAX_DEADLINE_SECONDS = 30 * 24 * 3600
MAX_SPEC_CHARS = 200_000


class Submission(BaseModel):
    """A run to queue: exactly one of `spec_yaml` and `blueprint`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec_yaml: str | None = Field(
        default=None, max_length=MAX_SPEC_CHARS, description="an analysis spec, as YAML text"
    )
    blueprint: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_-]{0,79}(@[0-9A-Za-z.+-]{1,40})?$",
        description="NAME (the shipped catalogue) or NAME@VERSION (this coordinator's registry)",
    )
    parameters: dict[str, str | int | float | bool] = Field(
        default_factory=dict, max_length=50, description="blueprint parameters"
    )
    purpose: str | None = Field(
        default=None, max_length=500, description="why the run is made; every partner's inbox shows it"
    )
    min_partners: int | None = Field(
        default=None, ge=1, le=10_000, description="fail the run unless at least this many partners release"
    )
    required_partners: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="partners (registered names) that must release, or the run fails",
    )
    deadline_seconds: int | None = Field(
        default=None,
        ge=10,
        le=MAX_DEADLINE_SECONDS,
        description="how long the run waits for partners (approvals); default one day",
    )

    @field_validator("purpose")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("purpose must be printable text on one line")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Submission:
        if (self.spec_yaml is None) == (self.blueprint is None):
            raise ValueError("give exactly one of spec_yaml and blueprint")
        if self.spec_yaml is not None and self.parameters:
            raise ValueError("parameters are for blueprints; a spec has none")
        if any(not 0 < len(p) <= 64 or not p.isprintable() for p in self.required_partners):
            raise ValueError("required_partners: names of 1 to 64 printable characters")
        for key, value in self.parameters.items():
            if len(key) > 80 or (isinstance(value, str) and len(value) > 1000):
                raise ValueError(f"parameter {key[:80]!r}: names up to 80 and values up to 1000 characters")
        return self


def quorum_of(submission: Submission) -> Quorum | None:
    """The quorum a submission states, or None."""
    if submission.min_partners is None and not submission.required_partners:
        return None
    return Quorum(submission.min_partners, tuple(submission.required_partners))


class CostPreview(NamedTuple):
    """analysis -> dataset -> rho a partner holding the dataset is debited."""

    per_dataset: dict[str, dict[str, Rho]]

    def to_json(self) -> dict[str, object]:
        analyses = {
            analysis: {
                dataset: {"rho": cost.value, "epsilon": cost.epsilon(DISPLAY_DELTA)}
                for dataset, cost in per.items()
            }
            for analysis, per in self.per_dataset.items()
        }
        datasets: dict[str, Rho] = {}
        for per in self.per_dataset.values():
            for dataset, cost in per.items():
                datasets[dataset] = datasets.get(dataset, Rho(0.0)) + cost
        return {
            "analyses": analyses,
            "per_dataset_total": {
                d: {"rho": c.value, "epsilon": c.epsilon(DISPLAY_DELTA)} for d, c in sorted(datasets.items())
            },
            "epsilon_at_delta": DISPLAY_DELTA,
            "note": "a partner is debited the total of the datasets it holds; zCDP rho adds up",
        }

    def planned(self) -> dict[str, dict[str, float]]:
        return {a: {d: c.value for d, c in per.items()} for a, per in self.per_dataset.items()}


class Prepared(NamedTuple):
    """A checked submission, ready to queue."""

    source: str  # "spec" | "blueprint"
    name: str
    spec: LoadedSpec | None
    blueprint: SignedBlueprint | None
    parameters: dict[str, object]
    cost: CostPreview


def new_run_id() -> str:
    """A run id (it travels to the nodes, so it matches their request-id pattern)."""
    return f"run-{time.strftime('%Y%m%d', time.gmtime())}-{uuid.uuid4().hex[:12]}"


def resolve_blueprint(ref: str, registry: Path | None) -> SignedBlueprint:
    """`NAME` from the catalogue, or `NAME@VERSION` from `registry` (verified).

    Raises:
        SpecError: no such blueprint; SignatureError when it no longer verifies.
    """
    name, _, version = ref.partition("@")
    if version:
        if registry is None:
            raise SpecError(
                f"{ref}: this coordinator has no blueprint registry; give NAME from the catalogue"
            )
        from coordinator.blueprints.registry import LocalRegistry

        reg = LocalRegistry(registry)
        return reg.load(name, version, reg.trusted_keys())
    loaded: LoadedBlueprint = load_bundled(name)
    return SignedBlueprint(loaded, None)


def prepare(submission: Submission, registry: Path | None) -> Prepared:
    """Load and check a submission as the worker will run it, and price it.

    Raises:
        SpecError: the spec or the blueprint parameters are invalid, or no such blueprint.
    """
    if submission.spec_yaml is not None:
        loaded = load_spec(submission.spec_yaml, "submitted spec")
        spec = loaded.spec
        return Prepared("spec", spec.name, loaded, None, {}, CostPreview({spec.name: spec.dataset_cost()}))
    if submission.blueprint is None:
        raise SpecError("give exactly one of spec_yaml and blueprint")
    signed = resolve_blueprint(submission.blueprint, registry)
    parameters: dict[str, object] = dict(submission.parameters)
    rendered = signed.blueprint.blueprint.render(parameters)
    bp = signed.blueprint.blueprint
    return Prepared(
        "blueprint", f"{bp.name}@{bp.version}", None, signed, parameters, CostPreview(rendered.dataset_cost())
    )
