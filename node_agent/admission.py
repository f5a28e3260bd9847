"""A request's admission at a node: every check short of spending, in the order of trust.

The request's fields were bounded when it was read; here the node parses the spec itself, holds
it against its local policy and data catalogue, checks the per-analysis cap and, for a model run,
that every round is affordable before the first, and validates the round state. The result is
one `Admission` that running, training, filing for approval and refusing all reuse: the spec is
parsed once per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from analyses.catalog import check_steps
from analyses.local_step import planned_cost
from analyses.request import AnalysisRequest
from analyses.spec import AnalysisSpec, load_spec
from analyses.step import RoundLike, StepBase
from node_agent.config import NodeConfig
from node_agent.datasets import Datasets
from node_agent.ledger import Ledger
from privacy.budget import Rho, fits
from privacy.errors import BudgetExhausted, PolicyRefusal, SpecError

__all__ = ["Admission", "admit"]


@dataclass(frozen=True)
class Admission:
    """A request this node may run: its spec, the steps it holds, their cost, the round."""

    request: AnalysisRequest
    spec: AnalysisSpec
    #: The steps whose dataset this node holds (none: it answers "not held").
    steps: tuple[StepBase, ...]
    #: What this request debits.
    cost: Rho
    #: The validated round state, for a step that runs in rounds.
    state: RoundLike | None

    @property
    def rounds_step(self) -> StepBase | None:
        """The step that runs in rounds, when this node holds it."""
        return self.spec.rounds_step() if self.steps else None


def admit(
    config: NodeConfig, datasets: Datasets, ledger: Ledger, since: float, request: AnalysisRequest
) -> Admission:
    """Admit `request`, or refuse it saying what and how to fix it.

    `since` is the start of the budget's renewal period (a Unix time).

    Raises:
        SpecError: the spec is invalid or does not fit the data.
        PolicyRefusal: local policy forbids it.
        BudgetExhausted: a model run cannot afford all of its rounds.
    """
    spec = load_spec(request.spec_yaml, f"request {request.request_id}").spec
    policy = config.policy
    held = {spec.dataset_of(s) for s in spec.steps} & set(config.datasets)
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
    steps = tuple(check_steps(spec, datasets.schemas()))
    for step in steps:
        dataset = config.datasets[spec.dataset_of(step)]
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
    cost = planned_cost(spec, list(steps))
    rounds = spec.rounds_step() if steps else None
    whole = spec.step_budget(rounds.id) if rounds is not None else cost
    if not fits(whole, [], Rho(policy.max_rho_per_analysis)):
        raise PolicyRefusal(
            f"analysis {spec.name!r} asks {whole.describe()} of this node, over its "
            f"policy.max_rho_per_analysis of rho {policy.max_rho_per_analysis}: lower the "
            "analysis budget or ask the partner to raise the limit"
        )
    state = _state(request, spec, steps, rounds)
    if rounds is not None and state is not None:
        if request.request_id != state.request_id():
            raise SpecError(f"a request of model run {state.run} must have id {state.request_id()!r}")
        if not state.opens_run():
            opened = state.first_request_id()
            if not ledger.released(opened, spec.hash):
                first = "blind phase of overlap" if rounds.flow == "ring" else "first round of model"
                raise PolicyRefusal(
                    f"this node did not release the {first} run {state.run} ({opened}), "
                    "so it takes no part in the run's later requests; nothing was spent"
                )
        else:
            population = config.population_of(spec.dataset_of(rounds))
            cap = Fraction(policy.total_rho_cap[population])
            spent = ledger.spent_exactly(population, since)
            if spent + Fraction(whole.value) > cap:
                left = Rho(max(float(cap - spent), 0.0))
                raise BudgetExhausted(
                    f"{rounds.kind} {spec.name!r} needs {whole.describe()} over its {rounds.requests()} "
                    f"releases; population {population!r} has {left.describe()} left: refused before "
                    "the first round, nothing was spent"
                )
    return Admission(request, spec, steps, cost, state)


def _state(
    request: AnalysisRequest, spec: AnalysisSpec, steps: tuple[StepBase, ...], rounds: StepBase | None
) -> RoundLike | None:
    """The request's validated round state (only a held step that runs in rounds takes one).

    Raises:
        SpecError: a state missing, malformed, or sent with an analysis that has no rounds; a
            relay sent with an analysis that has no overlap step.
    """
    phased = spec.rounds_step()
    if request.relay is not None and (phased is None or phased.flow != "ring"):
        raise SpecError("the request carries a relay, but the analysis has no overlap step to take one")
    if rounds is not None:
        return rounds.round_state(request.state, request.request_id)
    if request.state is not None and spec.rounds_step() is None:
        raise SpecError("the request carries a round state, but the analysis has no model step")
    return None
