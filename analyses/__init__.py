"""Pure analysis layer: spec models, operators (local step + aggregate step), key sets."""

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
