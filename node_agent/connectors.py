"""Data connectors: CSV and Parquet files and SQL databases, mapped to logical columns and types.

File paths are confined to the node's `data_dir`: a config cannot make the node read elsewhere.
A SQL source is read once into a local snapshot (Parquet, under `state_dir/snapshots`) whose
content hash is recorded in every release that read it. `contract_report` counts the rows that
break each rule of a dataset's contract; the counts are shown only locally.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from node_agent.config import DatasetConfig, SqlSource
from privacy.errors import DataError

__all__ = ["content_hash", "contract_report", "load_dataset", "resolve_inside", "write_snapshot"]


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


def load_dataset(data_dir: Path, name: str, config: DatasetConfig) -> pd.DataFrame:
    """Read a dataset and return it with logical column names and declared types.

    Raises:
        DataError: missing file, unreachable database, unreadable source, or a declared column
            missing from it.
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


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of a frame's column names, types and values (independent of file format)."""
    digest = hashlib.sha256()
    for name in frame.columns:
        digest.update(f"{name}:{frame[name].dtype}\n".encode())
        hashed = pd.util.hash_pandas_object(frame[name], index=False).to_numpy(dtype=np.uint64)
        digest.update(np.ascontiguousarray(hashed).tobytes())
    return digest.hexdigest()


def write_snapshot(state_dir: Path, name: str, frame: pd.DataFrame) -> tuple[Path, str]:
    """Keep the frame analyses read as `state_dir/snapshots/NAME-HASH.parquet`; return it and the hash."""
    digest = content_hash(frame)
    folder = state_dir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{digest[:16]}.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    return path, digest


def contract_report(frame: pd.DataFrame, config: DatasetConfig) -> list[tuple[str, int]]:
    """Each contract rule and how many rows break it (shown only at the node)."""
    rules: list[tuple[str, int]] = [
        (f"{config.identifier} present (identifier)", int(frame[config.identifier].isna().sum()))
    ]
    for name, spec in config.columns.items():
        column = frame[name]
        if spec.required and name != config.identifier:
            rules.append((f"{name} present", int(column.isna().sum())))
        if spec.min is not None:
            rules.append((f"{name} >= {spec.min:g}", int((column < spec.min).sum())))
        if spec.max is not None:
            rules.append((f"{name} <= {spec.max:g}", int((column > spec.max).sum())))
        if spec.allowed is not None:
            allowed = {str(v) for v in spec.allowed}
            outside = column.notna() & ~column.astype("string").isin(allowed)
            rules.append((f"{name} in {sorted(allowed)}", int(outside.sum())))
    return rules
