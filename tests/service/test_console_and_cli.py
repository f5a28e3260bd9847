"""The web console's pages and the `oda runs` / `oda coordinator user` commands over a real
(in-process) service; the run files cannot be escaped; event streams resume."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from coordinator.cli import main
from coordinator.deploy.config import init_coordinator
from privacy.exit_codes import ExitCode
from tests.service.conftest import Service
from tests.service.test_api import SPEC


def test_console_pages_show_runs_a_run_with_its_table_and_blueprints(service: Service) -> None:
    run = service.client("alice").submit(SPEC, purpose="console check").wait()
    alice = service.http("alice")
    runs = alice.get("/console/runs")
    assert runs.status_code == 200 and run.id in runs.text and 'class="state done"' in runs.text
    page = alice.get(f"/console/runs/{run.id}").text
    assert "console check" in page and 'data-table="c"' in page and "count_accuracy95" in page
    assert page.count('class="state released"') == 3
    assert "https://" not in page.replace("https://127.0.0.1", ""), "no CDN or outside address"
    catalogue = service.http("rex").get("/console/blueprints").text
    assert "road_safety" in catalogue
    assert "does not see runs" in service.http("rex").get("/console/runs").text
    assert "only an admin" in alice.get("/console/nodes").text
    assert service.http("bob").get(f"/console/runs/{run.id}").status_code == 404
    blueprint = service.http("rex").get("/console/blueprints/road_safety").text
    assert "Dataset contracts" in blueprint and "collisions" in blueprint and "Governance" in blueprint


def test_console_login_sets_a_strict_cookie_and_refuses_a_wrong_token(service: Service) -> None:
    with httpx.Client(base_url=service.url, follow_redirects=False) as browser:
        assert browser.get("/console/runs").headers["location"] == "/console/login"
        wrong = browser.post("/console/login", data={"token": "oda_nope"})
        assert wrong.status_code == 401 and "that token is not valid" in wrong.text
        ok = browser.post("/console/login", data={"token": service.tokens["alice"]})
        assert ok.status_code == 303 and ok.headers["location"] == "/console/runs"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie


def test_run_files_cannot_escape_the_run_folder(service: Service) -> None:
    run = service.client("alice").submit(SPEC).wait()
    alice = service.http("alice")
    assert alice.get(f"/api/v1/runs/{run.id}/files/manifest.json").status_code == 200
    for path in ("../runs.db", "..%2F..%2Fruns.db", "/etc/passwd", "../../../../etc/passwd"):
        response = alice.get(f"/api/v1/runs/{run.id}/files/{path}")
        assert response.status_code == 404 and "error" in response.json(), path


def test_event_stream_resumes_after_the_last_event_id(service: Service) -> None:
    run = service.client("alice").submit(SPEC).wait()
    everything = list(run.events())
    assert [k for _, k, _ in everything][-1] == "state" and everything[-1][2]["state"] == "done"
    middle = everything[2][0]
    resumed = list(run.events(after=middle))
    assert [e[0] for e in resumed] == [e[0] for e in everything if e[0] > middle]
    with service.http("alice").stream(
        "GET", f"/api/v1/runs/{run.id}/events", headers={"Last-Event-ID": str(everything[-2][0])}
    ) as response:
        text = response.read().decode()
    assert text.count("event: state") == 1 and "event: end" in text


def test_oda_runs_commands_list_show_fetch_and_cancel(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ODA_URL", service.url)
    monkeypatch.setenv("ODA_TOKEN", service.tokens["alice"])
    spec = tmp_path / "count.yaml"
    spec.write_text(SPEC)
    assert main(["run", str(spec), "--purpose", "from the CLI"]) == ExitCode.OK
    out = capsys.readouterr().out
    run_id = out.split("submitted ")[1].split()[0]
    assert "police" in out and "released" in out and "count_accuracy95" in out
    assert main(["runs", "list"]) == ExitCode.OK
    assert run_id in capsys.readouterr().out
    assert main(["runs", "show", run_id]) == ExitCode.OK
    assert "planned incidents-by-area: incidents rho 0.05" in capsys.readouterr().out
    assert main(["runs", "fetch", run_id, "--out", str(tmp_path / "got")]) == ExitCode.OK
    assert (tmp_path / "got" / run_id / "c.parquet").is_file()
    assert (
        json.loads((tmp_path / "got" / run_id / "manifest.json").read_text())["analysis"]
        == "incidents-by-area"
    )
    assert main(["runs", "cancel", run_id]) == ExitCode.USAGE  # a finished run
    err = capsys.readouterr().err
    assert "is done already; nothing to cancel" in err
    monkeypatch.setenv("ODA_TOKEN", service.tokens["rex"])
    assert main(["runs", "list"]) == ExitCode.ACCESS
    assert "403: role reader" in capsys.readouterr().err
    monkeypatch.delenv("ODA_TOKEN")
    assert main(["runs", "list"]) == ExitCode.CONFIG
    assert "give --url and --token" in capsys.readouterr().err


def test_oda_coordinator_user_add_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "coord"
    init_coordinator(folder, "West Midlands ODA", ["127.0.0.1"], "127.0.0.1", 19092, 19091, 19093)
    assert "api_listen: 127.0.0.1:19093" in (folder / "coordinator.yaml").read_text()
    assert main(["coordinator", "user", "add", str(folder), "alice", "--role", "analyst"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "alice@west-midlands-oda" in out and "oda_" in out
    token = next(w for w in out.split() if w.startswith("oda_"))
    assert main(["coordinator", "user", "list", str(folder)]) == ExitCode.OK
    listed = capsys.readouterr().out
    assert "alice" in listed and "analyst" in listed and "active" in listed and token not in listed
    assert main(["coordinator", "user", "revoke", str(folder), "alice"]) == ExitCode.OK
    assert main(["coordinator", "user", "list", str(folder)]) == ExitCode.OK
    assert "revoked" in capsys.readouterr().out
    assert (
        main(["coordinator", "user", "add", str(folder), "Bad Name", "--role", "analyst"]) == ExitCode.CONFIG
    )
    assert "user name 'Bad Name'" in capsys.readouterr().err
