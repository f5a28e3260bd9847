"""`oda-node fit`: a partner's own file, shaped the way a police force exports STATS19 (its own
column names, day-first local times, a column the blueprint does not use), is mapped onto the
road_safety contract; `check` accepts the block it writes, and the blueprint then runs on it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analyses.blueprint import load_bundled
from coordinator.blueprints.runner import run_blueprint
from coordinator.embedded.example_data import example_frame
from coordinator.embedded.synthetic import write_federation
from coordinator.embedded.twin import InProcessTransport
from node_agent import cli
from node_agent.agent import NodeAgent
from node_agent.config import load_node_config
from privacy.exit_codes import ExitCode

EXPORT_NAMES = {
    "casualty_id": "Casualty Ref",
    "area": "LSOA of Accident",
    "occurred_at": "Date Time",
    "road_user": "Casualty Type",
    "age": "Age of Casualty",
    "speed_limit": "Speed limit",
    "severity": "Severity",
}


def _export(rows: int = 4_000, seed: int = 5) -> pd.DataFrame:
    blueprint = load_bundled("road_safety").blueprint
    contract = blueprint.datasets["collisions"]
    values = blueprint.resolve(None)
    keysets = {c: blueprint.keyset_of("collisions", c, values) for c in contract.columns}
    frame = example_frame(contract, keysets, rows, seed)
    frame["occurred_at"] = frame["occurred_at"].dt.strftime("%d/%m/%Y %H:%M")  # local time, day first
    frame = frame.rename(columns=EXPORT_NAMES)
    frame.insert(2, "Weather", "fine")
    return frame


@pytest.fixture
def police(tmp_path: Path) -> Path:
    config = write_federation(tmp_path, rows=3_000)["police"]
    _export().to_csv(config.parent / "data" / "stats19.csv", index=False)
    return config


def test_fit_writes_a_block_check_accepts_and_the_blueprint_runs_on(
    police: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = police.parent / "data" / "stats19.csv"
    argv = ["fit", "road_safety", "--source", str(source), "--config", str(police), "--write"]
    assert cli.main(argv) == ExitCode.OK
    out = capsys.readouterr().out
    assert "casualty_id: {source: Casualty Ref, type: int, required: true}" in out
    assert "format: '%d/%m/%Y %H:%M'" in out and "not used: Weather" in out
    assert "7 of 7 contract columns found" in out
    assert (police.parent / "node.yaml.bak").exists()
    assert cli.main(["check", "--config", str(police)]) == ExitCode.OK
    assert "population collisions: remaining rho 5" in capsys.readouterr().out

    agent = NodeAgent(load_node_config(police))
    try:
        run = run_blueprint(load_bundled("road_safety"), {}, InProcessTransport([agent]), tmp_path / "out")
    finally:
        agent.close()
    assert run.failures == {}
    assert sorted(run.results) == ["road_safety_severity", "road_safety_when", "road_safety_where"]
    assert all(r.releases[0].partner == "police" for r in run.results.values())


def test_values_that_do_not_fit_are_named_and_nothing_is_written(
    police: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _export()
    frame["Casualty Type"] = frame["Casualty Type"].str.title()  # "Pedestrian": not the contract's values
    source = police.parent / "data" / "stats19.csv"
    frame.to_csv(source, index=False)
    before = police.read_text()
    code = cli.main(["fit", "road_safety", "--source", str(source), "--config", str(police), "--write"])
    captured = capsys.readouterr()
    assert code == ExitCode.CONFIG
    assert "road_user: {source: 'TODO: the column of stats19.csv holding road_user'" in captured.out
    assert "NOT FOUND: best candidate 'Casualty Type', 0% of its values fit" in captured.out
    assert "they are the contract's values but for case and spaces: recode them" in captured.out
    assert "not written: road_user found no column in the file" in captured.err
    assert police.read_text() == before


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["--dataset", "crashes"],
            ExitCode.CONFIG,
            "blueprint road_safety has no dataset 'crashes'; it declares collisions",
        ),
        (["--source", "/etc/hostname"], ExitCode.CONFIG, "is outside the node's data_dir"),
    ],
)
def test_bad_fit_arguments_say_what_to_do(
    police: Path, argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [
        "fit",
        "road_safety",
        "--source",
        str(police.parent / "data" / "stats19.csv"),
        "--config",
        str(police),
    ]
    assert cli.main(base + argv) == code
    assert message in capsys.readouterr().err
