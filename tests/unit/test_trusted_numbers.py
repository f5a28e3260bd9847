"""Regression tests for wrong or misleading numbers found on real data (issue 11, items 1-6)."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyses.documents import parse_document
from analyses.glm import ModelSpec, evaluation_histograms, evaluation_sensitivity
from analyses.keys import KeySpec
from analyses.local_data import LocalData
from analyses.operators.counting import MeanStep, SumStep
from analyses.operators.quantile import quantile_from_histogram
from analyses.reply import NodeRelease
from analyses.request import AnalysisRequest
from analyses.spec import AnalysisSpec
from node_agent.agent import NodeAgent
from node_agent.cli import main
from node_agent.config import load_node_config
from privacy import PrivacyUnit, SpecError
from privacy.exit_codes import ExitCode
from tests.conftest import release_of

SPEC = """
version: 1
name: t
dataset: d
privacy: {{rho: 1.0, unit: {{identifier: pid, max_rows: 1}}}}
disclosure: {{min_cell: 0}}
steps:
  - {step}
"""


def _step(text: str) -> MeanStep | SumStep:
    step = parse_document(SPEC.format(step=text), AnalysisSpec, source="s").steps[0]
    assert isinstance(step, MeanStep | SumStep)
    return step


# -- 1. fractional values are neither rounded away nor over-noised ---------------------------


def test_default_precision_keeps_fractional_values() -> None:
    """A 0-1 rate summed in whole units (the old default precision 1) lost most of its value."""
    step = _step("{kind: mean, id: m, column: v, bounds: [0, 1]}")
    rng = np.random.default_rng(1)
    values = rng.beta(2, 6, 5000)
    frame = pd.DataFrame({"pid": np.arange(5000), "v": values})
    out = step.exact(LocalData(frame), PrivacyUnit("pid", 1), None)
    total = out["sum"].vector[0] * step.quantum() + step.centre() * out["count"].vector[0]
    assert abs(total - values.sum()) <= 5000 * out["sum"].rounding  # rounding stated, and honoured
    assert out["sum"].rounding <= 1e-6  # ... and negligible: about a millionth of the bounds' width


def test_sum_sensitivity_is_half_the_bounds_width_not_their_largest_end() -> None:
    step = _step("{kind: mean, id: m, column: v, bounds: [44.85, 45.06]}")
    per_row = step.units_per_row() * step.quantum()
    assert per_row == pytest.approx(0.105, rel=1e-5)  # not 45.06


def test_an_explicit_precision_coarser_than_the_bounds_is_refused() -> None:
    with pytest.raises(SpecError, match=r"sums could overflow|bounds must"):
        _step("{kind: sum, id: s, column: v, bounds: [0, 1e15], precision: 1e-6}")


def test_mean_accuracy_includes_the_rounding_of_an_explicit_precision() -> None:
    """With precision 1 on a 0-1 rate the stated accuracy must admit up to 0.5 of rounding."""
    from analyses.aggregate import combine
    from analyses.local_step import release_steps

    spec = parse_document(
        SPEC.format(step="{kind: mean, id: m, column: v, bounds: [0, 1], precision: 1}"),
        AnalysisSpec,
        source="s",
    )
    frame = pd.DataFrame({"pid": np.arange(4000), "v": np.full(4000, 0.238)})
    step_releases = release_steps(spec, list(spec.steps), {"d": LocalData(frame)})
    release = NodeRelease(
        1, "p", "x", "r", spec.spec_hash(), "released", tuple(step_releases), 1.0, 1.0, 1e-6, 0, 1
    )
    table = combine(spec, [release])[0].frame
    assert abs(table["mean"].iloc[0] - 0.238) <= table["mean_accuracy95"].iloc[0]
    assert table["mean_accuracy95"].iloc[0] >= 0.5


# -- 2. quantiles: not a bin too high ------------------------------------------------------------


def test_quantile_estimate_is_inside_its_bin_not_at_its_upper_edge() -> None:
    """Uniform data on [0, 100], 20 bins, almost no noise: q53 is 53, not 55 (the old estimate
    was the upper edge of the bin the rank falls in)."""
    histogram = np.full(20, 1000.0)
    found = quantile_from_histogram(histogram, 0.53, 0.01, 0.0, 100.0)
    assert found.value == pytest.approx(53.0, abs=0.01)
    assert found.low <= 53.0 <= found.high and found.high - found.low <= 5.01  # about one bin


def test_quantile_interval_ignores_no_mass_from_noisy_empty_bins() -> None:
    """Fine bins, the data in the lowest tenth: noisy empty bins must not drag q75 upwards."""
    rng = np.random.default_rng(4)
    truth_hist = np.zeros(1000)
    truth_hist[:100] = 30
    covered = 0
    for _ in range(200):
        found = quantile_from_histogram(truth_hist + rng.normal(0, 3.0, 1000), 0.75, 3.0, 0.0, 100.0)
        covered += found.low <= 7.5 <= found.high
    assert covered >= 180  # the old interval covered 0 of 20


# -- 4. the evaluation of linear and Poisson models has sensitivity sqrt(2) per record ----------


@pytest.mark.parametrize("family", ["linear", "poisson"])
def test_two_histogram_evaluation_moves_by_sqrt2_per_record(family: str) -> None:
    model = ModelSpec.model_validate(
        {
            "family": family,
            "target": "y",
            "target_bounds": [0, 10],
            "clip": 1.0,
            "features": [{"column": "x", "bounds": [0, 1]}],
        }
    )
    x = np.array([[1.0, 0.3], [1.0, 0.9]])
    y = np.array([2.0, 7.0])
    beta = np.array([1.0, 2.0])
    full = evaluation_histograms(model, x, y, beta, 10)
    less = evaluation_histograms(model, x[:1], y[:1], beta, 10)
    assert np.linalg.norm(full - less) == pytest.approx(math.sqrt(2))
    assert evaluation_sensitivity(model, 1) >= math.sqrt(2)
    assert evaluation_sensitivity(model, 5) >= 5 * math.sqrt(2)


# -- 5. local times ------------------------------------------------------------------------------

NODE = """\
version: 1
partner: p
data_dir: data
state_dir: state
datasets:
  d:
    path: d.csv
    identifier: pid
    {zone}
    columns:
      pid: {{type: int}}
      area: {{type: str}}
      at: {{type: datetime}}
      age: {{type: int, min: 0, max: 120}}
      v: {{type: float}}
policy:
  allowed_datasets: [d]
  allowed_analyses: ["*"]
  max_rho_per_analysis: 5
  total_rho_cap: {{d: 50}}
  min_cell: 0
"""


def _node(tmp_path: Path, rows: pd.DataFrame, zone: str = "") -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    rows.to_csv(tmp_path / "data" / "d.csv", index=False)
    path = tmp_path / "node.yaml"
    path.write_text(NODE.format(zone=f"timezone: {zone}" if zone else ""))
    return path


def test_offset_timestamps_are_read_in_the_declared_zone(tmp_path: Path) -> None:
    """-06:00 and -05:00 either side of a DST change, in one file: hours are local."""
    rows = pd.DataFrame(
        {
            "pid": [1, 2, 3, 4],
            "area": ["a"] * 4,
            "at": [
                "2025-03-08T23:30:00-06:00",
                "2025-03-09T03:30:00-05:00",
                "2025-03-09 12:00:00",
                "2025-03-09T18:00:00Z",
            ],
            "age": [30] * 4,
            "v": [1.0] * 4,
        }
    )
    agent = NodeAgent(load_node_config(_node(tmp_path, rows, "America/Chicago")))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning per request either
            codes = LocalData(agent.frame("d")).codes(KeySpec(column="at", derive="hour"))
        assert list(codes) == [23, 3, 12, 13]  # 18:00Z is 13:00 CDT
    finally:
        agent.close()


def test_times_without_an_offset_are_london_time_by_default(tmp_path: Path) -> None:
    rows = pd.DataFrame(
        {
            "pid": [1, 2],
            "area": ["a", "a"],
            "at": ["2025-07-01T09:00:00", "2025-07-01T09:00:00+00:00"],
            "age": [3, 3],
            "v": [0.0, 0.0],
        }
    )
    agent = NodeAgent(load_node_config(_node(tmp_path, rows)))
    try:
        codes = LocalData(agent.frame("d")).codes(KeySpec(column="at", derive="hour"))
        assert list(codes) == [9, 10]  # 09:00 UTC is 10:00 BST
    finally:
        agent.close()


def test_offsets_do_not_break_check_or_analyses_of_other_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = pd.DataFrame(
        {
            "pid": range(40),
            "area": ["a"] * 40,
            "at": ["2025-11-02T01:30:00-05:00", "2025-11-02T01:30:00-06:00"] * 20,
            "age": [4] * 40,
            "v": [1.5] * 40,
        }
    )
    path = _node(tmp_path, rows, "America/Chicago")
    assert main(["check", "--config", str(path)]) == ExitCode.OK
    assert "Traceback" not in capsys.readouterr().err
    agent = NodeAgent(load_node_config(path))
    try:
        spec = SPEC.format(step="{kind: count, id: c, by: [{column: area, values: [a]}]}").replace(
            "dataset: d", "dataset: d"
        )
        release = release_of(agent.handle(AnalysisRequest(1, "r1", "central", spec)))
        assert isinstance(release, NodeRelease) and release.status == "released"
    finally:
        agent.close()


def test_an_unknown_time_zone_is_a_config_error(tmp_path: Path) -> None:
    from privacy import ConfigError

    rows = pd.DataFrame({"pid": [1], "area": ["a"], "at": ["2025-01-01"], "age": [1], "v": [1.0]})
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        load_node_config(_node(tmp_path, rows, "Mars/Olympus"))


# -- 6. the contract is enforced -----------------------------------------------------------------


def test_rows_breaking_the_contract_are_left_out_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = pd.DataFrame(
        {
            "pid": [1, 2, 3, 4, 5, 6],
            "area": ["a"] * 6,
            "at": [
                "2025-01-01T10:00:00",
                "2025-01-01T10:00:00",
                "not a time",
                "2025-01-01T10:00:00",
                "2025-01-01T10:00:00",
                "2025-01-01T10:00:00",
            ],
            "age": ["30", "130", "40", "twelve", "50", "2.5"],
            "v": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        }
    )
    agent = NodeAgent(load_node_config(_node(tmp_path, rows)))
    try:
        with caplog.at_level(logging.WARNING, logger="oda.node"):
            data = agent.datasets.loaded("d")
        assert list(data.frame["pid"]) == [1, 5]  # 130 > max, unreadable time, "twelve", 2.5 not an int
        rules = dict(data.rules)
        assert rules["age <= 120"] == 1 and rules["at readable as datetime"] == 1
        assert rules["age readable as int"] == 2 and data.dropped == 4
        assert "4 of 6 rows break the contract" in caplog.text
    finally:
        agent.close()
