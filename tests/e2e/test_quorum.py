"""Quorum over real processes: five partners, one killed before it replies. With
`min_partners: 4` the run completes with four and names the fifth; with 5 it fails with the
reason, and the manifest records what each of the four spent (their ledgers agree)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from coordinator.embedded.federation import EmbeddedFederation
from coordinator.embedded.synthetic import write_federation
from coordinator.run.orchestrator import run_analysis
from coordinator.run.transport import Quorum, QuorumNotMet, RunContext
from node_agent.inbox import Inbox
from node_agent.ledger import Ledger

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SPEC = """
version: 1
name: {name}
dataset: incidents
privacy: {{rho: 0.05, unit: {{identifier: person_id, max_rows: 5}}}}
steps:
  - {{kind: count, id: c, by: [{{column: area, keyset: coventry_lsoa11}}]}}
"""
DOOMED = "council-b"


def _five(root: Path):
    def write(fleet: str, ca: Path) -> dict[str, Path]:
        first = write_federation(root / "a", 3_000, seed=1, coordinator=fleet, ca_cert=ca)
        second = write_federation(
            root / "b", 3_000, seed=2, coordinator=fleet, ca_cert=ca, manual=frozenset({"council"})
        )
        configs = dict(first)
        for partner in ("police", "council"):
            path = second[partner]
            path.write_text(path.read_text().replace(f"partner: {partner}\n", f"partner: {partner}-b\n"))
            configs[f"{partner}-b"] = path
        return configs

    return write


def _held(state: Path) -> bool:
    if not (state / "inbox.sqlite").exists():
        return False
    inbox = Inbox(state)
    try:
        return bool(inbox.items("waiting"))
    finally:
        inbox.close()


def test_quorum_completes_with_four_and_names_the_fifth_and_fails_at_five(tmp_path: Path) -> None:
    with EmbeddedFederation(tmp_path, partner_configs=_five(tmp_path / "partners")) as fed:
        assert len(fed.partners) == 5
        doomed_state = fed.configs[DOOMED].parent / "state"
        link = fed.link()
        try:
            import threading

            outcome: dict[str, object] = {}

            def run_four() -> None:
                context = RunContext("alice@test", "r-four", "quorum", quorum=Quorum(4))
                try:
                    outcome["result"] = run_analysis(
                        SPEC.format(name="four"), link, out_dir=tmp_path / "four", context=context, timeout=20
                    )
                except Exception as exc:  # reported by the assertion below
                    outcome["error"] = exc

            thread = threading.Thread(target=run_four)
            thread.start()
            deadline = time.monotonic() + 60
            while not _held(doomed_state):  # council-b holds it for a person: kill it before it replies
                assert time.monotonic() < deadline, "council-b never held the request"
                time.sleep(0.1)
            fed.processes.end(f"node-{DOOMED}", signal.SIGKILL)
            thread.join(120)
            assert "error" not in outcome, outcome.get("error")
            result = outcome["result"]
            assert sorted(r.partner for r in result.releases) == ["council", "fire", "police", "police-b"]  # type: ignore[attr-defined]
            named = {r.partner: r.kind for r in result.refusals}  # type: ignore[attr-defined]
            assert named == {DOOMED: "timeout"} or named == {str(fed_id): "timeout" for fed_id in named}, (
                named
            )
            manifest = json.loads((tmp_path / "four" / "manifest.json").read_text())
            assert manifest["quorum"] == {"min_partners": 4, "required": [], "met": True, "why": None}

            context = RunContext("alice@test", "r-five", "quorum", quorum=Quorum(5))
            with pytest.raises(
                QuorumNotMet, match=r"4 partner\(s\) released, the run needs at least 5"
            ) as caught:
                run_analysis(
                    SPEC.format(name="five"), link, out_dir=tmp_path / "five", context=context, timeout=10
                )
            assert "manifest records what each partner spent" in str(caught.value)
        finally:
            link.close()
        manifest = json.loads((tmp_path / "five" / "manifest.json").read_text())
        assert manifest["tables"] == [] and manifest["quorum"]["met"] is False
        spent = {n["partner"]: (n["request_id"], n["cost_rho"]) for n in manifest["nodes"]}
        assert sorted(spent) == ["council", "fire", "police", "police-b"]
        for partner, (request_id, cost) in spent.items():  # every spend at a node is in the manifest
            entries = [
                e
                for e in Ledger(fed.configs[partner].parent / "state" / "ledger.sqlite").entries()
                if e.request_id == request_id
            ]
            assert entries and sum(e.rho for e in entries) == pytest.approx(cost)
        doomed_ledger = Ledger(doomed_state / "ledger.sqlite").entries()
        assert doomed_ledger == [], "the killed node spent nothing"
