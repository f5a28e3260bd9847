"""Loading the YAML documents people write, with every problem reported at once.

`load_document("spec.yaml", AnalysisSpec)` parses with `yaml.safe_load` (no Python tags, no
code) and validates against a pydantic model; all problems become one error, one line each:
`spec.yaml: steps[1].bounds: numeric steps need bounds: [lower, upper]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from privacy.errors import SpecError, UserError

__all__ = ["MAX_DOCUMENT_BYTES", "format_validation_error", "load_document", "load_mapping", "parse_document"]

#: No document a person writes is this large; a bigger one is an accident or an attack.
MAX_DOCUMENT_BYTES = 2_000_000

M = TypeVar("M", bound=BaseModel)


def format_validation_error(source: str, err: ValidationError) -> str:
    """One line per problem: `source: field.path[2].name: message`."""
    lines = []
    for problem in err.errors():
        path = ""
        for part in problem["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in {"count", "sum", "mean", "histogram", "quantile"} and path.endswith("]"):
                continue  # pydantic adds the union tag to the path; people never wrote it
            else:
                path += f".{part}" if path else str(part)
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field (check its spelling against the documentation)"
        elif problem["type"] == "union_tag_invalid":
            message = (
                f"unknown step kind {problem['input'].get('kind')!r}; "
                "expected one of count, sum, mean, histogram, quantile"
            )
        lines.append(f"{source}: {path or '(document)'}: {message}")
    return "\n".join(lines)


def load_mapping(text: str, *, source: str, error: type[UserError] = SpecError) -> dict[str, Any]:
    """Parse YAML `text` that must be a mapping (size-limited, plain YAML only).

    Raises:
        SpecError or ConfigError (as `error`): too large, unsafe or malformed YAML, or not a mapping.
    """
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise error(f"{source}: the document is larger than {MAX_DOCUMENT_BYTES:,} bytes")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML (only plain YAML is read, no tags): {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{source}: (document): expected a mapping of fields, got {type(data).__name__}")
    return data


def parse_document(text: str, model: type[M], *, source: str, error: type[UserError] = SpecError) -> M:
    """Validate YAML `text` against `model`.

    Raises:
        SpecError or ConfigError (as `error`): unsafe or malformed YAML, or invalid fields.
    """
    data = load_mapping(text, source=source, error=error)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(format_validation_error(source, exc)) from exc


def load_document(path: Path, model: type[M], *, error: type[UserError] = SpecError) -> M:
    """Read and validate a YAML file.

    Raises:
        SpecError or ConfigError (as `error`): missing file, unsafe or malformed content.
    """
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read the file: {exc.strerror}") from exc
    return parse_document(text, model, source=str(path), error=error)
