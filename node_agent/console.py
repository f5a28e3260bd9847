"""`oda-node console`: a live page for the partner's data protection officer, on loopback.

It shows the requests waiting for approval (approve, or deny with a reason), the budget left per
population, when the node last heard from its coordinator, and what left the site, all read from
the same inbox, ledger and audit log the node and `oda-node` use; a decision here is the same
decision as `oda-node approve|deny` and is audited as made in the console.

**Who may use it.** It listens on a loopback address only (put the partner's own reverse proxy,
with the partner's own sign-in, in front of it to reach it from elsewhere: `--allow-host`). At
start it prints a URL with a one-time secret; opening it sets a cookie (HttpOnly, SameSite
strict) that every page needs. A decision also needs a per-start form token, and requests whose
Host or Origin is not the console's own are refused, so neither another web page in the same
browser (cross-site requests) nor a name that resolves to loopback (DNS rebinding) can act.
"""

from __future__ import annotations

import hmac
import html
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from node_agent.agent import NodeAgent
from node_agent.config import NodeConfig, is_loopback
from privacy.budget import Rho
from privacy.errors import ConfigError

__all__ = ["COOKIE", "ConsoleSecrets", "build_console", "serve_console"]

COOKIE = "oda_node_console"
#: Recent audit entries shown under "what left the site".
RECENT = 50
#: Longest deny reason taken from the form (the audit log cuts texts anyway).
MAX_REASON = 1000

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;max-width:72rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.3rem .6rem;
text-align:left;vertical-align:top}th{background:#f3f3f3}.muted{color:#666}.bad{color:#a33}
form{display:inline}button{margin-right:.3rem}input[type=text]{width:16rem}
"""
#: Reload every 10 s, unless someone is typing a reason.
_REFRESH = """<script>setInterval(function(){var a=document.activeElement;
if(!a||a.tagName!=='INPUT'){location.reload();}},10000);</script>"""


@dataclass(frozen=True)
class ConsoleSecrets:
    """The sign-in secret (in the printed URL) and the form token, new at each start."""

    login: str
    form: str

    @staticmethod
    def new() -> ConsoleSecrets:
        return ConsoleSecrets(secrets.token_urlsafe(24), secrets.token_urlsafe(24))


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    ago = max(0.0, time.time() - timestamp)
    stamp = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    if ago < 120:
        return f"{stamp} ({ago:.0f} s ago)"
    return f"{stamp} ({ago / 60:.0f} min ago)"


def _page(config: NodeConfig, agent: NodeAgent, form_token: str, flash: str) -> str:
    e = html.escape
    policy = config.policy
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>oda node {e(config.partner)}</title>",
        f"<style>{_STYLE}</style>{_REFRESH}</head><body>",
        f"<h1>Node <span id='partner'>{e(config.partner)}</span></h1>",
        f"<p>Coordinator <code>{e(config.coordinator or '(none configured)')}</code>; approval "
        f"<b>{e(policy.approval)}</b>; last contact: <span id='last-contact'>{e(_when(agent.contact.last()))}</span></p>",
    ]
    if flash:
        parts.append(f"<p id='flash'><b>{e(flash)}</b></p>")
    waiting = agent.inbox.items("waiting")
    parts.append(f"<h2>Waiting for approval ({len(waiting)})</h2>")
    if not waiting:
        parts.append("<p id='inbox-empty' class='muted'>No request is waiting.</p>")
    else:
        parts.append(
            "<table id='inbox'><tr><th>request</th><th>analysis</th><th>from</th><th>run and purpose</th>"
            "<th>what it computes</th><th>cost</th><th>decide</th></tr>"
        )
        for item in waiting:
            rid = e(item.request_id)
            cost = f"rho {item.cost_rho:.4g}"
            parts.append(
                f"<tr data-request='{rid}'><td><code>{rid}</code><br><span class='muted'>"
                f"{e(_when(item.received))}</span></td><td>{e(item.analysis)}</td><td>{e(item.requester)}</td>"
                f"<td>{e(item.run_id or '-')}<br>{e(item.purpose or '')}</td><td>{e(item.summary)}</td>"
                f"<td>{e(cost)}</td><td>"
                f"<form method='post' action='/decide'><input type='hidden' name='token' value='{e(form_token)}'>"
                f"<input type='hidden' name='request' value='{rid}'>"
                f"<button name='decision' value='approve' data-approve='{rid}'>Approve</button></form>"
                f"<form method='post' action='/decide'><input type='hidden' name='token' value='{e(form_token)}'>"
                f"<input type='hidden' name='request' value='{rid}'>"
                f"<input type='text' name='reason' placeholder='why (sent to the coordinator)' required "
                f"maxlength='{MAX_REASON}'><button name='decision' value='deny' data-deny='{rid}'>Deny</button>"
                "</form></td></tr>"
            )
        parts.append("</table>")
    parts.append(
        "<h2>Budget</h2><table id='budget'><tr><th>population</th><th>spent this period</th>"
        "<th>remaining</th><th>cap</th></tr>"
    )
    since = agent.period_start()
    for population, cap in sorted(policy.total_rho_cap.items()):
        spent = agent.ledger.spent(population, since)
        left = agent.remaining(population)
        parts.append(
            f"<tr data-population='{e(population)}'><td>{e(population)}</td><td>rho {spent.value:.4g}</td>"
            f"<td>{e(left.describe())}</td><td>{e(Rho(cap).describe())}</td></tr>"
        )
    parts.append("</table>")
    entries, head = agent.verified_audit  # verified when the agent opened, for this page
    recent = [x for x in agent.audit.entries() if x.decision in ("released", "undelivered")][-RECENT:]
    parts.append(
        f"<h2>What left the site</h2><p class='muted'>Audit log: {entries} entries, chain intact "
        f"(head <code>{e(head[:16])}</code>). Newest first; only differentially private aggregates leave.</p>"
        "<table id='released'><tr><th>when</th><th>request</th><th>to</th><th>run</th><th>cost</th>"
        "<th>payload sha256</th></tr>"
    )
    for x in reversed(recent):
        parts.append(
            f"<tr><td>{e(x.time)}</td><td><code>{e(x.request_id)}</code>"
            f"{' (not delivered)' if x.decision == 'undelivered' else ''}</td><td>{e(x.requester)}</td>"
            f"<td>{e(x.run_id or '-')}</td><td>rho {x.cost_rho:.4g}</td><td><code>{e(x.payload_sha256[:16])}</code></td></tr>"
        )
    parts.append("</table></body></html>")
    return "".join(parts)


def build_console(config: NodeConfig, keys: ConsoleSecrets, hosts: frozenset[str]) -> Starlette:
    """The console as an ASGI app over `config`'s state files (opened per request), answering
    requests whose Host (and Origin, when sent) is one of `hosts` (`HOST:PORT`)."""

    def host_ok(request: Request) -> bool:
        if request.headers.get("host", "") not in hosts:
            return False
        origin = request.headers.get("origin")
        return origin is None or origin.split("://", 1)[-1] in hosts

    def signed_in(request: Request) -> bool:
        return hmac.compare_digest(request.cookies.get(COOKIE, ""), keys.login)

    def refused(why: str, status: int) -> Response:
        return HTMLResponse(f"<!doctype html><p class='bad'>{html.escape(why)}</p>", status_code=status)

    async def index(request: Request) -> Response:
        if not host_ok(request):
            return refused("this console answers on its own loopback address only", 403)
        given = request.query_params.get("login")
        if given is not None:
            if not hmac.compare_digest(given, keys.login):
                return refused(
                    "that sign-in link is not this console's: use the URL `oda-node console` printed", 401
                )
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, keys.login, httponly=True, samesite="strict")
            return response
        if not signed_in(request):
            return refused("not signed in: open the URL `oda-node console` printed when it started", 401)
        agent = NodeAgent(config)
        try:
            page = _page(config, agent, keys.form, request.query_params.get("done", "")[:300])
        finally:
            agent.close()
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    async def decide(request: Request) -> Response:
        if not host_ok(request) or not signed_in(request):
            return refused("not allowed: sign in with the URL `oda-node console` printed", 403)
        body = await request.body()
        if len(body) > 8192:
            return refused("form too large", 413)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not hmac.compare_digest(form.get("token", ""), keys.form):
            return refused("the form is stale or not from this console: reload the page", 403)
        request_id, decision = form.get("request", ""), form.get("decision", "")
        reason = form.get("reason", "").strip()[:MAX_REASON]
        if decision not in ("approve", "deny") or (decision == "deny" and not reason):
            return refused("approve, or deny with a reason", 400)
        agent = NodeAgent(config)
        try:
            agent.decide(request_id, reason if decision == "deny" else None, by="the DPO console")
        except ConfigError as exc:
            return refused(str(exc), 409)
        finally:
            agent.close()
        done = f"{request_id} {'approved' if decision == 'approve' else 'denied'}: the node replies on its next poll"
        return RedirectResponse(f"/?done={done}", status_code=303)

    return Starlette(routes=[Route("/", index, methods=["GET"]), Route("/decide", decide, methods=["POST"])])


def serve_console(config: NodeConfig, host: str, port: int, allowed_hosts: frozenset[str]) -> None:
    """Serve the console until interrupted, printing its sign-in URL first.

    Raises:
        ConfigError: `host` is not a loopback address.
    """
    import uvicorn

    if not is_loopback(f"{host}:{port}"):
        raise ConfigError(
            f"--host {host}: the console listens on loopback only; reach it from elsewhere through "
            "your own reverse proxy and sign-in (and name that proxy's host with --allow-host)"
        )
    keys = ConsoleSecrets.new()
    shown = f"[{host}]" if ":" in host else host
    hosts = frozenset({f"{shown}:{port}", f"localhost:{port}"} | allowed_hosts)
    print(f"DPO console for {config.partner}: http://{shown}:{port}/?login={keys.login}", flush=True)
    print(
        "(the link signs you in; it changes at every start. Ctrl-C stops the console, not the node)",
        flush=True,
    )
    uvicorn.run(
        build_console(config, keys, hosts),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
