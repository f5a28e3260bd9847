"""Coordinator and three node agents in one process: the whole logic without Flower processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyses import load_keyset
from coordinator.embedded.twin import InProcessTransport
from coordinator.run.orchestrator import run_analysis
from node_agent.agent import NodeAgent
from privacy import BudgetExhausted, FederationError, PolicyRefusal, SpecError
from tests.conftest import SPECS

POOLED_HOUR_AREA = """
version: 1
name: pooled
dataset: incidents
privacy: {rho: 0.5, unit: {identifier: person_id, max_rows: 5}}
disclosure: {min_cell: 0}
steps:
  - kind: count
    id: cells
    by:
      - {column: area, keyset: coventry_lsoa11}
      - {column: occurred_at, derive: hour}
"""


def _truth(agents: list[NodeAgent]) -> pd.Series:
    keys = load_keyset("coventry_lsoa11")
    parts = []
    for agent in agents:
        frame = agent.frame("incidents")
        frame = frame.assign(_rank=frame.groupby("person_id").cumcount())
        frame = frame[(frame._rank < 5) & frame.area.isin(keys)]
        parts.append(frame.assign(hour=frame.occurred_at.dt.hour).groupby(["area", "hour"]).size())
    return pd.concat(parts).groupby(level=[0, 1]).sum()


def test_pooled_counts_fall_within_stated_accuracy_of_pandas_truth(agents: list[NodeAgent]) -> None:
    for agent in agents:  # suppression would hide small cells; coverage is about the noise
        agent.config = agent.config.model_copy(
            update={"policy": agent.config.policy.model_copy(update={"min_cell": 0})}
        )
    result = run_analysis(POOLED_HOUR_AREA, InProcessTransport(agents))
    table = result.tables[0].frame
    truth_frame = _truth(agents).rename("truth").reset_index()
    truth_frame = truth_frame.assign(
        area=truth_frame.area.astype(str), occurred_at_hour=truth_frame.hour.map("{:02d}".format)
    )
    merged = table.merge(
        truth_frame[["area", "occurred_at_hour", "truth"]], on=["area", "occurred_at_hour"], how="left"
    )
    truth = merged["truth"].fillna(0).to_numpy()
    errors = np.abs(table["count"].to_numpy() - truth)
    inside = float(np.mean(errors <= table["count_accuracy95"].to_numpy()))
    # 4,680 cells: at 95% nominal coverage, falling under 90% has probability ~1e-40.
    assert inside >= 0.90
    assert float(np.mean(errors <= table["count_accuracy95"].to_numpy() / 4)) < 0.90  # the check can fail
    assert {r.partner for r in result.releases} == {"police", "fire", "council"}


def test_planted_signal_survives_the_noise(agents: list[NodeAgent]) -> None:
    result = run_analysis((SPECS / "incidents_by_hour.yaml").read_text(), InProcessTransport(agents))
    table = result.tables[0].frame
    by_hour = table.groupby("occurred_at_hour")["count"].sum()
    assert by_hour[["22", "23", "00"]].mean() > 2 * by_hour[["05", "06", "07"]].mean()


def test_every_example_spec_runs_in_process(agents: list[NodeAgent], tmp_path: Path) -> None:
    for spec in sorted(SPECS.glob("*.yaml")):
        result = run_analysis(
            spec.read_text(), InProcessTransport(agents), source=str(spec), out_dir=tmp_path / spec.stem
        )
        assert result.refusals == [], spec
        assert (tmp_path / spec.stem / "manifest.json").exists()
        for table in result.tables:
            assert (tmp_path / spec.stem / f"{table.name}.parquet").exists()


def test_over_budget_request_is_refused_and_nothing_is_released(agents: list[NodeAgent]) -> None:
    spec = POOLED_HOUR_AREA.replace("rho: 0.5", "rho: 0.9")
    for _ in range(5):  # 5 x 0.9 = 4.5 of each node's cap of 5.0
        run_analysis(spec, InProcessTransport(agents))
    with pytest.raises(BudgetExhausted, match=r"requested rho 0.9 .*remaining rho 0.5 .*short by rho 0.4"):
        run_analysis(spec, InProcessTransport(agents))
    for agent in agents:
        assert agent.ledger.spent("incidents").value == pytest.approx(4.5)


def test_policy_cap_per_analysis_refuses(agents: list[NodeAgent]) -> None:
    with pytest.raises(PolicyRefusal, match=r"over its policy\.max_rho_per_analysis"):
        run_analysis(POOLED_HOUR_AREA.replace("rho: 0.5", "rho: 2.0"), InProcessTransport(agents))
    assert all(a.ledger.spent("incidents").value == 0 for a in agents)


def test_unknown_dataset_is_refused_by_every_node(agents: list[NodeAgent]) -> None:
    with pytest.raises(FederationError, match=r"no partner released anything .*datasets hospital_admissions"):
        run_analysis(
            POOLED_HOUR_AREA.replace("dataset: incidents", "dataset: hospital_admissions"),
            InProcessTransport(agents),
        )


def test_unknown_column_is_refused_before_any_budget_is_spent(agents: list[NodeAgent]) -> None:
    bad = POOLED_HOUR_AREA.replace(
        "{column: occurred_at, derive: hour}", "{column: shoe_size, values: [1, 2]}"
    )
    with pytest.raises(SpecError, match="unknown column 'shoe_size'"):
        run_analysis(bad, InProcessTransport(agents))
    assert all(a.ledger.spent("incidents").value == 0 for a in agents)


def test_invalid_spec_is_never_sent(agents: list[NodeAgent]) -> None:
    with pytest.raises(SpecError, match="bounds"):
        run_analysis(
            POOLED_HOUR_AREA.replace("kind: count", "kind: sum\n    column: age"), InProcessTransport(agents)
        )
    assert all(a.ledger.entries() == [] for a in agents)


def test_join_combines_datasets_held_by_different_partners(agents: list[NodeAgent]) -> None:
    result = run_analysis((SPECS / "incidents_and_deprivation.yaml").read_text(), InProcessTransport(agents))
    joined = result.tables[-1].frame
    assert {"area", "incidents_count", "deprivation_mean"} <= set(joined.columns)
    assert len(joined) == len(load_keyset("coventry_lsoa11"))
    # planted signal: deprived areas have more incidents
    valid = joined.dropna(subset=["deprivation_mean"])
    assert valid["incidents_count"].corr(valid["deprivation_mean"]) > 0.3
