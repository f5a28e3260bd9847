"""The analyst service over real processes: `oda coordinator start` with the analyst API, three
partner nodes (council approves by hand), analysts with tokens working through the Python
client from this process, a coordinator restart, and the web console in headless Chromium."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.embedded.federation import EmbeddedFederation
from coordinator.service.client import Client, Run
from node_agent.audit import AuditLog
from node_agent.inbox import Inbox
from node_agent.ledger import Ledger
from privacy.errors import AccessDenied

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SPEC = """
version: 1
name: {name}
dataset: incidents
privacy: {{rho: 0.05, unit: {{identifier: person_id, max_rows: 5}}}}
steps:
  - {{kind: count, id: c, by: [{{column: area, keyset: coventry_lsoa11}}]}}
"""
ODA = [sys.executable, "-m", "coordinator.cli"]
NODE = [sys.executable, "-m", "node_agent.cli"]
#: The old fixed wait was 60 s: council approves two minutes after the submit.
APPROVE_AFTER = 120.0


def _token(fed: EmbeddedFederation, name: str, role: str) -> str:
    out = subprocess.run(
        [*ODA, "coordinator", "user", "add", str(fed.coordinator_dir), name, "--role", role],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"oda_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", out)
    assert match, out
    return match.group(0)


def _url(fed: EmbeddedFederation) -> str:
    text = (fed.coordinator_dir / "coordinator.yaml").read_text()
    match = re.search(r"api_listen: (\S+)", text)
    assert match
    return f"https://{match.group(1)}"


def _inbox_item(fed: EmbeddedFederation, partner: str, request_id: str) -> object:
    inbox = Inbox(fed.configs[partner].parent / "state")
    try:
        return inbox.get(request_id)
    finally:
        inbox.close()


def _until(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


def _held_by_council(fed: EmbeddedFederation, run: Run) -> str:
    """The request id council holds for `run`, once it is in its inbox."""
    found: list[str] = []

    def held() -> bool:
        request_id = run.refresh().partners.get("council", {}).get("request_id")
        if request_id and (state := fed.configs["council"].parent / "state" / "inbox.sqlite").exists():
            inbox = Inbox(state.parent)
            try:
                if any(i.request_id == request_id for i in inbox.items("waiting")):
                    found.append(request_id)
                    return True
            finally:
                inbox.close()
        return False

    _until(f"council holding {run.id}", held)
    return found[0]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedFederation]:
    work = tmp_path_factory.mktemp("service")
    with EmbeddedFederation(work, rows=5_000, manual=frozenset({"council"}), api=1) as fed:
        yield fed


@pytest.fixture(scope="module")
def finished(federation: EmbeddedFederation) -> Iterator[tuple[Run, dict[str, str]]]:
    """Alice's run, approved by council after the old 60 s, and Bob's, cancelled before council
    decides; every acceptance check of the service over processes reads these. Alice's run also
    keeps a Flower run open for two minutes, past the 60 s after which the SuperLink revokes a
    task's token without a heartbeat (and Flower interrupts the coordinator's process): the
    link's heartbeat keeps it alive (this was a 70 s test of its own)."""
    fed = federation
    tokens = {n: _token(fed, n, r) for n, r in (("alice", "analyst"), ("bob", "analyst"), ("rex", "reader"))}
    ca = fed.ca_cert
    alice, bob = Client(_url(fed), tokens["alice"], ca), Client(_url(fed), tokens["bob"], ca)
    try:
        submitted = time.monotonic()
        run = alice.submit(SPEC.format(name="alice-count"), purpose="road safety review", deadline=600)
        request_id = _held_by_council(fed, run)
        queued = bob.submit(
            SPEC.format(name="bob-count"), purpose="arson review"
        )  # behind alice's (one at a time)
        assert queued.state == "queued"
        _until("alice's run waiting", lambda: run.refresh().state == "waiting", 60)
        with Client(_url(fed), tokens["rex"], ca) as rex, pytest.raises(AccessDenied, match="403"):
            rex.submit(SPEC.format(name="rex"))
        with (
            Client(_url(fed), "oda_0123456789abcdef_" + "A" * 43, ca) as nobody,
            pytest.raises(AccessDenied, match="401"),
        ):
            nobody.runs()
        time.sleep(max(0.0, APPROVE_AFTER - (time.monotonic() - submitted)))
        subprocess.run([*NODE, "approve", request_id, "--config", str(fed.configs["council"])], check=True)
        run.wait(timeout=120)
        bob_request = _held_by_council(fed, queued)
        queued.cancel("wrong year")
        _until("bob's run cancelled", lambda: queued.refresh().state == "cancelled", 60)
        yield run, {"bob_run": queued.id, "bob_request": bob_request, **tokens}
    finally:
        alice.close()
        bob.close()


def test_manual_approval_after_the_old_timeout_completes_and_wait_returns_tables(finished) -> None:
    run, _ = finished
    assert run.state == "done"
    assert {p: v["state"] for p, v in run.partners.items()} == {
        "police": "released",
        "fire": "released",
        "council": "released",
    }
    assert len(run.tables["c"]) > 100 and "count_accuracy95" in run.tables["c"].columns


def test_a_run_cancelled_before_approval_spends_nothing_at_council_and_its_inbox_says_why(
    federation: EmbeddedFederation, finished
) -> None:
    _, info = finished
    state = federation.configs["council"].parent / "state"
    assert all(e.request_id != info["bob_request"] for e in Ledger(state / "ledger.sqlite").entries())
    item = _inbox_item(federation, "council", info["bob_request"])
    assert item.status == "expired" and "cancelled by bob@" in item.reason and "wrong year" in item.reason  # type: ignore[attr-defined]


def test_node_audit_logs_name_each_analyst_and_run(federation: EmbeddedFederation, finished) -> None:
    run, info = finished
    entries = AuditLog(federation.configs["police"].parent / "state").entries()
    released = {(e.requester, e.run_id) for e in entries if e.decision == "released"}
    assert ("alice@oda-embedded-federation", run.id) in released
    assert ("bob@oda-embedded-federation", info["bob_run"]) in released  # police released before the cancel
    logs = [p for folder in (federation.work_dir, federation.coordinator_dir) for p in folder.rglob("*.log")]
    assert any(p.name == "analyst-api.log" for p in logs)
    # a token is oda_<16 hex>_<43-character secret>, and the secret may itself hold "_": split
    # off the prefix, never at the last "_" (a 2-character tail is in any log)
    secrets = [info[u].split("_", 2)[2] for u in ("alice", "bob", "rex")]
    assert all(len(s) == 43 for s in secrets)
    for path in logs:  # no token, nor its secret, in any log a process wrote
        text = path.read_text(errors="replace")
        assert all(info[u] not in text for u in ("alice", "bob", "rex")) and not any(
            s in text for s in secrets
        )


def test_restart_marks_in_flight_interrupted_runs_queued_after_and_keeps_results(
    federation: EmbeddedFederation, finished
) -> None:
    fed = federation
    first, tokens = finished
    with Client(_url(fed), tokens["alice"], fed.ca_cert) as alice:
        flying = alice.submit(SPEC.format(name="in-flight"), deadline=600)
        _held_by_council(fed, flying)
        _until(
            "police released", lambda: flying.refresh().partners.get("police", {}).get("state") == "released"
        )
        queued = alice.submit(SPEC.format(name="after-restart"), deadline=45)
        fed.processes.end("analyst-api", signal.SIGKILL)  # the coordinator dies mid-run
        fed.service.start_api()  # type: ignore[union-attr]
        flying.refresh()
        assert flying.state == "interrupted"
        assert "police rho 0.05" in flying.data["reason"] and "fire rho 0.05" in flying.data["reason"]
        queued.wait(timeout=120)  # council never answers: the run ends at its 45 s deadline
        assert queued.partners["council"]["state"] == "timeout"
        assert queued.partners["police"]["state"] == "released"
        again = alice.run(first.id)
        assert len(again.tables["c"]) == len(first.tables["c"])
    nodes = subprocess.run(
        [*ODA, "coordinator", "nodes", str(fed.coordinator_dir)], check=True, capture_output=True, text=True
    ).stdout
    lines = {line.split()[1]: line for line in nodes.splitlines()[1:] if not line.strip().startswith("last")}
    assert all("online" in lines[p] and "(protocol 1)" in lines[p] for p in ("police", "fire", "council")), (
        nodes
    )
    assert "last refusal" in nodes and "timeout: no reply within" in nodes, nodes


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium and chromium-driver are not installed")
def test_console_in_headless_chromium_shows_runs_a_run_its_table_and_partners(
    federation: EmbeddedFederation, finished
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    run, tokens = finished
    browser, driver_path = _chromium()  # type: ignore[misc]
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.accept_insecure_certs = True  # the federation's own CA, not in Chromium's store
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{_url(federation)}/console/login")
        driver.find_element(By.ID, "token").send_keys(tokens["alice"])
        driver.find_element(By.ID, "sign-in").click()
        wait = WebDriverWait(driver, 60)  # a click returns before the next page has loaded
        wait.until(expected_conditions.presence_of_element_located((By.ID, "runs")))
        rows = driver.find_elements(By.CSS_SELECTOR, "#runs tr")
        assert any(run.id in r.text and "done" in r.text for r in rows), [r.text for r in rows]
        driver.find_element(By.LINK_TEXT, run.id).click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "run-state")))
        assert driver.find_element(By.ID, "run-state").text == "done"
        partners = {
            r.get_attribute("data-partner"): r.find_elements(By.TAG_NAME, "td")[1].text
            for r in driver.find_elements(By.CSS_SELECTOR, "#partners tr[data-partner]")
        }
        assert partners == {"council": "released", "fire": "released", "police": "released"}
        table = driver.find_element(By.CSS_SELECTOR, "table[data-table='c']")
        assert "count_accuracy95" in table.text
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()


def test_runs_at_once_over_one_superlink_each_get_their_own_replies(tmp_path: Path) -> None:
    """Two workers share one link to the SuperLink: four runs submitted together all finish,
    each with one release per partner for its own request."""
    with EmbeddedFederation(tmp_path, rows=5_000, api=2) as fed:
        token = _token(fed, "alice", "analyst")
        with Client(_url(fed), token, fed.ca_cert) as alice:
            runs = [alice.submit(SPEC.format(name=f"parallel-{i}")) for i in range(4)]
            for run in runs:
                run.wait(timeout=180)
            for run in runs:
                assert {p: v["state"] for p, v in run.partners.items()} == {
                    "police": "released",
                    "fire": "released",
                    "council": "released",
                }, run.data
                manifest: dict = run.manifest()
                assert {n["request_id"] for n in manifest["nodes"]} == {run.partners["police"]["request_id"]}
            assert len({run.partners["police"]["request_id"] for run in runs}) == 4
