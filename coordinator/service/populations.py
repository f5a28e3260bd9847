"""Federation-wide accounting: the privacy loss one resident may bear across agencies.

The same resident can appear in several agencies' data, and one pooled query spends at each of
them; under zCDP those costs add up for that person. For each population declared in
`coordinator.yaml` (`populations:`, its datasets and the partners that may hold each), a run may
cost one of its residents

    sum over the population's datasets d:  (partners that may hold d) x (rho the run spends on d)

as each holder debits its planned rho. The cost is shown before a run (`POST /cost`, `oda runs`
cost preview), charged when the run is queued, and refused (`BudgetExhausted`, nothing queued
or sent) when it would take the population over its `max_rho`. When the run ends the charge is
lowered to what those partners actually debited (`RunStore.set_state`).
"""

from __future__ import annotations

import json
import time

from coordinator.deploy.config import PopulationPolicy
from coordinator.service.store import PopulationChargeRow

__all__ = ["charges", "preview", "resident_cost"]


def resident_cost(planned: dict[str, dict[str, float]], policy: PopulationPolicy) -> float:
    """What a run planned as analysis -> dataset -> rho may cost one resident of `policy`'s
    population, over every partner that may hold them."""
    return sum(
        rho * len(policy.datasets[dataset])
        for per in planned.values()
        for dataset, rho in per.items()
        if dataset in policy.datasets
    )


def charges(
    run_id: str, planned: dict[str, dict[str, float]], populations: dict[str, PopulationPolicy]
) -> list[PopulationChargeRow]:
    """The charge of a run to each population it touches."""
    now = time.time()
    return [
        PopulationChargeRow(
            run_id=run_id,
            population=name,
            rho=cost,
            holders_json=json.dumps(policy.holders()),
            settled=False,
            at=now,
        )
        for name, policy in sorted(populations.items())
        if (cost := resident_cost(planned, policy)) > 0
    ]


def preview(
    planned: dict[str, dict[str, float]], populations: dict[str, PopulationPolicy], spent: dict[str, float]
) -> dict[str, dict[str, object]]:
    """For each population a run touches: its cost to one resident, what is spent, the cap, and
    whether the run would be refused."""
    out: dict[str, dict[str, object]] = {}
    for name, policy in sorted(populations.items()):
        cost = resident_cost(planned, policy)
        if cost <= 0:
            continue
        already = spent.get(name, 0.0)
        out[name] = {
            "per_resident_rho": round(cost, 12),
            "spent_rho": round(already, 12),
            "cap_rho": policy.max_rho,
            "after_rho": round(already + cost, 12),
            "would_exceed": already + cost > policy.max_rho + 1e-12,
            "holders": policy.holders(),
        }
    return out
