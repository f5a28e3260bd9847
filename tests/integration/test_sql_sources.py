"""SQL sources against the machine's real PostgreSQL (127.0.0.1:5432) and MariaDB (127.0.0.1:3306).

Each test makes its own table, reads it through a node config, releases from the snapshot, and
drops the table. Without a server the tests skip and say which server is missing.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from analyses.reply import NodeRelease
from analyses.request import AnalysisRequest
from node_agent.agent import NodeAgent
from node_agent.cli import main
from node_agent.config import load_node_config
from node_agent.connectors import content_hash
from privacy import DataError
from privacy.exit_codes import ExitCode
from tests.conftest import release_of

SERVERS = {
    "postgresql": ("127.0.0.1", 5432, "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mariadb": ("127.0.0.1", 3306, "mysql+pymysql://root@127.0.0.1:3306/test"),
}

SPEC = """
version: 1
name: sql-check
dataset: incidents
privacy: {rho: 0.2, unit: {identifier: person_id, max_rows: 3}}
steps:
  - {kind: count, id: c, by: [{column: area, values: [a, b, c]}]}
"""


def _up(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(params=sorted(SERVERS))
def table(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, table name) of a fresh table of 300 incidents."""
    import sqlalchemy as sa

    host, port, url = SERVERS[request.param]
    if not _up(host, port):
        pytest.skip(f"{request.param} is not running on {host}:{port} (.ci/run starts it)")
    name = f"oda_incidents_{uuid.uuid4().hex[:8]}"
    frame = pd.DataFrame(
        {
            "crime_ref": [i % 100 for i in range(300)],
            "lsoa": [("a", "b", "c", "zz")[i % 4] for i in range(300)],
            "age": [i % 90 for i in range(300)],
        }
    )
    engine = sa.create_engine(url)
    frame.to_sql(name, engine, index=False)
    try:
        yield url, name
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {name}"))
        engine.dispose()


def _config(tmp_path: Path, sql: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(
        f"""\
version: 1
partner: sqlnode
datasets:
  incidents:
    sql: {sql}
    identifier: person_id
    columns:
      person_id: {{source: crime_ref, type: int, required: true}}
      area: {{source: lsoa, type: str}}
      age: {{type: int, min: 0, max: 120}}
policy:
  allowed_datasets: [incidents]
  allowed_analyses: ["*"]
  max_rho_per_analysis: 1.0
  total_rho_cap: {{incidents: 2.0}}
"""
    )
    return path


def test_release_reads_a_hashed_snapshot_of_the_table(table: tuple[str, str], tmp_path: Path) -> None:
    url, name = table
    agent = NodeAgent(load_node_config(_config(tmp_path, f"{{url: '{url}', table: {name}}}")))
    try:
        release = release_of(agent.handle(AnalysisRequest(1, "q1", "central", SPEC)))
        assert isinstance(release, NodeRelease) and release.status == "released"
        record = agent.audit.entries()[-1].data["incidents"]  # the hash stays in the node's log
        assert record["snapshot"] == release.snapshots["incidents"]
        digest = str(record["sha256"])
        snapshots = list((tmp_path / "state" / "snapshots").glob("incidents-*.parquet"))
        assert [p.name for p in snapshots] == [f"incidents-{digest[:16]}.parquet"]
        frame = agent.frame("incidents")
        assert len(frame) == 300 and content_hash(frame) == digest
    finally:
        agent.close()


def test_query_source_and_check(
    table: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, name = table
    query = f"SELECT crime_ref, lsoa, age FROM {name} WHERE age < 50"  # noqa: S608  # our own test table
    config = _config(tmp_path, f'{{url: "{url}", query: "{query}"}}')
    assert main(["check", "--config", str(config)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "dataset incidents: 180 rows" in out and "ok   age <= 120: 0 rows" in out


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda url, name: (url, f"{name}_missing"), "no table"),
        (lambda url, name: (url.replace("127.0.0.1:", "127.0.0.1:1"), name), "cannot reach the database"),
        (
            lambda url, name: (url.replace("postgres@", "nobody@").replace("root@", "nobody@"), name),
            "cannot reach the database",
        ),
    ],
    ids=["missing table", "unreachable", "wrong credentials"],
)
def test_source_failures_are_data_errors_naming_the_database(
    table: tuple[str, str], tmp_path: Path, mangle: object, message: str
) -> None:
    url, name = table
    bad_url, bad_name = mangle(url, name)
    agent = NodeAgent(load_node_config(_config(tmp_path, f"{{url: '{bad_url}', table: {bad_name}}}")))
    try:
        with pytest.raises(DataError, match=message):
            agent.frame("incidents")
    finally:
        agent.close()


def test_a_column_missing_from_the_table_is_named(table: tuple[str, str], tmp_path: Path) -> None:
    url, name = table
    path = _config(tmp_path, f"{{url: '{url}', table: {name}}}")
    path.write_text(path.read_text().replace("source: lsoa,", "source: lsoa11cd,"))
    agent = NodeAgent(load_node_config(path))
    try:
        with pytest.raises(DataError, match=f"table {name} has no column 'lsoa11cd'"):
            agent.frame("incidents")
    finally:
        agent.close()
