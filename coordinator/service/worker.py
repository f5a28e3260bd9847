"""The worker: runs queued runs on the federation, a few at a time, and records how they go.

Each run goes through the ordinary orchestrator (`run_analysis`, `run_blueprint`) over the
coordinator's transport, with a `StoreWatch` that writes every request sent and every reply
received to the store (per-partner progress, what each partner spent, events for the live
stream) and tells the transport when the run was cancelled, passed its deadline, or the
coordinator is stopping. Results go to `results/<run id>/`, a folder made for that run only.

On start the worker marks runs a stopped coordinator left in flight as interrupted (with what
each partner spent); queued runs simply run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from analyses.spec import load_spec
from coordinator.run.transport import NodeReply, Quorum, RunCancelled, RunContext, Transport
from coordinator.service.store import RunRow, RunStore
from coordinator.service.submission import resolve_blueprint
from privacy.errors import OdaError

__all__ = ["WAITING_AFTER_SECONDS", "RunWorker", "StoreWatch"]

log = logging.getLogger("oda.worker")

#: A request out this long with partners still to answer puts the run in `waiting`.
WAITING_AFTER_SECONDS = 10.0
#: How often a watch reads the store for a cancel while replies are awaited.
CANCEL_CHECK_SECONDS = 0.5


class StoreWatch:
    """A `RunWatch` that records a run's progress in the store and reads its cancel from there.

    The deadline is not a cancel: each request waits at most until it (the transport's timeout),
    and the run completes with the partners that answered."""

    def __init__(self, store: RunStore, run_id: str, deadline_at: float, stopping: threading.Event) -> None:
        self.store = store
        self.run_id = run_id
        self.deadline_at = deadline_at
        self.stopping = stopping
        self._pending: set[str] = set()
        self._last_sent = 0.0
        self._checked = 0.0
        self._waiting = False
        self.stopped_by_shutdown = False

    def sent(self, request_id: str, nodes: Sequence[str]) -> None:
        self._pending = set(nodes)
        self._last_sent = time.monotonic()
        if self._waiting:
            self._waiting = False
            self.store.set_state(self.run_id, "running")
        row = self.store.run(self.run_id)
        progress = row.progress() if row else {}
        for node in nodes:
            requests = int(str(progress.get(node, {}).get("requests", 0)))
            self.store.update_progress(
                self.run_id, node, state="sent", request_id=request_id, requests=requests + 1
            )

    def replied(self, request_id: str, node: str, reply: NodeReply) -> None:
        self._pending.discard(node)
        release, refusal = reply.release, reply.refusal
        if release is not None:
            self.store.update_progress(
                self.run_id,
                node,
                state="released",
                cost_rho=release.cost_rho,
                node_version=release.node_version,
                message="",
            )
            self.store.partner_seen(
                node, self.run_id, node_version=release.node_version, protocol=release.protocol
            )
        elif refusal is not None:
            state = {"timeout": "timeout", "internal": "error"}.get(refusal.kind, "refused")
            message = f"{refusal.kind}: {refusal.message}"[:1000]
            self.store.update_progress(self.run_id, node, state=state, message=message)
            self.store.partner_seen(node, self.run_id, refusal=message, replied=state != "timeout")

    def cancelled(self) -> str | None:
        now = time.monotonic()
        if self.stopping.is_set():
            self.stopped_by_shutdown = True
            return "the coordinator is stopping"
        if now - self._checked < CANCEL_CHECK_SECONDS:
            return None
        self._checked = now
        row = self.store.run(self.run_id)
        if row is not None and row.cancel_reason:
            return row.cancel_reason
        if self._pending and not self._waiting and now - self._last_sent > WAITING_AFTER_SECONDS:
            self._waiting = True
            self.store.set_state(
                self.run_id,
                "waiting",
                f"waiting for {', '.join(sorted(self._pending))} (approval or slow node)",
            )
        return None


class RunWorker:
    """Threads that take queued runs from the store and run them on the federation.

    `transport` is called once per run for the transport to use (a shared link is fine: each
    run opens its own Flower run). `federation` names the analysts at the nodes
    (`alice@<federation>`).
    """

    def __init__(
        self,
        store: RunStore,
        transport: Callable[[], Transport],
        results: Path,
        federation: str,
        *,
        concurrency: int = 2,
        registry: Path | None = None,
        poll: float = 1.0,
    ) -> None:
        self.store = store
        self.transport = transport
        self.results = results
        self.federation = federation
        self.concurrency = concurrency
        self.registry = registry
        self.poll = poll
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> list[RunRow]:
        """Mark runs left in flight as interrupted (returned), then start taking queued runs."""
        interrupted = self.store.interrupt_in_flight()
        for row in interrupted:
            log.warning("run %s was in flight when the coordinator stopped: %s", row.id, row.reason)
        self.results.mkdir(parents=True, exist_ok=True)
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"oda-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return interrupted

    def wake(self) -> None:
        """A run was queued: look now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop taking runs; runs in flight withdraw their requests and end `interrupted`."""
        self.stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self._threads.clear()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                row = self.store.next_queued()
            except Exception:
                log.exception("cannot read the run store")
                row = None
            if row is None:
                self._wake.wait(self.poll)
                self._wake.clear()
                continue
            self.execute(row)

    def execute(self, row: RunRow) -> None:
        """Run one claimed run to its terminal state. Never raises."""
        watch = StoreWatch(self.store, row.id, row.deadline_at, self.stopping)
        quorum = None
        if row.quorum_json:
            stated = json.loads(row.quorum_json)
            quorum = Quorum(stated.get("min_partners"), tuple(stated.get("required", ())))
        context = RunContext(f"{row.owner}@{self.federation}", row.id, row.purpose, watch, quorum)
        folder = self.results / row.id
        if time.time() >= row.deadline_at:
            self.store.set_state(
                row.id, "failed", "its deadline passed before it could start; nothing was sent"
            )
            return
        try:
            folder.mkdir(parents=False, exist_ok=False)  # a run's results are never overwritten
            self.store.set_state(row.id, "running", results_dir=str(folder))
            if row.source == "spec":
                self._run_spec(row, context, folder)
            else:
                self._run_blueprint(row, context, folder)
        except RunCancelled as exc:
            if watch.stopped_by_shutdown:
                now = self.store.run(row.id)
                self.store.set_state(
                    row.id,
                    "interrupted",
                    f"the coordinator stopped during the run; partners spent: {now.spent() if now else 'nothing'}",
                )
            else:
                self.store.set_state(row.id, "cancelled", str(exc))
        except FileExistsError:
            self.store.set_state(
                row.id, "failed", f"results folder {folder} exists already; nothing was sent"
            )
        except OdaError as exc:
            self.store.set_state(row.id, "failed", str(exc), error=type(exc).__name__)
        except Exception as exc:  # a bug must end the run, not the worker
            log.exception("run %s failed inside the coordinator", row.id)
            self.store.set_state(
                row.id,
                "failed",
                f"internal error in the coordinator: {type(exc).__name__}: {exc}",
                error="InternalError",
            )

    def _timeout(self, row: RunRow) -> float:
        return max(1.0, row.deadline_at - time.time())

    def _run_spec(self, row: RunRow, context: RunContext, folder: Path) -> None:
        from coordinator.run.orchestrator import run_analysis

        loaded = load_spec(row.spec_yaml, f"run {row.id}")
        result = run_analysis(
            loaded, self.transport(), out_dir=folder, context=context, timeout=self._timeout(row)
        )
        tables = [
            {"name": t.name, "analysis": loaded.spec.name, "file": f"{t.name}.parquet", "rows": len(t.frame)}
            for t in result.tables
        ]
        refusals: list[dict[str, object]] = [
            {"analysis": loaded.spec.name, "partner": r.partner, "kind": r.kind, "message": r.message}
            for r in result.refusals
        ]
        self.store.set_state(
            row.id,
            "done",
            _done_reason(len(result.releases), refusals),
            tables_json=json.dumps(tables),
            refusals_json=json.dumps(refusals),
        )

    def _run_blueprint(self, row: RunRow, context: RunContext, folder: Path) -> None:
        from coordinator.blueprints.runner import run_blueprint

        signed = resolve_blueprint(str(row.blueprint), self.registry)
        parameters = json.loads(row.parameters_json)
        run = run_blueprint(
            signed.blueprint,
            parameters,
            self.transport(),
            folder,
            timeout=self._timeout(row),
            signer=signed.signer,
            context=context,
        )
        tables: list[dict[str, object]] = []
        refusals: list[dict[str, object]] = []
        for analysis, result in run.results.items():
            tables += [
                {
                    "name": f"{analysis}.{t.name}",
                    "analysis": analysis,
                    "file": f"analyses/{analysis}/{t.name}.parquet",
                    "rows": len(t.frame),
                }
                for t in result.tables
            ]
            refusals += [
                {"analysis": analysis, "partner": r.partner, "kind": r.kind, "message": r.message}
                for r in result.refusals
            ]
        tables += [
            {
                "name": oid,
                "analysis": "derived",
                "file": f"exports/derived__{t.name}.parquet",
                "rows": len(t.frame),
            }
            for oid, t in run.derived.items()
        ]
        fields = {"tables_json": json.dumps(tables), "refusals_json": json.dumps(refusals)}
        if run.failures and not run.results:
            why = "; ".join(f"{name}: {msg}" for name, msg in run.failures.items())
            self.store.set_state(row.id, "failed", f"no analysis of the blueprint ran: {why}", **fields)
            return
        reason = _done_reason(sum(len(r.releases) for r in run.results.values()), refusals)
        if run.failures:
            reason += "; failed: " + "; ".join(f"{name}: {msg}" for name, msg in run.failures.items())
        self.store.set_state(row.id, "done", reason, **fields)


def _done_reason(releases: int, refusals: list[dict[str, object]]) -> str:
    if not refusals:
        return f"{releases} release(s), no refusals"
    return f"{releases} release(s); {len(refusals)} refusal(s) or timeout(s)"
