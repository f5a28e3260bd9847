"""Blueprints: published, parameterised analyses that another analytics office can run as they are.

A blueprint is one YAML document (`blueprint: 1`) holding:

- typed `parameters` with defaults (`rho` is required: the blueprint's budget at each partner);
- the `datasets` it needs, as contracts (columns, types, meaning; how example data look);
- its `analyses`: analysis-spec templates where `${name}` stands for a parameter, each with a
  `budget_share` of `rho`;
- `disclosure` settings applied to every analysis, `governance` metadata, and the `outputs`
  a report shows (tables, charts, time profiles, maps, models, derived indices).

Rendering substitutes the parameters and validates every analysis as a spec, so what reaches a
node is an ordinary spec text that the node parses and checks itself. The cost a partner will be
debited follows from the rendered specs and the datasets it holds, exactly as a node computes it.

Pure: no Flower, HTTP or database. Signing and registries live in `coordinator.blueprints.registry`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import Field, ValidationError, model_validator

from analyses._model import Model, canonical
from analyses.catalog import ColumnType, check_steps
from analyses.documents import format_validation_error, load_mapping
from analyses.keysets import available_keysets
from analyses.spec import AnalysisSpec, DisclosureSpec, LoadedSpec, load_spec
from privacy.budget import Rho
from privacy.errors import SpecError

__all__ = [
    "BLUEPRINT_FORMAT",
    "AnalysisTemplate",
    "Blueprint",
    "ColumnContract",
    "DatasetContract",
    "Governance",
    "LoadedBlueprint",
    "OutputSpec",
    "Parameter",
    "RenderedBlueprint",
    "SignedBlueprint",
    "blueprint_file",
    "bundled_blueprints",
    "content_hash",
    "load_bundled",
    "parse_blueprint",
    "parse_parameters",
]

BLUEPRINT_FORMAT = 1
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ParamValue = int | float | str | bool


class Parameter(Model):
    """One typed parameter: its type, default, limits and what it means."""

    type: Literal["int", "float", "str", "bool", "keyset", "choice"]
    default: ParamValue
    description: str = Field(min_length=1)
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _default_fits(self) -> Parameter:
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice parameter needs 'choices'")
        if self.choices is not None and self.type != "choice":
            raise ValueError("'choices' is only for type: choice")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError("min/max apply to int or float parameters")
        self.coerce(self.default, "default")
        return self

    def coerce(self, value: object, name: str) -> ParamValue:
        """`value` (typed, or a string from the command line) as this parameter's type.

        Raises:
            ValueError: it is not of the type, or outside the limits or choices.
        """
        kind = self.type
        try:
            if kind == "bool":
                if isinstance(value, bool):
                    out: ParamValue = value
                elif str(value).lower() in ("true", "yes", "1"):
                    out = True
                elif str(value).lower() in ("false", "no", "0"):
                    out = False
                else:
                    raise ValueError
            elif kind == "int":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                out = int(str(value)) if isinstance(value, str) else int(value)  # type: ignore[call-overload]
            elif kind == "float":
                if isinstance(value, bool):
                    raise ValueError
                out = float(value)  # type: ignore[arg-type]
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise ValueError(f"parameter {name!r} must be {kind}, got {value!r}") from None
        if isinstance(out, int | float) and not isinstance(out, bool):
            if self.min is not None and out < self.min:
                raise ValueError(f"parameter {name!r} must be at least {self.min:g}, got {out}")
            if self.max is not None and out > self.max:
                raise ValueError(f"parameter {name!r} must be at most {self.max:g}, got {out}")
        if kind == "choice" and out not in (self.choices or ()):
            raise ValueError(
                f"parameter {name!r} must be one of {', '.join(self.choices or ())}, got {out!r}"
            )
        if kind == "keyset" and out not in available_keysets():
            raise ValueError(
                f"parameter {name!r} names the unknown key set {out!r}; shipped: {', '.join(available_keysets())}"
            )
        return out


class ColumnContract(Model):
    """One column a partner must provide: its type and meaning, and what valid values look like."""

    type: ColumnType
    meaning: str = Field(min_length=1)
    allowed: tuple[str | int, ...] | None = None
    min: float | None = None
    max: float | None = None
    keyset: str | None = Field(default=None, description="values are keys of this key set (or ${param})")
    nullable: bool = Field(default=False, description="missing values are expected (data-quality profile)")
    example: dict[str, Any] = Field(
        default_factory=dict, description="how the embedded federation's example data are generated"
    )

    def node_column(self) -> dict[str, object]:
        """This column as a partner's `node.yaml` declares it: its type and the contract's rules."""
        entry: dict[str, object] = {"type": self.type, "required": not self.nullable}
        if self.allowed is not None:
            entry["allowed"] = list(self.allowed)
        for rule in ("min", "max"):
            bound = getattr(self, rule)
            if bound is not None:
                entry[rule] = int(bound) if float(bound).is_integer() else bound
        return entry


class DatasetContract(Model):
    """A logical dataset: what one row is, who is protected, and its columns."""

    description: str = Field(min_length=1)
    identifier: str = Field(min_length=1)
    columns: dict[str, ColumnContract] = Field(min_length=1)
    example_holders: dict[str, int] = Field(
        min_length=1, description="partner -> rows of example data in the embedded federation"
    )

    @model_validator(mode="after")
    def _identifier(self) -> DatasetContract:
        if self.identifier not in self.columns:
            raise ValueError(f"identifier {self.identifier!r} is not one of the columns")
        return self

    def column_types(self) -> dict[str, ColumnType]:
        return {name: column.type for name, column in self.columns.items()}


class Governance(Model):
    """Who answers for the blueprint, and on what basis it processes data."""

    purpose: str = Field(min_length=1)
    lawful_basis: str = Field(min_length=1)
    dpia_ref: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    licence: str = Field(min_length=1)
    contact: str | None = None


class AnalysisTemplate(Model):
    """An analysis spec with `${param}` placeholders and its share of the blueprint's budget."""

    budget_share: float = Field(gt=0, le=1)
    spec: dict[str, Any]


class OutputSpec(Model):
    """One element of the report.

    `table` names `ANALYSIS.TABLE`. Kinds: `table` (as published), `chart` (bars of `value`
    by `x`, optionally one bar per `series`, with 95% error bars), `time` (a profile over `x`),
    `map` (a choropleth of `value` by the area column `x`), `model` (coefficients and
    evaluation of the model fitted by analysis `table`), `index` (a composite of several area
    tables with rank intervals), `ratio` (`numerator` over `denominator`, both
    `ANALYSIS.TABLE.COLUMN`, joined on `x`) and `profile` (the share of missing values of each
    field, from `inputs`: count tables keyed by a `derive: missing` column).
    """

    kind: Literal["table", "chart", "time", "map", "model", "index", "ratio", "profile"]
    id: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    title: str = Field(min_length=1)
    table: str | None = None
    x: str | None = None
    value: str | None = None
    series: str | None = None
    inputs: tuple[str, ...] = ()
    weights: tuple[float | str, ...] = Field(default=(), description="index: one per input, or ${param}")
    numerator: str | None = None
    denominator: str | None = None
    per: float = Field(default=1.0, gt=0, description="ratio multiplier, e.g. 1000 for 'per 1,000'")
    map: bool = Field(default=False, description="index or ratio: also draw it as a map")
    where: dict[str, str] = Field(
        default_factory=dict,
        max_length=8,
        description="only the table's rows whose columns hold these values (a map of one group of "
        "a long table: `known_to_agencies: '3+'`)",
    )
    caption: str = ""

    @model_validator(mode="after")
    def _fields(self) -> OutputSpec:
        need = {
            "table": ("table",),
            "chart": ("table", "x", "value"),
            "time": ("table", "x", "value"),
            "map": ("table", "x", "value"),
            "model": ("table",),
            "index": ("x",),
            "ratio": ("x", "numerator", "denominator"),
            "profile": (),
        }[self.kind]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} output needs {', '.join(missing)}")
        if self.kind == "profile" and not self.inputs:
            raise ValueError(
                "a profile output needs inputs: ANALYSIS.TABLE counts with a derive: missing key"
            )
        if self.kind == "index":
            if len(self.inputs) < 2:
                raise ValueError("an index output needs at least two inputs (ANALYSIS.TABLE.COLUMN)")
            if self.weights and len(self.weights) != len(self.inputs):
                raise ValueError("an index output needs one weight per input")
        return self

    def sources(self) -> list[str]:
        """The `ANALYSIS.TABLE` names this output reads."""
        names = [self.table] if self.table else []
        for ref in (*self.inputs, self.numerator, self.denominator):
            if ref:
                names.append(ref.rsplit(".", 1)[0])
        return [n for n in names if n]


class Blueprint(Model):
    """A published, parameterised analysis."""

    blueprint: Literal[1]
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=60)
    version: str = Field(
        pattern=r"^\d+\.\d+\.\d+$", description="semantic version; published versions never change"
    )
    title: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    governance: Governance
    parameters: dict[str, Parameter]
    datasets: dict[str, DatasetContract] = Field(min_length=1)
    disclosure: DisclosureSpec = DisclosureSpec()
    analyses: tuple[AnalysisTemplate, ...] = Field(min_length=1)
    outputs: tuple[OutputSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Blueprint:
        problems = []
        rho = self.parameters.get("rho")
        if rho is None or rho.type != "float":
            problems.append("a blueprint needs a float parameter 'rho': its budget at each partner")
        total = sum(a.budget_share for a in self.analyses)
        if total > 1 + 1e-9:
            problems.append(f"the analyses' budget_share add up to {total:g}, over 1")
        used = set()
        for template in self.analyses:
            used |= set(_PLACEHOLDER.findall(yaml.safe_dump(template.spec)))
        for output in self.outputs:
            used |= {p for w in output.weights if isinstance(w, str) for p in _PLACEHOLDER.findall(w)}
        for column in (c for d in self.datasets.values() for c in d.columns.values()):
            used |= set(_PLACEHOLDER.findall(column.keyset or ""))
        unknown = sorted(used - set(self.parameters))
        if unknown:
            problems.append(f"placeholders name undeclared parameters: {', '.join(unknown)}")
        ids = [o.id for o in self.outputs]
        if len(set(ids)) != len(ids):
            problems.append("two outputs have the same id")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def resolve(self, given: Mapping[str, object] | None = None) -> dict[str, ParamValue]:
        """Every parameter's value: the given ones (checked and typed), else the defaults.

        Raises:
            SpecError: an unknown parameter, or a value of the wrong type or out of range.
        """
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.parameters))
        if unknown:
            raise SpecError(
                f"blueprint {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters: {', '.join(self.parameters)}"
            )
        values: dict[str, ParamValue] = {}
        problems = []
        for name, param in self.parameters.items():
            try:
                values[name] = param.coerce(given.get(name, param.default), name)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise SpecError(f"blueprint {self.name!r}: " + "; ".join(problems))
        return values

    def render(self, given: Mapping[str, object] | None = None) -> RenderedBlueprint:
        """Substitute the parameters and validate every analysis as a spec.

        Raises:
            SpecError: a bad parameter, or an analysis that is not a valid spec with these values.
        """
        values = self.resolve(given)
        rho = float(values["rho"])
        specs: list[LoadedSpec] = []
        for i, template in enumerate(self.analyses):
            data = _substitute(template.spec, values)
            if not isinstance(data, dict):
                raise SpecError(f"blueprint {self.name!r}: analyses[{i}].spec is not a mapping")
            privacy = dict(data.get("privacy") or {})
            privacy.pop("epsilon", None)
            privacy.pop("delta", None)
            privacy["rho"] = round(rho * template.budget_share, 12)
            data = {"version": 1, **data, "privacy": privacy}
            # fields of later minor versions only when set: a node of an earlier release reads the spec
            data.setdefault("disclosure", canonical(self.disclosure))
            text = f"# rendered from blueprint {self.name} {self.version}\n" + yaml.safe_dump(
                data, sort_keys=False
            )
            specs.append(load_spec(text, f"blueprint {self.name} analyses[{i}]"))
        return RenderedBlueprint(self, values, tuple(specs))

    def contract_schemas(self) -> dict[str, dict[str, ColumnType]]:
        """dataset -> column -> type, as the contracts declare them."""
        return {name: contract.column_types() for name, contract in self.datasets.items()}

    def keyset_of(self, dataset: str, column: str, values: Mapping[str, ParamValue]) -> str | None:
        contract = self.datasets[dataset].columns[column]
        return str(_substitute(contract.keyset, values)) if contract.keyset else None


@dataclass(frozen=True)
class RenderedBlueprint:
    """A blueprint with its parameters filled in: the specs the nodes will be sent."""

    blueprint: Blueprint
    parameters: dict[str, ParamValue]
    analyses: tuple[LoadedSpec, ...]

    def spec(self, name: str) -> AnalysisSpec:
        for loaded in self.analyses:
            if loaded.spec.name == name:
                return loaded.spec
        raise SpecError(f"blueprint {self.blueprint.name!r} has no analysis {name!r}")

    def weights(self, output: OutputSpec) -> list[float]:
        """An index output's weights, parameters filled in.

        Raises:
            SpecError: a weight is not a number, or they are all 0.
        """
        try:
            weights = [float(_substitute(w, self.parameters)) for w in output.weights]
        except ValueError as exc:
            raise SpecError(f"output {output.id!r}: a weight is not a number: {exc}") from exc
        if weights and (min(weights) < 0 or sum(weights) <= 0):
            raise SpecError(f"output {output.id!r}: weights must be >= 0 and not all 0, got {weights}")
        return weights

    def partner_cost(self, held: set[str], law_enforcement: bool = False) -> dict[str, Rho]:
        """What a partner holding datasets `held` is debited for each analysis (0 where it holds
        none of an analysis's datasets, or where it is refused for not being law enforcement).

        A node debits each step of a dataset it holds at that step's share of the analysis
        budget (a model's rounds together make up its step's share), so this is its ledger's sum.
        """
        costs: dict[str, Rho] = {}
        for name, per in self.dataset_cost().items():
            refused = self.spec(name).law_enforcement_only and not law_enforcement
            total = Rho(0.0)
            for dataset, cost in per.items():
                if dataset in held and not refused:
                    total = total + cost
            costs[name] = total
        return costs

    def dataset_cost(self) -> dict[str, dict[str, Rho]]:
        """analysis -> dataset -> the budget its steps on that dataset take at a holder."""
        return {loaded.spec.name: loaded.spec.dataset_cost() for loaded in self.analyses}


def _substitute(value: Any, values: Mapping[str, ParamValue]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_substitute(v, values) for v in value]
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    return value


def content_hash(data: bytes) -> str:
    """The blueprint's address: sha256 of its exact bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LoadedBlueprint:
    """A parsed blueprint and where its bytes came from."""

    blueprint: Blueprint
    sha256: str
    source: str
    text: str


class SignedBlueprint(NamedTuple):
    """A blueprint and who signed it (`None` for the shipped catalogue and for plain files)."""

    blueprint: LoadedBlueprint
    signer: str | None


def parse_blueprint(data: bytes, source: str) -> LoadedBlueprint:
    """Parse and check a blueprint: its structure, its defaults rendered into valid specs, every
    analysis on a dataset it declares, and every step against the declared contracts.

    Raises:
        SpecError: what is wrong, one line per problem.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: a blueprint is UTF-8 text: {exc}") from exc
    raw = load_mapping(text, source=source)
    if raw.get("blueprint") != BLUEPRINT_FORMAT:
        raise SpecError(f"{source}: not a blueprint: it must start with 'blueprint: {BLUEPRINT_FORMAT}'")
    try:
        blueprint = Blueprint.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_validation_error(source, exc)) from exc
    rendered = blueprint.render()
    schemas = blueprint.contract_schemas()
    problems = []
    names = set()
    for spec in (loaded.spec for loaded in rendered.analyses):
        names.add(spec.name)
        for step in spec.steps:
            dataset = spec.dataset_of(step)
            if dataset not in blueprint.datasets:
                problems.append(
                    f"analysis {spec.name!r} step {step.id!r} reads undeclared dataset {dataset!r}"
                )
            elif spec.unit_of(step).identifier != blueprint.datasets[dataset].identifier:
                problems.append(
                    f"analysis {spec.name!r} step {step.id!r} protects {spec.unit_of(step).identifier!r}, "
                    f"but dataset {dataset!r} is identified by {blueprint.datasets[dataset].identifier!r}"
                )
        try:
            check_steps(spec, schemas)
        except SpecError as exc:
            problems.append(f"analysis {spec.name!r} does not fit the contracts: {exc}")
    for output in blueprint.outputs:
        for source_name in output.sources():
            if source_name.split(".", 1)[0] not in names:
                problems.append(f"output {output.id!r} reads {source_name!r}, which no analysis produces")
    if problems:
        raise SpecError(f"{source}: " + "; ".join(problems))
    return LoadedBlueprint(blueprint, content_hash(data), source, text)


def blueprint_file(ref: str) -> LoadedBlueprint | None:
    """The blueprint in the file `ref` names (a `.yaml` path or an existing file), else None.

    Raises:
        SpecError: the file cannot be read or is not a valid blueprint.
    """
    path = Path(ref)
    if not (ref.endswith((".yaml", ".yml")) or path.is_file()):
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{ref}: cannot read the blueprint: {exc.strerror}") from exc
    return parse_blueprint(data, str(path))


def parse_parameters(pairs: list[str]) -> dict[str, object]:
    """`NAME=VALUE` pairs (the `--param` options) as a mapping.

    Raises:
        SpecError: a pair without `=` or without a name.
    """
    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SpecError(f"--param {pair!r}: write NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def bundled_blueprints() -> list[str]:
    """Names of the blueprints in the catalogue shipped with this package."""
    folder = resources.files("analyses") / "blueprints"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_bundled(name: str) -> LoadedBlueprint:
    """A blueprint of the shipped catalogue.

    Raises:
        SpecError: no blueprint of that name is shipped.
    """
    names = bundled_blueprints()
    if name not in names:
        raise SpecError(f"no blueprint {name!r} in the catalogue; it has: {', '.join(names)}")
    data = (resources.files("analyses") / "blueprints" / f"{name}.yaml").read_bytes()
    return parse_blueprint(data, f"catalogue:{name}")
