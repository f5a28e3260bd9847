"""The aggregate step, as the coordinator runs it: node releases in, result tables out.

Pure post-processing of DP releases: no budget is spent here. Each step publishes its own
tables (`StepBase.tables`): pooled over partners (`combine: pool`), one block per partner
(`by_partner`), and with `join`, steps on different datasets (held by different partners)
are pooled each, then joined on their shared public key columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analyses.reply import NodeRelease
from analyses.spec import AnalysisSpec
from analyses.step import PartnerRelease, check_lengths
from analyses.tables import Publication, ResultTable

__all__ = ["combine", "publication_of"]


def publication_of(spec: AnalysisSpec, node_floors: Sequence[int]) -> Publication:
    """The rules published cells follow: the spec's disclosure settings, raised to every
    contributing node's own floor (`policy.min_cell`), which no spec can lower: under `open` it
    is a minimum noisy count, under `tre` and `custom` also a least people threshold."""
    disclosure = spec.disclosure
    publication = Publication(
        min_cell=disclosure.min_cell,
        round_to=disclosure.round_to,
        threshold=disclosure.people_threshold(),
        max_rows=spec.privacy.unit.max_rows,
        false_publication=disclosure.false_publication,
        non_negative=disclosure.clamps(),
    )
    for floor in node_floors:
        publication = publication.with_floor(floor)
    return publication


def combine(spec: AnalysisSpec, releases: Sequence[NodeRelease]) -> list[ResultTable]:
    """Assemble the published tables of `spec` from the nodes' releases.

    Raises:
        ProtocolError: releases do not match the spec (wrong shapes or units).
    """
    released = [r for r in releases if r.status == "released"]
    publication = publication_of(spec, [r.min_cell for r in released])
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
        published = step.tables(parts, spec.combine, publication)
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
