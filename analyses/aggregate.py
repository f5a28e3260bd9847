"""The aggregate step, as the coordinator runs it: node releases in, result tables out.

Pure post-processing of DP releases: no budget is spent here. Each step publishes its own
tables (`StepBase.tables`): pooled over partners (`combine: pool`), one block per partner
(`by_partner`), and with `join`, steps on different datasets (held by different partners)
are pooled each, then joined on their shared public key columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pandas as pd

from analyses.reply import NodeRelease, StepRelease
from analyses.spec import AnalysisSpec
from analyses.step import PartnerRelease, StepBase, check_lengths
from analyses.tables import Publication, ResultTable

__all__ = ["combine", "publication_of", "withhold_own_cells"]


def publication_of(
    spec: AnalysisSpec, node_floors: Sequence[int], step: StepBase | None = None
) -> Publication:
    """The rules published cells follow: the spec's disclosure settings, raised to every
    contributing node's own floor (`policy.min_cell`), which no spec can lower: under `open` it
    is a minimum noisy count, under `tre` and `custom` also a least people threshold. With
    `step`, a person's rows are that step's privacy unit's (a step may set its own)."""
    disclosure = spec.disclosure
    publication = Publication(
        min_cell=disclosure.min_cell,
        round_to=disclosure.round_to,
        threshold=disclosure.people_threshold(),
        max_rows=(spec.unit_of(step) if step is not None else spec.privacy.unit).max_rows,
        false_publication=disclosure.false_publication,
        non_negative=disclosure.clamps(),
        dominance=disclosure.dominates(),
    )
    for floor in node_floors:
        publication = publication.with_floor(floor)
    return publication


def withhold_own_cells(spec: AnalysisSpec, step: StepBase, release: StepRelease, floor: int) -> StepRelease:
    """A node's release of `step` with the cells its own rules suppress withheld, for a
    `by_partner` analysis, whose table shows each partner's cells as they are.

    The node publishes its own release exactly as the coordinator would (the spec's profile
    raised to the node's floor, `policy.min_cell`, which no spec lowers), and every cell that
    comes out suppressed leaves as 0 in every measurement, listed in `withheld` with its rule.
    The decision reads only the node's noisy release and public bounds: no budget. Pooled and
    joined analyses are left to the coordinator, which applies every node's floor to the
    pooled cells (a partner's cells are not published there on their own).
    """
    if spec.combine != "by_partner" or step.flow != "once":
        return release
    publication = publication_of(spec, [floor], step)
    outcomes = step.outcomes(release, publication)
    if not outcomes:
        return release
    rows = [i for i, o in enumerate(outcomes) if o.startswith("suppressed:")]
    if not rows:
        return release
    per_row = step.cells() // len(outcomes)
    zero = {j for i in rows for j in range(i * per_row, (i + 1) * per_row)}
    measurements = tuple(
        replace(m, values=tuple(0 if j in zero else v for j, v in enumerate(m.values)))
        for m in release.measurements
    )
    return replace(release, measurements=measurements, withheld=tuple((i, outcomes[i]) for i in rows))


def combine(spec: AnalysisSpec, releases: Sequence[NodeRelease]) -> list[ResultTable]:
    """Assemble the published tables of `spec` from the nodes' releases.

    Raises:
        ProtocolError: releases do not match the spec (wrong shapes or units).
    """
    released = [r for r in releases if r.status == "released"]
    floors = [r.min_cell for r in released]
    tables: list[ResultTable] = []
    step_frames: list[pd.DataFrame] = []
    for step in spec.steps:
        parts = [
            PartnerRelease(r.partner, s, r.min_cell)
            for r in released
            for s in r.steps
            if s.step_id == step.id
        ]
        check_lengths(step, [p.release for p in parts])
        if not parts:
            tables.append(
                ResultTable(step.id, step.key_frame().iloc[0:0], ("no partner released this step",))
            )
            continue
        published = step.tables(parts, spec.combine, publication_of(spec, floors, step))
        tables += published
        if spec.combine == "join" and len(published) == 1:
            frame = published[0].frame
            step_frames.append(
                frame.rename(
                    columns={c: f"{step.id}_{c}" for c in frame.columns if c not in step.key_columns()}
                )
            )
    if spec.combine == "join" and len(step_frames) > 1:
        shared = sorted(set.intersection(*(set(s.key_columns()) for s in spec.steps)))
        joined = step_frames[0]
        for other in step_frames[1:]:
            joined = joined.merge(other, on=shared, how="outer")
        tables.append(ResultTable(spec.name, joined, (f"steps joined on {', '.join(shared)}",)))
    return tables
