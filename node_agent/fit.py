"""`oda-node fit BLUEPRINT --dataset NAME --source FILE`: propose the `node.yaml` dataset block
that maps a partner's own file onto a blueprint's dataset contract.

Each contract column is matched to a column of the file by what its values look like (the share
of a sample that parses as the contract's type, falls in its range, is one of its allowed values
or a key of its key set) and, to break ties, by name. Datetime text is tried as ISO 8601 and as
the day-first formats UK systems export (`03/12/2026 17:05`). The proposal carries the contract's
rules (`required`, `min`, `max`, `allowed`), so `oda-node check` then counts every row that does
not fit; columns nothing fits are left for the partner to map, with the best candidate named.

Nothing leaves the node: the sample is read here and only the proposal is printed or written.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analyses.blueprint import ColumnContract, DatasetContract, LoadedBlueprint, blueprint_file, load_bundled
from analyses.keysets import load_keyset
from privacy.errors import ConfigError, SpecError

__all__ = ["ColumnFit", "DatasetFit", "fit_dataset", "load_blueprint_for_fit", "write_fit"]

#: Rows read to judge the columns (the whole file is never needed).
SAMPLE_ROWS = 20_000
#: Least share of a sample's non-empty values that must fit for a column to be matched.
MIN_FIT = 0.95
#: Datetime formats tried after ISO 8601, day first as UK exports write them.
DATETIME_FORMATS = (
    "%d/%m/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y",
    "%d-%m-%Y %H:%M",
    "%d-%m-%Y %H:%M:%S",
    "%d.%m.%Y %H:%M",
    "%Y/%m/%d %H:%M",
)


@dataclass(frozen=True)
class ColumnFit:
    """How one contract column is found in the file."""

    name: str
    source: str | None
    share: float  # of the sample's non-empty values that fit the contract
    missing: float  # share of empty values in the sample
    format: str | None = None  # datetime text format, when not ISO 8601
    note: str = ""


@dataclass
class DatasetFit:
    """The proposal for one dataset, and what does not fit."""

    dataset: str
    path: str
    identifier: str
    columns: list[ColumnFit] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    @property
    def unmatched(self) -> list[ColumnFit]:
        return [c for c in self.columns if c.source is None]

    def block(self, contract: DatasetContract) -> dict[str, Any]:
        """The `datasets:` entry for node.yaml."""
        columns: dict[str, Any] = {}
        for fit in self.columns:
            rules = contract.columns[fit.name].node_column()
            entry: dict[str, Any] = {}
            if fit.source is not None and fit.source != fit.name:
                entry["source"] = fit.source
            if fit.source is None:
                entry["source"] = f"TODO: the column of {Path(self.path).name} holding {fit.name}"
            entry.update(rules)
            if fit.format:
                entry["format"] = fit.format
            columns[fit.name] = entry
        return {self.dataset: {"path": self.path, "identifier": self.identifier, "columns": columns}}

    def yaml(self, contract: DatasetContract) -> str:
        """The block as YAML text (indented for `datasets:`), a comment per column saying how it
        was matched."""
        entry = self.block(contract)[self.dataset]
        lines = [
            f"  # proposed by `oda-node fit` for the contract of dataset {self.dataset!r}",
            f"  {self.dataset}:",
            f"    path: {_flow(entry['path'])}",
            f"    identifier: {entry['identifier']}",
            "    columns:",
        ]
        for fit in self.columns:
            lines.append(f"      {fit.name}: {_flow(entry['columns'][fit.name])}  # {_describe(fit)}")
        return "\n".join(lines) + "\n"


def _flow(value: object) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
        .strip()
        .removesuffix("...")
        .strip()
    )


def _describe(fit: ColumnFit) -> str:
    if fit.source is None:
        return f"NOT FOUND{': ' + fit.note if fit.note else ''}"
    text = f"from {fit.source!r}: {fit.share:.0%} of values fit"
    if fit.missing:
        text += f", {fit.missing:.0%} empty"
    return text + (f"; {fit.note}" if fit.note else "")


def load_blueprint_for_fit(ref: str) -> LoadedBlueprint:
    """A blueprint file, or a blueprint of the shipped catalogue by name.

    Raises:
        SpecError: neither.
    """
    return blueprint_file(ref) or load_bundled(ref)


def _read_sample(source: Path) -> pd.DataFrame:
    """Raises: ConfigError when the file cannot be read as CSV or Parquet."""
    try:
        if source.suffix in (".parquet", ".pq"):
            return pd.read_parquet(source).head(SAMPLE_ROWS).astype("string")
        return pd.read_csv(source, nrows=SAMPLE_ROWS, dtype="string", keep_default_na=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: cannot be read as CSV or Parquet: {exc}") from exc


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _name_similarity(a: str, b: str) -> float:
    na, nb = _normal(a), _normal(b)
    if not na or not nb:
        return 0.0
    if na == nb:
        return 1.0
    contained = 0.8 if (na in nb or nb in na) else 0.0
    return max(contained, difflib.SequenceMatcher(None, na, nb).ratio())


def _datetime_fit(values: pd.Series) -> tuple[float, str | None]:
    best: tuple[float, str | None] = (0.0, None)
    iso = pd.to_datetime(values, errors="coerce", format="ISO8601")
    best = (float(iso.notna().mean()), None)
    if best[0] >= 0.999:
        return best
    for fmt in DATETIME_FORMATS:
        share = float(pd.to_datetime(values, errors="coerce", format=fmt).notna().mean())
        if share > best[0] + 1e-9:
            best = (share, fmt)
    return best


def _value_fit(
    column: ColumnContract, keyset: tuple[str, ...] | None, values: pd.Series
) -> tuple[float, str | None]:
    """Share of the non-empty `values` that fit the contract column, and a datetime format."""
    if values.empty:
        return 0.0, None
    if column.type == "datetime":
        return _datetime_fit(values)
    if column.type in ("int", "float"):
        numbers = pd.to_numeric(values, errors="coerce")
        ok = numbers.notna()
        if column.type == "int":
            ok &= (numbers.fillna(0) % 1) == 0
        if column.min is not None:
            ok &= numbers.fillna(column.min) >= column.min
        if column.max is not None:
            ok &= numbers.fillna(column.max) <= column.max
        if column.allowed is not None:
            ok &= numbers.isin([float(a) for a in column.allowed])
        return float(ok.mean()), None
    text = values.str.strip()
    if column.allowed is not None:
        return float(text.isin([str(a) for a in column.allowed]).mean()), None
    if keyset is not None:
        return float(text.isin(keyset).mean()), None
    return 0.5, None  # free text fits anything: the name decides


def _casefold_fit(allowed: tuple[str | int, ...] | None, values: pd.Series) -> float:
    """Share of `values` that are `allowed` ones but for case and surrounding spaces."""
    present = values.dropna()
    if allowed is None or present.empty:
        return 0.0
    folded = {str(a).strip().casefold() for a in allowed}
    return float(present.str.strip().str.casefold().isin(folded).mean())


def _unmatched(
    name: str,
    allowed: tuple[str | int, ...] | None,
    sample: pd.DataFrame,
    left: list[str],
    judged: dict[tuple[str, str], tuple[float, str | None]],
) -> str:
    """What to tell the partner about a contract column no file column fits."""
    if not left:
        return "no column left"

    def closeness(src: str) -> tuple[float, float, float]:
        return judged[(name, src)][0], _casefold_fit(allowed, sample[src]), _name_similarity(name, src)

    best = max(left, key=closeness)
    seen = sample[best].dropna().astype(str).unique()[:3]
    note = (
        f"best candidate {best!r}, {judged[(name, best)][0]:.0%} of its values fit "
        f"(it holds e.g. {', '.join(repr(v) for v in seen)})"
    )
    if closeness(best)[1] >= MIN_FIT:
        note += "; they are the contract's values but for case and spaces: recode them"
    return note


def fit_dataset(
    loaded: LoadedBlueprint,
    dataset: str | None,
    source: Path,
    data_dir: Path | None,
    parameters: dict[str, object] | None = None,
) -> tuple[DatasetFit, DatasetContract]:
    """Match `source`'s columns to the contract of `dataset` in the blueprint.

    Raises:
        ConfigError: an unknown dataset, an unreadable file, or a file outside `data_dir`.
    """
    blueprint = loaded.blueprint
    names = list(blueprint.datasets)
    if dataset is None:
        if len(names) != 1:
            raise ConfigError(
                f"blueprint {blueprint.name} declares datasets {', '.join(names)}: pick one with --dataset"
            )
        dataset = names[0]
    if dataset not in blueprint.datasets:
        raise ConfigError(
            f"blueprint {blueprint.name} has no dataset {dataset!r}; it declares {', '.join(names)}"
        )
    contract = blueprint.datasets[dataset]
    values = blueprint.resolve(parameters)
    path = str(source)
    if data_dir is not None:
        try:
            path = str(source.resolve().relative_to(data_dir.resolve()))
        except ValueError as exc:
            raise ConfigError(
                f"{source} is outside the node's data_dir ({data_dir}): copy it there first "
                "(every dataset path must stay inside data_dir)"
            ) from exc
    sample = _read_sample(source)
    candidates: list[tuple[float, str, str, float, str | None]] = []
    judged: dict[tuple[str, str], tuple[float, str | None]] = {}
    for name, column in contract.columns.items():
        keyset_name = blueprint.keyset_of(dataset, name, values)
        keyset = load_keyset(keyset_name) if keyset_name else None
        for src in sample.columns:
            present = sample[src].dropna()
            share, fmt = _value_fit(column, keyset, present)
            if name == contract.identifier and len(present):
                share = min(share, 1.0) * (1.0 if present.nunique() / len(present) >= 0.3 else 0.5)
            judged[(name, src)] = (share, fmt)
            score = 0.7 * share + 0.3 * _name_similarity(name, src)
            candidates.append((score, name, src, share, fmt))
    fits: dict[str, ColumnFit] = {}
    used: set[str] = set()
    for score, name, src, share, fmt in sorted(candidates, reverse=True):
        if name in fits or src in used or share < MIN_FIT or score < 0.7:
            continue
        missing = float(sample[src].isna().mean())
        fits[name] = ColumnFit(name, src, share, missing, fmt)
        used.add(src)
    for name in contract.columns:
        if name not in fits:
            column = contract.columns[name]
            keyset_name = blueprint.keyset_of(dataset, name, values)
            allowed = column.allowed or (load_keyset(keyset_name) if keyset_name else None)
            left = [src for src in sample.columns if src not in used]
            fits[name] = ColumnFit(name, None, 0.0, 0.0, note=_unmatched(name, allowed, sample, left, judged))
    result = DatasetFit(dataset, path, contract.identifier, [fits[n] for n in contract.columns])
    result.unused = [c for c in sample.columns if c not in used]
    return result, contract


def write_fit(config_path: Path, fit: DatasetFit, contract: DatasetContract, cap: float) -> str:
    """Add the proposed dataset to `config_path` (its datasets, allowed_datasets and a budget cap),
    keeping every other line and comment; the old file is kept as `node.yaml.bak`.

    Raises:
        ConfigError: a column is unmatched, the dataset is already declared, or the file's
            layout is not one this edit can extend (the message says what to add by hand).
    """
    if fit.unmatched:
        raise ConfigError(
            f"not written: {', '.join(c.name for c in fit.unmatched)} found no column in the file; "
            "map them by hand (the printed proposal marks them TODO)"
        )
    text = config_path.read_text()
    current = yaml.safe_load(text) or {}
    if fit.dataset in (current.get("datasets") or {}):
        raise ConfigError(f"{config_path} already declares dataset {fit.dataset!r}; edit it there")
    block = fit.yaml(contract)
    if not re.search(r"^datasets:\s*(#.*)?$", text, re.M):
        raise ConfigError(
            f"{config_path} has no top-level `datasets:` block to add to; add the proposal by hand"
        )
    edited = re.sub(r"^(datasets:[^\n]*\n)", lambda m: m.group(1) + block, text, count=1, flags=re.M)
    allowed = re.search(r"^(\s+allowed_datasets:\s*\[)([^\]]*)\]", edited, re.M)
    caps = re.search(r"^(\s+total_rho_cap:\s*\{)([^}]*)\}", edited, re.M)
    if allowed is None or caps is None:
        raise ConfigError(
            f"{config_path}: policy.allowed_datasets and policy.total_rho_cap must be one-line lists/maps "
            f"for `fit --write`; add {fit.dataset!r} to both by hand"
        )
    items = [s for s in (allowed.group(2).strip(), fit.dataset) if s]
    edited = edited[: allowed.start()] + allowed.group(1) + ", ".join(items) + "]" + edited[allowed.end() :]
    caps = re.search(r"^(\s+total_rho_cap:\s*\{)([^}]*)\}", edited, re.M)
    assert caps is not None  # noqa: S101 - found above, only shifted
    entries = [s for s in (caps.group(2).strip(), f"{fit.dataset}: {cap:g}") if s]
    edited = edited[: caps.start()] + caps.group(1) + ", ".join(entries) + "}" + edited[caps.end() :]
    from node_agent.config import load_node_config

    candidate = config_path.with_name(config_path.name + ".fit")
    candidate.write_text(edited)
    try:
        load_node_config(candidate)
    except (ConfigError, SpecError) as exc:
        raise ConfigError(f"the edited node.yaml would not be valid, so nothing was written: {exc}") from exc
    finally:
        candidate.unlink(missing_ok=True)
    config_path.with_name(config_path.name + ".bak").write_text(text)
    config_path.write_text(edited)
    return block
