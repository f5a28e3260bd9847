"""The node agent's core: one analysis request in, one release (or a typed refusal) out.

No Flower here: `node_agent.flower_node` feeds requests in and sends the result back. The order
of checks is the order of trust: protocol, the spec parsed by this node, the data catalogue,
local policy, then the budget, reserved in the ledger before a single row is read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
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
from pydantic import ValidationError

from analyses.catalog import DatasetSchema, check_steps
from analyses.documents import format_validation_error, parse_document
from analyses.glm import RoundState, design, encode, mean_response
from analyses.local_step import LocalData, dry_run, measurement_release, planned_cost, release_steps
from analyses.release import PROTOCOL_VERSIONS, REQUEST_ID, AnalysisRequest, NodeRelease, StepRelease
from analyses.sgd import TrainState, local_update, n_weights, release_gradient
from analyses.spec import AnalysisSpec, EvaluateStep, ModelStep, ScoreStep, SgdStep, Step
from node_agent.audit import AuditLog
from node_agent.config import NodeConfig
from node_agent.connectors import LoadedDataset, content_hash, load_dataset, write_snapshot
from node_agent.inbox import Inbox
from node_agent.ledger import Ledger
from privacy.budget import DISPLAY_DELTA, Rho, exact_total, fits, rho_at_least
from privacy.errors import (
    BudgetExhausted,
    ConfigError,
    InternalError,
    PolicyRefusal,
    SpecError,
    UserError,
)

__all__ = ["NodeAgent", "Pending", "Snapshot", "audit_id", "node_version", "redact_paths", "spec_hash_of"]

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
class Snapshot:
    """One loaded copy of a dataset: the id releases carry, and what only the node keeps."""

    #: Random, drawn when the data were loaded: says nothing about the rows, only "the node
    #: loaded its data again" when it changes.
    id: str
    #: sha256 of the content analyses read (kept in the node's audit log, never sent).
    sha256: str
    rows: int
    #: Rows of the source left out because they break the contract.
    dropped: int

    def record(self) -> dict[str, object]:
        """What the audit log keeps about the data behind a release."""
        return {"snapshot": self.id, "sha256": self.sha256, "rows": self.rows}


def spec_hash_of(text: object) -> str:
    """The spec hash to audit a request under; an unparsable spec by the hash of its text."""
    if not isinstance(text, str):
        return "none"
    try:
        return parse_document(text, AnalysisSpec, source="request").spec_hash()
    except Exception:  # an unparsable spec is audited by the hash of its text
        return "text:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


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


def _round_state(
    request: AnalysisRequest, spec: AnalysisSpec, steps: list[Step]
) -> RoundState | TrainState | None:
    """The validated round state of a model request; None for other analyses.

    Raises:
        SpecError: a model request without a valid state, or a state sent with another analysis.
    """
    sgd = spec.sgd_step()
    if sgd is not None and steps:
        if request.state is None:
            raise SpecError(f"sgd step {sgd.id!r} runs in FedAvg rounds: the request carries no round state")
        try:
            return TrainState.model_validate(request.state)
        except ValidationError as exc:
            raise SpecError(format_validation_error(f"request {request.request_id} state", exc)) from exc
    model = spec.model_step()
    if model is None or not steps:
        if request.state is not None and model is None and sgd is None:
            raise SpecError("the request carries a round state, but the analysis has no model step")
        return None
    if request.state is None:
        raise SpecError(f"model step {model.id!r} runs in rounds: the request carries no round state")
    try:
        return RoundState.model_validate(request.state).check(model.model)
    except ValidationError as exc:
        raise SpecError(format_validation_error(f"request {request.request_id} state", exc)) from exc


def _summary(spec: AnalysisSpec, steps: list[Step]) -> str:
    parts = []
    for step in steps:
        if isinstance(step, ModelStep):
            model = step.model
            parts.append(
                f"{model.family} model of {model.target} on {', '.join(f.column for f in model.features)} "
                f"({model.rounds} rounds + evaluation)"
            )
            continue
        if isinstance(step, EvaluateStep):
            parts.append(
                f"evaluate a {step.model.family} model of {step.model.target} ({step.cells()} cells)"
            )
            continue
        if isinstance(step, ScoreStep):
            parts.append(
                f"score every record with a {step.model.family} model of {step.model.target} "
                f"(scores kept in a local file; a {step.bins}-bin histogram is released)"
            )
            continue
        keys = ", ".join(k.output for k in step.by) or "no keys"
        column = getattr(step, "column", None)
        bounds = getattr(step, "bounds", None)
        value = f" of {column}" + (f" in [{bounds[0]:g}, {bounds[1]:g}]" if bounds else "") if column else ""
        parts.append(f"{step.kind}{value} by {keys} ({step.cells():,} cells)")
    unit = spec.privacy.unit
    return f"{'; '.join(parts)}; unit {unit.identifier} x{unit.max_rows}"


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
        self._data: dict[str, LoadedDataset] = {}
        self._snapshots: dict[str, Snapshot] = {}
        #: Serialises the ledger and audit log (one SQLite connection): held only for their
        #: short writes, never while a release is computed.
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    def close(self) -> None:
        self.ledger.close()
        self.inbox.close()

    def schemas(self) -> dict[str, DatasetSchema]:
        """Declared schemas of the datasets policy allows this node to analyse, cut down to the
        columns policy allows analyses to read."""
        allowed = self.config.policy.allowed_columns or {}
        return {
            name: {
                col: spec.type
                for col, spec in ds.columns.items()
                if name not in allowed or col in allowed[name]
            }
            for name, ds in self.config.datasets.items()
            if name in self.config.policy.allowed_datasets
        }

    def loaded(self, dataset: str) -> LoadedDataset:
        """The dataset as analyses see it (rows that keep the contract), loaded once and kept
        warm; a SQL source is kept as a local snapshot.

        Raises:
            DataError: the source cannot be read (see `load_dataset`).
        """
        with self._load_lock:
            if dataset not in self._data:
                config = self.config.datasets[dataset]
                data = load_dataset(Path(self.config.data_dir), dataset, config)
                if config.sql is not None:
                    path, digest = write_snapshot(Path(self.config.state_dir), dataset, data.frame)
                    log.info("snapshot of %s: %s (%d rows)", dataset, path, len(data.frame))
                else:
                    digest = content_hash(data.frame)
                if data.dropped:
                    broken = ", ".join(f"{rule}: {n:,}" for rule, n in data.rules if n)
                    log.warning(
                        "dataset %s: %d of %d rows break the contract and are left out of every "
                        "analysis (%s); `oda-node check` shows the rules",
                        dataset,
                        data.dropped,
                        data.source_rows,
                        broken,
                    )
                self._data[dataset] = data
                self._snapshots[dataset] = Snapshot(
                    secrets.token_hex(8), digest, len(data.frame), data.dropped
                )
            return self._data[dataset]

    def frame(self, dataset: str) -> pd.DataFrame:
        """The rows of `dataset` analyses read."""
        return self.loaded(dataset).frame

    def snapshot(self, dataset: str) -> Snapshot:
        """The loaded snapshot of `dataset` (its random id and, for the node only, its hash)."""
        self.loaded(dataset)
        return self._snapshots[dataset]

    def public_reason(self, exc: BaseException) -> str:
        """What a reply may say about a refusal or failure: the message without node-local paths."""
        text = str(exc) if isinstance(exc, UserError) else f"internal error at the node: {exc}"
        config_home = str(Path(self.config.state_dir).parent)
        places = {
            self.config.state_dir: "the node's state folder",
            self.config.data_dir: "the node's data folder",
            config_home: "the node's folder",
            str(Path.home()): "~",
        }
        return redact_paths(text, places)

    def warm_up(self) -> None:
        """Load every allowed dataset now, so the first request does not pay for it."""
        for name in self.config.policy.allowed_datasets:
            self.frame(name)

    def period_start(self) -> float:
        """Unix time from which spending counts against the caps (renewal period)."""
        renewal = self.config.policy.renewal
        return renewal.period_start(datetime.now(UTC)).timestamp() if renewal else 0.0

    def remaining(self, population: str) -> Rho:
        """What `population` may still spend this period (never below 0)."""
        cap = Fraction(self.config.policy.total_rho_cap[population])
        left = cap - self.ledger.spent_exactly(population, self.period_start())
        return Rho(max(float(left), 0.0))

    def handle(self, request: AnalysisRequest, bundle_hash: str = "") -> NodeRelease | Pending:
        """Decide on a request: release, refuse, or (manual approval) file it in the inbox.

        Every decision is written to the audit log before anything leaves.

        Raises:
            ProtocolError, SpecError, PolicyRefusal, BudgetExhausted, DataError: refusals,
                each with a message that says what and how to fix it. Nothing is released.
        """
        try:
            request.check()
            spec, steps, cost = self._admit(request)
            if steps and self.config.policy.approval == "manual":
                self.inbox.file(
                    request_id=request.request_id,
                    requester=request.requester,
                    analysis=spec.name,
                    summary=_summary(spec, steps),
                    cost_rho=cost.value,
                    request_json=request.to_json(),
                    bundle_hash=bundle_hash,
                )
                with self._lock:
                    self.audit.append(
                        request_id=request.request_id,
                        requester=request.requester,
                        spec_hash=spec.spec_hash(),
                        bundle_hash=bundle_hash,
                        decision="pending",
                        reason="waiting for approval (oda-node approve ID)",
                        cost_rho=cost.value,
                    )
                log.info("filed %s (%s) for approval: %s", spec.name, request.request_id, cost.describe())
                return Pending(request.request_id, spec.name, cost)
            return self._run(request, spec, steps, cost, bundle_hash)
        except Exception as exc:
            self.refuse(request, bundle_hash, exc)
            raise

    def run_approved(self, request_id: str) -> NodeRelease:
        """Release an approved request from the inbox (budget and policy are checked again).

        Raises:
            ConfigError: the request is not approved; refusals as in `handle`.
        """
        item = self.inbox.get(request_id)
        if item.status != "approved":
            raise ConfigError(f"request {request_id} is {item.status}, not approved")
        request = AnalysisRequest.from_json(item.request_json)
        try:
            spec, steps, cost = self._admit(request)
            release = self._run(request, spec, steps, cost, item.bundle_hash)
        except Exception as exc:
            self.inbox.settle(request_id, "failed", str(exc))
            self.refuse(request, item.bundle_hash, exc)
            raise
        self.inbox.settle(request_id, "released")
        return release

    def expire(self, request_id: str, why: str) -> None:
        """Settle an inbox request whose message is gone (its run ended): nothing is released or
        spent; the audit log says so."""
        item = self.inbox.get(request_id)
        self.inbox.settle(request_id, "expired", why)
        request = AnalysisRequest.from_json(item.request_json)
        self.refuse(request, item.bundle_hash, PolicyRefusal(why))

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
                request_id=audit_id(request.request_id),
                requester=requester,
                spec_hash=spec_hash_of(request.spec_yaml),
                bundle_hash=bundle_hash,
                decision="refused",
                reason=reason,
            )

    def _admit(self, request: AnalysisRequest) -> tuple[AnalysisSpec, list[Step], Rho]:
        """Every check short of the budget: protocol, the spec parsed here, policy, catalogue.

        Returns the spec, the steps this node holds, and what they will cost."""
        if request.protocol not in PROTOCOL_VERSIONS:
            raise SpecError(
                f"protocol {request.protocol} is not supported; this node speaks {list(PROTOCOL_VERSIONS)}"
            )
        spec = parse_document(request.spec_yaml, AnalysisSpec, source=f"request {request.request_id}")
        policy = self.config.policy
        wanted = {spec.dataset_of(s) for s in spec.steps}
        held = wanted & set(self.config.datasets)
        declared_not_allowed = sorted(held - set(policy.allowed_datasets))
        if declared_not_allowed:
            raise PolicyRefusal(
                f"dataset {declared_not_allowed[0]!r} is not in this node's policy.allowed_datasets: "
                "the partner has not agreed to analyses of it"
            )
        if held and spec.law_enforcement_only and not policy.law_enforcement:
            raise PolicyRefusal(
                f"analysis {spec.name!r} is for law enforcement purposes only, and this node's policy "
                "does not mark it as law enforcement (policy.law_enforcement: true): nothing was released"
            )
        if held and not policy.allows_analysis(spec.name):
            raise PolicyRefusal(
                f"analysis {spec.name!r} is not in this node's policy.allowed_analyses "
                f"({', '.join(policy.allowed_analyses)}): ask the partner to allow it"
            )
        steps = check_steps(spec, self.schemas())
        for step in steps:
            dataset = self.config.datasets[spec.dataset_of(step)]
            if step.kind not in policy.allowed_steps:
                raise PolicyRefusal(
                    f"step {step.id!r} is a {step.kind}, which this node's policy.allowed_steps "
                    f"({', '.join(policy.allowed_steps)}) does not allow"
                )
            if spec.unit_of(step).identifier != dataset.identifier:
                raise PolicyRefusal(
                    f"step {step.id!r} protects {spec.unit_of(step).identifier!r}, but this node "
                    f"identifies people in {spec.dataset_of(step)!r} by {dataset.identifier!r}: "
                    f"set privacy.unit.identifier to {dataset.identifier!r}"
                )
        cost = planned_cost(spec, steps)
        model = spec.model_step() or spec.sgd_step()
        whole = spec.step_budget(model.id) if model is not None and steps else cost
        if not fits(whole, [], Rho(policy.max_rho_per_analysis)):
            raise PolicyRefusal(
                f"analysis {spec.name!r} asks {whole.describe()} of this node, over its "
                f"policy.max_rho_per_analysis of rho {policy.max_rho_per_analysis}: lower the "
                "analysis budget or ask the partner to raise the limit"
            )
        state = _round_state(request, spec, steps)
        sgd = spec.sgd_step()
        if isinstance(state, TrainState) and sgd is not None and state.round > sgd.rounds:
            raise PolicyRefusal(
                f"round {state.round} is past the {sgd.rounds} rounds of sgd step {sgd.id!r} that this "
                "node agreed to: nothing was spent"
            )
        if state is not None and request.request_id != state.request_id():
            raise SpecError(f"a request of model run {state.run} must have id {state.request_id()!r}")
        if state is not None and not state.opens_run():
            opened = state.first_request_id()
            if not self.ledger.released(opened, spec.spec_hash()):
                raise PolicyRefusal(
                    f"this node did not release the first round of model run {state.run} ({opened}), so it "
                    "takes no part in the run's later requests; nothing was spent"
                )
        if model is not None and state is not None and state.opens_run():
            population = self.config.population_of(spec.dataset_of(model))
            left = self.remaining(population)
            spent = self.ledger.spent_exactly(population, self.period_start())
            if spent + Fraction(whole.value) > Fraction(policy.total_rho_cap[population]):
                raise BudgetExhausted(
                    f"{model.kind} {spec.name!r} needs {whole.describe()} over its {model.requests()} "
                    f"releases; population {population!r} has {left.describe()} left: refused before "
                    "the first round, nothing was spent"
                )
        return spec, steps, cost

    def _run(
        self, request: AnalysisRequest, spec: AnalysisSpec, steps: list[Step], cost: Rho, bundle_hash: str
    ) -> NodeRelease:
        """Release the steps of an analysis request (or say this node holds none of them)."""
        if steps and spec.sgd_step() is not None:
            raise SpecError(
                "an sgd step is trained by FedAvg train messages (`oda run` sends them), not queries"
            )
        if not steps:
            release = self._release(request, spec.spec_hash(), (), Rho(0.0), None, "not_held")
            with self._lock:
                return self._audited(request, release, bundle_hash)

        state = _round_state(request, spec, steps)
        round_state = state if isinstance(state, RoundState) else None
        datasets = {spec.dataset_of(s) for s in steps}

        def check() -> None:
            empty = {name: LocalData(self.frame(name).iloc[0:0]) for name in datasets}
            dry_run(spec, steps, empty, round_state)

        def compute() -> tuple[StepRelease, ...]:
            for step in steps:
                if isinstance(step, ScoreStep):
                    self.write_scores(spec, step)
            data = {name: LocalData(self.frame(name)) for name in datasets}
            return tuple(release_steps(spec, steps, data, round_state))

        audited = self._debited(request, spec, steps, cost, bundle_hash, compute, check)
        log.info(
            "released %s (%s) to %s: %s", spec.name, request.request_id, request.requester, cost.describe()
        )
        return audited

    def _debited(
        self,
        request: AnalysisRequest,
        spec: AnalysisSpec,
        steps: list[Step],
        cost: Rho,
        bundle_hash: str,
        compute: Callable[[], tuple[StepRelease, ...]],
        check: Callable[[], None],
    ) -> NodeRelease:
        """Check, reserve, release, audit, commit: the only path by which anything leaves.

        The release is first run on an empty frame of the same columns (`check`), so an error in
        it refuses before any budget is reserved. The ledger lock is held only for the ledger and
        audit writes, never while the release is computed.
        """
        shares_by_population: dict[str, list[Rho]] = {}
        for step in steps:
            population = self.config.population_of(spec.dataset_of(step))
            shares_by_population.setdefault(population, []).append(spec.request_budget(step.id))
        costs = {p: rho_at_least(exact_total(parts)) for p, parts in shares_by_population.items()}
        caps = {p: Rho(self.config.policy.total_rho_cap[p]) for p in costs}
        datasets = sorted({spec.dataset_of(s) for s in steps})
        for dataset in datasets:
            self.loaded(dataset)  # a data error now refuses before any budget is reserved
        check()
        with self._lock:
            entries = self.ledger.reserve(
                request_id=request.request_id,
                costs=costs,
                caps=caps,
                spec_hash=spec.spec_hash(),
                since=self.period_start(),
            )
        try:
            released = compute()
            release = self._release(request, spec.spec_hash(), released, cost, entries[0], "released")
            release = replace(release, snapshots={name: self.snapshot(name).id for name in datasets})
            records = {name: self.snapshot(name).record() for name in datasets}
            with self._lock:
                audited = self._audited(request, release, bundle_hash, records)
                for entry in entries:
                    self.ledger.commit(entry)
            return audited
        except Exception as exc:
            with self._lock:
                for entry in entries:
                    self.ledger.fail(entry)
            raise InternalError(
                f"release of {spec.name!r} failed after its budget was reserved: {exc}"
            ) from exc

    def train(
        self, request: AnalysisRequest, weights: npt.NDArray[np.float64], bundle_hash: str = ""
    ) -> tuple[NodeRelease, npt.NDArray[np.float64], float]:
        """One FedAvg round of an sgd step: release the noisy gradient sum and row count, and
        return the release, the local model (one step on the noisy mean) and its FedAvg weight.

        Raises:
            SpecError, PolicyRefusal, BudgetExhausted, DataError: refusals; nothing is released.
        """
        try:
            request.check()
            spec, steps, cost = self._admit(request)
            step = spec.sgd_step()
            state = _round_state(request, spec, steps)
            if step is None or not steps or not isinstance(state, TrainState):
                raise SpecError("a train message must carry an sgd analysis on a dataset this node holds")
            if self.config.policy.approval == "manual":
                raise PolicyRefusal(
                    "FedAvg rounds cannot wait for a person: this node's policy.approval is manual"
                )
            return self._train(request, spec, step, cost, weights, bundle_hash)
        except Exception as exc:
            self.refuse(request, bundle_hash, exc)
            raise

    def _train(
        self,
        request: AnalysisRequest,
        spec: AnalysisSpec,
        step: SgdStep,
        cost: Rho,
        weights: npt.NDArray[np.float64],
        bundle_hash: str,
    ) -> tuple[NodeRelease, npt.NDArray[np.float64], float]:
        expected = n_weights(step.model, step.hidden)
        if weights.shape != (expected,) or not np.all(np.isfinite(weights)) or np.abs(weights).max() > 1e4:
            raise SpecError(f"the weights sent are not {expected} finite numbers of at most 1e4")
        unit = spec.unit_of(step).to_unit()
        local_models: list[tuple[npt.NDArray[np.float64], float]] = []

        def check() -> None:
            empty = LocalData(self.frame(spec.dataset_of(step)).iloc[0:0])
            design(step.model, empty.frame.loc[empty.keep(unit)])

        def compute() -> tuple[StepRelease, ...]:
            local = LocalData(self.frame(spec.dataset_of(step)))
            x, y = design(step.model, local.frame.loc[local.keep(unit)])
            gradient, unit_value, count = release_gradient(
                weights, x, y, step.hidden, step.clip, unit.max_rows, cost
            )
            local_models.append(local_update(weights, gradient, unit_value, count, step.learning_rate))
            measurements = (
                measurement_release("gradient", unit_value, gradient),
                measurement_release("count", 1.0, count),
            )
            return (StepRelease(step.id, step.kind, "hidden", measurements),)

        audited = self._debited(request, spec, [step], cost, bundle_hash, compute, check)
        log.info(
            "trained %s (%s) for %s: %s", spec.name, request.request_id, request.requester, cost.describe()
        )
        updated, rows = local_models[0]
        return audited, updated, rows

    def scores_path(self, spec: AnalysisSpec, step: ScoreStep) -> Path:
        return Path(self.config.state_dir) / "scores" / f"{spec.name}.{step.id}.parquet"

    def write_scores(self, spec: AnalysisSpec, step: ScoreStep) -> Path:
        """Score every record of the step's dataset into a local Parquet file (identifier, score).

        The file stays here: it is never part of a release. Written whole, then renamed, so a
        reader never sees half of it.
        """
        dataset = spec.dataset_of(step)
        frame = self.frame(dataset)
        identifier = self.config.datasets[dataset].identifier
        scores = mean_response(step.model, encode(step.model, frame), np.asarray(step.coefficients))
        path = self.scores_path(spec, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pd.DataFrame({identifier: frame[identifier].to_numpy(), "score": scores}).to_parquet(tmp, index=False)
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
    ) -> NodeRelease:
        """Write the release's audit entry, then stamp the release with the new chain head."""
        entry = self.audit.append(
            request_id=request.request_id,
            requester=request.requester,
            spec_hash=release.spec_hash,
            bundle_hash=bundle_hash,
            decision=release.status,
            cost_rho=release.cost_rho,
            payload=release.to_json().encode(),
            data=data,
        )
        return replace(release, audit_seq=entry.seq, audit_head=entry.hash)

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
