"""Data connectors: CSV and Parquet files and SQL databases, mapped to logical columns and types.

File paths are confined to the node's `data_dir`: a config cannot make the node read elsewhere.
A SQL source is read once into a local snapshot (Parquet, under `state_dir/snapshots`) whose
content hash the node keeps in its own audit log.

Times are read in their declared zone (`timezone:` of the column or dataset, Europe/London by
default): a value with an offset (`2024-03-31T01:30:00-05:00`) is converted to that zone, a
value without one is taken as local time there, and the column holds local wall-clock times,
from which hours, weekdays and months are derived.

The contract is enforced, not only reported: a row that breaks any rule of its dataset's
contract (a value that cannot be read as its declared type, a missing required value, a value
outside min/max or the allowed list, a missing identifier) is left out of every analysis.
Leaving rows out, rather than refusing, keeps the node's answers free of any unnoised signal
about its data; how many rows broke each rule is shown only at the node (`oda-node check`, the
node's log).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from analyses.operators.counting import MAX_DATASET_ROWS
from node_agent.config import ColumnSpec, DatasetConfig, SqlSource
from privacy.errors import DataError

__all__ = [
    "LoadedDataset",
    "SnapshotFile",
    "content_hash",
    "contract_report",
    "load_dataset",
    "local_times",
    "resolve_inside",
    "write_snapshot",
]

#: A time of day followed by a UTC offset (or Z) at the end of the text.
_OFFSET_AT_END = r"[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"


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


def local_times(series: pd.Series, zone: ZoneInfo, fmt: str | None = None) -> pd.Series:
    """Wall-clock times in `zone` (naive datetime64): values with an offset are converted to the
    zone, values without one are taken as already local; what cannot be read is NaT."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        converted: pd.Series = series.dt.tz_convert(zone).dt.tz_localize(None)
        return converted.astype("datetime64[ns]")
    if pd.api.types.is_datetime64_dtype(series.dtype):
        return series.astype("datetime64[ns]")
    if series.dtype == object:  # Python datetimes from a database driver, aware or not
        series = series.map(lambda v: v.isoformat() if isinstance(v, datetime | date) else v)
    text = series.astype("string").str.strip()
    out = pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns]")
    if fmt is not None:
        aware = pd.Series("%z" in fmt, index=series.index) & text.notna()
    else:
        aware = text.str.contains(_OFFSET_AT_END, regex=True, na=False)
    naive = text.notna() & ~aware
    how = fmt or "ISO8601"
    if aware.any():
        parsed = pd.to_datetime(text[aware], errors="coerce", utc=True, format=how)
        out[aware] = parsed.dt.tz_convert(zone).dt.tz_localize(None).astype("datetime64[ns]")
    if naive.any():
        out[naive] = pd.to_datetime(text[naive], errors="coerce", format=how).astype("datetime64[ns]")
    return out


def _cast(series: pd.Series, spec: ColumnSpec, zone: ZoneInfo) -> pd.Series:
    out: pd.Series
    try:
        if spec.type == "int":
            numeric = pd.to_numeric(series, errors="coerce")
            whole = numeric.notna() & (numeric % 1 == 0)  # 2.5 is not an int: unreadable, not 2
            out = numeric.where(whole).astype("Int64")
        elif spec.type == "float":
            out = pd.to_numeric(series, errors="coerce").astype("float64")
        elif spec.type == "datetime":
            out = local_times(series, zone, spec.format)
        else:
            out = series.astype("string")
    except (ValueError, TypeError, OverflowError) as exc:  # pandas' own parse errors, never a traceback
        raise DataError(f"cannot read values as {spec.type}: {exc}") from exc
    return out


def _read_sql(name: str, source: SqlSource, columns: list[str]) -> pd.DataFrame:
    import sqlalchemy as sa

    url = sa.engine.make_url(source.url)
    if source.password_env:
        if source.password_env not in os.environ:
            raise DataError(
                f"dataset {name!r}: environment variable {source.password_env} (sql.password_env) is not set"
            )
        url = url.set(password=os.environ[source.password_env])
    where = url.render_as_string(hide_password=True)
    try:
        engine = sa.create_engine(url, pool_pre_ping=True)
    except (ImportError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise DataError(
            f"dataset {name!r}: cannot use {where}: {exc} (install the driver: "
            "pip install 'oda-federated[postgres]' or '[mariadb]')"
        ) from exc
    try:
        with engine.connect() as conn:
            if source.table is not None:
                table = sa.Table(
                    source.table.split(".")[-1],
                    sa.MetaData(),
                    schema=source.table.rsplit(".", 1)[0] if "." in source.table else None,
                    autoload_with=conn,
                )
                missing = sorted(set(columns) - set(table.c.keys()))
                if missing:
                    raise DataError(
                        f"dataset {name!r}: table {source.table} has no column {missing[0]!r}; "
                        f"it has {', '.join(table.c.keys())}"
                    )
                raw = pd.read_sql(sa.select(*(table.c[c] for c in columns)), conn)
            else:
                raw = pd.read_sql(sa.text(source.query or ""), conn)
    except sa.exc.NoSuchTableError as exc:
        raise DataError(f"dataset {name!r}: no table {source.table} at {where}") from exc
    except sa.exc.OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DataError(f"dataset {name!r}: cannot reach the database at {where}: {first}") from exc
    except sa.exc.DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DataError(f"dataset {name!r}: the database at {where} refused the query: {first}") from exc
    finally:
        engine.dispose()
    missing = sorted(set(columns) - set(raw.columns))
    if missing:
        raise DataError(f"dataset {name!r}: the query returns no column {missing[0]!r}")
    return raw


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset as analyses see it, and what its contract left out."""

    #: The rows that keep the contract: logical names, declared types, local times.
    frame: pd.DataFrame
    #: Each contract rule and how many source rows break it (shown only at the node).
    rules: tuple[tuple[str, int], ...]
    #: Rows in the source, before the contract.
    source_rows: int

    @property
    def dropped(self) -> int:
        """Rows left out of every analysis because they break the contract."""
        return self.source_rows - len(self.frame)


def load_dataset(data_dir: Path, name: str, config: DatasetConfig) -> LoadedDataset:
    """Read a dataset, type it, and keep the rows that keep its contract.

    Raises:
        DataError: missing file, unreachable database, unreadable source, a declared column
            missing from it, a column none of whose values can be read, or more than
            `MAX_DATASET_ROWS` rows.
    """
    sources = {logical: spec.source or logical for logical, spec in config.columns.items()}
    if config.sql is not None:
        raw = _read_sql(name, config.sql, list(sources.values()))
    else:
        path = resolve_inside(data_dir, config.path or "")
        try:
            if config.file_format() == "parquet":
                raw = pd.read_parquet(path, columns=list(sources.values()))
            else:
                raw = pd.read_csv(path, usecols=list(sources.values()), dtype=_csv_types(config, sources))
        except ValueError as exc:
            raise DataError(f"dataset {name!r} ({path.name}): {exc}") from exc
        except OSError as exc:
            raise DataError(f"dataset {name!r}: cannot read {path}: {exc}") from exc
    if len(raw) > MAX_DATASET_ROWS:
        raise DataError(
            f"dataset {name!r} has {len(raw):,} rows, over the limit of {MAX_DATASET_ROWS:,}: "
            "split it into several datasets"
        )
    columns: dict[str, pd.Series] = {}
    unreadable: dict[str, pd.Series] = {}
    for logical, source in sources.items():
        spec = config.columns[logical]
        try:
            typed = _cast(raw[source], spec, config.zone_of(logical))
        except DataError as exc:
            raise DataError(f"dataset {name!r}, column {logical!r}: {exc}") from exc
        bad = typed.isna() & raw[source].notna()
        if len(raw) and bool(bad.all()):
            raise DataError(
                f"dataset {name!r}, column {logical!r}: no value could be read as {spec.type}"
                + (f" in format {spec.format!r}" if spec.format else " (times are read as ISO 8601)")
            )
        columns[logical], unreadable[logical] = typed, bad
    frame = pd.DataFrame(columns)
    rules, keep = _contract(frame, config, unreadable)
    return LoadedDataset(frame.loc[keep].reset_index(drop=True), tuple(rules), len(frame))


def _csv_types(config: DatasetConfig, sources: dict[str, str]) -> dict[str, str]:
    """Read text and time columns of a CSV as text (pandas must not guess dates or numbers)."""
    return {sources[n]: "string" for n, c in config.columns.items() if c.type in ("str", "datetime")}


def _contract(
    frame: pd.DataFrame, config: DatasetConfig, unreadable: dict[str, pd.Series]
) -> tuple[list[tuple[str, int]], np.ndarray]:
    """Each rule with the number of rows breaking it, and the rows that break none."""
    keep = np.ones(len(frame), dtype=bool)
    rules: list[tuple[str, int]] = []

    def rule(text: str, broken: pd.Series) -> None:
        mask = broken.fillna(False).to_numpy(dtype=bool)
        rules.append((text, int(mask.sum())))
        keep[mask] = False

    rule(f"{config.identifier} present (identifier)", frame[config.identifier].isna())
    for name, spec in config.columns.items():
        column = frame[name]
        if name in unreadable:
            rule(f"{name} readable as {spec.type}", unreadable[name])
        if spec.required and name != config.identifier:
            rule(f"{name} present", column.isna())
        if spec.min is not None:
            rule(f"{name} >= {spec.min:g}", column < spec.min)
        if spec.max is not None:
            rule(f"{name} <= {spec.max:g}", column > spec.max)
        if spec.allowed is not None:
            allowed = {str(v) for v in spec.allowed}
            rule(f"{name} in {sorted(allowed)}", column.notna() & ~column.astype("string").isin(allowed))
    return rules, keep


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of a frame's column names, types and values (independent of file format)."""
    digest = hashlib.sha256()
    for name in frame.columns:
        digest.update(f"{name}:{frame[name].dtype}\n".encode())
        hashed = pd.util.hash_pandas_object(frame[name], index=False).to_numpy(dtype=np.uint64)
        digest.update(np.ascontiguousarray(hashed).tobytes())
    return digest.hexdigest()


class SnapshotFile(NamedTuple):
    """A kept snapshot: its file and its content hash."""

    path: Path
    sha256: str


def write_snapshot(state_dir: Path, name: str, frame: pd.DataFrame) -> SnapshotFile:
    """Keep the frame analyses read as `state_dir/snapshots/NAME-HASH.parquet`; return it and the hash."""
    digest = content_hash(frame)
    folder = state_dir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{digest[:16]}.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    return SnapshotFile(path, digest)


def contract_report(frame: pd.DataFrame, config: DatasetConfig) -> list[tuple[str, int]]:
    """Each contract rule and how many rows of an already typed frame break it."""
    return _contract(frame, config, {})[0]
