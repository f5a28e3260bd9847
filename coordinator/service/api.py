"""The analyst API, `/api/v1`: submit and price runs, follow them live, fetch their results.

Every route but `/api/v1/health` needs a bearer token (`Authorization: Bearer oda_...`, or the
console's cookie) and a role that grants it (`coordinator.service.accounts`). Every error is a
JSON body `{"error": "..."}` (validation errors add `problems`), so scripts and the Python
client read one shape. Tokens are never logged: the server runs without an access log and no
route echoes a header.

Built by `build_app`; served with TLS by `python -m coordinator.service.serve` (which
`oda coordinator start` runs beside the Fleet proxy). The committed OpenAPI document is
`configs/openapi/analyst-api.json` (`oda coordinator openapi` rewrites it).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.service.accounts import (
    Account,
    Permission,
    allowed,
    authenticate,
    may_read_run,
)
from coordinator.service.console import COOKIE, add_console
from coordinator.service.populations import charges, preview
from coordinator.service.state import ServiceState
from coordinator.service.store import TERMINAL, RunRow, RunStore, State
from coordinator.service.submission import (
    Submission,
    new_run_id,
    prepare,
    quorum_of,
)
from coordinator.service.views import (
    AccountOut,
    ApiError,
    CancelIn,
    DecisionIn,
    ErrorOut,
    RunList,
    RunOut,
    TableOut,
    TableRef,
    iso,
    run_out,
)
from privacy.errors import BudgetExhausted, OdaError

#: Text a filter may hold: anything but NUL, which PostgreSQL's text type cannot hold (a search
#: for it failed inside instead of saying why).
_NO_NUL = r"^[^\x00]*$"

__all__ = ["API_PREFIX", "ApiError", "ServiceState", "build_app", "openapi_document"]

API_PREFIX = "/api/v1"
#: Longest one event stream stays open; the client reconnects with `Last-Event-ID`.
STREAM_SECONDS = 3600.0
#: How often a stream looks at the store's change counter (no database query unless it moved).
STREAM_POLL_SECONDS = 0.05
#: A stream queries the database at least this often (a write by another process).
STREAM_RECHECK_SECONDS = 2.0
KEEPALIVE_SECONDS = 5.0


def _table_file(row: RunRow, name: str) -> Path:
    for table in json.loads(row.tables_json):
        if table["name"] == name and row.results_dir:
            return Path(row.results_dir) / str(table["file"])
    known = ", ".join(t["name"] for t in json.loads(row.tables_json)) or "none yet"
    raise ApiError(404, f"run {row.id} has no table {name!r}; its tables: {known}")


def _table_response(path: Path, name: str, format: str) -> Response:
    """A table file as JSON (columns and rows), CSV or Parquet."""
    if format == "parquet":
        return FileResponse(path, media_type="application/vnd.apache.parquet", filename=f"{name}.parquet")
    import pandas as pd

    frame = pd.read_parquet(path)
    if format == "csv":
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        return Response(
            buffer.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    rows = [[_json_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)]
    return JSONResponse({"name": name, "columns": [str(c) for c in frame.columns], "rows": rows})


def _json_cell(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()  # timestamps, dates
    if hasattr(value, "item"):
        return _json_cell(value.item())  # numpy scalars
    return value


def account(request: Request) -> Account:
    """The account the request's token (header, or the console's cookie) belongs to.

    Raises:
        ApiError: 401 without a valid token, 429 after too many failed logins.
    """
    state: ServiceState = request.app.state.service
    client = request.client.host if request.client else "?"
    wait = state.limiter.blocked(client)
    if wait > 0:
        raise ApiError(
            429,
            f"too many failed logins from {client}; try again in {math.ceil(wait)} s",
            {"Retry-After": str(math.ceil(wait))},
        )
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        token = request.cookies.get(COOKIE, "")
    elif scheme.lower() != "bearer":
        token = ""
    if not token:
        raise ApiError(401, "no token: send `Authorization: Bearer oda_...`", {"WWW-Authenticate": "Bearer"})
    found = authenticate(state.store, token.strip()[:200])
    if found is None:
        state.limiter.failed(client)
        raise ApiError(
            401,
            "the token is not valid (unknown, revoked or mistyped); ask an admin for a new one",
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return found


def needs(permission: Permission) -> Callable[[Request], Account]:
    def check(request: Request) -> Account:
        who = account(request)
        if not allowed(who, permission):
            raise ApiError(403, f"role {who.role} may not do this (it needs the '{permission}' permission)")
        return who

    return check


def readable_run(state: ServiceState, run_id: str, who: Account) -> RunRow:
    row = state.store.run(run_id)
    if row is None or not may_read_run(who, row):
        # the same answer for a run that exists and one that does not: ids are not disclosed
        raise ApiError(404, f"no run {run_id!r} that you can read")
    return row


Reader = Annotated[Account, Depends(needs("read_runs"))]
Submitter = Annotated[Account, Depends(needs("submit"))]
Catalogue = Annotated[Account, Depends(needs("catalogue"))]
Admin = Annotated[Account, Depends(needs("admin"))]
Reviewer = Annotated[Account, Depends(needs("review"))]
Public = Annotated[Account, Depends(needs("published"))]


def build_app(state: ServiceState) -> FastAPI:
    """The API (and the web console, `coordinator.service.console`) over `state`."""
    app = FastAPI(
        title="oda-federated analyst API",
        version="1.0.0",
        description="Submit federated, differentially private analyses and fetch their results, "
        "with the privacy cost and the 95% accuracy of every release.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        body = {"error": exc.message} | ({"error_type": exc.error_type} if exc.error_type else {})
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        ]
        return JSONResponse(
            {"error": "the request is not valid: " + "; ".join(problems), "problems": problems},
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": f"internal error in the coordinator ({type(exc).__name__}); see its log"},
            status_code=500,
        )

    errors: dict[int | str, dict[str, object]] = {
        code: {"model": ErrorOut} for code in (400, 401, 403, 404, 422, 429)
    }

    @app.get(f"{API_PREFIX}/health", responses=errors)
    def health() -> dict[str, str]:
        """Whether the API answers (no token needed)."""
        return {"status": "ok", "federation": state.federation}

    @app.get(f"{API_PREFIX}/me", responses=errors)
    def me(who: Annotated[Account, Depends(account)]) -> AccountOut:
        """Who the token belongs to."""
        return AccountOut(name=who.name, role=who.role)

    def _prepare(submission: Submission) -> tuple[RunRow, dict[str, object]]:
        try:
            prepared = prepare(submission, state.registry)
        except OdaError as exc:
            raise ApiError(400, str(exc)) from exc
        now = time.time()
        row = RunRow(
            id=new_run_id(),
            owner="",
            source=prepared.source,
            name=prepared.name,
            blueprint=submission.blueprint,
            parameters_json=json.dumps(prepared.parameters, sort_keys=True),
            spec_yaml=prepared.spec.text if prepared.spec is not None else "",
            purpose=submission.purpose,
            state="queued",
            created_at=now,
            deadline_at=now + (submission.deadline_seconds or state.default_deadline),
            planned_json=json.dumps(prepared.cost.planned(), sort_keys=True),
            quorum_json=json.dumps(q.to_json()) if (q := quorum_of(submission)) else None,
            progress_json="{}",
            refusals_json="[]",
            tables_json="[]",
        )
        return row, prepared.cost.to_json()

    @app.post(f"{API_PREFIX}/cost", responses=errors)
    def cost(submission: Submission, _: Submitter) -> dict[str, object]:
        """What a submission would cost each partner, before anything is queued or sent, and
        what it may cost one resident of each shared population against the federation's cap."""
        row, out = _prepare(submission)
        if state.populations:
            out["populations"] = preview(
                json.loads(row.planned_json), state.populations, state.store.population_spent()
            )
        return out

    @app.post(f"{API_PREFIX}/runs", status_code=201, responses=errors)
    def submit(submission: Submission, who: Submitter) -> RunOut:
        """Queue a run (checked completely first: a bad spec or parameter is refused here, and
        so is a run that would take a shared population over the federation's cap)."""
        row, _ = _prepare(submission)
        row.owner = who.name
        caps = {name: p.max_rho for name, p in state.populations.items()}
        try:
            state.store.add_run_within_caps(
                row, charges(row.id, json.loads(row.planned_json), state.populations), caps
            )
        except BudgetExhausted as exc:
            raise ApiError(409, str(exc), error_type="BudgetExhausted") from exc
        state.wake()
        return run_out(row)

    @app.get(f"{API_PREFIX}/runs", responses=errors)
    def list_runs(
        who: Reader,
        run_state: Annotated[list[State] | None, Query(alias="state")] = None,
        owner: Annotated[str | None, Query(max_length=64, pattern=_NO_NUL)] = None,
        name: Annotated[str | None, Query(max_length=200, pattern=_NO_NUL)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> RunList:
        """Runs, newest first: analysts see their own, reviewers and admins everyone's."""
        if not allowed(who, "read_all_runs"):
            if owner not in (None, who.name):
                raise ApiError(403, "an analyst lists its own runs only")
            owner = who.name
        rows = state.store.runs(owner=owner, states=run_state or (), name=name, limit=limit, offset=offset)
        return RunList(runs=[run_out(r) for r in rows])

    @app.get(f"{API_PREFIX}/runs/{{run_id}}", responses=errors)
    def show_run(run_id: str, who: Reader) -> RunOut:
        """One run: state, per-partner progress, cost planned and debited, refusals, tables."""
        return run_out(readable_run(state, run_id, who))

    @app.post(f"{API_PREFIX}/runs/{{run_id}}/cancel", responses=errors)
    def cancel(run_id: str, who: Reader, body: CancelIn | None = None) -> RunOut:
        """Cancel a run: a queued one at once; a running one withdraws its requests from the
        partners' inboxes (they spend nothing for them) and ends `cancelled`."""
        row = readable_run(state, run_id, who)
        if not (allowed(who, "cancel_any") or (allowed(who, "submit") and row.owner == who.name)):
            raise ApiError(403, "only the run's analyst or an admin may cancel it")
        if row.state in TERMINAL:
            raise ApiError(409, f"run {run_id} is {row.state} already; nothing to cancel")
        why = f"cancelled by {who.name}@{state.federation}" + (
            f": {body.reason}" if body and body.reason else ""
        )
        return run_out(state.store.request_cancel(run_id, why))

    @app.get(f"{API_PREFIX}/runs/{{run_id}}/events", responses=errors)
    async def events(
        run_id: str,
        request: Request,
        who: Reader,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    ) -> StreamingResponse:
        """Server-sent events of the run: `state` (a state change) and `partner` (a partner's
        progress), each with its id; the stream ends once the run is finished."""
        await anyio.to_thread.run_sync(readable_run, state, run_id, who)
        last = request.headers.get("last-event-id", "")
        start = int(last) if last.isdigit() else after

        async def stream() -> AsyncIterator[bytes]:
            cursor, until = start, time.monotonic() + STREAM_SECONDS
            yield b"retry: 2000\n\n"
            version, looked, spoke = -1, 0.0, time.monotonic()
            while time.monotonic() < until:
                now = time.monotonic()
                if state.store.version == version and now - looked < STREAM_RECHECK_SECONDS:
                    if now - spoke > KEEPALIVE_SECONDS:  # lets clients and proxies see the stream is alive
                        spoke = now
                        yield b": keepalive\n\n"
                    if await request.is_disconnected():
                        return
                    await asyncio.sleep(STREAM_POLL_SECONDS)
                    continue
                version, looked = state.store.version, now
                found = await anyio.to_thread.run_sync(state.store.events, run_id, cursor)
                for ev in found:
                    cursor, spoke = ev.id, now
                    yield f"id: {ev.id}\nevent: {ev.kind}\ndata: {ev.data_json}\n\n".encode()
                if not found:
                    row = await anyio.to_thread.run_sync(state.store.run, run_id)
                    if row is None or row.state in TERMINAL:
                        yield b"event: end\ndata: {}\n\n"
                        return

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.get(f"{API_PREFIX}/runs/{{run_id}}/tables", responses=errors)
    def tables(run_id: str, who: Reader) -> list[TableRef]:
        """The run's result tables."""
        return run_out(readable_run(state, run_id, who)).tables

    @app.get(
        f"{API_PREFIX}/runs/{{run_id}}/tables/{{name}}",
        responses={
            **errors,
            200: {"model": TableOut, "content": {"text/csv": {}, "application/vnd.apache.parquet": {}}},
        },
    )
    def table(
        run_id: str,
        name: str,
        who: Reader,
        format: Annotated[Literal["json", "csv", "parquet"], Query()] = "json",
    ) -> Response:
        """One table, with its accuracy columns: JSON (columns and rows), CSV or Parquet."""
        return _table_response(_table_file(readable_run(state, run_id, who), name), name, format)

    @app.get(f"{API_PREFIX}/runs/{{run_id}}/review", responses=errors)
    def review(run_id: str, who: Reader) -> dict[str, object]:
        """The review screen of a run: each output with its status, the decisions and reasons so
        far, its disclosure checks, the privacy spent, its accuracy and its differencing risk.
        Reviewers see every run's; an analyst sees their own (rejections reach them here)."""
        from coordinator.service.review import review_screen

        return review_screen(state.store, readable_run(state, run_id, who))

    @app.post(f"{API_PREFIX}/runs/{{run_id}}/review", responses=errors)
    def decide(run_id: str, body: DecisionIn, who: Reviewer) -> dict[str, object]:
        """Approve an output, reject it, or request changes (with a reason)."""
        from coordinator.service.review import decide as record

        return record(
            state.store, readable_run(state, run_id, who), who, body.output, body.decision, body.reason
        ).to_json()

    @app.get(f"{API_PREFIX}/published", responses=errors)
    def published(_: Public) -> list[dict[str, object]]:
        """Every approved output: the only results the reader role sees."""
        from coordinator.service.review import published as approved

        return approved(state.store)

    @app.get(
        f"{API_PREFIX}/published/{{run_id}}/{{name}}",
        responses={
            **errors,
            200: {"model": TableOut, "content": {"text/csv": {}, "application/vnd.apache.parquet": {}}},
        },
    )
    def published_table(
        run_id: Annotated[str, PathParam(max_length=40)],
        name: Annotated[str, PathParam(max_length=300)],
        _: Public,
        format: Annotated[Literal["json", "csv", "parquet"], Query()] = "json",
    ) -> Response:
        """One approved output: JSON, CSV or Parquet."""
        from coordinator.service.review import published_file

        return _table_response(published_file(state.store, run_id, name), name, format)

    @app.get(f"{API_PREFIX}/runs/{{run_id}}/manifest", responses=errors)
    def manifest(run_id: str, who: Reader) -> dict[str, object]:
        """The run's manifest (a spec run) or provenance (a blueprint run): every release with
        its mechanism, scale, cost and 95% accuracy, and each node's audit-chain head."""
        row = readable_run(state, run_id, who)
        for name in ("manifest.json", "provenance.json"):
            path = Path(row.results_dir or "/nonexistent") / name
            if path.is_file():
                return json.loads(path.read_text())  # type: ignore[no-any-return]  # our own JSON object
        raise ApiError(404, f"run {run_id} has no manifest yet (it is {row.state})")

    @app.get(f"{API_PREFIX}/runs/{{run_id}}/files/{{path:path}}", responses=errors)
    def run_file(run_id: str, path: str, who: Reader) -> Response:
        """A file of the run's results: `report.html`, `exports/...`, `provenance.json`, ..."""
        row = readable_run(state, run_id, who)
        if not row.results_dir:
            raise ApiError(404, f"run {run_id} has no results yet (it is {row.state})")
        root = Path(row.results_dir).resolve()
        target = (root / path).resolve()
        if root not in target.parents or not target.is_file():
            raise ApiError(404, f"run {run_id} has no file {path!r}")
        return FileResponse(target)

    @app.get(f"{API_PREFIX}/blueprints", responses=errors)
    def blueprints(_: Catalogue) -> list[dict[str, object]]:
        """The blueprint catalogue (shipped) and this coordinator's registry."""
        from coordinator.service.catalogue import catalogue

        return catalogue(state.registry)

    @app.get(f"{API_PREFIX}/blueprints/{{ref}}", responses=errors)
    def blueprint(ref: Annotated[str, PathParam(max_length=130)], _: Catalogue) -> dict[str, object]:
        """One blueprint: parameters, dataset contracts, governance, outputs and cost."""
        from coordinator.service.catalogue import describe

        try:
            return describe(ref, state.registry)
        except OdaError as exc:
            raise ApiError(404, str(exc)) from exc

    @app.get(f"{API_PREFIX}/nodes", responses=errors)
    def nodes(_: Admin) -> list[dict[str, object]]:
        """The registered partners: online or not, version, last release."""
        if state.nodes is None:
            return []
        return state.nodes()

    @app.get(f"{API_PREFIX}/users", responses=errors)
    def users(_: Admin) -> list[dict[str, object]]:
        """Accounts (never their tokens)."""
        return [
            {
                "name": u.name,
                "role": u.role,
                "created_at": iso(u.created_at),
                "revoked_at": iso(u.revoked_at),
            }
            for u in state.store.users()
        ]

    add_console(app, state, account)
    return app


def openapi_document() -> dict[str, object]:
    """The API's OpenAPI document (what `configs/openapi/analyst-api.json` holds)."""
    store = RunStore.open("sqlite://")
    try:
        return build_app(ServiceState(store, "oda", Path("results"))).openapi()
    finally:
        store.close()
