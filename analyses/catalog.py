"""Second-stage validation: a parsed spec against one node's data catalogue.

Structure was checked when the spec was loaded; here we check meaning against the datasets this
node declares (columns, their types), before any budget is reserved or any row is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from analyses.spec import AnalysisSpec, EvaluateStep, HistogramStep, ModelStep, ScoreStep, SgdStep, Step
from privacy.errors import SpecError

__all__ = ["ColumnType", "DatasetSchema", "check_steps", "steps_for_datasets"]

ColumnType = Literal["int", "float", "str", "datetime"]
DatasetSchema = Mapping[str, ColumnType]

_NUMERIC = ("int", "float")


def steps_for_datasets(spec: AnalysisSpec, held: set[str]) -> list[Step]:
    """The steps of `spec` whose dataset this node holds."""
    return [s for s in spec.steps if spec.dataset_of(s) in held]


def _problems(step: Step, schema: DatasetSchema, identifier: str, dataset: str) -> list[str]:
    where = f"step {step.id!r} (dataset {dataset!r})"
    problems: list[str] = []
    if identifier not in schema:
        problems.append(f"{where}: identifier column {identifier!r} is not declared")
    for key in step.by:
        ctype = schema.get(key.column)
        if ctype is None:
            problems.append(f"{where}: unknown column {key.column!r}; known: {', '.join(sorted(schema))}")
        elif key.derive in ("hour", "weekday", "month") and ctype != "datetime":
            problems.append(
                f"{where}: derive {key.derive} needs a datetime column, {key.column!r} is {ctype}"
            )
        elif key.derive == "band" and ctype not in _NUMERIC:
            problems.append(f"{where}: derive band needs a numeric column, {key.column!r} is {ctype}")
    if isinstance(step, ModelStep | ScoreStep | EvaluateStep | SgdStep):
        model = step.model
        numeric = [f.column for f in model.features if f.bounds is not None]
        if model.family != "logistic" and isinstance(step, ModelStep):
            numeric.append(model.target)
        for name in step.columns():
            ctype = schema.get(name)
            if ctype is None:
                problems.append(f"{where}: unknown column {name!r}; known: {', '.join(sorted(schema))}")
            elif name in numeric and ctype not in _NUMERIC:
                problems.append(f"{where}: {name!r} is used as a number but is {ctype}")
    column = getattr(step, "column", None)
    if column is not None:
        ctype = schema.get(column)
        if ctype is None:
            problems.append(f"{where}: unknown column {column!r}; known: {', '.join(sorted(schema))}")
        elif ctype not in _NUMERIC:
            kind = "histogram" if isinstance(step, HistogramStep) else step.kind
            problems.append(f"{where}: {kind} needs a numeric column, {column!r} is {ctype}")
    return problems


def check_steps(spec: AnalysisSpec, schemas: Mapping[str, DatasetSchema]) -> list[Step]:
    """The steps this node will run, after checking each against its dataset's schema.

    Raises:
        SpecError: one or more steps do not fit the declared data (all problems listed).
    """
    steps = steps_for_datasets(spec, set(schemas))
    problems: list[str] = []
    for step in steps:
        dataset = spec.dataset_of(step)
        problems += _problems(step, schemas[dataset], spec.unit_of(step).identifier, dataset)
    if problems:
        raise SpecError("\n".join(problems))
    return steps
