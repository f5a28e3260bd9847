"""Pure analysis layer: spec models, the registry of step kinds (each with its local and
aggregate step), the wire format of requests and replies, key sets and blueprints.

Names are imported on first use, so a command that needs only `analyses.documents` does not pay
for importing OpenDP and pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analyses.aggregate import combine
    from analyses.catalog import ColumnType, DatasetSchema, check_steps, steps_for_datasets
    from analyses.documents import format_validation_error, load_document, parse_document
    from analyses.keys import KeySpec
    from analyses.keysets import available_keysets, load_keyset
    from analyses.local_data import Exact, LocalData
    from analyses.local_step import dry_run, plan_releases, planned_cost, release_steps
    from analyses.operators import STEP_KINDS, Step
    from analyses.reply import AuditStamp, MeasurementRelease, NodeRelease, Refusal, Reply, StepRelease
    from analyses.request import PROTOCOL_VERSIONS, AnalysisRequest
    from analyses.spec import MAX_CELLS_PER_STEP, SPEC_MAJOR_VERSIONS, AnalysisSpec, LoadedSpec, load_spec
    from analyses.step import StepBase
    from analyses.tables import ResultTable, pool_vectors

_HOME = {
    "combine": "aggregate",
    **dict.fromkeys(["ColumnType", "DatasetSchema", "check_steps", "steps_for_datasets"], "catalog"),
    **dict.fromkeys(["format_validation_error", "load_document", "parse_document"], "documents"),
    "KeySpec": "keys",
    **dict.fromkeys(["available_keysets", "load_keyset"], "keysets"),
    **dict.fromkeys(["Exact", "LocalData"], "local_data"),
    **dict.fromkeys(["dry_run", "plan_releases", "planned_cost", "release_steps"], "local_step"),
    **dict.fromkeys(["STEP_KINDS", "Step"], "operators"),
    **dict.fromkeys(
        ["AuditStamp", "MeasurementRelease", "NodeRelease", "Refusal", "Reply", "StepRelease"], "reply"
    ),
    **dict.fromkeys(["AnalysisRequest", "PROTOCOL_VERSIONS"], "request"),
    **dict.fromkeys(
        ["AnalysisSpec", "LoadedSpec", "MAX_CELLS_PER_STEP", "SPEC_MAJOR_VERSIONS", "load_spec"], "spec"
    ),
    "StepBase": "step",
    **dict.fromkeys(["ResultTable", "pool_vectors"], "tables"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'analyses' has no attribute {name!r}")
    return getattr(importlib.import_module(f"analyses.{home}"), name)


__all__ = [
    "MAX_CELLS_PER_STEP",
    "PROTOCOL_VERSIONS",
    "SPEC_MAJOR_VERSIONS",
    "STEP_KINDS",
    "AnalysisRequest",
    "AnalysisSpec",
    "AuditStamp",
    "ColumnType",
    "DatasetSchema",
    "Exact",
    "KeySpec",
    "LoadedSpec",
    "LocalData",
    "MeasurementRelease",
    "NodeRelease",
    "Refusal",
    "Reply",
    "ResultTable",
    "Step",
    "StepBase",
    "StepRelease",
    "available_keysets",
    "check_steps",
    "combine",
    "dry_run",
    "format_validation_error",
    "load_document",
    "load_keyset",
    "load_spec",
    "parse_document",
    "plan_releases",
    "planned_cost",
    "pool_vectors",
    "release_steps",
    "steps_for_datasets",
]
