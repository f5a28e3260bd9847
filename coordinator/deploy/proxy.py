"""The coordinator's public face: a TLS proxy that forwards only the Fleet API and `/health`.

Flower's SuperLink serves Fleet, Control and Runtime on one port, and in the open-source
edition Control and Runtime have no authentication: whoever reaches them can start runs (code
on every node) or register node keys. So the SuperLink binds to loopback and only this proxy
listens on the public address. It forwards `POST /v1/fleet/*` and `GET /health` to the
SuperLink over TLS (trusting the coordinator's own CA), serves the coordinator's blueprint
registry read-only (`GET /v1/blueprints`, `GET /v1/blueprints/NAME/VERSION/blueprint.yaml` and
`.../signature.json`), partners' enrolment and the node agent's wheel (`/v1/oda/...`, see
`coordinator.deploy.enrolment`), and answers everything else with 404, without contacting the SuperLink. Node authentication stays end to end: the signed headers a
node sends are forwarded unchanged and checked by the SuperLink.

**No idle polling storm.** A node asks for work with `pull-messages` every `poll_interval`. The
proxy holds each pull until the coordinator says it pushed that node something (`POST
/_oda/wake`, from `coordinator.deploy.flower`, with the secret in `wake.token`) or
`HOLD_SECONDS` pass, then forwards it; a wake that comes while no pull is held releases the
node's next pull at once, so no push waits. An idle node so costs the SuperLink one pull per
`HOLD_SECONDS` instead of one per `poll_interval`, and a request still reaches it at once
(a message pushed without a wake, e.g. by a stock `flwr run`, waits at most one hold). Nodes are
told apart by the public-key header their pulls are signed with, which the SuperLink checks
only after the hold: a pull with a forged header can take a node's wake, delaying that node's
next pull by at most one hold (never a message lost, nothing released).

Run by `oda coordinator start`: `python -m coordinator.deploy.proxy --listen HOST:PORT --upstream
127.0.0.1:PORT --pki DIR [--wake-token FILE]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "FLEET_PREFIX",
    "HOLD_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_BUFFERED_BYTES",
    "WAKE_PATH",
    "BodyBudget",
    "PullGate",
    "build_app",
    "main",
]

FLEET_PREFIX = "/v1/fleet/"
PULL_PATH = "/v1/fleet/pull-messages"
WAKE_PATH = "/_oda/wake"
#: The header Flower's nodes sign their Fleet calls with (their public key).
KEY_HEADER = "flwr-public-key"
#: Longest a pull of an idle node is held (Flower's node waits 30 s for an answer).
HOLD_SECONDS = 10.0
#: Most pulls held at once, and most nodes remembered: beyond, pulls pass through as before.
MAX_HELD = 5_000
MAX_KEYS = 20_000
#: Larger than any Fleet message object oda sends (a 200,000-cell release is a few MB); a bigger
#: body is refused as soon as it passes this, declared or chunked.
MAX_BODY_BYTES = 16 * 1024 * 1024
#: Most request bytes the proxy holds at once, over all requests: beyond it a request waits for
#: nobody and is answered 503, so no number of large bodies can exhaust the proxy's memory.
MAX_BUFFERED_BYTES = 64 * 1024 * 1024
#: Request headers not forwarded (connection-level, or rewritten by the client).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def _not_exposed(request: Request) -> Response:
    return JSONResponse(
        {"error": f"{request.url.path} is not exposed here: this address serves the Fleet API only"},
        status_code=404,
    )


def _registry_routes(registry: Path) -> list[Route]:
    from coordinator.blueprints.registry import BLUEPRINT_FILE, SIGNATURE_FILE, LocalRegistry, registry_index
    from privacy.errors import SpecError

    async def index(_: Request) -> Response:
        return JSONResponse(registry_index(registry))

    async def blueprint_file(request: Request) -> Response:
        name, version, file = (request.path_params[k] for k in ("name", "version", "file"))
        if file not in (BLUEPRINT_FILE, SIGNATURE_FILE):
            return _not_exposed(request)
        try:
            data, signature, _ = LocalRegistry(registry).read(name, version)
        except SpecError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        if file == SIGNATURE_FILE:
            return JSONResponse(signature)
        return Response(data, media_type="application/yaml")

    return [
        Route("/v1/blueprints", index, methods=["GET"]),
        Route("/v1/blueprints/{name}/{version}/{file}", blueprint_file, methods=["GET"]),
    ]


class BodyBudget:
    """The request bytes held by all requests together, and the most ever held."""

    def __init__(self, limit: int = MAX_BUFFERED_BYTES) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        self.peak = max(self.peak, self.held)
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class PullGate:
    """Holds nodes' pulls until the coordinator wakes them (or the hold passes)."""

    def __init__(self, hold: float = HOLD_SECONDS) -> None:
        self.hold = hold
        #: node key -> set when the coordinator pushed it something its next pull has not taken
        self.woken: dict[str, asyncio.Event] = {}
        self.held = 0
        self.held_total = 0

    def _event(self, key: str) -> asyncio.Event | None:
        event = self.woken.get(key)
        if event is None and len(self.woken) < MAX_KEYS:
            event = self.woken[key] = asyncio.Event()
        return event

    async def admit(self, key: str | None) -> None:
        """Return when `key`'s pull may go on to the SuperLink."""
        if self.hold <= 0 or not key or len(key) > 2048 or self.held >= MAX_HELD:
            return
        event = self._event(key)
        if event is None:  # too many keys remembered: pass, as before there were holds
            return
        self.held += 1
        self.held_total += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self.hold)
        finally:
            self.held -= 1
            event.clear()  # this pull takes what the wake announced

    def wake(self, keys: list[str]) -> None:
        for key in keys:
            if len(key) <= 2048 and (event := self._event(key)) is not None:
                event.set()


def build_app(
    upstream: str,
    ca_cert: Path | None,
    registry: Path | None = None,
    wake_token: str | None = None,
    gate: PullGate | None = None,
    enrolment: Path | None = None,
) -> Starlette:
    """The proxy as an ASGI app forwarding to `https://upstream` (plain HTTP when `ca_cert` is None,
    which only tests use), serving the blueprint registry in `registry` when given. With
    `wake_token`, idle nodes' pulls are held (`PullGate`) until `POST /_oda/wake` names them.
    With `enrolment` (the coordinator folder), partners enrol, rotate keys and ask whether they
    are registered (`coordinator.deploy.enrolment`), and download the node agent's wheel."""
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else False
    scheme = "https" if ca_cert else "http"
    client = httpx.AsyncClient(
        base_url=f"{scheme}://{upstream}",
        verify=verify,
        timeout=httpx.Timeout(60.0, connect=5.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )

    budget = BodyBudget()
    gate = gate or PullGate(hold=HOLD_SECONDS if wake_token else 0.0)

    async def wake(request: Request) -> Response:
        given = request.headers.get("x-oda-wake-token", "")
        if not wake_token or not hmac.compare_digest(given.encode(), wake_token.encode()):
            return _not_exposed(request)
        body = await request.body()
        try:
            keys = json.loads(body[: 4 * 1024 * 1024])["keys"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'send {"keys": [...]}'}, status_code=400)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            return JSONResponse({"error": "keys must be a list of strings"}, status_code=400)
        gate.wake(keys[:MAX_KEYS])
        return JSONResponse({"woken": min(len(keys), MAX_KEYS)})

    async def forward(request: Request) -> Response:
        path = request.url.path
        if request.method == "POST" and path == WAKE_PATH:
            return await wake(request)
        if not (
            (request.method == "POST" and path.startswith(FLEET_PREFIX) and ".." not in path)
            or (request.method == "GET" and path == "/health")
        ):
            return _not_exposed(request)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return JSONResponse({"error": "request body too large"}, status_code=413)
        body = bytearray()
        try:
            async for chunk in request.stream():
                if len(body) + len(chunk) > MAX_BODY_BYTES:
                    return JSONResponse({"error": "request body too large"}, status_code=413)
                if not budget.take(len(chunk)):
                    return JSONResponse({"error": "the coordinator is busy; try again"}, status_code=503)
                body += chunk
            headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
            if path == PULL_PATH:
                await gate.admit(request.headers.get(KEY_HEADER))
            try:
                upstream_response = await client.request(
                    request.method, path, content=bytes(body), headers=headers, params=request.query_params
                )
            except httpx.HTTPError as exc:
                return JSONResponse(
                    {"error": f"the SuperLink is unavailable: {type(exc).__name__}"}, status_code=502
                )
        finally:
            budget.give_back(len(body))
        reply_headers = {
            k: v
            for k, v in upstream_response.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-encoding"
        }
        return Response(upstream_response.content, upstream_response.status_code, headers=reply_headers)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    routes = _registry_routes(registry) if registry is not None else []
    if enrolment is not None:
        from coordinator.deploy.enrolment import enrolment_routes

        routes += enrolment_routes(enrolment)
    app = Starlette(routes=[*routes, Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)
    app.state.body_budget = budget
    app.state.pull_gate = gate
    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m coordinator.deploy.proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--listen", required=True, help="public HOST:PORT")
    parser.add_argument("--upstream", required=True, help="the SuperLink on loopback, 127.0.0.1:PORT")
    parser.add_argument("--pki", type=Path, required=True, help="folder with ca.crt, server.crt, server.key")
    parser.add_argument("--registry", type=Path, default=None, help="blueprint registry folder to serve")
    parser.add_argument(
        "--wake-token",
        type=Path,
        default=None,
        help="file with the secret the coordinator wakes held pulls with",
    )
    parser.add_argument(
        "--enrolment", type=Path, default=None, help="the coordinator folder: serve enrolment and the wheel"
    )
    parser.add_argument(
        "--hold", type=float, default=HOLD_SECONDS, help="seconds an idle node's pull is held"
    )
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    pki: Path = args.pki
    token = args.wake_token.read_text().strip() if args.wake_token else None
    gate = PullGate(hold=args.hold if token else 0.0)
    app = build_app(args.upstream, pki / "ca.crt", args.registry, token, gate, args.enrolment)
    print(
        f"fleet proxy: https://{args.listen} -> https://{args.upstream} (Fleet API and /health only)",
        flush=True,
    )
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=int(port),
        ssl_certfile=str(pki / "server.crt"),
        ssl_keyfile=str(pki / "server.key"),
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=2,  # held pulls would otherwise keep a stopping proxy up for a hold
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
