"""The node agent's core: one analysis request in, one release (or a typed refusal) out.

No Flower here: `node_agent.reply` turns request bytes into a reply payload for whichever
transport carries them. The order of checks is the order of trust: the request's fields
(bounded when it was read), the spec parsed by this node, local policy, the data catalogue
(`node_agent.admission`), then the budget, reserved in the ledger before a single row is read.
The release's bytes are made once: the audit log records their hash, and they are what is sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fractions import Fraction
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from analyses.local_data import LocalData
from analyses.local_step import dry_run, measurement_release, release_steps
from analyses.operators.glm import ScoreStep
from analyses.operators.sgd import SgdStep
from analyses.reply import NodeRelease, StepRelease, encode_release
from analyses.request import PROTOCOL_VERSIONS, REQUEST_ID, AnalysisRequest
from analyses.sgd import TrainState, local_update
from analyses.spec import AnalysisSpec, load_spec
from analyses.step import StepBase
from node_agent.admission import Admission, admit
from node_agent.audit import AuditLog
from node_agent.config import NodeConfig
from node_agent.contact import Contact
from node_agent.datasets import Datasets, Snapshot
from node_agent.inbox import Inbox, InboxItem
from node_agent.ledger import Ledger
from node_agent.linkage import run_phase
from privacy.budget import DISPLAY_DELTA, Rho, exact_total, rho_at_least
from privacy.errors import ConfigError, InternalError, PolicyRefusal, SpecError, UserError
from privacy.mechanisms import integer_gaussian

__all__ = [
    "RESTART_FIELDS",
    "NodeAgent",
    "Pending",
    "Released",
    "Trained",
    "audit_id",
    "node_version",
    "redact_paths",
    "spec_hash_of",
]

log = logging.getLogger("oda.node")


def node_version() -> str:
    try:
        return version("oda-federated")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+source"


@dataclass(frozen=True)
class Pending:
    """A request filed in the approval inbox: nothing is released until it is approved."""

    request_id: str
    analysis: str
    cost: Rho


@dataclass(frozen=True)
class Released:
    """A release, stamped with its audit entry, and the bytes that entry's hash covers (what
    is sent; the stamp travels beside them)."""

    release: NodeRelease
    payload: bytes


@dataclass(frozen=True)
class Trained:
    """One FedAvg round at this node: its release, its local model and its FedAvg weight."""

    released: Released
    weights: npt.NDArray[np.float64]
    examples: float


def spec_hash_of(text: object) -> str:
    """The spec hash to audit a request under; an unparsable spec by the hash of its text."""
    if not isinstance(text, str):
        return "none"
    try:
        return load_spec(text, "request").hash
    except Exception:  # an unparsable spec is audited by the hash of its text
        return "text:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def _printable(value: object) -> str | None:
    """A text field of a request as the audit log may keep it: a refused request may carry
    anything, so only printable text is kept (and bounded by the log)."""
    return value if isinstance(value, str) and value.isprintable() else None


def audit_id(request_id: object) -> str:
    """The id a request is audited under: its own when well-formed, else a digest of it (an
    oversized or binary id must never reach the log as it is)."""
    if isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id):
        return request_id
    raw = repr(request_id).encode("utf-8", "replace")
    return "invalid-id:" + hashlib.sha256(raw).hexdigest()[:16]


#: An absolute path (POSIX or Windows) with at least one separator after its start.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:[\\/]|/)(?:[^\s'\"<>|:,;()]+[\\/])+[^\s'\"<>|:,;()]*")


def redact_paths(text: str, places: dict[str, str]) -> str:
    """`text` without node-local paths: each folder in `places` (path -> what to call it) is
    named, and any other absolute path becomes `<path>`. Replies say what and how to fix it,
    not where on the partner's disk."""
    for path, name in sorted(places.items(), key=lambda item: -len(item[0])):
        if path and path != os.sep:
            text = text.replace(path, name)
    return _ABSOLUTE_PATH.sub("<path>", text)


#: `node.yaml` fields a running node keeps until it restarts (its connection and state).
RESTART_FIELDS = ("state_dir", "coordinator", "transport", "partner", "poll_interval")


class NodeAgent:
    """A partner's node: its config, its data, its ledger, its audit log and inbox.

    Opening the agent verifies the audit log and opens the ledger: a damaged or edited one
    stops the node, with a message naming the file.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        state = Path(config.state_dir)
        self.ledger = Ledger(state / "ledger.sqlite")
        self.audit = AuditLog(state)
        #: (entries, head hash) of the audit log, verified when the agent opened.
        self.verified_audit = self.audit.verify()
        self.inbox = Inbox(state)
        self.contact = Contact(state)
        self.datasets = Datasets(config)
        #: Serialises the ledger and audit log (one SQLite connection): held only for their
        #: short writes, never while a release is computed.
        self._lock = threading.Lock()

    def close(self) -> None:
        self.ledger.close()
        self.inbox.close()

    def reload(self, config: NodeConfig) -> list[str]:
        """Apply a changed `node.yaml` to the running node: policy, datasets and their data (loaded
        again, warmed). The ledger, audit log and inbox stay as they are, so requests
        held for approval are kept. What needs a restart (`RESTART_FIELDS`) is kept as it was and
        named in the lines returned.

        Raises:
            DataError: a dataset of the new config cannot be loaded (the old config stays).
        """
        kept = []
        for field_name in RESTART_FIELDS:
            if getattr(config, field_name) != getattr(self.config, field_name):
                kept.append(f"{field_name} changed: it takes effect at the next start")
        config = config.model_copy(update={f: getattr(self.config, f) for f in RESTART_FIELDS})
        datasets = Datasets(config)
        datasets.warm_up()  # before the swap: a dataset that fails to load leaves the node as it was
        with self._lock:
            self.config, self.datasets = config, datasets
        return kept

    # -- data ---------------------------------------------------------------------------------

    def frame(self, dataset: str) -> pd.DataFrame:
        """The rows of `dataset` analyses read (see `Datasets`)."""
        return self.datasets.frame(dataset)

    def snapshot(self, dataset: str) -> Snapshot:
        return self.datasets.snapshot(dataset)

    def public_reason(self, exc: BaseException) -> str:
        """What a reply may say about a refusal or failure: the message without node-local paths."""
        text = str(exc) if isinstance(exc, UserError) else f"internal error at the node: {exc}"
        places = {
            self.config.state_dir: "the node's state folder",
            self.config.data_dir: "the node's data folder",
            str(Path(self.config.state_dir).parent): "the node's folder",
            str(Path.home()): "~",
        }
        return redact_paths(text, places)

    # -- budget -------------------------------------------------------------------------------

    def period_start(self) -> float:
        """Unix time from which spending counts against the caps (renewal period)."""
        renewal = self.config.policy.renewal
        return renewal.period_start(datetime.now(UTC)).timestamp() if renewal else 0.0

    def remaining(self, population: str) -> Rho:
        """What `population` may still spend this period (never below 0)."""
        cap = Fraction(self.config.policy.total_rho_cap[population])
        left = cap - self.ledger.spent_exactly(population, self.period_start())
        return Rho(max(float(left), 0.0))

    # -- decisions ----------------------------------------------------------------------------

    def admit(self, request: AnalysisRequest) -> Admission:
        """Every check short of the budget (see `node_agent.admission`).

        Raises:
            ProtocolError, SpecError, PolicyRefusal, BudgetExhausted: refusals.
        """
        request.check()
        return admit(self.config, self.datasets, self.ledger, self.period_start(), request)

    def handle(self, request: AnalysisRequest, bundle_hash: str = "") -> Released | Pending:
        """Decide on a request: release, refuse, or (manual approval) file it in the inbox.

        Every decision is written to the audit log before anything leaves.

        Raises:
            ProtocolError, SpecError, PolicyRefusal, BudgetExhausted, DataError: refusals,
                each with a message that says what and how to fix it. Nothing is released.
        """
        try:
            admission = self.admit(request)
            goes_on = admission.state is not None and admission.state.continues_approved()
            if admission.steps and self.config.policy.approval == "manual" and not goes_on:
                return self._file(admission, bundle_hash)
            return self._run(admission, bundle_hash)
        except Exception as exc:
            self.refuse(request, bundle_hash, exc)
            raise

    def _file(self, admission: Admission, bundle_hash: str) -> Pending:
        request, spec = admission.request, admission.spec
        summary = "; ".join(step.summary() for step in admission.steps)
        unit = spec.privacy.unit
        self.inbox.file(
            request_id=request.request_id,
            requester=request.requester,
            analysis=spec.name,
            summary=f"{summary}; unit {unit.identifier} x{unit.max_rows}",
            cost_rho=admission.cost.value,
            request_json=request.to_json(),
            bundle_hash=bundle_hash,
            run_id=request.run_id or "",
            purpose=request.purpose or "",
        )
        with self._lock:
            self.audit.append(
                run_id=_printable(request.run_id),
                purpose=_printable(request.purpose),
                request_id=request.request_id,
                requester=request.requester,
                spec_hash=spec.hash,
                bundle_hash=bundle_hash,
                decision="pending",
                reason="waiting for approval (oda-node approve ID)",
                cost_rho=admission.cost.value,
            )
        log.info("filed %s (%s) for approval: %s", spec.name, request.request_id, admission.cost.describe())
        return Pending(request.request_id, spec.name, admission.cost)

    def run_approved(self, request_id: str) -> Released:
        """Release an approved request from the inbox (budget and policy are checked again).

        Raises:
            ConfigError: the request is not approved; refusals as in `handle`.
        """
        item = self.inbox.get(request_id)
        if item.status != "approved":
            raise ConfigError(f"request {request_id} is {item.status}, not approved")
        request = AnalysisRequest.from_bytes(item.request_json)
        try:
            released = self._run(self.admit(request), item.bundle_hash)
        except Exception as exc:
            self.inbox.settle(request_id, "failed", str(exc))
            self.refuse(request, item.bundle_hash, exc)
            raise
        self.inbox.settle(request_id, "released")
        return released

    def decide(
        self, request_id: str, denied_because: str | None = None, by: str = "the partner"
    ) -> InboxItem:
        """Approve a waiting request (or deny it, with the reason the coordinator is sent), and
        audit the decision; the running node acts on it at its next poll. `by` says who decided
        (the shell, the DPO console).

        Raises:
            ConfigError: no request of that id waits in the inbox.
        """
        decision: Literal["approved", "denied"] = "denied" if denied_because is not None else "approved"
        item = self.inbox.decide(request_id, decision, denied_because or "")
        request = json.loads(item.request_json)
        self.audit.append(
            request_id=item.request_id,
            requester=item.requester,
            spec_hash=spec_hash_of(str(request.get("spec_yaml", ""))),
            bundle_hash=item.bundle_hash,
            decision=decision,
            reason=denied_because or f"approved by {by}",
            cost_rho=item.cost_rho if decision == "approved" else 0.0,
        )
        return item

    def expire(self, request_id: str, why: str) -> None:
        """Settle an inbox request whose message is gone (its run ended): nothing is released or
        spent; the audit log says so."""
        item = self.inbox.get(request_id)
        self.inbox.settle(request_id, "expired", why)
        self.refuse(AnalysisRequest.from_bytes(item.request_json), item.bundle_hash, PolicyRefusal(why))

    def cancel(self, request_id: str, why: str) -> bool:
        """Withdraw a request still waiting in the inbox (or approved but not yet run) because the
        coordinator cancelled its run: nothing is reserved or spent; the inbox and audit log say
        why. Returns False when there was nothing to withdraw."""
        try:
            item = self.inbox.get(request_id)
        except ConfigError:
            return False
        if item.status not in ("waiting", "approved"):
            return False
        self.expire(request_id, why)
        log.info("withdrew %s from the approval inbox: %s", request_id, why)
        return True

    def undelivered(self, release: NodeRelease, bundle_hash: str, why: str) -> None:
        """Record that a release was computed and debited but could not be delivered: the ledger
        and the audit log say "spent, not delivered"."""
        with self._lock:
            self.ledger.undelivered(release.request_id)
            self.audit.append(
                request_id=audit_id(release.request_id),
                requester="-",
                spec_hash=release.spec_hash,
                bundle_hash=bundle_hash,
                decision="undelivered",
                reason=f"spent, not delivered: {why}",
                cost_rho=release.cost_rho,
            )
        log.warning("release %s was spent but not delivered: %s", release.request_id, why)

    def refuse(self, request: AnalysisRequest, bundle_hash: str, exc: BaseException) -> None:
        """Audit a refusal (or a failure) of `request`."""
        reason = str(exc) if isinstance(exc, UserError) else f"internal error: {exc}"
        requester = request.requester if isinstance(request.requester, str) else repr(request.requester)
        with self._lock:
            self.audit.append(
                run_id=_printable(request.run_id),
                purpose=_printable(request.purpose),
                request_id=audit_id(request.request_id),
                requester=requester,
                spec_hash=spec_hash_of(request.spec_yaml),
                bundle_hash=bundle_hash,
                decision="refused",
                reason=reason,
            )

    # -- releases -----------------------------------------------------------------------------

    def _run(self, admission: Admission, bundle_hash: str) -> Released:
        """Release the steps of an admitted request (or say this node holds none of them)."""
        request, spec, steps = admission.request, admission.spec, admission.steps
        if not steps:
            release = self._release(request, spec.hash, (), Rho(0.0), None, "not_held")
            with self._lock:
                return self._audited(request, release, bundle_hash)
        rounds = admission.rounds_step
        if rounds is not None and rounds.flow == "ring":
            released = run_phase(self, admission, bundle_hash)
            log.info("released %s (%s) to %s", spec.name, request.request_id, request.requester)
            return released
        if rounds is not None and rounds.flow == "fedavg":
            raise SpecError(
                "an sgd step is trained by FedAvg train messages (`oda run` sends them), not queries"
            )
        datasets = {spec.dataset_of(s) for s in steps}

        def check() -> None:
            empty = {name: LocalData(self.frame(name).iloc[0:0]) for name in datasets}
            dry_run(spec, steps, empty, admission.state)

        def compute() -> tuple[StepRelease, ...]:
            for step in steps:
                if step.keeps_local_output:
                    self.write_scores(spec, step)
            data = {name: LocalData(self.frame(name)) for name in datasets}
            return tuple(release_steps(spec, steps, data, admission.state, self.config.policy.min_cell))

        released = self.debited(admission, bundle_hash, compute, check)
        log.info(
            "released %s (%s) to %s: %s",
            spec.name,
            request.request_id,
            request.requester,
            admission.cost.describe(),
        )
        return released

    def debited(
        self,
        admission: Admission,
        bundle_hash: str,
        compute: Callable[[], tuple[StepRelease, ...]],
        check: Callable[[], None],
    ) -> Released:
        """Check, reserve, release, audit, commit: the only path by which anything leaves.

        The release is first run on an empty frame of the same columns (`check`), so an error in
        it refuses before any budget is reserved. The ledger lock is held only for the ledger and
        audit writes, never while the release is computed.
        """
        request, spec, steps = admission.request, admission.spec, admission.steps
        shares_by_population: dict[str, list[Rho]] = {}
        for step in steps:
            population = self.config.population_of(spec.dataset_of(step))
            shares_by_population.setdefault(population, []).append(spec.request_budget(step.id))
        costs = {p: rho_at_least(exact_total(parts)) for p, parts in shares_by_population.items()}
        caps = {p: Rho(self.config.policy.total_rho_cap[p]) for p in costs}
        datasets = sorted({spec.dataset_of(s) for s in steps})
        for dataset in datasets:
            self.datasets.loaded(dataset)  # a data error now refuses before any budget is reserved
        check()
        with self._lock:
            entries = self.ledger.reserve(
                request_id=request.request_id,
                costs=costs,
                caps=caps,
                spec_hash=spec.hash,
                since=self.period_start(),
            )
        try:
            released = compute()
            release = self._release(request, spec.hash, released, admission.cost, entries[0], "released")
            release = replace(release, snapshots={name: self.snapshot(name).id for name in datasets})
            records = {name: self.snapshot(name).record() for name in datasets}
            with self._lock:
                result = self._audited(request, release, bundle_hash, records)
                for entry in entries:
                    self.ledger.commit(entry)
            return result
        except Exception as exc:
            with self._lock:
                for entry in entries:
                    self.ledger.fail(entry)
            raise InternalError(
                f"release of {spec.name!r} failed after its budget was reserved: {exc}"
            ) from exc

    def free_release(
        self, admission: Admission, bundle_hash: str, steps: tuple[StepRelease, ...]
    ) -> Released:
        """Audit and return a release that spends nothing: a later phase of a run whose first
        request paid for everything it releases (an overlap step's hops and count)."""
        release = self._release(admission.request, admission.spec.hash, steps, Rho(0.0), None, "released")
        with self._lock:
            return self._audited(admission.request, release, bundle_hash)

    def train(
        self, request: AnalysisRequest, weights: npt.NDArray[np.float64], bundle_hash: str = ""
    ) -> Trained:
        """One FedAvg round of an sgd step: release the noisy gradient sum and row count, and
        return the release, the local model (one step on the noisy mean) and its FedAvg weight.

        Raises:
            SpecError, PolicyRefusal, BudgetExhausted, DataError: refusals; nothing is released.
        """
        try:
            admission = self.admit(request)
            step = admission.rounds_step
            if step is None or step.flow != "fedavg" or not isinstance(admission.state, TrainState):
                raise SpecError("a train message must carry an sgd analysis on a dataset this node holds")
            if self.config.policy.approval == "manual":
                raise PolicyRefusal(
                    "FedAvg rounds cannot wait for a person: this node's policy.approval is manual"
                )
            return self._train(admission, step, weights, bundle_hash)
        except Exception as exc:
            self.refuse(request, bundle_hash, exc)
            raise

    def _train(
        self, admission: Admission, step: StepBase, weights: npt.NDArray[np.float64], bundle_hash: str
    ) -> Trained:
        if not isinstance(step, SgdStep):  # narrowing only: `flow == "fedavg"` is the sgd step
            raise InternalError(f"{step.kind} steps do not train by FedAvg")
        spec = admission.spec
        unit = spec.unit_of(step).to_unit()
        local: list[tuple[npt.NDArray[np.float64], float]] = []

        def check() -> None:
            step.gradient(weights, LocalData(self.frame(spec.dataset_of(step)).iloc[0:0]), unit)

        def compute() -> tuple[StepRelease, ...]:
            exact = step.gradient(weights, LocalData(self.frame(spec.dataset_of(step))), unit)
            half = admission.cost.split(2)
            gradient = integer_gaussian(exact.gradient, exact.gradient_sensitivity, half)
            rows = integer_gaussian(exact.rows, exact.rows_sensitivity, half)
            local.append(local_update(weights, gradient, exact.unit, rows, step.learning_rate))
            measurements = (
                measurement_release("gradient", exact.unit, gradient),
                measurement_release("count", 1.0, rows),
            )
            return (StepRelease(step.id, step.kind, "hidden", measurements),)

        released = self.debited(admission, bundle_hash, compute, check)
        request = admission.request
        log.info(
            "trained %s (%s) for %s: %s",
            spec.name,
            request.request_id,
            request.requester,
            admission.cost.describe(),
        )
        updated, examples = local[0]
        return Trained(released, updated, examples)

    def scores_path(self, spec: AnalysisSpec, step: StepBase) -> Path:
        return Path(self.config.state_dir) / "scores" / f"{spec.name}.{step.id}.parquet"

    def write_scores(self, spec: AnalysisSpec, step: StepBase) -> Path:
        """Score every record of the step's dataset into a local Parquet file (identifier, score).

        The file stays here: it is never part of a release. Written whole, then renamed, so a
        reader never sees half of it.
        """
        if not isinstance(step, ScoreStep):  # narrowing only: the step keeping a local output
            raise InternalError(f"{step.kind} steps keep no local scores")
        dataset = spec.dataset_of(step)
        frame = self.frame(dataset)
        identifier = self.config.datasets[dataset].identifier
        path = self.scores_path(spec, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pd.DataFrame({identifier: frame[identifier].to_numpy(), "score": step.scores(frame)}).to_parquet(
            tmp, index=False
        )
        tmp.chmod(0o600)
        tmp.replace(path)
        log.info("wrote %d local scores to %s (not released)", len(frame), path)
        return path

    def _audited(
        self,
        request: AnalysisRequest,
        release: NodeRelease,
        bundle_hash: str,
        data: dict[str, dict[str, object]] | None = None,
    ) -> Released:
        """Serialise the release once, write its audit entry over exactly those bytes, and stamp
        the release with the new chain head."""
        payload = encode_release(release)
        entry = self.audit.append(
            run_id=_printable(request.run_id),
            purpose=_printable(request.purpose),
            request_id=request.request_id,
            requester=request.requester,
            spec_hash=release.spec_hash,
            bundle_hash=bundle_hash,
            decision=release.status,
            cost_rho=release.cost_rho,
            payload=payload,
            data=data,
        )
        return Released(replace(release, audit_seq=entry.seq, audit_head=entry.hash), payload)

    def _release(
        self,
        request: AnalysisRequest,
        spec_hash: str,
        steps: tuple[StepRelease, ...],
        cost: Rho,
        entry: int | None,
        status: Literal["released", "not_held"],
    ) -> NodeRelease:
        return NodeRelease(
            protocol=PROTOCOL_VERSIONS[-1],
            partner=self.config.partner,
            node_version=node_version(),
            request_id=request.request_id,
            spec_hash=spec_hash,
            status=status,
            steps=steps,
            cost_rho=cost.value,
            epsilon=cost.epsilon(DISPLAY_DELTA),
            delta=DISPLAY_DELTA,
            min_cell=self.config.policy.min_cell,
            ledger_entry=entry,
        )
