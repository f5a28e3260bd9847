"""The registry of step kinds: every module of this package that defines `STEPS` is an operator
family, and its step models join the spec's discriminated union.

A step family is one module holding its spec models, their meaning check against a node's
catalogue, their local step, their aggregate step and their summary (the contract is
`analyses.step.StepBase`). Adding a kind is adding such a module (and its tests): the union,
the list of kinds, the loader's messages, the node policy's `allowed_steps` and the published
JSON Schema all come from here. Modules whose name starts with `_` are shared helpers.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Annotated, Union, get_args

from pydantic import Field

from analyses.step import StepBase

__all__ = ["STEP_KINDS", "STEP_MODELS", "Step", "kind_of"]


def _discover() -> tuple[type[StepBase], ...]:
    models: list[type[StepBase]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        models += getattr(module, "STEPS", ())
    return tuple(models)


def kind_of(model: type[StepBase]) -> str:
    """The `kind` a step model answers to (its `Literal` annotation)."""
    (kind,) = get_args(model.model_fields["kind"].annotation)
    return str(kind)


#: Every step model, family by family.
STEP_MODELS: tuple[type[StepBase], ...] = _discover()
#: Every step kind, in the same order.
STEP_KINDS: tuple[str, ...] = tuple(kind_of(m) for m in STEP_MODELS)

if TYPE_CHECKING:
    Step = StepBase
else:
    Step = Annotated[Union[STEP_MODELS], Field(discriminator="kind")]  # noqa: UP007  # built at run time
