"""What the API and the console show of a run: the response models and the error they answer."""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from coordinator.service.store import STATES, RunRow

__all__ = [
    "AccountOut",
    "ApiError",
    "CancelIn",
    "DecisionIn",
    "ErrorOut",
    "PartnerOut",
    "RefusalOut",
    "RunList",
    "RunOut",
    "TableOut",
    "TableRef",
    "iso",
    "run_out",
]


class ApiError(Exception):
    """An error answered as `{"error": message}` with `status`."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        #: The oda error a client raises for it (`BudgetExhausted`), when the status is not enough.
        self.error_type = error_type


# --- response models (the OpenAPI document is generated from them) ---------------------------


class ErrorOut(BaseModel):
    error: str
    problems: list[str] | None = None
    error_type: str | None = Field(default=None, description="the oda error it stands for (BudgetExhausted)")


class PartnerOut(BaseModel):
    state: str = Field(description="pending | sent | released | refused | timeout | error")
    cost_rho: float = Field(description="rho this partner's node debited for the run so far")
    requests: int = 0
    request_id: str | None = None
    node_version: str | None = None
    message: str | None = None


class TableRef(BaseModel):
    name: str
    analysis: str
    rows: int


class RefusalOut(BaseModel):
    analysis: str
    partner: str
    kind: str
    message: str


class DecisionIn(BaseModel):
    """A reviewer's decision on one output of a run."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field(
        min_length=1, max_length=300, description="the output's name (`oda runs review` lists them)"
    )
    decision: Literal["approve", "reject", "changes"] = Field(
        description="approve; reject; or request changes (reject and changes need a reason)"
    )
    reason: str | None = Field(default=None, max_length=2000)


class RunOut(BaseModel):
    id: str
    owner: str
    source: Literal["spec", "blueprint"]
    name: str
    blueprint: str | None
    parameters: dict[str, object]
    purpose: str | None
    state: str = Field(description=" | ".join(STATES))
    reason: str | None
    error: str | None = Field(
        description="the error type of a failed run: BudgetExhausted, PolicyRefusal, ..."
    )
    created_at: str
    started_at: str | None
    finished_at: str | None
    deadline_at: str
    cancel_requested: str | None
    planned: dict[str, dict[str, float]] = Field(
        description="analysis -> dataset -> rho a partner holding the dataset is debited"
    )
    quorum: dict[str, object] | None = Field(description="min_partners and required partners, when stated")
    partners: dict[str, PartnerOut]
    debited: dict[str, float] = Field(description="partner -> rho debited so far")
    refusals: list[RefusalOut]
    tables: list[TableRef]


class RunList(BaseModel):
    runs: list[RunOut]


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=200)


class TableOut(BaseModel):
    name: str
    columns: list[str]
    rows: list[list[object]]


class AccountOut(BaseModel):
    name: str
    role: str


def iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def run_out(row: RunRow) -> RunOut:
    progress = row.progress()
    return RunOut(
        id=row.id,
        owner=row.owner,
        source="blueprint" if row.source == "blueprint" else "spec",
        name=row.name,
        blueprint=row.blueprint,
        parameters=json.loads(row.parameters_json),
        purpose=row.purpose,
        state=row.state,
        reason=row.reason,
        error=row.error,
        created_at=str(iso(row.created_at)),
        started_at=iso(row.started_at),
        finished_at=iso(row.finished_at),
        deadline_at=str(iso(row.deadline_at)),
        cancel_requested=row.cancel_reason,
        planned=json.loads(row.planned_json),
        quorum=json.loads(row.quorum_json) if row.quorum_json else None,
        partners={p: PartnerOut.model_validate(v) for p, v in sorted(progress.items())},
        debited=row.debited(),
        refusals=[RefusalOut.model_validate(r) for r in json.loads(row.refusals_json)],
        tables=[TableRef.model_validate(t) for t in json.loads(row.tables_json)],
    )
