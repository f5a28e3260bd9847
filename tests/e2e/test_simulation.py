"""`oda simulate` on Flower's simulation engine (Ray): virtual partners answered by the same node
code, each with its own persistent ledger. Bounded here (24 partners); the 100, 300 and 1,000
partner figures come from `bench/simulation.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from coordinator.cli import main as oda
from coordinator.embedded.simulation import simulate_spec
from node_agent.config import load_node_config
from node_agent.flower_node import virtual_partner

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    # Ray's shutdown leaves one exited helper unreaped (a zombie, not a live process: checked
    # with ps after a simulation) and an open /dev/null, which Python reports when it collects
    # them; reaping another library's children from here could take a test's own exit codes.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
pytest.importorskip("ray", reason="Flower's simulation engine is not installed (pip install '.[simulation]')")

SPEC = """
version: 1
name: pooled-count
dataset: incidents
privacy: {rho: 0.05, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c}
"""
PARTNERS = 24


def _true_count(root: Path, partners: int, max_rows: int) -> int:
    """The pooled count after each person's rows are bounded to `max_rows`, as every node does."""
    total = 0
    for index in range(partners):
        folder = root / virtual_partner(index)
        dataset = load_node_config(folder / "node.yaml").datasets["incidents"]
        person = dataset.columns["person_id"].source or "person_id"
        frame = pd.read_parquet(folder / "data" / "incidents.parquet", columns=[person])
        total += int(frame.groupby(person).size().clip(upper=max_rows).sum())
    return total


def test_a_pooled_count_over_virtual_partners_spends_at_each_and_is_accurate(tmp_path: Path) -> None:
    root = tmp_path / "partners"
    first = simulate_spec(SPEC, PARTNERS, rows=200, seed=11, root=root, out_dir=tmp_path / "one")
    assert len(first.result.releases) == PARTNERS and first.result.refusals == []
    assert sorted(r.partner for r in first.result.releases) == [virtual_partner(i) for i in range(PARTNERS)]
    assert first.spent == pytest.approx((0.05, 0.05))
    table = first.result.tables[0].frame
    truth = _true_count(root, PARTNERS, 5)
    error = abs(float(table["count"].iloc[0]) - truth)
    # the stated 95% accuracy, doubled: about 4 standard deviations, so this fails by chance
    # less than once in 10,000 runs, and fails whenever the pooled count is not the true one
    assert error <= 2 * float(table["count_accuracy95"].iloc[0]), (error, table)
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert len(manifest["nodes"]) == PARTNERS
    assert 0 < first.query_seconds <= first.engine_seconds

    # the same folders again: every virtual partner's own ledger spends a second time
    second = simulate_spec(SPEC, PARTNERS, rows=200, seed=11, root=root)
    assert len(second.result.releases) == PARTNERS
    assert second.spent == pytest.approx((0.10, 0.10))
    assert second.write_seconds < first.write_seconds + 5  # the partitions were kept, not rewritten


def test_oda_simulate_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "count.yaml"
    spec.write_text(SPEC)
    assert (
        oda(["simulate", str(spec), "--partners", "6", "--rows", "100", "--root", str(tmp_path / "p")]) == 0
    )
    out = capsys.readouterr().out
    assert "pooled-count over 6 virtual partners (100 rows each)" in out
    assert "6 released, none refused; each partner's ledger holds rho 0.05 to 0.05" in out
    assert "count_accuracy95" in out
