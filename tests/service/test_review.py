"""Output review over the analyst service (issue 16): a `tre` run's outputs stay unpublished
until two distinct reviewers approve each one; a rejection reaches the analyst with its reason;
the reader role sees approved outputs only; the review screen shows checks, cost, accuracy and
the published tables an output could be differenced against."""

from __future__ import annotations

import pandas as pd
import pytest

from coordinator.service.accounts import add_user
from privacy.errors import AccessDenied, UserError
from tests.service.conftest import Service

SPEC = """
version: 1
name: incidents-tre
dataset: incidents
privacy: {rho: 0.2, unit: {identifier: person_id, max_rows: 5}}
disclosure: {profile: tre}
steps:
  - {kind: count, id: by_area, by: [{column: area, keyset: coventry_lsoa11}]}
  - {kind: count, id: by_hour, by: [{column: occurred_at, derive: hour}]}
"""


def test_a_tre_run_is_published_only_after_two_reviewers_approve_each_output(service: Service) -> None:
    second = add_user(service.store, "rhea", "reviewer").token
    service.tokens["rhea"] = second
    run = service.client("alice").submit(SPEC, purpose="night-time economy").wait()
    assert run.state == "done", run.data["reason"]
    screen = run.review()
    outputs = {o["name"]: o for o in screen["outputs"]}
    assert set(outputs) == {"by_area", "by_hour"}
    assert all(o["status"] == "pending review" and o["required_approvals"] == 2 for o in outputs.values())
    area = outputs["by_area"]
    assert area["checks"]["pass"] > 0 and set(area["checks"]) <= {"pass", "suppressed:threshold"}
    assert any("fewer than 10 people" in n for n in area["notes"])
    assert area["accuracy95_median"]["count_accuracy95"] > 0
    assert screen["privacy_debited"] == {"police": 0.2, "fire": 0.2, "council": 0.2}
    assert screen["disclosure"]["incidents-tre"]["profile"] == "tre"

    reader = service.client("rex")
    assert reader.published() == []
    with pytest.raises(UserError, match="no published output 'by_area'"):
        reader.published_table(run.id, "by_area")
    with pytest.raises(AccessDenied, match="needs the 'read_runs' permission"):
        reader.run(run.id)

    rita = service.client("rita").run(run.id)
    assert rita.decide("by_area", "approve")["status"] == "pending review"  # one of two
    assert rita.decide("by_area", "approve")["approvals"] == ["rita"]  # the same reviewer twice is one
    assert reader.published() == []
    rhea = service.client("rhea").run(run.id)
    assert rhea.decide("by_area", "approve")["status"] == "approved"
    published = reader.published()
    assert [(p["run"], p["name"], p["approved_by"]) for p in published] == [
        (run.id, "by_area", ["rhea", "rita"])
    ]
    pd.testing.assert_frame_equal(reader.published_table(run.id, "by_area"), run.tables["by_area"])
    with pytest.raises(UserError, match="no published output 'by_hour'"):
        reader.published_table(run.id, "by_hour")

    reason = "hours 03-05 are near the threshold in every partner: merge them into one band"
    assert rita.decide("by_hour", "reject", reason)["status"] == "rejected"
    assert rhea.decide("by_hour", "approve")["status"] == "rejected"  # one rejection holds it back
    mine = {o["name"]: o for o in run.review()["outputs"]}
    assert mine["by_hour"]["status"] == "rejected"
    assert {"reviewer": "rita", "decision": "reject", "reason": reason} in [
        {k: d[k] for k in ("reviewer", "decision", "reason")} for d in mine["by_hour"]["decisions"]
    ]
    events = [data for _, kind, data in run.events() if kind == "review"]
    assert {"output": "by_hour", "reviewer": "rita", "decision": "reject", "reason": reason} in events
    assert [p["name"] for p in reader.published()] == ["by_area"]
    assert rita.decide("by_hour", "approve")["status"] == "approved"  # a reviewer's latest decision counts


def test_reviewers_cannot_review_their_own_runs_and_every_bad_decision_says_why(service: Service) -> None:
    run = service.client("ada").submit(SPEC).wait()  # an admin may submit, and review others' runs
    assert run.state == "done"
    with pytest.raises(AccessDenied, match=r"ada submitted run .*another reviewer must check its outputs"):
        run.decide("by_area", "approve")
    alice = service.client("alice").submit(SPEC).wait()
    with pytest.raises(AccessDenied, match="role analyst may not do this"):
        alice.decide("by_area", "approve")
    rita = service.client("rita").run(run.id)
    with pytest.raises(UserError, match="a reject decision needs a reason: the analyst reads it"):
        rita.decide("by_area", "reject")
    with pytest.raises(UserError, match="a changes decision needs a reason"):
        rita.decide("by_area", "changes", "   ")
    with pytest.raises(UserError, match="has no output 'nope'; it has by_area, by_hour"):
        rita.decide("nope", "approve")
    with pytest.raises(UserError, match="decision"):
        rita.decide("by_area", "publish")
    changed = rita.decide("by_hour", "changes", "use derive: weekday instead")
    assert changed["status"] == "changes requested"


def test_the_review_screen_shows_published_tables_that_share_dimensions(service: Service) -> None:
    service.tokens["rhea"] = add_user(service.store, "rhea", "reviewer").token
    first = service.client("alice").submit(SPEC).wait()
    for reviewer in ("rita", "rhea"):
        service.client(reviewer).run(first.id).decide("by_area", "approve")
    second = service.client("bob").submit(SPEC.replace("incidents-tre", "incidents-again")).wait()
    outputs = {o["name"]: o for o in service.client("rita").run(second.id).review()["outputs"]}
    risks = outputs["by_area"]["differencing"]
    published = [r for r in risks if r["published"]]
    assert [(r["run"], r["output"], r["shared_keys"]) for r in published] == [(first.id, "by_area", ["area"])]
    assert published[0]["risk"].startswith("same keys over an overlapping population")
    assert all(not r["published"] or r["output"] != "by_hour" for r in outputs["by_hour"]["differencing"])


def test_the_console_review_form_records_decisions_and_shows_what_was_wrong(service: Service) -> None:
    run = service.client("alice").submit(SPEC).wait()
    rita = service.http("rita")
    page = rita.get(f"/console/runs/{run.id}").text
    assert 'id="outputs"' in page and 'name="decision"' in page and "pending review" in page
    assert 'name="decision"' not in service.http("alice").get(f"/console/runs/{run.id}").text
    refused = rita.post(f"/console/runs/{run.id}/review", data={"output": "by_hour", "decision": "reject"})
    assert refused.status_code == 303
    assert "needs a reason" in rita.get(refused.headers["location"]).text
    rita.post(
        f"/console/runs/{run.id}/review",
        data={"output": "by_hour", "decision": "reject", "reason": "hours too sparse <b>x</b>"},
    )
    shown = service.http("alice").get(f"/console/runs/{run.id}").text
    assert "rita: reject — hours too sparse &lt;b&gt;x&lt;/b&gt;" in shown  # escaped
    assert "Nothing is published yet" in service.http("rex").get("/console/published").text


def test_oda_runs_review_approve_reject_and_changes_from_the_command_line(
    service: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator.cli import main
    from privacy.exit_codes import ExitCode

    run = service.client("alice").submit(SPEC).wait()
    monkeypatch.setenv("ODA_URL", service.url)
    monkeypatch.setenv("ODA_TOKEN", service.tokens["rita"])
    assert main(["runs", "approve", run.id, "by_area"]) == ExitCode.OK
    assert f"{run.id} by_area: pending review (1 of 2 approvals)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse: --reason is required
        main(["runs", "reject", run.id, "by_hour"])
    assert "--reason" in capsys.readouterr().err
    assert main(["runs", "changes", run.id, "by_hour", "--reason", "band the hours"]) == ExitCode.OK
    monkeypatch.setenv("ODA_TOKEN", service.tokens["alice"])
    assert main(["runs", "review", run.id]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "by_hour" in out and "changes requested" in out and "rita: changes: band the hours" in out
    assert "checks: pass" in out
    assert main(["runs", "approve", run.id, "by_hour"]) == ExitCode.ACCESS
    assert "role analyst may not do this" in capsys.readouterr().err
