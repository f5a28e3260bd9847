"""The contract every step kind meets: one pydantic model per kind, with its own meaning check,
local step, aggregate step and summary.

A step family is one module under `analyses/operators/` (counting, quantile, glm, sgd); the
registry there collects their models into the spec's discriminated union, so adding a kind is
adding a module. Everything else (the spec, the node's admission, the release path, the
coordinator's tables) calls the methods below and never asks which kind it holds.

- meaning: `problems(schema)` against the node's declared columns (structure was checked when
  the spec was loaded);
- local step: `exact(data, unit, state)`: the exact vectors a node releases, each with its L2
  sensitivity, before noise (`analyses.local_step` shares the budget and draws the noise);
- aggregate step: `tables(parts, combine, publication)`: the partners' releases in, tables out;
- summary: one line for the partner deciding on the request.

`flow` says how an analysis of this step runs: one request (`once`), rounds the coordinator
drives (`rounds`: round state in each request), Flower's FedAvg (`fedavg`), or the phases of
a linkage ring (`ring`: each phase's state and, per node, what other partners relayed).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import pandas as pd
from pydantic import Field

from analyses._model import Model
from analyses.keys import KeySpec
from analyses.local_data import Exact, LocalData
from analyses.reply import StepRelease
from analyses.tables import CHECK, Publication, Published, ResultTable, withhold
from privacy.errors import InternalError, ProtocolError, SpecError
from privacy.unit import MAX_ROWS_LIMIT, PrivacyUnit

__all__ = [
    "ColumnType",
    "DatasetSchema",
    "Flow",
    "PartnerRelease",
    "RoundLike",
    "StepBase",
    "UnitSpec",
    "check_lengths",
]

ColumnType = Literal["int", "float", "str", "datetime"]
#: A dataset's declared columns and their types, as a node's catalogue has them.
DatasetSchema = Mapping[str, ColumnType]
Flow = Literal["once", "rounds", "fedavg", "ring"]

NUMERIC = ("int", "float")


class UnitSpec(Model):
    """Who is protected: one identifier, at most `max_rows` rows each (enforced by truncation)."""

    identifier: str = Field(min_length=1, max_length=200)
    max_rows: int = Field(ge=1, le=MAX_ROWS_LIMIT)

    def to_unit(self) -> PrivacyUnit:
        return PrivacyUnit(self.identifier, self.max_rows)


class RoundLike(Model):
    """The validated round state of a step that runs in rounds."""

    run: str

    def request_id(self) -> str:
        """The only request id this state may travel under (one ledger entry per round)."""
        raise NotImplementedError

    def opens_run(self) -> bool:
        raise NotImplementedError

    def first_request_id(self) -> str:
        raise NotImplementedError

    def continues_approved(self) -> bool:
        """Whether this request goes on without a person's approval at a node whose policy asks
        for one (a later phase of a run whose first request was approved)."""
        return False


@dataclass(frozen=True)
class PartnerRelease:
    """One partner's release of one step, with that partner's own minimum cell."""

    partner: str
    release: StepRelease
    min_cell: int


class StepBase(Model):
    """What every step has, and the operations each kind implements."""

    kind: str
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    by: tuple[KeySpec, ...] = Field(default=(), max_length=8)
    dataset: str | None = Field(default=None, max_length=200, description="overrides the analysis dataset")
    weight: float = Field(default=1.0, gt=0, le=1000, description="share of the budget")
    unit: UnitSpec | None = Field(default=None, description="overrides the analysis privacy unit")

    #: How an analysis of this step runs (see the module docstring).
    flow: ClassVar[Flow] = "once"
    #: A step that must be the only one of its analysis (a model is fitted on its own).
    exclusive: ClassVar[bool] = False
    #: Whether the node keeps a local output of this step (scores), besides what it releases.
    keeps_local_output: ClassVar[bool] = False

    # -- shape ------------------------------------------------------------------------------

    def key_columns(self) -> tuple[str, ...]:
        """The key columns of the step's table."""
        return tuple(k.output for k in self.by)

    def groups(self) -> int:
        """Number of cells of the `by` keys alone."""
        return math.prod(len(k.keys()) for k in self.by)

    def cells(self) -> int:
        """Number of values each measurement of this step releases."""
        return self.groups()

    def measurements(self) -> tuple[str, ...]:
        """The names of the vectors one request releases, in order."""
        raise NotImplementedError

    def measurement_cells(self, name: str) -> int | None:
        """How many values measurement `name` has (None: the step's tables check it)."""
        return self.cells()

    def measurement_weights(self) -> tuple[float, ...]:
        """How a request's budget is shared among the step's measurements (equally by default)."""
        return (1.0,) * len(self.measurements())

    def requests(self) -> int:
        """How many releases a node makes for this step (one, but for models: every round)."""
        return 1

    def columns(self) -> tuple[str, ...]:
        """The value columns the step reads (its `by` keys aside)."""
        return ()

    def numeric_columns(self) -> tuple[str, ...]:
        """Of `columns()`, those that must be declared numeric."""
        return ()

    def key_frame(self) -> pd.DataFrame:
        """All public cells of the step, in canonical (row-major) order."""
        keys = self.published_keys()
        if not keys:
            return pd.DataFrame(index=range(1))
        combos = list(itertools.product(*(k.keys() for k in keys)))
        return pd.DataFrame(combos, columns=[k.output for k in keys])

    def published_keys(self) -> tuple[KeySpec, ...]:
        """The keys whose product is the step's cells."""
        return self.by

    # -- meaning ------------------------------------------------------------------------------

    def problems(self, schema: DatasetSchema, where: str) -> list[str]:
        """What does not fit the node's declared columns (`where` names the step in messages)."""
        problems: list[str] = []
        known = ", ".join(sorted(schema))
        for key in self.by:
            ctype = schema.get(key.column)
            if ctype is None:
                problems.append(f"{where}: unknown column {key.column!r}; known: {known}")
            elif key.derive in ("hour", "weekday", "month") and ctype != "datetime":
                problems.append(
                    f"{where}: derive {key.derive} needs a datetime column, {key.column!r} is {ctype}"
                )
            elif key.derive == "band" and ctype not in NUMERIC:
                problems.append(f"{where}: derive band needs a numeric column, {key.column!r} is {ctype}")
        for name in self.columns():
            ctype = schema.get(name)
            if ctype is None:
                problems.append(f"{where}: unknown column {name!r}; known: {known}")
            elif name in self.numeric_columns() and ctype not in NUMERIC:
                problems.append(f"{where}: {self.not_numeric(name, ctype)}")
        return problems

    def not_numeric(self, column: str, ctype: str) -> str:
        """The message for a column this step reads as a number that is declared otherwise."""
        return f"{self.kind} needs a numeric column, {column!r} is {ctype}"

    def round_state(self, state: Mapping[str, object] | None, request_id: str) -> RoundLike | None:
        """The validated round state a request of this step carries (None for one-shot steps).

        Raises:
            SpecError: a state sent with a step that has no rounds, or one that does not fit.
        """
        if state is not None:
            raise SpecError(
                f"the request carries a round state, but {self.kind} step {self.id!r} has no rounds"
            )
        return None

    # -- local step ---------------------------------------------------------------------------

    def exact(self, data: LocalData, unit: PrivacyUnit, state: RoundLike | None) -> dict[str, Exact]:
        """The exact vectors one request releases, by measurement, in `measurements()` order,
        counted on the rows that survive truncation to `unit` (so the sensitivities hold)."""
        raise NotImplementedError

    # -- aggregate step -----------------------------------------------------------------------

    def publish(self, releases: Sequence[StepRelease], publication: Publication) -> Published:
        """The step's table from the pooled releases of some partners, and its notes."""
        raise InternalError(f"{self.kind} steps are not published as one table")

    def outcomes(self, release: StepRelease, publication: Publication) -> list[str] | None:
        """What the disclosure checks make of each row of one partner's table (None: the step has
        no such table), as `publish` would say; a kind overrides it when it can say so cheaper."""
        try:
            frame = self.publish([release], publication).frame
        except InternalError:
            return None
        return [str(o) for o in frame[CHECK]] if CHECK in frame.columns else None

    def tables(
        self, parts: Sequence[PartnerRelease], combine: str, publication: Publication
    ) -> list[ResultTable]:
        """The step's published tables: pooled over partners, or one block per partner."""
        if combine == "by_partner":
            frames = []
            notes: list[str] = []
            for part in parts:
                own = publication.with_floor(part.min_cell)
                frame, notes = self.publish([part.release], own)
                withhold(frame, part.release.withheld, self.key_columns())
                frame.insert(0, "partner", part.partner)
                frames.append(frame)
            table = pd.concat(frames, ignore_index=True)
        else:
            table, notes = self.publish([p.release for p in parts], publication)
        partners = ", ".join(sorted(p.partner for p in parts))
        return [ResultTable(self.id, table, (f"partners: {partners}", *notes))]

    # -- summary ------------------------------------------------------------------------------

    def summary(self) -> str:
        """One line for the partner deciding on the request."""
        keys = ", ".join(self.key_columns()) or "no keys"
        return f"{self.kind} by {keys} ({self.cells():,} cells)"


def check_lengths(step: StepBase, parts: Sequence[StepRelease]) -> None:
    """Raises: ProtocolError when a release's vectors do not have the step's number of cells."""
    for part in parts:
        for m in part.measurements:
            expected = step.measurement_cells(m.name)
            if expected is not None and len(m.values) != expected:
                raise ProtocolError(
                    f"step {step.id!r}: a release has {len(m.values)} cells, the spec defines {expected}"
                )
        rows = len(step.key_frame())
        if any(row >= rows for row, _ in part.withheld):
            raise ProtocolError(f"step {step.id!r}: a release withholds a cell past the table's {rows} rows")
