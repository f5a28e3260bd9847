"""Linkage: how many residents several agencies know at once, by public area, without any
identity leaving an agency (`kind: overlap`).

The step runs in phases the coordinator drives (`flow = "ring"`, `coordinator.run.linkage`):

- `blind`: each agency releases a DP count of its own distinct residents per area (OpenDP's
  integer Gaussian, sensitivity 1: each resident is one point in one area per agency; a quarter
  of the step's budget) and its blinded list (`privacy.psi`), and debits the step's whole
  budget, which also covers the combination counts below (its residents are in them);
- `hop` 1..n-1: each agency blinds another agency's list with its own secret; the last hop
  seals each list to the counting agency;
- `count`: the counting agency opens the lists, counts per area the residents known to exactly
  each set of two or more agencies, and releases those counts under OpenDP's integer Gaussian
  (sensitivity floor(n/2): `privacy.psi.sensitivity_cells`), from the other three quarters of
  the budget every agency debited at `blind`. Nothing else it learns leaves it.

The coordinator publishes, per area, residents known to every agency of each combination asked
for (pairs, all of them, or named sets) and residents known to 1, 2 and 3 or more agencies
(from the agencies' own counts and the combination counts: post-processing, no budget), each
with its 95% accuracy and disclosure check. This module is the step's contract (spec model,
round state, tables); the node's phases are `node_agent.linkage`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from analyses.keys import KeySpec
from analyses.local_data import Exact, LocalData
from analyses.reply import StepRelease
from analyses.step import DatasetSchema, Flow, PartnerRelease, RoundLike, StepBase
from analyses.tables import Publication, ResultTable, disclose
from privacy.accuracy import Z95, discrete_gaussian_variance, integer_noise_accuracy95
from privacy.errors import InternalError, ProtocolError, SpecError
from privacy.psi import MAX_PARTIES, combination_masks
from privacy.unit import PrivacyUnit

__all__ = ["MAX_POINTS", "PARTNER", "STEPS", "OverlapStep", "RingState", "read_relay"]

#: Most points in one agency's list (areas x max_per_area): its base64 in a node's reply stays
#: under the Fleet proxy's 16 MB body limit (`coordinator.deploy.proxy.MAX_BODY_BYTES`).
MAX_POINTS = 350_000
#: What a partner name looks like (node.yaml's `partner`).
PARTNER = r"^[A-Za-z0-9_.-]{1,80}$"


class RingState(RoundLike):
    """What the coordinator sends with each phase of an overlap step: the phase, the hop, the
    agencies in the ring and the one that counts. Data only: the node checks it against what it
    kept from earlier phases."""

    run: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the overlap run, chosen by the coordinator"
    )
    phase: Literal["blind", "hop", "count"]
    hop: int = Field(default=0, ge=0, le=MAX_PARTIES - 1)
    parties: tuple[str, ...] = Field(default=(), max_length=MAX_PARTIES)
    counter: str = Field(default="", max_length=80)

    @model_validator(mode="after")
    def _fits(self) -> RingState:
        if self.phase == "blind":
            if self.parties or self.counter or self.hop:
                raise ValueError("the blind phase names no agencies, counter or hop")
            return self
        if any(not re.fullmatch(PARTNER, p) for p in self.parties):
            raise ValueError("agency names are 1 to 80 letters, digits or _.- characters")
        if list(self.parties) != sorted(set(self.parties)) or len(self.parties) < 2:
            raise ValueError("the agencies are two or more distinct names, in order")
        if self.counter not in self.parties:
            raise ValueError("the counting agency must be one of the agencies")
        if self.phase == "hop" and not 1 <= self.hop < len(self.parties):
            raise ValueError(f"hop {self.hop} is outside 1..{len(self.parties) - 1}")
        if self.phase == "count" and self.hop:
            raise ValueError("the count phase has no hop")
        return self

    def request_id(self) -> str:
        if self.phase == "hop":
            return f"{self.run}-hop{self.hop}"
        return f"{self.run}-{self.phase}"

    def opens_run(self) -> bool:
        return self.phase == "blind"

    def first_request_id(self) -> str:
        return f"{self.run}-blind"

    def continues_approved(self) -> bool:
        """Later phases of an approved run go on without a person: they release nothing of this
        node's data that its approved blind phase did not pay for."""
        return self.phase != "blind"


Combination = Literal["pairs", "all"] | tuple[Annotated[str, Field(pattern=PARTNER)], ...]


class OverlapStep(StepBase):
    """Residents known to several agencies at once, by public area (see the module docstring)."""

    kind: Literal["overlap"]
    area: KeySpec = Field(description="the public area key (an LSOA or ward key set)")
    max_per_area: int = Field(
        ge=1,
        le=200_000,
        description="the most residents one agency may hold in one area: every area's list is "
        "padded to this public size (an area over it is refused, never cut)",
    )
    combinations: tuple[Combination, ...] = Field(
        default=("pairs", "all"),
        min_length=1,
        max_length=64,
        description="which sets of agencies to count residents known to all of: 'pairs', 'all', "
        "or lists of partner names",
    )
    counted_by: str | None = Field(
        default=None,
        pattern=PARTNER,
        description="the partner that counts (learns the exact per-area combination sizes, "
        "releases only DP counts); default: the first agency by name",
    )

    flow: ClassVar[Flow] = "ring"
    exclusive: ClassVar[bool] = True

    @model_validator(mode="after")
    def _shape(self) -> OverlapStep:
        if self.by:
            raise ValueError("an overlap step is keyed by its 'area' only, not 'by'")
        if self.area.derive is not None:
            raise ValueError("the overlap area must be a published list or key set, not derived")
        for combination in self.combinations:
            if isinstance(combination, tuple) and (
                len(combination) < 2 or len(set(combination)) != len(combination)
            ):
                raise ValueError("a named combination lists two or more distinct partners")
        points = len(self.area.keys()) * self.max_per_area
        if points > MAX_POINTS:
            raise ValueError(
                f"{len(self.area.keys()):,} areas x max_per_area {self.max_per_area:,} is {points:,} points "
                f"per agency, over {MAX_POINTS:,} (a node's reply carries its list, and the Fleet proxy "
                "takes at most 16 MB): use fewer areas or a smaller max_per_area"
            )
        return self

    # -- shape ------------------------------------------------------------------------------

    def published_keys(self) -> tuple[KeySpec, ...]:
        return (self.area,)

    def key_columns(self) -> tuple[str, ...]:
        return (self.area.output,)

    def groups(self) -> int:
        return len(self.area.keys())

    def measurements(self) -> tuple[str, ...]:
        return ("residents", "combinations")

    def measurement_weights(self) -> tuple[float, ...]:
        """A quarter of the budget for each agency's own counts (they only feed "known to 1"),
        three quarters for the combination counts every other figure comes from."""
        return (1.0, 3.0)

    def measurement_cells(self, name: str) -> int | None:
        """The combination counts have one cell per area and combination of the agencies that
        took part, which the tables check against them."""
        return None if name == "combinations" else self.groups()

    def problems(self, schema: DatasetSchema, where: str) -> list[str]:
        if self.area.column not in schema:
            return [f"{where}: unknown column {self.area.column!r}; known: {', '.join(sorted(schema))}"]
        return []

    def round_state(self, state: Mapping[str, object] | None, request_id: str) -> RingState:
        """Raises: SpecError for a missing or malformed phase state."""
        if state is None:
            raise SpecError(
                f"overlap step {self.id!r} runs in phases: `oda run` sends them (its state is missing)"
            )
        try:
            return RingState.model_validate(dict(state))
        except ValueError as exc:
            raise SpecError(f"malformed overlap state: {exc}") from exc

    def exact(self, data: LocalData, unit: PrivacyUnit, state: RoundLike | None) -> dict[str, Exact]:
        raise InternalError("an overlap step is released by the node's linkage phases (node_agent.linkage)")

    def summary(self) -> str:
        return (
            f"overlap of residents with other agencies by {self.area.output} ({self.groups():,} areas, "
            f"lists padded to {self.max_per_area:,} per area; only DP counts are released)"
        )

    # -- aggregate step -----------------------------------------------------------------------

    def wanted(self, parties: Sequence[str]) -> list[tuple[str, ...]]:
        """The combinations to publish, as sorted partner names (those naming a partner that
        took no part are left out)."""
        order = sorted(parties)
        out: list[tuple[str, ...]] = []
        for combination in self.combinations:
            if combination == "pairs":
                out += list(itertools.combinations(order, 2))
            elif combination == "all":
                out.append(tuple(order))
            elif set(combination) <= set(order):
                out.append(tuple(sorted(combination)))
        return list(dict.fromkeys(out))

    def tables(
        self, parts: Sequence[PartnerRelease], combine: str, publication: Publication
    ) -> list[ResultTable]:
        """Residents known to every agency of each combination, and to 1, 2 and 3+ agencies,
        by area, from the agencies' blind releases and the counter's count release.

        Raises:
            ProtocolError: releases that do not fit together (no count, wrong shapes).
        """
        own = {p.partner: p.release for p in parts if _has(p.release, "residents")}
        counted = [p for p in parts if _has(p.release, "combinations")]
        if len(counted) != 1 or len(own) < 2:
            raise ProtocolError(
                f"step {self.id!r}: an overlap needs the blind releases of two or more agencies and "
                f"one count release (got {len(own)} and {len(counted)})"
            )
        parties = sorted(own)
        masks = combination_masks(len(parties))
        areas = self.groups()
        count = counted[0].release.measurement("combinations")
        if len(count.values) != areas * len(masks):
            raise ProtocolError(
                f"step {self.id!r}: the count release has {len(count.values)} cells; {areas} areas of "
                f"{len(masks)} combinations of {len(parties)} agencies need {areas * len(masks)}"
            )
        for partner, release in own.items():
            if len(release.measurement("residents").values) != areas:
                raise ProtocolError(f"step {self.id!r}: {partner}'s resident counts are not one per area")
        noisy = np.asarray(count.values, dtype=float).reshape(areas, len(masks))
        scale = count.scale
        publication = replace(publication, max_rows=1)  # a resident is one point per agency
        notes = (
            f"agencies: {', '.join(parties)}; counted by {counted[0].partner}, which learns the exact "
            "per-area sizes of every combination and releases only these DP counts",
        )
        frames = []
        for combination in self.wanted(parties):
            bits = sum(1 << parties.index(p) for p in combination)
            columns = [j for j, m in enumerate(masks) if m & bits == bits]
            frames.append(
                self._block(
                    "+".join(combination),
                    noisy[:, columns].sum(axis=1),
                    integer_noise_accuracy95([scale] * len(columns)),
                    math.sqrt(len(columns) * discrete_gaussian_variance(scale)),
                    publication,
                )
            )
        combos = pd.concat(frames, ignore_index=True)
        known = self._known_to(parties, own, noisy, masks, scale, publication)
        return [
            ResultTable(self.id, combos, notes),
            ResultTable(f"{self.id}_known_to", known, notes),
        ]

    def _known_to(
        self,
        parties: Sequence[str],
        own: Mapping[str, StepRelease],
        noisy: np.ndarray,
        masks: Sequence[int],
        scale: float,
        publication: Publication,
    ) -> pd.DataFrame:
        """Residents known to exactly 1, exactly 2, and 3 or more agencies, per area."""
        n = len(parties)
        residents = [own[p].measurement("residents") for p in parties]
        total = np.sum([np.asarray(m.values, dtype=float) for m in residents], axis=0)
        own_variance = sum(discrete_gaussian_variance(m.scale) for m in residents)
        mask_variance = discrete_gaussian_variance(scale)
        by_k = {k: [j for j, m in enumerate(masks) if m.bit_count() == k] for k in range(2, n + 1)}
        # sum of own counts = k1 + 2 k2 + 3 k3 + ...: k1 is what is left (normal approximation
        # of the sum of independent discrete Gaussians for its accuracy)
        single = total - sum(k * noisy[:, cols].sum(axis=1) for k, cols in by_k.items())
        single_variance = own_variance + sum(k * k * len(cols) * mask_variance for k, cols in by_k.items())
        blocks = [
            self._block(
                "1",
                single,
                float(math.ceil(Z95 * math.sqrt(single_variance) - 0.5)),
                math.sqrt(single_variance),
                publication,
            )
        ]
        buckets = [("2", [2])] + ([("3+", list(range(3, n + 1)))] if n >= 3 else [])
        for label, ks in buckets:
            cols = [j for k in ks for j in by_k[k]]
            blocks.append(
                self._block(
                    label,
                    noisy[:, cols].sum(axis=1),
                    integer_noise_accuracy95([scale] * len(cols)),
                    math.sqrt(len(cols) * mask_variance),
                    publication,
                )
            )
        frame = pd.concat(blocks, ignore_index=True)
        return frame.rename(columns={"agencies": "known_to_agencies"})

    def _block(
        self, label: str, values: np.ndarray, accuracy: float, sd: float, publication: Publication
    ) -> pd.DataFrame:
        frame = self.key_frame()
        frame.insert(len(frame.columns), "agencies", label)
        frame["count"] = values
        frame["count_accuracy95"] = accuracy
        disclose(frame, "count", ["count"], publication, sd, clamp_cols=("count",))
        return frame


def read_relay(text: str, what: str) -> dict[str, Any]:
    """The JSON object an overlap relay holds, read the same way by a node (what the coordinator
    passed on) and by the coordinator (what a node released); `what` names it in errors.

    Raises:
        ProtocolError: not JSON, nested too deeply, or not an object.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not readable: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} is not an object")
    return data


def _has(release: StepRelease, name: str) -> bool:
    return any(m.name == name for m in release.measurements)


STEPS = (OverlapStep,)
