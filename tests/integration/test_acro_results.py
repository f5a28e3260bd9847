"""A run's `acro/results.json` is read by ACRO's own code (`acro.record.load_records`, ACRO
1.0.2, a test-only dependency installed by `./dev setup`), and says what the checks did.

ACRO's package `__init__` imports its statsmodels front end and its plotting; the reader needs
none of it, so the test imports `acro.record` without running the package's `__init__`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from coordinator.embedded.twin import InProcessTransport
from coordinator.run.orchestrator import run_analysis
from tests.integration.conftest import MakeAgents, claims
from tests.integration.test_output_checks import MAGNITUDES, MODEL, POLICE


def _load_records() -> Any:
    if "acro" not in sys.modules:
        found = importlib.util.find_spec("acro")
        if found is None or found.submodule_search_locations is None:
            pytest.fail(
                "ACRO is not installed: `./dev setup` installs acro==1.0.2 (without its dependencies)"
            )
        package = types.ModuleType("acro")
        package.__path__ = list(found.submodule_search_locations)
        package.__spec__ = found
        sys.modules["acro"] = package
    from acro.record import load_records  # type: ignore[import-not-found, import-untyped, unused-ignore]

    return load_records


def test_acros_own_reader_opens_a_runs_results_with_every_check_outcome(
    make_agents: MakeAgents, tmp_path: Path
) -> None:
    agents = make_agents({"police": (claims(1, POLICE), 5)})
    out = tmp_path / "run"
    run_analysis(
        MAGNITUDES.format(combine="pool", disclosure="{profile: tre}"),
        InProcessTransport(agents),
        out_dir=out,
    )
    records = _load_records()(str(out / "acro"))
    by_table = {r.properties["oda_table"]: r for r in records.results.values()}
    assert set(by_table) == {"total", "average", "people"}
    total = by_table["total"]
    assert total.status == "review" and total.output_type == "table"
    assert total.sdc["summary"]["suppressed"] is True
    assert total.sdc["summary"]["p-ratio"] == total.sdc["summary"]["nk-rule"] == 1
    assert total.sdc["summary"]["threshold"] == 1
    frame = total.output[0]  # ACRO read the CSV back
    dominated = frame.index[frame["category"] == "dominated"][0]
    column = list(frame.columns).index("sum") - 1  # ACRO's CSV keeps the index as its first column
    assert [int(dominated), column] in total.sdc["cells"]["nk-rule"]
    assert total.outcome.loc[str(dominated), "sum"] == "p-ratio; nk-rule; "
    assert "privacy cost 0" in " ".join(total.comments)
    assert by_table["people"].sdc["summary"]["threshold"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["acro_results"] == "acro/results.json"
    for name, digest in ((p.name, p.read_bytes()) for p in (out / "acro").iterdir() if p.is_file()):
        assert (out / "acro" / "checksums" / f"{name}.txt").read_text() == hashlib.sha256(digest).hexdigest()


def test_a_model_withheld_for_its_degrees_of_freedom_is_an_acro_fail(
    make_agents: MakeAgents, tmp_path: Path
) -> None:
    agents = make_agents({"police": (claims(3, {"spread": [float(v) for v in range(12)]}), 0)})
    out = tmp_path / "model"
    run_analysis(MODEL.format(disclosure="{profile: tre}"), InProcessTransport(agents), out_dir=out)
    records = _load_records()(str(out / "acro"))
    model = next(r for r in records.results.values() if r.output_type == "regression")
    assert model.status == "fail" and model.properties["dof"] < 10
    assert "residual degrees of freedom" in model.summary


def test_quantiles_are_marked_for_review_with_an_exception_text(
    make_agents: MakeAgents, tmp_path: Path
) -> None:
    agents = make_agents({"police": (claims(1, POLICE), 5)})
    spec = """
version: 1
name: ages
dataset: claims
privacy: {rho: 2, unit: {identifier: person_id, max_rows: 1}}
disclosure: {profile: tre}
steps:
  - {kind: quantile, id: age, column: age, bounds: [0, 100], quantiles: [0.5]}
"""
    run_analysis(spec, InProcessTransport(agents), out_dir=tmp_path / "q")
    record = next(iter(_load_records()(str(tmp_path / "q" / "acro")).results.values()))
    assert record.status == "review" and "review" in record.summary
    assert record.exception.startswith("published under differential privacy")
