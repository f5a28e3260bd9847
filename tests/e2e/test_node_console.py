"""The DPO console in headless Chromium: a request held for approval at a real node survives
`oda-node reload`, is approved on the page, and the release then reaches the coordinator."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coordinator.deploy.service import free_port
from coordinator.embedded.federation import EmbeddedFederation
from coordinator.run.orchestrator import run_analysis
from coordinator.run.results import AnalysisResult
from node_agent.inbox import Inbox
from privacy.exit_codes import ExitCode
from tests.e2e.test_analyst_service import _chromium
from tests.e2e.test_secure_transport import SPEC

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium and chromium-driver are not installed")
def test_a_held_request_approved_in_the_console_reaches_the_coordinator(tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    with EmbeddedFederation(tmp_path, rows=5_000, manual=frozenset({"police"})) as fed:
        results: list[AnalysisResult | BaseException] = []

        def run() -> None:
            link = fed.link()
            try:
                results.append(run_analysis(SPEC, link, timeout=180))
            except BaseException as exc:  # reported below
                results.append(exc)
            finally:
                link.close()

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        config = fed.configs["police"]
        inbox = Inbox(config.parent / "state")
        try:
            deadline = time.monotonic() + 60
            while not inbox.items("waiting") and time.monotonic() < deadline:
                time.sleep(0.1)
            [held] = inbox.items("waiting")
        finally:
            inbox.close()
        # node.yaml changes reach the running node without a restart, which would expire the
        # held request; a node.yaml with errors changes nothing
        node = [sys.executable, "-m", "node_agent.cli"]
        original = config.read_text()
        config.write_text(original + "policy_typo: 1\n")
        typo = subprocess.run([*node, "reload", "--config", str(config)], capture_output=True, text=True)
        assert typo.returncode == ExitCode.CONFIG, typo.stdout + typo.stderr
        assert (
            "policy_typo" in typo.stderr
            and "nothing was sent: the running node keeps its config" in typo.stderr
        )
        config.write_text(original.replace("path: incidents.parquet", "path: moved.parquet"))
        broken = subprocess.run([*node, "reload", "--config", str(config)], capture_output=True, text=True)
        assert broken.returncode == ExitCode.CONFIG, broken.stdout + broken.stderr
        assert "the running node kept its config" in broken.stderr and "moved.parquet" in broken.stderr
        config.write_text(original.replace("min_cell: 5", "min_cell: 6"))
        changed = subprocess.run([*node, "reload", "--config", str(config)], capture_output=True, text=True)
        assert changed.returncode == 0 and "reloaded" in changed.stdout, changed.stdout + changed.stderr
        port = free_port()
        console = subprocess.Popen(
            [sys.executable, "-m", "node_agent.cli", "console", "--config", str(config), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        browser, driver_path = _chromium()  # type: ignore[misc]
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
            options.add_argument(flag)
        driver = None
        try:
            assert console.stdout is not None
            line = console.stdout.readline()
            assert line.startswith("DPO console for police: http://127.0.0.1:"), line
            url = line.split(": ", 1)[1].strip()
            driver = webdriver.Chrome(service=Service(driver_path), options=options)
            driver.set_page_load_timeout(60)
            wait = WebDriverWait(driver, 60)
            for _ in range(100):  # the console may take a moment to listen
                driver.get(url)
                if driver.find_elements(By.ID, "partner"):
                    break
                time.sleep(0.2)
            row = wait.until(
                expected_conditions.presence_of_element_located(
                    (By.CSS_SELECTOR, f"tr[data-request='{held.request_id}']")
                )
            )
            assert "rho" in row.text and held.analysis in row.text
            assert driver.find_element(By.CSS_SELECTOR, "tr[data-population='incidents']")
            driver.find_element(By.CSS_SELECTOR, f"button[data-approve='{held.request_id}']").click()
            flash = wait.until(expected_conditions.presence_of_element_located((By.ID, "flash")))
            assert f"{held.request_id} approved" in flash.text
            runner.join(180)
            assert results and isinstance(results[0], AnalysisResult), results
            assert sorted(r.partner for r in results[0].releases) == ["council", "fire", "police"]
            driver.get(url.split("?")[0])
            wait.until(expected_conditions.presence_of_element_located((By.ID, "inbox-empty")))
            released = driver.find_element(By.ID, "released").text
            assert held.request_id in released, released
        finally:
            if driver is not None:
                driver.quit()
            console.terminate()
            console.wait(20)
            if console.stdout is not None:
                console.stdout.close()
