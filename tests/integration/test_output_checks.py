"""Output checks of issue 16 through real node agents and the coordinator's run (in process):
dominance on sums and means, a node's own floor on its `by_partner` cells before they leave,
residual degrees of freedom for models, and what the manifest says of each decision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyses.reply import NodeRelease, StepRelease, decode_reply, encode_release
from analyses.request import AnalysisRequest
from coordinator.embedded.twin import InProcessTransport
from coordinator.run.orchestrator import run_analysis
from tests.conftest import release_of
from tests.integration.conftest import MakeAgents, claims

MAGNITUDES = """
version: 1
name: costs
dataset: claims
combine: {combine}
privacy: {{rho: 10, unit: {{identifier: person_id, max_rows: 1}}}}
disclosure: {disclosure}
steps:
  - {{kind: sum, id: total, column: cost, bounds: [0, 1000], precision: 0.5,
      by: [{{column: category, values: [dominated, spread, small]}}]}}
  - {{kind: mean, id: average, column: cost, bounds: [0, 1000], precision: 0.5,
      by: [{{column: category, values: [dominated, spread, small]}}]}}
  - {{kind: count, id: people, by: [{{column: category, values: [dominated, spread, small]}}]}}
"""
#: One record holds 95% of the `dominated` cell's sum at police: 950 of 1,000 over 41 people;
#: the `spread` cell is 80 people of 100 each, far above the dominance floor (2,222 plus a noise
#: margin of about 1,200 at this budget); `small` has 4 people.
POLICE = {"dominated": [950.0] + [1.25] * 40, "spread": [100.0] * 80, "small": [3.5, 7.25, 1.0, 2.0]}


def _cells(frame: pd.DataFrame, column: str = "check") -> dict[str, str]:
    return dict(zip(frame["category"], frame[column], strict=True))


def test_a_dominated_cell_is_suppressed_for_dominance_and_the_manifest_accounts_for_it(
    make_agents: MakeAgents, tmp_path: Path
) -> None:
    agents = make_agents({"police": (claims(1, POLICE), 5)})
    spec = MAGNITUDES.format(combine="pool", disclosure="{profile: tre}")
    result = run_analysis(spec, InProcessTransport(agents), out_dir=tmp_path / "out")
    tables = {t.name: t.frame for t in result.tables}
    for step in ("total", "average"):
        assert _cells(tables[step]) == {
            "dominated": "suppressed:dominance",
            "spread": "pass",
            "small": "suppressed:threshold",
        }, step
        assert np.isnan(tables[step].set_index("category").loc["dominated"].iloc[0])
    assert _cells(tables["people"])["dominated"] == "pass"  # a count has no dominance rule
    spread = tables["total"].set_index("category").loc["spread", "sum"]
    assert abs(spread - 8000) <= 2 * tables["total"].set_index("category").loc["spread", "sum_accuracy95"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    dominance = manifest["disclosure"]["dominance"]
    assert (dominance["n"], dominance["k"], dominance["p"]) == (2, 0.9, 0.1)
    assert dominance["privacy_cost"].startswith("0: post-processing")
    checks = {t["table"]: t["checks"] for t in manifest["tables"]}
    assert checks["total"] == {"pass": 1, "suppressed:dominance": 1, "suppressed:threshold": 1}
    notes = next(t["notes"] for t in manifest["tables"] if t["table"] == "total")
    assert any("privacy cost 0" in n and "dominance" in n for n in notes)


def test_the_open_profile_applies_no_dominance_rule(make_agents: MakeAgents) -> None:
    agents = make_agents({"police": (claims(1, POLICE), 0)})
    result = run_analysis(
        MAGNITUDES.format(combine="pool", disclosure="{min_cell: 0}"), InProcessTransport(agents)
    )
    assert set(_cells(result.tables[1].frame).values()) == {"pass"}


def test_a_node_withholds_its_own_small_by_partner_cells_before_they_leave(make_agents: MakeAgents) -> None:
    """The spec asks for no suppression at all; the node's floor of 10 still holds, in the
    very bytes it releases, and the coordinator's table says which rule withheld each cell."""
    fire = {"dominated": [5.0] * 30, "spread": [10.0] * 30, "small": [1.0] * 25}
    agents = make_agents({"police": (claims(1, POLICE), 10), "fire": (claims(2, fire), 10)})
    for disclosure, rule in (
        ("{min_cell: 0}", "suppressed:min_cell"),
        ("{profile: tre}", "suppressed:threshold"),
    ):
        spec = MAGNITUDES.format(combine="by_partner", disclosure=disclosure)
        request = AnalysisRequest(1, f"r-{rule}", "central", spec)
        release = release_of(agents[0].handle(request))
        sent = decode_reply(encode_release(release))
        assert isinstance(sent, NodeRelease)
        people = next(s for s in sent.steps if s.step_id == "people")
        assert people.withheld == ((2, rule),)
        assert people.measurement("count").values[2] == 0
        total = next(s for s in sent.steps if s.step_id == "total")
        assert (2, rule) in total.withheld
        assert total.measurement("sum").values[2] == 0 and total.measurement("count").values[2] == 0

        result = run_analysis(spec, InProcessTransport(agents))
        frame = next(t.frame for t in result.tables if t.name == "people")
        police = frame[frame.partner == "police"]
        assert _cells(police)["small"] == rule
        assert np.isnan(police.set_index("category").loc["small", "count"])
        assert _cells(frame[frame.partner == "fire"])["small"] == "pass"  # 25 people clear the floor


def test_a_pooled_table_keeps_every_nodes_floor_when_the_spec_asks_for_none(make_agents: MakeAgents) -> None:
    agents = make_agents({"police": (claims(1, POLICE), 10), "fire": (claims(2, {"spread": [1.0] * 30}), 0)})
    result = run_analysis(
        MAGNITUDES.format(combine="pool", disclosure="{min_cell: 0}"), InProcessTransport(agents)
    )
    people = next(t.frame for t in result.tables if t.name == "people")
    assert _cells(people) == {"dominated": "pass", "spread": "pass", "small": "suppressed:min_cell"}


MODEL = """
version: 1
name: flagged
dataset: claims
privacy: {{rho: 10, unit: {{identifier: person_id, max_rows: 1}}}}
disclosure: {disclosure}
steps:
  - kind: model
    id: flag
    model:
      family: logistic
      target: flag
      positive: "yes"
      rounds: 3
      features:
        - {{column: age, bounds: [18, 90]}}
        - {{column: cost, bounds: [0, 1000]}}
"""


def test_a_model_on_too_few_rows_is_suppressed_for_residual_degrees_of_freedom(
    make_agents: MakeAgents, tmp_path: Path
) -> None:
    few = {"spread": [float(v) for v in range(12)]}  # 12 people, 3 parameters: under 10 df
    agents = make_agents({"police": (claims(3, few), 0)})
    result = run_analysis(
        MODEL.format(disclosure="{profile: tre}"), InProcessTransport(agents), out_dir=tmp_path / "few"
    )
    coefficients = result.tables[0].frame
    assert set(coefficients["check"]) == {"suppressed:residual_df"}
    assert coefficients["estimate"].isna().all()
    assert result.model is None and not (tmp_path / "few" / "model.json").exists()
    model = json.loads((tmp_path / "few" / "manifest.json").read_text())["disclosure"]["model"]
    assert model["outcome"] == "suppressed:residual_df" and model["residual_df"] < 10
    assert model["parameters"] == 3


def test_a_model_on_enough_rows_passes_its_check(make_agents: MakeAgents, tmp_path: Path) -> None:
    many = {"spread": [float(v % 97) for v in range(400)]}
    agents = make_agents({"police": (claims(4, many), 0)})
    result = run_analysis(
        MODEL.format(disclosure="{profile: tre}"), InProcessTransport(agents), out_dir=tmp_path / "many"
    )
    assert set(result.tables[0].frame["check"]) == {"pass"}
    assert (tmp_path / "many" / "model.json").exists()
    model = json.loads((tmp_path / "many" / "manifest.json").read_text())["disclosure"]["model"]
    assert model["outcome"] == "pass" and 300 < model["residual_df"] < 400


def _release_with(withheld: object) -> bytes:
    from analyses.reply import MeasurementRelease, StepRelease

    count = MeasurementRelease("count", (3, 0, 7), "integer_gaussian", 1.0, 1, 0.5, 2.0)
    release = NodeRelease(
        1,
        "police",
        "1.1",
        "r",
        "h",
        "released",
        (StepRelease("people", "count", "hidden", (count,)),),
        0.5,
        1.0,
        1e-6,
        10,
        1,
    )
    body = json.loads(encode_release(release))
    assert (
        "withheld" not in body["steps"][0]
    )  # left out when empty: an older coordinator sees what it always saw
    body["steps"][0]["withheld"] = withheld
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("withheld", "message"),
    [
        ("all", "withheld must be a list of at most 200,000"),
        ([[1]], "each withheld cell is a \\[row, rule\\] pair"),
        ([[-1, "suppressed:threshold"]], "is not \\[row >= 0, one of suppressed:min_cell"),
        ([[True, "suppressed:threshold"]], "is not \\[row >= 0"),
        ([[0, "pass"]], "is not \\[row >= 0"),
        ([[0, "suppressed:everything"]], "is not \\[row >= 0"),
    ],
)
def test_a_malformed_withheld_list_is_refused_with_its_message(withheld: object, message: str) -> None:
    from privacy.errors import ProtocolError

    with pytest.raises(ProtocolError, match=message):
        decode_reply(_release_with(withheld))


def test_a_withheld_cell_past_the_table_is_refused() -> None:
    from analyses import AnalysisSpec
    from analyses.documents import parse_document
    from analyses.step import check_lengths
    from privacy.errors import ProtocolError

    release = decode_reply(_release_with([[3, "suppressed:threshold"]]))
    assert isinstance(release, NodeRelease)
    spec = parse_document(
        MAGNITUDES.format(combine="by_partner", disclosure="{min_cell: 0}"), AnalysisSpec, source="t"
    )
    with pytest.raises(ProtocolError, match="withholds a cell past the table's 3 rows"):
        check_lengths(spec.steps[2], [release.steps[0]])
    ok = decode_reply(_release_with([[2, "suppressed:threshold"]]))
    assert isinstance(ok, NodeRelease) and ok.steps[0].withheld == ((2, "suppressed:threshold"),)


def test_a_nodes_cheap_outcomes_are_what_the_coordinators_table_says(make_agents: MakeAgents) -> None:
    """A node decides what to withhold with `StepBase.outcomes`; quantiles skip reading the
    quantiles, so the shortcut must agree with the full table, cell by cell."""
    from analyses import AnalysisSpec
    from analyses.aggregate import publication_of
    from analyses.documents import parse_document

    agents = make_agents({"police": (claims(1, POLICE), 10)})
    spec_text = MAGNITUDES.format(combine="by_partner", disclosure="{profile: tre}").replace(
        "  - {kind: count, id: people,",
        "  - {kind: quantile, id: ages, column: age, bounds: [0, 100], quantiles: [0.5],\n"
        "      by: [{column: category, values: [dominated, spread, small]}]}\n"
        "  - {kind: count, id: people,",
    )
    spec = parse_document(spec_text, AnalysisSpec, source="t")
    release = release_of(agents[0].handle(AnalysisRequest(1, "r-cheap", "central", spec_text)))
    publication = publication_of(spec, [0])
    for step in spec.steps:
        sent = next(s for s in release.steps if s.step_id == step.id)
        unwithheld = StepRelease(sent.step_id, sent.kind, "hidden", sent.measurements)
        frame = step.publish([unwithheld], publication).frame
        assert step.outcomes(unwithheld, publication) == list(frame["check"]), step.id
    ages = next(s for s in release.steps if s.step_id == "ages")
    assert ages.withheld == ((2, "suppressed:threshold"),)
