"""Faults over separate hosts: each partner's node runs in its own network namespace, reaching the
coordinator over a veth pair and a bridge made by the test (see `netns.py`).

Each test injects one fault while a run is in flight (a node killed, a node partitioned and
healed, the coordinator restarted, a node 500 ms away) and checks that the run completes or fails
with a reason that names the fault, and that every spend in every partner's ledger is either in
the run's manifest or recorded at the node as spent and not delivered. Where namespaces cannot
be made (not root, no iproute2) the tests skip and say why; the loopback quorum and node
operation tests cover the same code without separate hosts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from coordinator.embedded.federation import EmbeddedFederation
from coordinator.embedded.synthetic import write_federation
from coordinator.run.orchestrator import run_analysis
from coordinator.run.results import AnalysisResult
from coordinator.run.transport import Quorum, QuorumNotMet, RunContext
from node_agent.inbox import Inbox
from node_agent.ledger import Ledger
from tests.faults.netns import DelayRelay, Namespaces, has_netem, unavailable

WHY_NOT = unavailable()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces: {WHY_NOT}"),
]

SPEC = """
version: 1
name: {name}
dataset: incidents
privacy: {{rho: 0.02, unit: {{identifier: person_id, max_rows: 5}}}}
steps:
  - {{kind: count, id: c, by: [{{column: area, keyset: coventry_lsoa11}}]}}
"""
PARTNERS = ["police", "fire", "council"]
NODE = [sys.executable, "-m", "node_agent.cli"]


@contextmanager
def _federation(
    tmp_path: Path,
    manual: frozenset[str] = frozenset(),
    database: str | None = None,
    rewire: Callable[[dict[str, Path], str], None] | None = None,
) -> Iterator[tuple[EmbeddedFederation, Namespaces]]:
    with Namespaces(PARTNERS) as ns:

        def write(fleet: str, ca: Path) -> dict[str, Path]:
            configs = write_federation(
                tmp_path / "partners", 3_000, seed=3, coordinator=fleet, ca_cert=ca, manual=manual
            )
            if rewire is not None:
                rewire(configs, fleet)
            return configs

        with EmbeddedFederation(
            tmp_path, partner_configs=write, fleet_host=ns.host, database=database, node_prefix=ns.prefix
        ) as fed:
            yield fed, ns


class _Run:
    """`run_analysis` in a thread, as the worker runs it."""

    def __init__(self, fed: EmbeddedFederation, out: Path, name: str, quorum: Quorum, timeout: float) -> None:
        self.out = out
        self.result: AnalysisResult | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0

        def go() -> None:
            link = fed.link()
            started = time.monotonic()
            try:
                context = RunContext("alice@test", name, "fault test", quorum=quorum)
                self.result = run_analysis(
                    SPEC.format(name=name), link, out_dir=out, context=context, timeout=timeout
                )
            except BaseException as exc:  # reported by the test
                self.error = exc
            finally:
                self.seconds = time.monotonic() - started
                link.close()

        self.thread = threading.Thread(target=go, name=f"run-{name}")
        self.thread.start()

    def join(self, timeout: float = 180) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run never ended"

    def manifest(self) -> dict[str, Any]:
        return dict(json.loads((self.out / "manifest.json").read_text()))


def _state(fed: EmbeddedFederation, partner: str) -> Path:
    return fed.configs[partner].parent / "state"


def _wait_held(fed: EmbeddedFederation, partner: str, timeout: float = 60) -> str:
    """The request id `partner` holds for a person's decision, once it holds one."""
    state = _state(fed, partner)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (state / "inbox.sqlite").exists():
            inbox = Inbox(state)
            try:
                waiting = inbox.items("waiting")
            finally:
                inbox.close()
            if waiting:
                return waiting[0].request_id
        time.sleep(0.1)
    raise AssertionError(f"{partner} never held the request")


def _approve(fed: EmbeddedFederation, partner: str, request_id: str) -> None:
    subprocess.run(
        [*NODE, "approve", request_id, "--config", str(fed.configs[partner])], check=True, timeout=60
    )


def _spends_accounted(fed: EmbeddedFederation, manifests: list[dict[str, Any]]) -> dict[str, str]:
    """Every ledger entry at every partner is in a manifest (same request, same rho), or in a
    manifest as a release lost in transit from that partner, or marked at the node as spent and
    not delivered. Returns partner -> what its ledger shows."""
    in_manifest: dict[tuple[str, str], float] = {}
    lost_in_manifest: dict[str, int] = {}
    for manifest in manifests:
        for node in manifest["nodes"]:
            in_manifest[(node["partner"], node["request_id"])] = float(node["cost_rho"])
        for refusal in manifest["refused_or_timed_out"]:
            if "a release in it is lost" in refusal["message"]:
                lost_in_manifest[refusal["partner"]] = lost_in_manifest.get(refusal["partner"], 0) + 1
    shown: dict[str, str] = {}
    for partner in PARTNERS:
        ledger = Ledger(_state(fed, partner) / "ledger.sqlite")
        try:
            entries = ledger.entries()
        finally:
            ledger.close()
        by_request: dict[str, float] = {}
        undelivered = 0
        for entry in entries:
            if entry.status == "failed":
                continue
            if entry.status == "undelivered":
                undelivered += 1
                continue
            assert entry.status == "committed", f"{partner} left a {entry.status} reservation: {entry}"
            by_request[entry.request_id] = by_request.get(entry.request_id, 0.0) + entry.rho
        lost = 0
        for request_id, rho in by_request.items():
            if (partner, request_id) in in_manifest:
                assert rho == pytest.approx(in_manifest[(partner, request_id)])
                continue
            lost += 1
            assert lost <= lost_in_manifest.get(partner, 0), (
                f"{partner} spent rho {rho} for {request_id}, which no manifest records (as received "
                "or as lost) and the node did not mark as undelivered"
            )
        shown[partner] = (
            f"{len(by_request) - lost} spend(s) in manifests, {lost} recorded there as lost in transit, "
            f"{undelivered} marked undelivered at the node"
        )
    return shown


def test_a_node_killed_mid_run_is_named_and_spent_nothing(tmp_path: Path) -> None:
    """council holds the request for a person and is killed (SIGKILL) before it replies: a run
    that needs 2 of 3 completes with police and fire and names council; council spent nothing."""
    with _federation(tmp_path, manual=frozenset({"council"})) as (fed, _):
        run = _Run(fed, tmp_path / "out", "killed", Quorum(2), timeout=20)
        _wait_held(fed, "council")
        fed.processes.end("node-council", signal.SIGKILL)
        run.join()
        assert run.error is None, run.error
        assert run.result is not None
        assert sorted(r.partner for r in run.result.releases) == ["fire", "police"]
        assert [(r.partner, r.kind) for r in run.result.refusals] == [("council", "timeout")]
        manifest = run.manifest()
        assert manifest["quorum"]["met"] is True
        shown = _spends_accounted(fed, [manifest])
        assert shown["council"].startswith("0 spend(s) in manifests, 0")
        print(f"checked: kill -9 of a node in its own namespace mid-run; {shown}")


def test_a_partitioned_node_that_heals_is_counted_once(tmp_path: Path) -> None:
    """fire is cut off before the run starts and council while it holds the request (it is
    approved while cut off, so its reply waits in Flower's retries); both heal within the
    deadline: the run completes with all three, each released once."""
    with _federation(tmp_path, manual=frozenset({"council"})) as (fed, ns):
        ns.partition("fire")
        run = _Run(fed, tmp_path / "out", "partitioned", Quorum(3), timeout=90)
        request_id = _wait_held(fed, "council")
        ns.partition("council")
        _approve(fed, "council", request_id)
        time.sleep(5)
        ns.heal("fire")
        time.sleep(3)
        ns.heal("council")
        run.join()
        assert run.error is None, run.error
        assert run.result is not None
        assert sorted(r.partner for r in run.result.releases) == ["council", "fire", "police"]
        assert run.result.refusals == []
        shown = _spends_accounted(fed, [run.manifest()])
        for partner in PARTNERS:
            assert shown[partner].startswith("1 spend(s)"), shown
        print(
            f"checked: fire partitioned 5 s before its pull, council 8 s with its reply in flight; "
            f"run took {run.seconds:.1f} s; {shown}"
        )


def test_a_node_partitioned_past_the_deadline_is_named_and_its_spend_recorded(tmp_path: Path) -> None:
    """council is cut off while it holds the request, approved while cut off, and healed only
    after the run's deadline: a run that needs 2 of 3 completes with police and fire and names
    council; whatever council did with the approval is accounted for (nothing spent, or spent
    and marked undelivered in its own ledger and audit log)."""
    with _federation(tmp_path, manual=frozenset({"council"})) as (fed, ns):
        run = _Run(fed, tmp_path / "out", "cut-off", Quorum(2), timeout=15)
        request_id = _wait_held(fed, "council")
        ns.partition("council")
        _approve(fed, "council", request_id)
        run.join()
        ns.heal("council")
        assert run.error is None, run.error
        assert run.result is not None
        assert sorted(r.partner for r in run.result.releases) == ["fire", "police"]
        assert [(r.partner, r.kind) for r in run.result.refusals] == [("council", "timeout")]
        deadline = time.monotonic() + 60  # council's node learns the run ended once it reconnects
        while time.monotonic() < deadline:
            inbox = Inbox(_state(fed, "council"))
            try:
                decided = [i for i in inbox.items() if i.request_id == request_id and i.status != "approved"]
            finally:
                inbox.close()
            if decided:
                break
            time.sleep(0.5)
        shown = _spends_accounted(fed, [run.manifest()])
        assert shown["council"].startswith("0 spend(s) in manifests, 0"), shown
        print(f"checked: council partitioned past the deadline with an approved request; {shown}")


def test_a_coordinator_restarted_mid_run_completes_or_names_the_lost_release(tmp_path: Path) -> None:
    """The SuperLink and the Fleet proxy are stopped by PID while council holds the request, and
    started again on the same ports 2 s later (the SuperLink's database keeps the registered keys,
    the run and its messages). council is approved while the coordinator is still coming back;
    the nodes reconnect by themselves (Flower's backoff, up to about 20 s). The run completes
    with all three, council counted once; or, when the stop caught a reply half-uploaded (the
    SuperLink keeps reply objects in memory), it fails naming that partner's release as lost,
    and the manifest records the loss. Either way no spend goes unrecorded."""
    with _federation(tmp_path, manual=frozenset({"council"}), database="superlink.db") as (fed, _):
        run = _Run(fed, tmp_path / "out", "restarted", Quorum(3), timeout=90)
        request_id = _wait_held(fed, "council")
        fed.restart_coordinator(down=2.0)
        _approve(fed, "council", request_id)
        run.join()
        if run.error is not None:
            assert isinstance(run.error, QuorumNotMet), run.error
            assert "a release in it is lost" in str(run.error), run.error
            outcome = f"failed: {str(run.error)[:160]}"
        else:
            assert run.result is not None
            assert sorted(r.partner for r in run.result.releases) == ["council", "fire", "police"]
            outcome = "completed with all three"
        shown = _spends_accounted(fed, [run.manifest()])
        assert all(
            shown[p].startswith("1 spend(s)") or ", 1 recorded there as lost" in shown[p] for p in PARTNERS
        )
        print(f"checked: coordinator restarted mid-run; {outcome} in {run.seconds:.1f} s; {shown}")


def test_a_node_500_ms_away_completes(tmp_path: Path) -> None:
    """fire's every packet is held 500 ms (tc netem where the kernel has it, else a delaying relay
    on the bridge): the run completes with all three within its deadline."""
    relays: list[DelayRelay] = []

    def slow_fire(configs: dict[str, Path], fleet: str) -> None:
        host, _, port = fleet.rpartition(":")
        relay = DelayRelay(host, (host, int(port)), 0.5).__enter__()
        relays.append(relay)
        config = configs["fire"]
        config.write_text(
            config.read_text().replace(f"coordinator: {fleet}", f"coordinator: {host}:{relay.port}")
        )

    netem = has_netem()
    how = "tc netem" if netem else "a delaying relay on the bridge (this kernel has no netem qdisc)"
    try:
        with _federation(tmp_path, rewire=None if netem else slow_fire) as (fed, ns):
            if netem:
                ns.delay("fire", 500)
            run = _Run(fed, tmp_path / "out", "slow", Quorum(3), timeout=60)
            run.join()
            assert run.error is None, run.error
            assert run.result is not None
            assert sorted(r.partner for r in run.result.releases) == ["council", "fire", "police"]
            shown = _spends_accounted(fed, [run.manifest()])
            print(f"checked: fire 500 ms away by {how}; run took {run.seconds:.1f} s; {shown}")
    finally:
        for relay in relays:
            relay.__exit__(None, None, None)
