"""The Python client of the analyst API, for notebooks and scripts (httpx).

    from coordinator.service.client import Client

    client = Client("https://coordinator.example:9093", token, ca_cert="ca.crt")
    client.cost("configs/analyses/incidents_by_area.yaml")     # before anything is spent
    run = client.submit("configs/analyses/incidents_by_area.yaml", purpose="road safety review")
    run.wait(progress=True)                                     # a bar per partner
    run.tables["incidents"]                                     # a DataFrame, accuracy columns too

Errors are the CLI's types: `SpecError` for a refused submission, `AccessDenied` for a token or
role the service refuses, and `run.wait()` raises the type a failed run ended with
(`BudgetExhausted`, `PolicyRefusal`, ...). Only httpx is imported up front; pandas and rich load
when a table or a progress display is asked for.
"""

from __future__ import annotations

import io
import json
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx

from privacy import errors
from privacy.errors import AccessDenied, FederationError, OdaError, SpecError, UserError

if TYPE_CHECKING:
    import pandas as pd
    from rich.progress import TaskID

__all__ = ["TERMINAL", "Client", "Run", "RunTables"]

TERMINAL = frozenset({"done", "failed", "cancelled", "interrupted"})


def _spec_text(spec: str | Path) -> str:
    """A spec given as a path or as YAML text."""
    if isinstance(spec, Path) or ("\n" not in spec and spec.endswith((".yaml", ".yml"))):
        try:
            return Path(spec).read_text()
        except OSError as exc:
            raise SpecError(f"{spec}: cannot read the spec: {exc.strerror}") from exc
    return spec


def _error(response: httpx.Response) -> OdaError:
    error_type = None
    try:
        body = response.json()
        message = str(body.get("error", response.text))
        error_type = body.get("error_type")
    except (ValueError, AttributeError):
        message = response.text[:500] or response.reason_phrase
    status = response.status_code
    if error_type == "BudgetExhausted":
        return errors.BudgetExhausted(message)
    if status in (401, 403, 429):
        return AccessDenied(f"{status}: {message}")
    if status in (400, 422):
        return SpecError(message)
    if status in (404, 409):
        return UserError(message)
    return FederationError(f"the analyst API answered {status}: {message}")


class Client:
    """A connection to a coordinator's analyst API as one account."""

    def __init__(
        self,
        url: str,
        token: str,
        ca_cert: str | Path | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        """`ca_cert` is the federation's CA (`pki/ca.crt`); `http`, when given, is used as it
        is (tests pass an in-process client)."""
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"}
        if http is None:
            verify: ssl.SSLContext | bool = (
                ssl.create_default_context(cafile=str(ca_cert)) if ca_cert is not None else True
            )
            http = httpx.Client(base_url=self.url, headers=headers, verify=verify, timeout=timeout)
        else:
            http.headers.update(headers)
        self.http = http

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, params: Mapping[str, object] | None = None, json: object = None
    ) -> httpx.Response:
        """One API call; an error answer raises the matching oda error.

        Raises:
            AccessDenied, SpecError, UserError, FederationError: as the service answered.
        """
        try:
            response = self.http.request(
                method,
                f"/api/v1{path}",
                params=cast(httpx.QueryParams | None, params),
                json=json,
            )
        except httpx.HTTPError as exc:
            raise FederationError(f"cannot reach the analyst API at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _json(
        self, method: str, path: str, *, params: Mapping[str, object] | None = None, json: object = None
    ) -> Any:  # a JSON document, typed by each caller
        return self.request(method, path, params=params, json=json).json()

    def me(self) -> dict[str, str]:
        return cast(dict[str, str], self._json("GET", "/me"))

    def _submission(
        self,
        spec: str | Path | None,
        blueprint: str | None,
        parameters: Mapping[str, object] | None,
        purpose: str | None,
        deadline: float | None,
    ) -> dict[str, object]:
        body: dict[str, object] = {}
        if spec is not None:
            body["spec_yaml"] = _spec_text(spec)
        if blueprint is not None:
            body["blueprint"] = blueprint
            body["parameters"] = dict(parameters or {})
        if purpose is not None:
            body["purpose"] = purpose
        if deadline is not None:
            body["deadline_seconds"] = int(deadline)
        return body

    def cost(
        self, spec: str | Path | None = None, *, blueprint: str | None = None, **parameters: object
    ) -> dict[str, object]:
        """What a spec (path or YAML) or a blueprint would cost each partner, before submitting."""
        return cast(
            dict[str, object],
            self._json("POST", "/cost", json=self._submission(spec, blueprint, parameters, None, None)),
        )

    def submit(
        self,
        spec: str | Path,
        *,
        purpose: str | None = None,
        deadline: float | None = None,
        min_partners: int | None = None,
        required: Sequence[str] = (),
    ) -> Run:
        """Queue a spec (a path or its YAML); `deadline` is how long it may wait for partners (s);
        the run fails unless `min_partners` release and every partner in `required` does."""
        body = self._submission(spec, None, None, purpose, deadline)
        if min_partners is not None:
            body["min_partners"] = min_partners
        if required:
            body["required_partners"] = list(required)
        return Run(self, self._json("POST", "/runs", json=body))

    def run_blueprint(
        self, name: str, *, purpose: str | None = None, deadline: float | None = None, **parameters: object
    ) -> Run:
        """Queue a blueprint (`NAME` or `NAME@VERSION`) with parameters."""
        data = self._json("POST", "/runs", json=self._submission(None, name, parameters, purpose, deadline))
        return Run(self, data)

    def run(self, run_id: str) -> Run:
        return Run(self, self._json("GET", f"/runs/{run_id}"))

    def runs(
        self,
        *,
        state: str | list[str] | None = None,
        owner: str | None = None,
        name: str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        """Runs, newest first (an analyst sees its own)."""
        params: dict[str, object] = {"limit": limit}
        if state:
            params["state"] = [state] if isinstance(state, str) else state
        if owner:
            params["owner"] = owner
        if name:
            params["name"] = name
        return [Run(self, r) for r in self._json("GET", "/runs", params=params)["runs"]]

    def blueprints(self) -> list[dict[str, object]]:
        return cast(list[dict[str, object]], self._json("GET", "/blueprints"))

    def blueprint(self, ref: str) -> dict[str, object]:
        return cast(dict[str, object], self._json("GET", f"/blueprints/{ref}"))

    def published(self) -> list[dict[str, object]]:
        """Every approved output (run, name, analysis, rows, approved_by): what readers see."""
        return cast(list[dict[str, object]], self._json("GET", "/published"))

    def published_table(self, run_id: str, name: str) -> pd.DataFrame:
        """One approved output as a DataFrame.

        Raises:
            UserError: no such output, or it is not (yet) approved.
        """
        import pandas as pd

        response = self.request("GET", f"/published/{run_id}/{name}", params={"format": "parquet"})
        return pd.read_parquet(io.BytesIO(response.content))


class RunTables(Mapping[str, "pd.DataFrame"]):
    """A finished run's tables by name, fetched (as Parquet) the first time each is read."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._cache: dict[str, pd.DataFrame] = {}

    def _names(self) -> list[str]:
        return [str(t["name"]) for t in self._run.data.get("tables", [])]

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._cache:
            if name not in self._names():
                raise KeyError(
                    f"run {self._run.id} has no table {name!r}; it has: {', '.join(self._names())}"
                )
            import pandas as pd

            response = self._run.client.request(
                "GET", f"/runs/{self._run.id}/tables/{name}", params={"format": "parquet"}
            )
            self._cache[name] = pd.read_parquet(io.BytesIO(response.content))
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


@dataclass
class Run:
    """One run as the service last reported it (`refresh()` asks again)."""

    client: Client
    data: dict[str, Any]  # the run as the API's JSON document
    _tables: RunTables | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def state(self) -> str:
        return str(self.data["state"])

    @property
    def partners(self) -> dict[str, dict[str, Any]]:
        """partner -> state, requests, cost_rho, message, node_version."""
        return cast(dict[str, dict[str, Any]], self.data.get("partners", {}))

    @property
    def tables(self) -> RunTables:
        if self._tables is None:
            self._tables = RunTables(self)
        return self._tables

    def __repr__(self) -> str:
        return f"Run({self.id}, {self.data.get('name')}, {self.state})"

    def refresh(self) -> Run:
        self.data = self.client._json("GET", f"/runs/{self.id}")  # noqa: SLF001  # the same client
        return self

    def cancel(self, reason: str = "") -> Run:
        """Cancel the run: partners that have not answered withdraw the request and spend nothing."""
        self.data = self.client._json("POST", f"/runs/{self.id}/cancel", json={"reason": reason})  # noqa: SLF001
        return self

    def manifest(self) -> dict[str, object]:
        return cast(dict[str, object], self.client._json("GET", f"/runs/{self.id}/manifest"))  # noqa: SLF001

    def review(self) -> dict[str, Any]:
        """The run's review screen: each output's status, decisions and reasons, checks, cost,
        accuracy and differencing risk."""
        return cast(dict[str, Any], self.client._json("GET", f"/runs/{self.id}/review"))  # noqa: SLF001

    def decide(self, output: str, decision: str, reason: str | None = None) -> dict[str, Any]:
        """As a reviewer: `approve` an output, `reject` it or ask for `changes` (with a reason)."""
        body = {"output": output, "decision": decision, "reason": reason}
        return cast(dict[str, Any], self.client._json("POST", f"/runs/{self.id}/review", json=body))  # noqa: SLF001

    def file(self, path: str) -> bytes:
        """A file of the run's results (`report.html`, `exports/...`)."""
        return self.client.request("GET", f"/runs/{self.id}/files/{path}").content

    def events(self, after: int = 0, until: float | None = None) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """The run's events as (id, kind, data) as they happen, until the run ends (or the
        `time.monotonic()` deadline `until` passes); reconnects where it left off if the
        stream drops."""
        last = after
        while until is None or time.monotonic() < until:
            try:
                with self.client.http.stream(
                    "GET",
                    f"/api/v1/runs/{self.id}/events",
                    params={"after": last},
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _error(response)
                    event_id, kind, data = 0, "message", ""
                    for line in response.iter_lines():
                        if until is not None and time.monotonic() > until:
                            return
                        if line.startswith("id:"):
                            event_id = int(line[3:].strip())
                        elif line.startswith("event:"):
                            kind = line[6:].strip()
                        elif line.startswith("data:"):
                            data = line[5:].strip()
                        elif not line and data:
                            if kind == "end":
                                return
                            last = max(last, event_id)
                            yield event_id, kind, json.loads(data)
                            kind, data = "message", ""
                return
            except (httpx.TransportError, httpx.StreamError):
                time.sleep(1.0)

    def wait(self, progress: bool = False, timeout: float | None = None) -> Run:
        """Block until the run finishes, woken by its event stream; with `progress`, a bar per
        partner (terminal or Jupyter).

        Raises:
            The error type the run failed with (`BudgetExhausted`, `PolicyRefusal`, ...), or
            FederationError when it was cancelled or interrupted; TimeoutError after `timeout` s.
        """
        until = None if timeout is None else time.monotonic() + timeout
        display = _Progress(self) if progress else None
        try:
            while self.refresh().state not in TERMINAL:
                if until is not None and time.monotonic() > until:
                    raise TimeoutError(f"run {self.id} is still {self.state} after {timeout:.0f} s")
                if display is not None:
                    display.update()
                for _, what, _ in self.events(until=until):
                    if display is not None and what == "partner":
                        display.update(self.refresh())
            if display is not None:
                display.update()
        finally:
            if display is not None:
                display.close()
        if self.state == "failed":
            kind = getattr(errors, str(self.data.get("error") or ""), FederationError)
            raise (kind if isinstance(kind, type) and issubclass(kind, OdaError) else FederationError)(
                f"run {self.id} failed: {self.data.get('reason')}"
            )
        if self.state in ("cancelled", "interrupted"):
            raise FederationError(f"run {self.id} was {self.state}: {self.data.get('reason')}")
        return self


class _Progress:
    """A bar per partner (replies over requests sent), with its state and what it spent."""

    def __init__(self, run: Run) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.run = run
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"))
        self.tasks: dict[str, TaskID] = {}
        self.bars.start()

    def update(self, _: Run | None = None) -> None:
        for partner, p in sorted(self.run.partners.items()):
            requests = max(1, int(p.get("requests", 0)))
            done = requests if p.get("state") in ("released", "refused", "timeout", "error") else requests - 1
            note = f"{p.get('state')}  rho {float(p.get('cost_rho', 0.0)):.4g}  {p.get('message') or ''}"
            if partner not in self.tasks:
                self.tasks[partner] = self.bars.add_task(partner, total=requests, note=note)
            self.bars.update(self.tasks[partner], total=requests, completed=done, note=note[:80])

    def close(self) -> None:
        self.bars.stop()
