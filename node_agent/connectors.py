"""Data connectors: local CSV and Parquet files, mapped to logical columns and types.

Paths are confined to the node's `data_dir`: a config cannot make the node read elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from node_agent.config import DatasetConfig
from privacy.errors import DataError

__all__ = ["load_dataset", "resolve_inside"]


def resolve_inside(data_dir: Path, relative: str) -> Path:
    """`data_dir / relative`, refusing any path that escapes `data_dir`.

    Raises:
        DataError: the path leaves the data folder or does not exist.
    """
    root = data_dir.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise DataError(
            f"dataset path {relative!r} is outside the data folder {root}: move the file inside it"
        )
    if not target.is_file():
        raise DataError(f"dataset file {target} does not exist")
    return target


def _cast(series: pd.Series, ctype: str, name: str) -> pd.Series:
    out: pd.Series
    if ctype == "int":
        out = pd.to_numeric(series, errors="coerce").astype("Int64")
    elif ctype == "float":
        out = pd.to_numeric(series, errors="coerce").astype("float64")
    elif ctype == "datetime":
        out = pd.to_datetime(series, errors="coerce")
    else:
        out = series.astype("string")
    bad = int(out.isna().sum() - series.isna().sum())
    if bad > 0 and bad == len(series):
        raise DataError(f"column {name!r}: no value could be read as {ctype}")
    return out


def load_dataset(data_dir: Path, name: str, config: DatasetConfig) -> pd.DataFrame:
    """Read a dataset and return it with logical column names and declared types.

    Raises:
        DataError: missing file, unreadable file, or a declared column missing from it.
    """
    path = resolve_inside(data_dir, config.path)
    sources = {logical: spec.source or logical for logical, spec in config.columns.items()}
    try:
        if config.file_format() == "parquet":
            raw = pd.read_parquet(path, columns=list(sources.values()))
        else:
            raw = pd.read_csv(path, usecols=list(sources.values()))
    except ValueError as exc:
        raise DataError(f"dataset {name!r} ({path.name}): {exc}") from exc
    except OSError as exc:
        raise DataError(f"dataset {name!r}: cannot read {path}: {exc}") from exc
    frame = pd.DataFrame(
        {
            logical: _cast(raw[source], config.columns[logical].type, logical)
            for logical, source in sources.items()
        }
    )
    return frame
