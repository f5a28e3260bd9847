"""Example partner data for blueprints: seeded, fitting each dataset's contract, with a signal.

Every column of a blueprint's dataset contract says how its example values are drawn
(`example: {gen: ...}`); the embedded federation writes them for the partners a contract names
in `example_holders`, with a `node.yaml` declaring exactly the contract's columns. Generators:

- `id` (people with repeat rows: `repeat`, the mean rows per person),
- `resident` (distinct residents of one population of `people` shared by every partner, as text
  identifiers; residents with more `need`, a skew, are held by more partners: for linkage),
- `home` (the home area of the resident in column `of`, the same at every partner: `people` as
  that column's, more often in more deprived areas: `deprivation`),
- `area` (public keys of the column's key set, more often in more deprived areas: `deprivation`),
- `time` (a year of timestamps with an hour-of-day `profile`: night, day, evening, school),
- `choice` (the contract's `allowed` values with probabilities `p`),
- `normal` (`mean`, `sd`, plus `deprivation` times the area's deprivation; clamped to min/max),
- `poisson` (`lam`, scaled by exp(`deprivation` x deprivation)),
- `logit` (a 0/1 outcome, or `values: [no, yes]`, from `intercept` and `terms`: a column
  name, `column=value`, or `deprivation`, each with a coefficient).

Any generator takes `missing` (a share of values left empty) for data-quality profiles.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analyses.blueprint import Blueprint, ColumnContract, DatasetContract, ParamValue
from analyses.keysets import load_keyset
from node_agent.keys import write_key_pair
from node_agent.linkage import new_linkage_key
from privacy.errors import SpecError
from privacy.keyfiles import write_secret

__all__ = ["LAW_ENFORCEMENT_PARTNERS", "example_frame", "write_blueprint_federation"]

#: Partners of the embedded federation whose policy marks them as law enforcement.
LAW_ENFORCEMENT_PARTNERS = frozenset({"police"})
_PROFILES = {
    "night": [9, 8, 7, 5, 3, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 6, 6, 7, 8, 9, 10, 10],
    "day": [1, 1, 1, 1, 1, 2, 4, 7, 9, 8, 7, 7, 8, 8, 8, 9, 10, 10, 8, 6, 4, 3, 2, 1],
    "evening": [3, 2, 2, 1, 1, 1, 1, 2, 3, 3, 4, 4, 5, 5, 5, 6, 7, 9, 10, 10, 9, 8, 6, 4],
    "school": [1, 1, 1, 1, 1, 1, 1, 2, 4, 3, 2, 2, 3, 3, 4, 10, 10, 8, 7, 6, 5, 4, 2, 1],
}


def _deprivation(keyset: str, seed: int) -> np.ndarray:
    """Latent deprivation in [0, 1] per area of a key set (seeded)."""
    rng = np.random.default_rng([seed, zlib.crc32(keyset.encode())])
    return rng.beta(2.0, 2.0, len(load_keyset(keyset)))


def _draw(
    name: str,
    column: ColumnContract,
    keyset: str | None,
    frame: dict[str, np.ndarray],
    deprivation: np.ndarray,
    rows: int,
    rng: np.random.Generator,
) -> np.ndarray:
    spec: dict[str, Any] = dict(column.example)
    gen = spec.get("gen")
    if gen == "id":
        people = max(int(rows / float(spec.get("repeat", 1.0))), 1)
        if people >= rows:
            return rng.permutation(rows).astype(np.int64)
        return rng.integers(0, people, size=rows).astype(np.int64)
    if gen == "resident":
        people = int(spec["people"])
        if rows > people:
            raise SpecError(f"column {name!r}: gen resident draws {rows} rows from {people} people")
        shared = np.random.default_rng([zlib.crc32(name.encode()), people])
        need = shared.beta(0.6, float(spec.get("need", 2.0)), people) + 0.02
        chosen = rng.choice(people, size=rows, replace=False, p=need / need.sum())
        return np.asarray([f"R{i:09d}" for i in chosen], dtype=object)
    if gen == "home":
        if keyset is None:
            raise SpecError(f"column {name!r}: gen home needs the column's keyset")
        areas = np.asarray(load_keyset(keyset))
        weights = np.exp(float(spec.get("deprivation", 0.0)) * _deprivation(keyset, 7))
        people = int(spec["people"])
        homes = np.random.default_rng([zlib.crc32(keyset.encode()), people]).choice(
            len(areas), size=people, p=weights / weights.sum()
        )
        index = homes[[int(str(r)[1:]) for r in frame[str(spec["of"])]]]
        deprivation[:] = _deprivation(keyset, 7)[index]
        return areas[index]
    if gen == "area":
        if keyset is None:
            raise SpecError(f"column {name!r}: gen area needs the column's keyset")
        areas = np.asarray(load_keyset(keyset))
        latent = _deprivation(keyset, 7)
        weights = np.exp(float(spec.get("deprivation", 0.0)) * latent)
        index = rng.choice(len(areas), size=rows, p=weights / weights.sum())
        deprivation[:] = latent[index]
        return areas[index]
    if gen == "time":
        hours = np.asarray(_PROFILES[str(spec.get("profile", "night"))], dtype=float)
        hour = rng.choice(24, size=rows, p=hours / hours.sum())
        minutes = rng.integers(0, 365, size=rows) * 1440 + hour * 60 + rng.integers(0, 60, size=rows)
        return np.datetime64(f"{int(spec.get('year', 2025))}-01-01T00:00") + minutes.astype("timedelta64[m]")
    if gen == "choice":
        values = list(column.allowed or spec["values"])
        p = np.asarray(spec.get("p", [1.0] * len(values)), dtype=float)
        return np.asarray(values, dtype=object)[rng.choice(len(values), size=rows, p=p / p.sum())]
    if gen == "normal":
        mean = float(spec["mean"]) + float(spec.get("deprivation", 0.0)) * deprivation
        return rng.normal(mean, float(spec["sd"]), size=rows)
    if gen == "poisson":
        lam = float(spec["lam"]) * np.exp(float(spec.get("deprivation", 0.0)) * deprivation)
        return rng.poisson(lam, size=rows).astype(float)
    if gen == "logit":
        eta = np.full(rows, float(spec.get("intercept", 0.0)))
        for term, coef in dict(spec.get("terms", {})).items():
            if term == "deprivation":
                eta += float(coef) * deprivation
            elif "=" in term:
                col, value = term.split("=", 1)
                eta += float(coef) * (frame[col].astype(str) == value)
            else:
                eta += float(coef) * np.nan_to_num(np.asarray(frame[term], dtype=float))
        outcome = rng.random(rows) < 1.0 / (1.0 + np.exp(-eta))
        labels: list[Any] | None = spec.get("values")
        if labels:
            return np.asarray(np.asarray(labels, dtype=object)[outcome.astype(int)])
        return np.asarray(outcome.astype(np.int64))
    raise SpecError(f"column {name!r}: unknown example generator {gen!r}")


def example_frame(
    contract: DatasetContract, keysets: Mapping[str, str | None], rows: int, seed: int
) -> pd.DataFrame:
    """`rows` rows of example data fitting `contract` (column order as declared)."""
    rng = np.random.default_rng(seed)
    deprivation = np.full(rows, 0.5)
    frame: dict[str, np.ndarray] = {}
    for name, column in contract.columns.items():
        values = _draw(name, column, keysets.get(name), frame, deprivation, rows, rng)
        if column.type in ("int", "float") and values.dtype != object:
            low = column.min if column.min is not None else -np.inf
            high = column.max if column.max is not None else np.inf
            values = np.clip(values, low, high)
            if column.type == "int":
                values = np.round(values).astype(np.int64)
        frame[name] = values
    out = pd.DataFrame(frame)
    for name, column in contract.columns.items():
        share = float(column.example.get("missing", 0.0))
        if share > 0:
            out[name] = out[name].astype("object" if column.type == "str" else "float64")
            out.loc[rng.random(rows) < share, name] = None
            if column.type == "int":
                out[name] = out[name].astype("Int64")
    return out


def _contracts(
    blueprints: Iterable[tuple[Blueprint, Mapping[str, ParamValue]]],
) -> dict[str, tuple[DatasetContract, dict[str, str | None]]]:
    found: dict[str, tuple[DatasetContract, dict[str, str | None]]] = {}
    for blueprint, values in blueprints:
        for name, contract in blueprint.datasets.items():
            keysets = {c: blueprint.keyset_of(name, c, values) for c in contract.columns}
            if name in found and found[name][0] != contract:
                raise SpecError(
                    f"dataset {name!r} is declared by two blueprints with different contracts: "
                    "run them on separate federations"
                )
            found[name] = (contract, keysets)
    return found


def write_blueprint_federation(
    root: Path,
    blueprints: Iterable[tuple[Blueprint, Mapping[str, ParamValue]]],
    coordinator: str | None = None,
    ca_cert: Path | None = None,
    seed: int = 7,
    poll: float = 0.05,
) -> dict[str, Path]:
    """Write example data, keys and `node.yaml` for every partner the blueprints' contracts name
    (under `root/PARTNER/`); return partner -> node.yaml. Without `coordinator` the nodes are
    for in-process use; with `ca_cert` they trust that CA (copied to `keys/ca.crt`)."""
    contracts = _contracts(blueprints)
    partners: dict[str, list[str]] = {}
    for dataset, (contract, _) in contracts.items():
        for partner in contract.example_holders:
            partners.setdefault(partner, []).append(dataset)
    configs: dict[str, Path] = {}
    for p_index, (partner, datasets) in enumerate(sorted(partners.items())):
        folder = root / partner
        (folder / "data").mkdir(parents=True, exist_ok=True)
        declared: dict[str, Any] = {}
        for d_index, dataset in enumerate(sorted(datasets)):
            contract, keysets = contracts[dataset]
            rows = contract.example_holders[partner]
            frame = example_frame(contract, keysets, rows, seed * 1000 + p_index * 100 + d_index)
            frame.to_parquet(folder / "data" / f"{dataset}.parquet", index=False)
            declared[dataset] = {
                "path": f"{dataset}.parquet",
                "identifier": contract.identifier,
                "columns": {name: c.node_column() for name, c in contract.columns.items()},
            }
        keys = folder / "keys"
        if not (keys / "node.key").exists():
            write_key_pair(keys)
        shared = root / "linkage.key"  # the partnership's key, agreed out of band in life
        if not shared.exists():
            new_linkage_key(shared)
        if not (keys / "linkage.key").exists():
            write_secret(keys / "linkage.key", shared.read_bytes())
        config: dict[str, Any] = {"version": 1, "partner": partner, "data_dir": "data", "state_dir": "state"}
        if coordinator is not None:
            config["coordinator"] = coordinator
        if ca_cert is not None:
            shutil.copyfile(ca_cert, keys / "ca.crt")
            config["transport"] = {"ca_cert": "keys/ca.crt", "node_key": "keys/node.key"}
        config.update(
            {
                "poll_interval": poll,
                "datasets": declared,
                "policy": {
                    "allowed_datasets": sorted(datasets),
                    "allowed_analyses": ["*"],
                    "max_rho_per_analysis": 2.0,
                    "total_rho_cap": {d: 20.0 for d in sorted(datasets)},
                    "min_cell": 5,
                    "law_enforcement": partner in LAW_ENFORCEMENT_PARTNERS,
                },
                "linkage": {"key_file": "keys/linkage.key"},
            }
        )
        path = folder / "node.yaml"
        path.write_text(
            f"# node.yaml for the {partner} partner of a blueprint federation (example data)\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        configs[partner] = path
    return configs
