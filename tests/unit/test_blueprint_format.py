"""The blueprint format, its rendering and cost, derived outputs, example data and signing (pure)."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analyses.blueprint import bundled_blueprints, load_bundled, parse_blueprint
from analyses.derived import composite_index, ratio
from analyses.keys import KeySpec
from analyses.local_data import LocalData
from analyses.operators.glm import ModelStep
from privacy.errors import ConfigError, SignatureError, SpecError

ROAD = (resources.files("analyses") / "blueprints" / "road_safety.yaml").read_bytes()


def _edited(**changes: object) -> bytes:
    data = yaml.safe_load(ROAD)
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return yaml.safe_dump(data, sort_keys=False).encode()


def test_the_catalogue_has_every_solution_of_the_office() -> None:
    assert set(bundled_blueprints()) == {
        "road_safety",
        "serious_youth_violence",
        "adverse_childhood_experiences",
        "community_risk_index",
        "missing_people",
        "troubled_families",
        "predicting_pleas",
        "international_criminality",
        "reducing_suicide",
        "arson",
        "serious_organised_crime",
    }


@pytest.mark.parametrize("name", bundled_blueprints())
def test_each_catalogue_blueprint_is_addressed_by_its_bytes_and_renders(name: str) -> None:
    loaded = load_bundled(name)
    data = (resources.files("analyses") / "blueprints" / f"{name}.yaml").read_bytes()
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    rendered = loaded.blueprint.render()
    total = sum(a.spec.privacy.budget().value for a in rendered.analyses)
    assert total == pytest.approx(
        float(rendered.parameters["rho"]) * sum(a.budget_share for a in loaded.blueprint.analyses)
    )
    g = loaded.blueprint.governance
    assert all([g.purpose, g.lawful_basis, g.dpia_ref, g.owner, g.licence])


def test_parameters_are_typed_and_checked() -> None:
    bp = load_bundled("road_safety").blueprint
    rendered = bp.render({"rho": "0.3", "model_rounds": "4"})
    assert rendered.spec("road_safety_severity").privacy.budget().value == pytest.approx(0.15)
    step = rendered.spec("road_safety_severity").steps[0]
    assert isinstance(step, ModelStep) and step.model.rounds == 4
    with pytest.raises(SpecError, match="has no parameter 'speed'"):
        bp.render({"speed": 1})
    with pytest.raises(SpecError, match=re.escape("'model_rounds' must be int, got '4.5'")):
        bp.render({"model_rounds": "4.5"})
    with pytest.raises(SpecError, match="'rho' must be at most 2"):
        bp.render({"rho": 3})
    with pytest.raises(SpecError, match="unknown key set 'atlantis'"):
        bp.render({"areas": "atlantis"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"parameters__rho": None}, "needs a float parameter 'rho'"),
        ({"analyses__0__budget_share": 0.9}, "budget_share add up to 1.6, over 1"),
        ({"analyses__0__spec__dataset": "crashes"}, "reads undeclared dataset 'crashes'"),
        ({"datasets__collisions__columns__age": None}, "unknown column 'age'"),
        (
            {"analyses__0__spec__privacy__unit__identifier": "person_id"},
            "dataset 'collisions' is identified by 'casualty_id'",
        ),
        (
            {"outputs__0__table": "nowhere.casualties"},
            "reads 'nowhere.casualties', which no analysis produces",
        ),
        ({"analyses__1__spec__steps__0__by__1__values": "${colours}"}, "undeclared parameters: colours"),
        ({"version": "1.0"}, "version"),
        ({"governance__dpia_ref": None}, "governance.dpia_ref: Field required"),
        ({"blueprint": 2}, "not a blueprint: it must start with 'blueprint: 1'"),
    ],
)
def test_a_bad_blueprint_is_refused_with_what_to_fix(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_blueprint(_edited(**changes), "bp.yaml")


def test_partner_cost_follows_held_datasets_and_law_enforcement() -> None:
    suicide = load_bundled("reducing_suicide").blueprint.render()
    police = {a: c.value for a, c in suicide.partner_cost({"suicide_events"}).items()}
    assert police == {"suicide_places": pytest.approx(0.18), "suicide_events_profile": pytest.approx(0.24)}
    council = suicide.partner_cost({"at_risk_residents"})
    assert (
        council["suicide_places"].value == pytest.approx(0.18)
        and council["suicide_events_profile"].value == 0
    )
    crime = load_bundled("international_criminality").blueprint.render()
    assert (
        crime.partner_cost({"foreign_national_arrests"}, law_enforcement=False)[
            "foreign_national_offending"
        ].value
        == 0
    )
    assert crime.partner_cost({"foreign_national_arrests"}, law_enforcement=True)[
        "foreign_national_offending"
    ].value == pytest.approx(0.4)


def test_a_missing_key_counts_present_and_missing_values() -> None:
    frame = pd.DataFrame({"x": pd.array([1, None, 3, None], dtype="Int64"), "s": ["a", None, "b", "c"]})
    data = LocalData(frame)
    assert data.codes(KeySpec(column="x", derive="missing")).tolist() == [0, 1, 0, 1]
    assert data.codes(KeySpec(column="s", derive="missing")).tolist() == [0, 1, 0, 0]
    assert KeySpec(column="s", derive="missing").keys() == ("present", "missing")


def test_composite_index_rank_intervals_cover_the_true_ranks() -> None:
    """Seeded: 60 areas with a known ordering; with small noise the 95% rank intervals cover the
    true rank for nearly every area, and with large noise they are much wider."""
    rng = np.random.default_rng(3)
    truth = np.exp(np.linspace(1, 5, 60))
    keys = pd.Series([f"a{i}" for i in range(60)], name="area")
    true_rank = pd.Series(np.arange(60, 0, -1), index=keys)
    widths = []
    for noise in (1.0, 40.0):
        values = [truth + rng.normal(0, noise, 60), 2 * truth + rng.normal(0, noise, 60)]
        frame = (
            composite_index(keys, values, [np.full(60, 1.96 * noise)] * 2, seed=1)
            .set_index("area")
            .reindex(true_rank.index)
        )
        covered = ((frame["rank_low95"] <= true_rank) & (true_rank <= frame["rank_high95"])).mean()
        widths.append(float((frame["rank_high95"] - frame["rank_low95"]).median()))
        assert covered >= 0.85, (noise, covered)
    assert widths[1] > 3 * max(widths[0], 1)


def test_ratio_has_a_delta_method_margin_and_is_undefined_over_zero() -> None:
    values, margin = ratio(
        np.array([50.0, 5.0]), np.array([10.0, 10.0]), np.array([100.0, 0.0]), np.array([10.0, 10.0]), 100
    )
    assert values[0] == pytest.approx(50.0) and np.isnan(values[1])
    assert 0 < margin[0] < 20 and np.isnan(margin[1])


def test_example_data_fit_their_contracts() -> None:
    from coordinator.embedded.example_data import example_frame
    from node_agent.config import DatasetConfig
    from node_agent.connectors import contract_report

    bp = load_bundled("predicting_pleas").blueprint
    contract = bp.datasets["court_cases"]
    frame = example_frame(contract, {c: None for c in contract.columns}, 3000, seed=5)
    config = DatasetConfig.model_validate(
        {
            "path": "x.parquet",
            "identifier": contract.identifier,
            "columns": {n: c.node_column() for n, c in contract.columns.items()},
        }
    )
    assert [rule for rule, bad in contract_report(frame, config) if bad] == []
    assert 0.3 < frame["employment"].isna().mean() < 0.4
    # the planted effect: remanded defendants plead guilty more often
    assert (
        frame.loc[frame["remanded"] == 1, "plea"].eq("guilty").mean()
        > frame.loc[frame["remanded"] == 0, "plea"].eq("guilty").mean()
    )


# --- signing and local registries -----------------------------------------------------------


def _publisher(tmp_path: Path, name: str = "ODA") -> tuple[Path, Path]:
    from coordinator.blueprints.registry import write_publisher_key

    return write_publisher_key(tmp_path / name, name)


def test_signed_blueprints_verify_and_one_changed_byte_does_not(tmp_path: Path) -> None:
    from coordinator.blueprints.registry import load_public_key, sign, verify

    key, pub = _publisher(tmp_path)
    signature = sign(ROAD, key, "ODA")
    trusted = [load_public_key(pub)]
    assert verify(ROAD, signature, trusted, "x").sha256 == signature["sha256"]
    for i in (0, len(ROAD) // 2, len(ROAD) - 2):
        changed = bytearray(ROAD)
        changed[i] ^= 0x01
        with pytest.raises(SignatureError, match="does not match the signed hash"):
            verify(bytes(changed), signature, trusted, "x")
    other_key, other_pub = _publisher(tmp_path, "other")
    with pytest.raises(SignatureError, match="which you do not trust"):
        verify(ROAD, signature, [load_public_key(other_pub)], "x")
    forged = dict(signature, signature=sign(ROAD, other_key, "ODA")["signature"])
    with pytest.raises(SignatureError, match="signature does not verify"):
        verify(ROAD, forged, trusted, "x")
    renamed = dict(signature, version="9.9.9")
    with pytest.raises(SignatureError, match="signature does not verify"):
        verify(ROAD, renamed, trusted, "x")
    with pytest.raises(SignatureError, match="not an oda-blueprint-signature/1 document"):
        verify(ROAD, {}, trusted, "x")


def test_a_registry_keeps_versions_immutable_and_verifies_on_read(tmp_path: Path) -> None:
    from coordinator.blueprints.registry import LocalRegistry

    key, _ = _publisher(tmp_path)
    registry = LocalRegistry(tmp_path / "reg")
    entry = registry.publish(ROAD, key, "ODA")
    assert (entry.name, entry.version) == ("road_safety", "1.1.0")
    assert registry.publish(ROAD, key, "ODA").sha256 == entry.sha256  # the same bytes again: fine
    changed = ROAD.replace(b"default: 0.6", b"default: 0.5")
    with pytest.raises(
        SpecError, match=r"already published .* with different content: published versions never change"
    ):
        registry.publish(changed, key, "ODA")
    newer = changed.replace(b"version: 1.1.0", b"version: 1.2.0")
    registry.publish(newer, key, "ODA")
    assert registry.versions("road_safety") == ["1.1.0", "1.2.0"]
    loaded, signer = registry.load("road_safety", None, registry.trusted_keys())
    assert loaded.blueprint.version == "1.2.0" and "ODA" in signer
    (tmp_path / "reg" / "road_safety" / "1.1.0" / "blueprint.yaml").write_bytes(changed)
    with pytest.raises(SignatureError, match="tampered"):
        registry.load("road_safety", "1.1.0", registry.trusted_keys())
    with pytest.raises(SpecError, match=re.escape("has road_safety versions 1.1.0, 1.2.0, not 2.0.0")):
        registry.read("road_safety", "2.0.0")
    (tmp_path / "reg" / "road_safety" / "1.2.0" / "signature.json").write_text("[1, 2]")
    with pytest.raises(SignatureError, match="the signature is not a JSON object; refused"):
        registry.load("road_safety", "1.2.0", registry.trusted_keys())


def test_key_files_are_checked(tmp_path: Path) -> None:
    from coordinator.blueprints.registry import load_public_key, sign, write_publisher_key

    key, _ = _publisher(tmp_path)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError, match="keys are never overwritten"):
        write_publisher_key(tmp_path / "ODA", "ODA")
    with pytest.raises(ConfigError, match="cannot read the publisher key"):
        sign(ROAD, tmp_path / "missing.key", "ODA")
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        load_public_key(tmp_path / "bad.pub")
    with pytest.raises(SpecError, match="not a blueprint"):
        sign(json.dumps({"a": 1}).encode(), key, "ODA")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["blueprint", "show", "no_such_blueprint"], "no blueprint 'no_such_blueprint' in the catalogue"),
        (["blueprint", "cost", "arson", "--param", "rho"], "--param 'rho': write NAME=VALUE"),
        (["blueprint", "cost", "arson", "--param", "rho=lots"], "parameter 'rho' must be float, got 'lots'"),
        (["blueprint", "show", "arson@1.0.0"], "a version needs --registry"),
        (["blueprint", "show", "missing-file.yaml"], "missing-file.yaml: cannot read the blueprint"),
        (
            ["blueprint", "pull", "http://127.0.0.1:1", "arson", "--registry", "r", "--trust", "k.pub"],
            "blueprints are pulled over https:// only",
        ),
    ],
)
def test_blueprint_command_errors_say_what_to_fix(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from coordinator.blueprints.registry import write_publisher_key
    from coordinator.cli import main

    monkeypatch.chdir(tmp_path)
    _, public = write_publisher_key(tmp_path / "keys", "x")
    public.rename(tmp_path / "k.pub")
    code = main(argv)
    assert code != 0
    assert message in capsys.readouterr().err


def test_blueprint_show_prints_contracts_governance_and_cost(capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.cli import main

    assert main(["blueprint", "show", "predicting_pleas", "--param", "rho=0.2"]) == 0
    out = capsys.readouterr().out
    assert "lawful_basis: DPA 2018 Part 3" in out
    assert "employment (str, may be missing)" in out
    assert "police: rho 0.2 (epsilon" in out


@pytest.mark.parametrize("name", bundled_blueprints())
def test_every_catalogue_blueprint_states_its_disclosure_profile(name: str) -> None:
    loaded = load_bundled(name)
    assert loaded.blueprint.disclosure.profile == "tre"
    assert "\ndisclosure: {profile: tre}\n" in loaded.text  # stated, not left to the default
