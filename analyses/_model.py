"""The base of every document model in this package: unknown fields refused, values frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Model"]


class Model(BaseModel):
    """A document people write: `extra="forbid"` (a misspelt field is an error), frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
