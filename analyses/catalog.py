"""Second-stage validation: a parsed spec against one node's data catalogue.

Structure was checked when the spec was loaded; here we check meaning against the datasets this
node declares (columns, their types), before any budget is reserved or any row is read. Each
step kind checks its own columns (`StepBase.problems`).
"""

from __future__ import annotations

from collections.abc import Mapping

from analyses.spec import AnalysisSpec
from analyses.step import ColumnType, DatasetSchema, StepBase
from privacy.errors import SpecError

__all__ = ["ColumnType", "DatasetSchema", "check_steps", "steps_for_datasets"]


def steps_for_datasets(spec: AnalysisSpec, held: set[str]) -> list[StepBase]:
    """The steps of `spec` whose dataset this node holds."""
    return [s for s in spec.steps if spec.dataset_of(s) in held]


def check_steps(spec: AnalysisSpec, schemas: Mapping[str, DatasetSchema]) -> list[StepBase]:
    """The steps this node will run, after checking each against its dataset's schema.

    Raises:
        SpecError: one or more steps do not fit the declared data (all problems listed).
    """
    steps = steps_for_datasets(spec, set(schemas))
    problems: list[str] = []
    for step in steps:
        dataset = spec.dataset_of(step)
        schema = schemas[dataset]
        where = f"step {step.id!r} (dataset {dataset!r})"
        identifier = spec.unit_of(step).identifier
        if identifier not in schema:
            problems.append(f"{where}: identifier column {identifier!r} is not declared")
        problems += step.problems(schema, where)
    if problems:
        raise SpecError("\n".join(problems))
    return steps
