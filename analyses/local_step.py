"""The local step, as a node runs it: a spec's steps over its prepared data, out as releases.

Each step computes its exact vectors (`StepBase.exact`) on the rows that survive truncation to
its privacy unit; here the step's budget is shared among its measurements (exactly, by their
weights) and each vector is released by OpenDP's integer Gaussian at its sensitivity. Noise for
one step is drawn on worker threads while the next step's vectors are computed. `dry_run`
rehearses all of it on empty frames, without noise, so a release that would fail does so
before any budget is reserved.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from analyses.aggregate import withhold_own_cells
from analyses.local_data import Exact, LocalData
from analyses.reply import MeasurementRelease, StepRelease
from analyses.spec import AnalysisSpec
from analyses.step import RoundLike, StepBase
from privacy.budget import Rho, exact_total, rho_at_least, shares
from privacy.mechanisms import NoisyVector, calibrate_scale, integer_gaussian

__all__ = ["Planned", "dry_run", "measurement_release", "plan_releases", "planned_cost", "release_steps"]

#: Noise for different measurements is drawn on this many threads (OpenDP releases the GIL).
NOISE_THREADS = max(1, min(4, os.cpu_count() or 1))


class Planned(NamedTuple):
    """One measurement of one step, computed exactly and waiting for its noise."""

    step: StepBase
    name: str
    exact: Exact
    budget: Rho


def plan_releases(
    spec: AnalysisSpec,
    steps: Sequence[StepBase],
    data: Mapping[str, LocalData],
    state: RoundLike | None = None,
) -> Iterator[Planned]:
    """The exact vectors `steps` will release, one step at a time, each with its sensitivity and
    its share of the request's budget."""
    for step in steps:
        exact = step.exact(data[spec.dataset_of(step)], spec.unit_of(step).to_unit(), state)
        budgets = shares(spec.request_budget(step.id), step.measurement_weights())
        for (name, part), budget in zip(exact.items(), budgets, strict=True):
            yield Planned(step, name, part, budget)


def dry_run(
    spec: AnalysisSpec,
    steps: Sequence[StepBase],
    empty: Mapping[str, LocalData],
    state: RoundLike | None = None,
) -> None:
    """Rehearse a release on empty frames of the node's columns: every exact computation, and
    every noise calibration (scale and sensitivity within their limits), without noise.

    Raises:
        SpecError: the release would fail (so it fails before any budget is reserved).
    """
    for planned in plan_releases(spec, steps, empty, state):
        calibrate_scale(planned.exact.sensitivity, planned.budget)


def release_steps(
    spec: AnalysisSpec,
    steps: Sequence[StepBase],
    data: Mapping[str, LocalData],
    state: RoundLike | None = None,
    floor: int = 0,
) -> list[StepRelease]:
    """Release `steps` of `spec`, each on the prepared data of its dataset: every measurement
    one OpenDP integer-Gaussian release; of a `by_partner` analysis, with the cells the node's
    own rules (its `floor`, `policy.min_cell`) suppress withheld (`withhold_own_cells`)."""
    planned: list[Planned] = []
    noisy: list[Future[NoisyVector]] = []
    with ThreadPoolExecutor(max_workers=NOISE_THREADS, thread_name_prefix="oda-noise") as pool:
        for p in plan_releases(spec, steps, data, state):
            planned.append(p)
            noisy.append(pool.submit(integer_gaussian, p.exact.vector, p.exact.sensitivity, p.budget))
    out: dict[str, list[MeasurementRelease]] = {}
    for p, future in zip(planned, noisy, strict=True):
        release = measurement_release(p.name, p.exact.unit_value, future.result(), p.exact.rounding)
        out.setdefault(p.step.id, []).append(release)
    by_id = {s.id: s for s in steps}
    return [
        withhold_own_cells(
            spec, by_id[step_id], StepRelease(step_id, by_id[step_id].kind, "hidden", tuple(ms)), floor
        )
        for step_id, ms in out.items()
    ]


def measurement_release(
    name: str, unit_value: float, noisy: NoisyVector, rounding: float = 0.0
) -> MeasurementRelease:
    """The wire form of one OpenDP release."""
    return MeasurementRelease(
        name=name,
        values=noisy.values,
        mechanism=noisy.mechanism,
        scale=noisy.scale,
        sensitivity=noisy.sensitivity,
        rho=noisy.cost.value,
        accuracy95=noisy.accuracy95,
        unit_value=unit_value,
        rounding=rounding,
    )


def planned_cost(spec: AnalysisSpec, steps: Sequence[StepBase]) -> Rho:
    """What running `steps` will debit: the sum of their budget shares (zCDP adds up), exactly,
    as the smallest float not below it."""
    return rho_at_least(exact_total(spec.request_budget(step.id) for step in steps))
