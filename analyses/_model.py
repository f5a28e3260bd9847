"""The base of every document model in this package: unknown fields refused, values frozen, and
a canonical form that a new optional field does not change.

**Fields added later.** A field added to a model after its first release is declared with
`since("1.N")` in its `Field(...)`; `canonical()` leaves it out while it holds its default. So a
spec that does not use the new field has the same canonical form, and the same spec hash, as it
had in the release before the field existed, and a node and a coordinator of either release agree
on it. Fields of the first release are always in, exactly as `model_dump(mode="json")` writes them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["Model", "canonical", "since"]

#: The `json_schema_extra` key that marks a field added after the first release.
SINCE = "since"


def since(version: str) -> dict[str, Any]:
    """`Field(default=..., json_schema_extra=since("1.1"))`: a field added in protocol 1.1."""
    return {SINCE: version}


class Model(BaseModel):
    """A document people write: `extra="forbid"` (a misspelt field is an error), frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def canonical(model: BaseModel) -> dict[str, Any]:
    """`model.model_dump(mode="json")` without the fields added later that hold their default."""
    pruned: dict[str, Any] = _prune(model, model.model_dump(mode="json"))
    return pruned


def _prune(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        for name, field in type(value).model_fields.items():
            extra = field.json_schema_extra
            added = isinstance(extra, dict) and SINCE in extra
            current = getattr(value, name)
            if added and not field.is_required() and current == field.get_default(call_default_factory=True):
                dumped.pop(name, None)
            elif name in dumped:
                dumped[name] = _prune(current, dumped[name])
        return dumped
    if isinstance(value, list | tuple) and isinstance(dumped, list):
        return [_prune(v, d) for v, d in zip(value, dumped, strict=False)]
    if isinstance(value, dict) and isinstance(dumped, dict):
        return {k: _prune(value.get(k), d) for k, d in dumped.items()}
    return dumped
