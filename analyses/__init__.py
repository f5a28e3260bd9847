"""Pure analysis layer: spec models, operators (local step + aggregate step), key sets.

Names are imported on first use, so a command that needs only `analyses.documents` does not pay
for importing OpenDP and pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analyses.aggregate import ResultTable, combine, key_frame, pool_vectors
    from analyses.catalog import ColumnType, DatasetSchema, check_steps, steps_for_datasets
    from analyses.documents import format_validation_error, load_document, parse_document
    from analyses.keysets import available_keysets, load_keyset
    from analyses.local_step import LocalData, exact_aggregates, planned_cost, release_steps
    from analyses.release import (
        PROTOCOL_VERSIONS,
        AnalysisRequest,
        MeasurementRelease,
        NodeRelease,
        StepRelease,
    )
    from analyses.spec import MAX_CELLS_PER_STEP, SPEC_MAJOR_VERSIONS, AnalysisSpec, KeySpec, Step

_HOME = {
    **dict.fromkeys(["ResultTable", "combine", "key_frame", "pool_vectors"], "aggregate"),
    **dict.fromkeys(["ColumnType", "DatasetSchema", "check_steps", "steps_for_datasets"], "catalog"),
    **dict.fromkeys(["format_validation_error", "load_document", "parse_document"], "documents"),
    **dict.fromkeys(["available_keysets", "load_keyset"], "keysets"),
    **dict.fromkeys(["LocalData", "exact_aggregates", "planned_cost", "release_steps"], "local_step"),
    **dict.fromkeys(
        ["AnalysisRequest", "MeasurementRelease", "NodeRelease", "PROTOCOL_VERSIONS", "StepRelease"],
        "release",
    ),
    **dict.fromkeys(["AnalysisSpec", "KeySpec", "MAX_CELLS_PER_STEP", "SPEC_MAJOR_VERSIONS", "Step"], "spec"),
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
    "AnalysisRequest",
    "AnalysisSpec",
    "ColumnType",
    "DatasetSchema",
    "KeySpec",
    "LocalData",
    "MeasurementRelease",
    "NodeRelease",
    "ResultTable",
    "Step",
    "StepRelease",
    "available_keysets",
    "check_steps",
    "combine",
    "exact_aggregates",
    "format_validation_error",
    "key_frame",
    "load_document",
    "load_keyset",
    "parse_document",
    "planned_cost",
    "pool_vectors",
    "release_steps",
    "steps_for_datasets",
]
