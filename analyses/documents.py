"""Loading the YAML documents people write, with every problem reported at once.

`load_document("spec.yaml", AnalysisSpec)` parses plain YAML (no Python tags, no code) and
validates against a pydantic model; all problems become one error, one line each:
`spec.yaml: steps[1].bounds: numeric steps need bounds: [lower, upper]`.

Documents also arrive from a coordinator that may be hostile, so the parser is bounded before
it builds anything: size, nesting depth, number of nodes and digits of an integer are capped,
anchors and aliases are refused (they let a few lines expand into billions of nodes), and text
that is not valid Unicode is refused. Every such input is a `SpecError` (or `ConfigError`)
naming the limit, never a crash or a hang.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from privacy.errors import SpecError, UserError

__all__ = [
    "MAX_DEPTH",
    "MAX_DIGITS",
    "MAX_DOCUMENT_BYTES",
    "MAX_NODES",
    "format_validation_error",
    "load_document",
    "load_mapping",
    "parse_document",
]

#: No document a person writes is this large; a bigger one is an accident or an attack.
MAX_DOCUMENT_BYTES = 2_000_000
#: Deepest nesting of mappings and lists (a spec needs about 6).
MAX_DEPTH = 32
#: Most mappings, lists and scalars in one document.
MAX_NODES = 200_000
#: Most digits in an integer (Python refuses to convert more than 4,300).
MAX_DIGITS = 100


class _Limit(yaml.YAMLError):
    """A document over one of the parser's bounds."""


class _BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that counts what it composes and refuses aliases."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise _Limit("anchors and aliases (&name, *name) are not read: write the values out")
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Limit(f"more than {MAX_NODES:,} values")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limit(f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > MAX_DIGITS:
            raise _Limit(f"an integer with {digits:,} digits (at most {MAX_DIGITS})")
        return int(super().construct_yaml_int(node))


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)

M = TypeVar("M", bound=BaseModel)


def format_validation_error(source: str, err: ValidationError, tags: tuple[str, ...] = ()) -> str:
    """One line per problem: `source: field.path[2].name: message`.

    `tags` are the discriminator values of the document's unions (the model's `union_tags`):
    pydantic puts them in the path after a list index, where people never wrote them.
    """
    problems = err.errors()
    inner = {p["loc"][:i] for p in problems for i in range(len(p["loc"]))}
    lines = []
    for problem in problems:
        if problem["type"] == "too_short" and problem["loc"] in inner:
            continue  # a list whose items failed is "too short" only because they did
        path = ""
        for part in problem["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in tags and path.endswith("]"):
                continue
            else:
                path += f".{part}" if path else str(part)
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field (check its spelling against the documentation)"
        elif problem["type"] == "union_tag_invalid":
            given = problem["input"].get("kind") if isinstance(problem["input"], dict) else None
            message = f"unknown step kind {given!r}; expected one of {', '.join(tags)}"
        lines.append(f"{source}: {path or '(document)'}: {message}")
    return "\n".join(lines)


def load_mapping(text: str, *, source: str, error: type[UserError] = SpecError) -> dict[str, object]:
    """Parse YAML `text` that must be a mapping (size-limited, plain YAML only).

    Raises:
        SpecError or ConfigError (as `error`): too large, unsafe or malformed YAML, or not a mapping.
    """
    if not isinstance(text, str):
        raise error(f"{source}: (document): expected YAML text, got {type(text).__name__}")
    if len(text) > MAX_DOCUMENT_BYTES:  # characters first: encoding a huge text costs memory
        raise error(f"{source}: the document is larger than {MAX_DOCUMENT_BYTES:,} bytes")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise error(f"{source}: the document is not valid Unicode text ({exc.reason})") from exc
    if size > MAX_DOCUMENT_BYTES:
        raise error(f"{source}: the document is larger than {MAX_DOCUMENT_BYTES:,} bytes")
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader checks the characters already here
        data = loader.get_single_data()
    except _Limit as exc:
        raise error(f"{source}: refused: {exc}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML (only plain YAML is read, no tags): {exc}") from exc
    except (RecursionError, ValueError, OverflowError) as exc:  # defence in depth: never a traceback
        raise error(f"{source}: not a document this parser can read: {type(exc).__name__}") from exc
    finally:
        if loader is not None:
            loader.dispose()
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
        raise error(format_validation_error(source, exc, getattr(model, "union_tags", ()))) from exc


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
