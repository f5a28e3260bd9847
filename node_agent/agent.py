"""The node agent's core: one analysis request in, one release (or a typed refusal) out.

No Flower here: `node_agent.flower_node` feeds requests in and sends the result back. The order
of checks is the order of trust: protocol, the spec parsed by this node, the data catalogue,
local policy, then the budget, reserved in the ledger before a single row is read.
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import pandas as pd

from analyses.catalog import DatasetSchema, check_steps
from analyses.documents import parse_document
from analyses.local_step import LocalData, planned_cost, release_steps
from analyses.release import PROTOCOL_VERSIONS, AnalysisRequest, NodeRelease, StepRelease
from analyses.spec import AnalysisSpec
from node_agent.config import NodeConfig
from node_agent.connectors import load_dataset
from node_agent.ledger import Ledger
from privacy.budget import DISPLAY_DELTA, Rho
from privacy.errors import InternalError, PolicyRefusal, SpecError

__all__ = ["NodeAgent", "node_version"]

log = logging.getLogger("oda.node")


def node_version() -> str:
    try:
        return version("oda-federated")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+source"


class NodeAgent:
    """A partner's node: its config, its data, its ledger."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.ledger = Ledger(Path(config.state_dir) / "ledger.sqlite")
        self._frames: dict[str, pd.DataFrame] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.ledger.close()

    def schemas(self) -> dict[str, DatasetSchema]:
        """Declared schemas of the datasets policy allows this node to analyse."""
        return {
            name: {col: spec.type for col, spec in ds.columns.items()}
            for name, ds in self.config.datasets.items()
            if name in self.config.policy.allowed_datasets
        }

    def frame(self, dataset: str) -> pd.DataFrame:
        """The dataset, loaded once and kept warm."""
        if dataset not in self._frames:
            self._frames[dataset] = load_dataset(
                Path(self.config.data_dir), dataset, self.config.datasets[dataset]
            )
        return self._frames[dataset]

    def warm_up(self) -> None:
        """Load every allowed dataset now, so the first request does not pay for it."""
        for name in self.config.policy.allowed_datasets:
            self.frame(name)

    def handle(self, request: AnalysisRequest) -> NodeRelease:
        """Run the local steps of a request and release them, or refuse.

        Raises:
            ProtocolError, SpecError, PolicyRefusal, BudgetExhausted, DataError: refusals,
                each with a message that says what and how to fix it. Nothing is released.
        """
        if request.protocol not in PROTOCOL_VERSIONS:
            raise SpecError(
                f"protocol {request.protocol} is not supported; this node speaks {list(PROTOCOL_VERSIONS)}"
            )
        spec = parse_document(request.spec_yaml, AnalysisSpec, source=f"request {request.request_id}")
        policy = self.config.policy
        wanted = {spec.dataset_of(s) for s in spec.steps}
        declared_not_allowed = sorted((wanted & set(self.config.datasets)) - set(policy.allowed_datasets))
        if declared_not_allowed:
            raise PolicyRefusal(
                f"dataset {declared_not_allowed[0]!r} is not in this node's policy.allowed_datasets: "
                "the partner has not agreed to analyses of it"
            )
        steps = check_steps(spec, self.schemas())
        spec_hash = spec.spec_hash()
        if not steps:
            return self._release(request, spec_hash, (), Rho(0.0), None, "not_held")
        cost = planned_cost(spec, steps)
        if cost.value > policy.max_rho_per_analysis + 1e-12:
            raise PolicyRefusal(
                f"analysis {spec.name!r} asks {cost.describe()} of this node, over its "
                f"policy.max_rho_per_analysis of rho {policy.max_rho_per_analysis}: lower the "
                "analysis budget or ask the partner to raise the limit"
            )
        costs: dict[str, Rho] = {}
        for step in steps:
            population = self.config.population_of(spec.dataset_of(step))
            costs[population] = costs.get(population, Rho(0.0)) + spec.step_budget(step.id)
        caps = {p: Rho(policy.total_rho_cap[p]) for p in costs}
        with self._lock:
            for dataset in {spec.dataset_of(s) for s in steps}:
                self.frame(dataset)  # a data error now refuses before any budget is reserved
            entries = self.ledger.reserve(
                request_id=request.request_id, costs=costs, caps=caps, spec_hash=spec_hash
            )
            try:
                data = {name: LocalData(self.frame(name)) for name in {spec.dataset_of(s) for s in steps}}
                released = release_steps(spec, steps, data)
            except Exception as exc:
                for entry in entries:
                    self.ledger.fail(entry)
                raise InternalError(
                    f"release of {spec.name!r} failed after its budget was reserved: {exc}"
                ) from exc
            for entry in entries:
                self.ledger.commit(entry)
        log.info(
            "released %s (%s) to %s: %s", spec.name, request.request_id, request.requester, cost.describe()
        )
        return self._release(request, spec_hash, tuple(released), cost, entries[0], "released")

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
