"""The web console: server-rendered pages (Jinja2) over the same store and roles as the API.

`/console/login` takes a token and keeps it in an HttpOnly, Secure, SameSite=Strict cookie;
every page then authenticates as the API does. Pages: runs (with states), one run (per-partner
progress that follows the run's event stream, tables with their accuracy columns, report and
downloads, and the output review with a reviewer's decision form), the published (approved)
outputs every role reads, the blueprint catalogue (contracts, parameters, governance, cost) and,
for admins, the nodes. No CDN, no framework: one stylesheet inline and a few lines of script.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from coordinator.service.accounts import Account, allowed, authenticate, may_read_run
from coordinator.service.store import STATES
from coordinator.service.views import ApiError, run_out

if TYPE_CHECKING:
    from coordinator.service.state import ServiceState

__all__ = ["add_console"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: The cookie the console keeps the token in (the API reads it too, for the console's downloads).
COOKIE = "oda_token"
#: Rows of a table shown on a run page (the downloads hold all of them).
SHOWN_ROWS = 200


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["when"] = lambda t: (
        "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    )
    env.filters["rho"] = lambda v: f"{float(v):.4g}"
    env.filters["url"] = lambda v: quote(str(v), safe="")
    return env


def add_console(app: FastAPI, state: ServiceState, account: Callable[[Request], Account]) -> None:
    """Add the console's routes to `app`."""
    env = _environment()

    def page(name: str, who: Account | None, status: int = 200, **values: object) -> HTMLResponse:
        html = env.get_template(name).render(who=who, federation=state.federation, **values)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def signed_in(request: Request) -> Account | Response:
        try:
            return account(request)
        except ApiError as exc:
            if exc.status == 429:
                return page("login.html", None, 429, error=exc.message)
            return RedirectResponse("/console/login", status_code=303)

    @app.get("/console", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/console/runs", status_code=303)

    @app.get("/console/login", include_in_schema=False)
    def login_form() -> Response:
        return page("login.html", None)

    @app.post("/console/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        if (wait := state.limiter.blocked(client)) > 0:
            return page("login.html", None, 429, error=f"too many failed logins; try again in {wait:.0f} s")
        body = (await request.body())[:1000].decode(errors="replace")
        token = (parse_qs(body).get("token") or [""])[0].strip()
        who = authenticate(state.store, token)
        if who is None:
            state.limiter.failed(client)
            return page("login.html", None, 401, error="that token is not valid")
        target = "/console/runs" if allowed(who, "read_runs") else "/console/blueprints"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, secure=True, samesite="strict", path="/")
        return response

    @app.get("/console/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/console/runs", include_in_schema=False)
    def runs(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        if not allowed(who, "read_runs"):
            return page("error.html", who, 403, error=f"role {who.role} does not see runs")
        owner = None if allowed(who, "read_all_runs") else who.name
        wanted = request.query_params.get("state")
        rows = state.store.runs(owner=owner, states=[wanted] if wanted in STATES else (), limit=200)
        return page("runs.html", who, runs=[run_out(r) for r in rows], states=STATES, wanted=wanted)

    @app.get("/console/runs/{run_id}", include_in_schema=False)
    def run_page(run_id: str, request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        row = state.store.run(run_id)
        if row is None or not may_read_run(who, row):
            return page("error.html", who, 404, error=f"no run {run_id!r} that you can read")
        import pandas as pd

        shown = []
        for table in json.loads(row.tables_json):
            frame = pd.read_parquet(Path(str(row.results_dir)) / str(table["file"]))
            shown.append(
                {
                    "name": table["name"],
                    "rows": len(frame),
                    "columns": [str(c) for c in frame.columns],
                    "values": [
                        [_cell(v) for v in r]
                        for r in frame.head(SHOWN_ROWS).itertuples(index=False, name=None)
                    ],
                }
            )
        files = []
        if row.results_dir:
            root = Path(row.results_dir)
            for name in ("report.html", "manifest.json", "provenance.json"):
                if (root / name).is_file():
                    files.append(name)
        from coordinator.service.review import review_screen

        return page(
            "run.html",
            who,
            run=run_out(row),
            tables=shown,
            files=files,
            last_event=state.store.last_event_id(run_id),
            review=review_screen(state.store, row) if row.state == "done" else None,
            may_review=allowed(who, "review") and row.owner != who.name,
            error=request.query_params.get("error"),
        )

    @app.post("/console/runs/{run_id}/review", include_in_schema=False)
    async def review(run_id: str, request: Request) -> Response:
        """A reviewer's decision from the run page's form; back to the page, with the error if any."""
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        row = state.store.run(run_id)
        if row is None or not may_read_run(who, row):
            return page("error.html", who, 404, error=f"no run {run_id!r} that you can read")
        form = parse_qs((await request.body())[:8000].decode(errors="replace"))
        from coordinator.service.review import decide

        target = f"/console/runs/{quote(run_id, safe='')}"
        try:
            decide(
                state.store,
                row,
                who,
                (form.get("output") or [""])[0],
                (form.get("decision") or [""])[0],
                (form.get("reason") or [""])[0],
            )
        except ApiError as exc:
            return RedirectResponse(f"{target}?error={quote(exc.message, safe='')}#review", status_code=303)
        return RedirectResponse(f"{target}#review", status_code=303)

    @app.get("/console/published", include_in_schema=False)
    def published_page(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        from coordinator.service.review import published

        return page("published.html", who, published=published(state.store))

    @app.get("/console/blueprints", include_in_schema=False)
    def blueprints(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        from coordinator.service.catalogue import catalogue

        return page("blueprints.html", who, blueprints=catalogue(state.registry))

    @app.get("/console/blueprints/{ref}", include_in_schema=False)
    def blueprint(ref: str, request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        from coordinator.service.catalogue import describe
        from privacy.errors import OdaError

        try:
            bp = describe(ref, state.registry)
        except OdaError as exc:
            return page("error.html", who, 404, error=str(exc))
        return page("blueprint.html", who, bp=bp)

    @app.get("/console/nodes", include_in_schema=False)
    def nodes(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        if not allowed(who, "admin"):
            return page("error.html", who, 403, error="only an admin sees the nodes")
        return page("nodes.html", who, nodes=state.nodes() if state.nodes else [])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:,.2f}"  # NaN: a suppressed or empty cell
    return str(value)
