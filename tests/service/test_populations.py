"""Federation-wide accounting over the analyst service (issue 17): a resident held by several
agencies bears the cost at each; the cost to one resident is shown before a run and capped by
the federation's policy; a run over the cap is refused before any node spends."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from coordinator.deploy.config import PopulationPolicy
from coordinator.service.client import Client
from privacy.errors import BudgetExhausted, PolicyRefusal
from tests.service.conftest import Service

SPEC = """
version: 1
name: residents-{rho}
dataset: incidents
privacy: {{rho: {rho}, unit: {{identifier: person_id, max_rows: 5}}}}
steps:
  - {{kind: count, id: c, by: [{{column: area, keyset: coventry_lsoa11}}]}}
"""


def _federation(service: Service, cap: float) -> None:
    service.state.populations = {
        "residents": PopulationPolicy(datasets={"incidents": ["police", "fire", "council"]}, max_rho=cap),
        "patients": PopulationPolicy(datasets={"admissions": ["health"]}, max_rho=1.0),
    }


def test_the_cost_to_one_resident_is_shown_before_and_a_run_over_the_cap_spends_nothing(
    service: Service,
) -> None:
    _federation(service, 0.5)
    alice = service.client("alice")
    preview = alice.cost(SPEC.format(rho=0.2))["populations"]
    assert preview == {
        "residents": {
            "per_resident_rho": pytest.approx(0.6),  # three agencies may hold a resident, 0.2 at each
            "spent_rho": 0.0,
            "cap_rho": 0.5,
            "after_rho": pytest.approx(0.6),
            "would_exceed": True,
            "holders": ["council", "fire", "police"],
        }
    }  # a population the run does not touch is not listed
    with pytest.raises(
        BudgetExhausted, match=r"federation cap: .*'residents' rho 0\.6 .*cap of 0\.5.*Nothing was queued"
    ):
        alice.submit(SPEC.format(rho=0.2))
    assert alice.runs() == []
    assert all(a.ledger.entries() == [] for a in service.agents)


def test_the_cap_adds_up_over_runs_and_counts_what_was_debited(service: Service) -> None:
    _federation(service, 1.0)
    alice = service.client("alice")
    assert alice.submit(SPEC.format(rho=0.2)).wait().state == "done"  # 0.6 of 1.0
    preview = alice.cost(SPEC.format(rho=0.2))["populations"]["residents"]
    assert preview["spent_rho"] == pytest.approx(0.6) and preview["would_exceed"] is True
    with pytest.raises(BudgetExhausted, match=r"0\.6 of the cap of 1 is spent"):
        alice.submit(SPEC.format(rho=0.2))
    assert alice.submit(SPEC.format(rho=0.1)).wait().state == "done"  # 0.9 of 1.0
    assert service.store.population_spent() == {"residents": pytest.approx(0.9)}


def test_a_run_no_partner_released_is_settled_at_what_was_debited(service: Service) -> None:
    _federation(service, 1.0)
    for agent in service.agents:
        agent.config = agent.config.model_copy(
            update={"policy": agent.config.policy.model_copy(update={"allowed_datasets": []})}
        )
    run = service.client("alice").submit(SPEC.format(rho=0.3))
    with pytest.raises(PolicyRefusal, match="no partner released anything"):
        run.wait()
    assert service.store.population_spent() == {"residents": 0.0}  # charged 0.9, nobody debited


def test_two_submissions_at_once_cannot_both_slip_under_the_cap(service: Service) -> None:
    _federation(service, 1.0)
    outcomes: list[str] = []

    def submit(user: str) -> None:
        client = Client(service.url, service.tokens[user])
        try:
            client.submit(SPEC.format(rho=0.3))
            outcomes.append("queued")
        except BudgetExhausted:
            outcomes.append("refused")
        except Exception as exc:  # anything else fails the test below, with what it was
            outcomes.append(repr(exc))
        finally:
            client.close()

    threads = [threading.Thread(target=submit, args=(u,)) for u in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["queued", "refused"]  # 0.9 each against a cap of 1.0


def test_a_population_policy_is_checked_when_the_config_is_read() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="list the partners that may hold it, each once"):
        PopulationPolicy(datasets={"incidents": ["police", "police"]}, max_rho=1.0)
    with pytest.raises(ValidationError, match="greater than 0"):
        PopulationPolicy(datasets={"incidents": ["police"]}, max_rho=0)


def test_oda_blueprint_cost_shows_what_a_resident_may_bear_against_the_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from coordinator.cli import main
    from coordinator.deploy.config import init_coordinator
    from privacy.exit_codes import ExitCode

    folder = tmp_path / "coord"
    init_coordinator(folder, "West Midlands ODA", ["127.0.0.1"], "127.0.0.1", 19092, 19091, 19093)
    with (folder / "coordinator.yaml").open("a") as config:
        config.write(
            "populations:\n"
            "  families:\n"
            "    datasets:\n"
            "      family_indicators: [police, council, health]\n"
            "      known_residents: [police, council, health]\n"
            "    max_rho: 1.0\n"
        )
    capsys.readouterr()
    assert main(["blueprint", "cost", "troubled_families", "--coordinator", str(folder)]) == ExitCode.OK
    out = capsys.readouterr().out
    # the blueprint spends 0.3 at each holder of family_indicators and 0.2 at each holder of
    # known_residents (the same residents); three agencies may hold a family in each
    assert "population families: rho 1.5 a resident (held by up to 3 agencies); spent 0 of 1; REFUSED" in out
