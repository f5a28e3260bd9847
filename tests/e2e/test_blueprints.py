"""Every blueprint of the catalogue, end to end on one embedded federation of real processes.

One coordinator and the partners the catalogue's contracts name (police, fire, council) with
example data for every blueprint; each blueprint is run through Flower, and its report, exports,
provenance and the nodes' ledgers are checked. The same coordinator serves its blueprint registry
over HTTPS for the pull tests, and a report is opened in headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from analyses.blueprint import bundled_blueprints, load_bundled
from coordinator.blueprints.cli import _example_partners, planned_costs
from coordinator.blueprints.runner import BlueprintRun, run_blueprint
from coordinator.embedded.example_data import write_blueprint_federation
from coordinator.embedded.federation import EmbeddedFederation
from node_agent.ledger import Ledger

pytestmark = pytest.mark.e2e

CATALOGUE = bundled_blueprints()


class Runs:
    def __init__(self, federation: EmbeddedFederation, out: Path) -> None:
        self.federation = federation
        self.out = out
        self.done: dict[str, BlueprintRun] = {}

    def get(self, name: str) -> BlueprintRun:
        if name not in self.done:
            loaded = load_bundled(name)
            rendered = loaded.blueprint.render()
            planned = planned_costs(rendered, _example_partners(rendered))
            link = self.federation.link()
            try:
                self.done[name] = run_blueprint(
                    loaded, {}, link, self.out / name, planned=planned, timeout=60
                )
            finally:
                link.close()
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    work = tmp_path_factory.mktemp("blueprint-federation")
    blueprints = [(load_bundled(n).blueprint, load_bundled(n).blueprint.resolve()) for n in CATALOGUE]

    def partners(fleet: str, ca: Path) -> dict[str, Path]:
        return write_blueprint_federation(work / "partners", blueprints, fleet, ca)

    with EmbeddedFederation(work / "fed", partner_configs=partners) as federation:
        yield Runs(federation, work / "out")


def _ledger_by_request(runs: Runs) -> dict[str, dict[str, float]]:
    """partner -> request id -> committed rho, read from each node's own ledger."""
    out: dict[str, dict[str, float]] = {}
    for partner, config in runs.federation.configs.items():
        ledger = Ledger(config.parent / "state" / "ledger.sqlite")
        try:
            for entry in ledger.entries():
                if entry.status == "committed":
                    per = out.setdefault(partner, {})
                    per[entry.request_id] = per.get(entry.request_id, 0.0) + entry.rho
        finally:
            ledger.close()
    return out


@pytest.mark.parametrize("name", CATALOGUE)
def test_every_blueprint_runs_and_costs_what_was_shown(runs: Runs, name: str) -> None:
    run = runs.get(name)
    assert not run.failures, run.failures
    out = runs.out / name
    report = (out / "report.html").read_text()
    assert "<svg" in report and run.loaded.blueprint.title in report
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["blueprint"]["sha256"] == run.loaded.sha256
    for analysis in run.results:  # the catalogue runs under the tre profile, every table checked
        manifest = json.loads((out / "analyses" / analysis / "manifest.json").read_text())
        assert manifest["disclosure"]["profile"] == "tre" and manifest["disclosure"]["people_threshold"] == 10
        assert all(t["checks"] for t in manifest["tables"]), analysis
        assert (out / "analyses" / analysis / manifest["acro_results"]).is_file()
    assert {a["status"] for a in provenance["analyses"]} == {"done"}
    exports = sorted((out / "exports").glob("*.csv"))
    assert len(exports) >= 2
    for csv in exports:
        assert csv.read_bytes().startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: Excel and Power BI read it as UTF-8
        assert (csv.with_suffix(".parquet")).exists() or csv.name == "data_dictionary.csv"
    # `oda blueprint cost` (planned) equals what each node debited, by its own ledger.
    rendered = run.rendered
    planned = planned_costs(rendered, _example_partners(rendered))
    ledgers = _ledger_by_request(runs)
    for partner, costs in planned.items():
        request_ids = {
            r.request_id for result in run.results.values() for r in result.releases if r.partner == partner
        }
        debited = sum(ledgers.get(partner, {}).get(rid, 0.0) for rid in request_ids)
        assert debited == pytest.approx(sum(c.value for c in costs.values()), abs=1e-9), partner
        assert provenance["nodes"].get(partner, {}).get("debited_rho", 0.0) == pytest.approx(
            debited, abs=1e-9
        )
        if partner in provenance["nodes"]:
            assert re.fullmatch(r"[0-9a-f]{64}", provenance["nodes"][partner]["audit_head"])


def test_cost_command_prints_the_planned_cost() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "blueprint", "cost", "reducing_suicide", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    costs = json.loads(out)
    assert costs["police"] == {
        "suicide_places": pytest.approx(0.18),
        "suicide_events_profile": pytest.approx(0.24),
    }
    assert costs["council"] == {"suicide_places": pytest.approx(0.18), "suicide_events_profile": 0.0}


def test_international_criminality_runs_only_at_law_enforcement_partners(runs: Runs) -> None:
    run = runs.get("international_criminality")
    result = run.results["foreign_national_offending"]
    assert {r.partner for r in result.releases if r.status == "released"} == {"police"}
    (refusal,) = result.refusals
    assert refusal.partner == "council" and refusal.kind == "policy" and "law enforcement" in refusal.message
    assert run.debited().get("council", 0.0) == 0.0
    assert "law enforcement" in (runs.out / "international_criminality" / "report.html").read_text()


def test_road_safety_recovers_the_planted_severity_effects(runs: Runs) -> None:
    coefficients = run_table(runs, "road_safety", "road_safety_severity.coefficients").set_index("term")
    # planted: 0.035 per mph over 50 mph = 1.75; pedestrians +1.1, motorcyclists +1.4
    assert 1.0 < coefficients.loc["speed_limit", "estimate"] < 2.5
    assert coefficients.loc["road_user=motorcyclist", "ci95_low"] > 0.5
    assert coefficients.loc["road_user=pedestrian", "ci95_low"] > 0.3


def test_community_risk_index_has_rank_intervals_that_follow_deprivation(runs: Runs) -> None:
    from coordinator.embedded.example_data import _deprivation

    run = runs.get("community_risk_index")
    index = run.derived["risk_index"].frame
    assert len(index) == 195 and set(index["rank"]) == set(range(1, 196))
    assert (index["rank_low95"] <= index["rank"]).all() and (index["rank"] <= index["rank_high95"]).all()
    keys = load_bundled("community_risk_index").blueprint.keyset_of(
        "crime_events", "area", run.rendered.parameters
    )
    from analyses.keysets import load_keyset

    deprivation = pd.Series(_deprivation(str(keys), 7), index=load_keyset(str(keys)))
    corr = index.set_index("area")["index"].corr(deprivation)
    assert corr > 0.6, corr  # every input was planted to rise with deprivation


def test_plea_data_quality_profile_finds_the_missing_fields(runs: Runs) -> None:
    profile = runs.get("predicting_pleas").derived["quality"].frame.set_index("field")
    for field, planted in {"legal_representation": 12, "employment": 35, "ethnicity": 20}.items():
        row = profile.loc[field]
        assert abs(row["percent_missing"] - planted) < row["percent_missing_accuracy95"] + 3, (field, row)


def test_suicide_ratio_and_missing_people_and_trends_are_published(runs: Runs) -> None:
    ratio = runs.get("reducing_suicide").derived["events_per_risk"].frame
    assert len(ratio) == 195 and ratio["ratio"].notna().sum() > 150
    table = run_table(runs, "missing_people", "missing_when.duration")
    assert set(table["setting"]) == {"family_home", "childrens_home", "foster_care", "hospital", "other"}
    # Under tre a group whose noisy total (60 noisy bins) is under the threshold is suppressed:
    # the small ones (hospital, 8% of episodes) sometimes are; the two largest never.
    duration = table[table["check"] == "review"]
    assert {"family_home", "childrens_home"} <= set(duration["setting"]), table
    assert table.loc[table["check"] != "review", "q50"].isna().all()
    # A DP median of a small group may land outside a plausible range (9.5 h for `hospital` in
    # one run); its stated 95% interval must still reach into it, and hold the estimate.
    assert ((duration["q50_low"] <= 40) & (duration["q50_high"] >= 10)).all(), duration
    assert ((duration["q50_low"] <= duration["q50"]) & (duration["q50"] <= duration["q50_high"])).all()


def run_table(runs: Runs, blueprint: str, ref: str) -> pd.DataFrame:
    return runs.get(blueprint).table(ref).frame


# --- the coordinator's blueprint registry over HTTPS -------------------------------------------


def _oda(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], capture_output=True, text=True)


def _pull(runs: Runs, ref: str, registry: Path, trust: Path) -> subprocess.CompletedProcess[str]:
    """`oda blueprint pull` from the running coordinator's HTTPS registry."""
    return _oda(
        "blueprint",
        "pull",
        f"https://{runs.federation.fleet_address}",
        ref,
        "--registry",
        str(registry),
        "--trust",
        str(trust),
        "--ca-cert",
        str(runs.federation.ca_cert),
    )


@pytest.fixture(scope="module")
def published(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """road_safety published (signed) into the running coordinator's registry."""
    keys = tmp_path_factory.mktemp("publisher")
    assert _oda("blueprint", "keygen", str(keys), "--publisher", "West Midlands ODA").returncode == 0
    source = Path(__file__).resolve().parents[2] / "analyses" / "blueprints" / "road_safety.yaml"
    registry = runs.federation.coordinator_dir / "blueprints"
    done = _oda(
        "blueprint",
        "publish",
        str(source),
        "--registry",
        str(registry),
        "--key",
        str(keys / "publisher.key"),
        "--publisher",
        "West Midlands ODA",
    )
    assert done.returncode == 0, done.stderr
    return {"pub": keys / "publisher.pub", "registry": registry, "source": source}


def test_pull_from_another_coordinator_verifies_hash_and_signature(
    runs: Runs, published: dict[str, Path], tmp_path: Path
) -> None:
    mine = tmp_path / "my-registry"
    done = _pull(runs, "road_safety", mine, published["pub"])
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout
    assert (mine / "road_safety" / "1.1.0" / "blueprint.yaml").read_bytes() == published[
        "source"
    ].read_bytes()
    listed = _oda("blueprint", "list", "--registry", str(mine)).stdout
    assert "West Midlands ODA" in listed
    shown = _oda("blueprint", "show", "road_safety@1.1.0", "--registry", str(mine))
    assert shown.returncode == 0 and "signed by West Midlands ODA" in shown.stdout


def test_a_tampered_blueprint_is_refused_on_pull(
    runs: Runs, published: dict[str, Path], tmp_path: Path
) -> None:
    served = published["registry"] / "road_safety" / "1.1.0" / "blueprint.yaml"
    original = served.read_bytes()
    at = original.index(b"default: 0.6")
    tampered = original[:at] + b"default: 0.9" + original[at + len(b"default: 0.6") :]
    assert (
        len(tampered) == len(original) and sum(a != b for a, b in zip(tampered, original, strict=True)) == 1
    )
    served.write_bytes(tampered)
    try:
        mine = tmp_path / "my-registry"
        done = _pull(runs, "road_safety@1.1.0", mine, published["pub"])
    finally:
        served.write_bytes(original)
    assert done.returncode == 15, done.stderr
    assert "does not match the signed hash" in done.stderr and "tampered" in done.stderr
    assert not (mine / "road_safety").exists()


def test_a_wrong_signature_is_refused_on_pull(runs: Runs, published: dict[str, Path], tmp_path: Path) -> None:
    from coordinator.blueprints.registry import write_publisher_key

    signature_path = published["registry"] / "road_safety" / "1.1.0" / "signature.json"
    original = signature_path.read_text()
    # a forger signs with their own key but claims the trusted publisher's public key
    forger, _ = write_publisher_key(tmp_path / "forger", "forger")
    from coordinator.blueprints.registry import sign

    forged = sign(published["source"].read_bytes(), forger, "West Midlands ODA")
    claimed = json.loads(original)
    claimed["signature"] = forged["signature"]
    signature_path.write_text(json.dumps(claimed))
    try:
        mine = tmp_path / "my-registry"
        done = _pull(runs, "road_safety", mine, published["pub"])
        untrusted = _pull(runs, "road_safety", mine, tmp_path / "forger" / "publisher.pub")
    finally:
        signature_path.write_text(original)
    assert done.returncode == 15, done.stderr
    assert "signature does not verify" in done.stderr
    assert untrusted.returncode == 15 and "which you do not trust" in untrusted.stderr
    assert not (mine / "road_safety").exists()


# --- the report in a real browser ---------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "Chromium is not installed (Debian: apt-get install chromium); `./dev test` installs it when it can"
    )


def _render(page: Path, tmp_path: Path) -> tuple[str, str]:
    """The DOM after scripts ran, and Chromium's console log (script errors appear there)."""
    done = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout, done.stderr


def _script_errors(log: str) -> list[str]:
    return [
        line for line in log.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)
    ]


def test_the_report_renders_in_chromium_with_one_shape_per_area(runs: Runs, tmp_path: Path) -> None:
    run = runs.get("community_risk_index")
    page = runs.out / "community_risk_index" / "report.html"
    dom, log = _render(page, tmp_path)
    assert _script_errors(log) == []
    assert 'data-ready="1"' in dom, "the report's script did not run to the end"
    sections = re.findall(
        r'<section class="output" id="out-(\w+)" data-kind="(\w+)">(.*?)</section>', dom, re.S
    )
    maps = [(oid, body) for oid, kind, body in sections if '<svg class="map"' in body]
    assert {oid for oid, _ in maps} == {"risk_index", "crime_map", "fire_map", "care_map"}
    published_areas = set(run.table("community_risk.crime").frame["area"])
    for oid, body in maps:
        areas = re.findall(r'<path class="area" data-area="(E0\d+)"', body)
        assert len(areas) == len(set(areas)) == len(published_areas) == 195, oid
        assert set(areas) == published_areas


def test_the_browser_check_sees_a_script_error(runs: Runs, tmp_path: Path) -> None:
    """The check above can fail: the same report with one broken script is caught."""
    runs.get("community_risk_index")
    page = tmp_path / "broken.html"
    text = (runs.out / "community_risk_index" / "report.html").read_text()
    page.write_text(text.replace("</main>", "</main><script>notDefinedAnywhere();</script>"))
    _, log = _render(page, tmp_path)
    assert any("notDefinedAnywhere" in line for line in _script_errors(log))
