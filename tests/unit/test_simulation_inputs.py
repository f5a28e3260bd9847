"""`oda simulate` refuses what it cannot run, before it writes or starts anything."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from flwr.clientapp import ClientApp

from coordinator.deploy import flower
from coordinator.embedded.simulation import MAX_PARTNERS, simulate_spec
from node_agent.flower_node import virtual_partner
from privacy.errors import ConfigError, FederationError

SPEC = "version: 1\nname: c\ndataset: incidents\nprivacy: {rho: 0.05}\nsteps: [{kind: count, id: c}]\n"


@pytest.mark.parametrize(
    ("partners", "rows", "message"),
    [
        (0, 300, f"--partners must be between 1 and {MAX_PARTNERS}, not 0"),
        (MAX_PARTNERS + 1, 300, f"--partners must be between 1 and {MAX_PARTNERS}, not {MAX_PARTNERS + 1}"),
        (10, 5, "--rows must be between 10 and 1000000, not 5"),
    ],
)
def test_counts_out_of_range_are_refused(tmp_path: Path, partners: int, rows: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        simulate_spec(SPEC, partners, rows=rows, root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("cpus", [0.0, -1.0, 10_000.0])
def test_cpus_per_partner_out_of_range_is_refused(tmp_path: Path, cpus: float) -> None:
    with pytest.raises(
        ConfigError, match=r"--cpus-per-partner must be above 0 and at most this machine's \d+ CPUs"
    ):
        simulate_spec(SPEC, 3, root=tmp_path, cpus_per_partner=cpus)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_engine_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(FederationError, match=r"pip install 'oda-federated\[simulation\]'"):
        flower.simulate(lambda transport: None, ClientApp(), 3)


def test_virtual_partners_have_stable_sortable_names() -> None:
    assert virtual_partner(7) == "partner-00007"
    assert sorted(virtual_partner(i) for i in (10, 9, 100)) == [
        "partner-00009",
        "partner-00010",
        "partner-00100",
    ]
