"""`oda runs` (list, show, cancel, fetch, watch), `oda run --url`, and `oda coordinator user`:
the analyst service from the command line, through the same Python client notebooks use.

The service is named by `--url`, `--token` and `--ca-cert`, or by the environment (`ODA_URL`,
`ODA_TOKEN`, `ODA_CA_CERT`), so a token need not appear in a shell history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privacy.errors import ConfigError
from privacy.exit_codes import ExitCode

if TYPE_CHECKING:
    from coordinator.service.client import Client, Run

__all__ = [
    "add_connection",
    "add_runs_parser",
    "add_user_parser",
    "client_of",
    "run_remote",
    "runs_main",
    "user_main",
]


def add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=os.environ.get("ODA_URL"), help="the analyst API, https://HOST:PORT (env ODA_URL)"
    )
    p.add_argument(
        "--token", default=os.environ.get("ODA_TOKEN"), help="your token (env ODA_TOKEN; prefer the env)"
    )
    p.add_argument(
        "--ca-cert", default=os.environ.get("ODA_CA_CERT"), help="the federation's ca.crt (env ODA_CA_CERT)"
    )


def client_of(args: argparse.Namespace) -> Client:
    """Raises: ConfigError when the URL or the token is missing."""
    from coordinator.service.client import Client

    if not args.url or not args.token:
        raise ConfigError("give --url and --token (or set ODA_URL and ODA_TOKEN) to reach the analyst API")
    return Client(args.url, args.token, args.ca_cert)


def add_runs_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = sub.add_parser(
        "runs",
        help="runs on the analyst service: list, show, cancel, fetch, watch, review, approve, reject, changes",
    )
    actions = runs.add_subparsers(dest="action", required=True)
    lst = actions.add_parser("list", help="runs, newest first")
    lst.add_argument("--state", action="append", help="only runs in this state (repeatable)")
    lst.add_argument("--owner", help="only this analyst's runs (reviewers and admins)")
    lst.add_argument("--limit", type=int, default=30)
    add_connection(lst)
    for name, text in (
        ("show", "one run: state, partners, cost planned and debited, refusals, tables"),
        ("watch", "follow a run live until it ends"),
        ("cancel", "cancel a run: partners still deciding withdraw it and spend nothing"),
        ("fetch", "download a run's tables (Parquet), manifest and report"),
        ("review", "a run's output review: each output's status, checks, decisions and differencing risk"),
        ("approve", "as a reviewer: approve one output of a run"),
        ("reject", "as a reviewer: reject one output of a run, with a reason the analyst reads"),
        ("changes", "as a reviewer: ask for changes to one output of a run, with a reason"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("run_id")
        if name in ("approve", "reject", "changes"):
            p.add_argument("output", help="the output's name (`oda runs review RUN` lists them)")
            p.add_argument("--reason", required=name != "approve", help="why (the analyst reads it)")
        add_connection(p)
        if name == "cancel":
            p.add_argument("--reason", default="", help="why (every partner's inbox shows it)")
        if name == "fetch":
            p.add_argument("--out", type=Path, default=Path("out/runs"), help="folder (default out/runs/RUN)")


def add_user_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = actions.add_parser("user", help="analysts' accounts: add (prints the token once), list, revoke")
    verbs = user.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="create an account and print its token once")
    add.add_argument("dir", type=Path)
    add.add_argument("name", help="e.g. alice (the nodes see alice@<federation>)")
    add.add_argument("--role", required=True, choices=["admin", "analyst", "reviewer", "reader"])
    lst = verbs.add_parser("list", help="accounts and their roles (never their tokens)")
    lst.add_argument("dir", type=Path)
    revoke = verbs.add_parser("revoke", help="revoke an account: its token stops working at once")
    revoke.add_argument("dir", type=Path)
    revoke.add_argument("name")


def user_main(args: argparse.Namespace) -> int:
    from coordinator.deploy.config import load_coordinator
    from coordinator.service.accounts import add_user
    from coordinator.service.serve import federation_slug, open_store

    config = load_coordinator(args.dir)
    store = open_store(args.dir, config)
    try:
        if args.verb == "add":
            issued = add_user(store, args.name, args.role)
            print(
                f"added {args.name} ({args.role}); the nodes will see {args.name}@{federation_slug(config)}"
            )
            print("token (shown once; only its hash is kept):")
            print(f"  {issued.token}")
        elif args.verb == "revoke":
            store.revoke_user(args.name)
            print(f"revoked {args.name}: its token no longer works")
        else:
            for u in store.users():
                print(f"  {u.name:<24} {u.role:<9} {'revoked' if u.revoked_at else 'active'}")
    finally:
        store.close()
    return ExitCode.OK


def _print_run(run: Run) -> None:
    d = run.data
    print(f"{d['id']}  {d['name']}  {d['state']}  (analyst {d['owner']})")
    if d.get("reason"):
        print(f"  {d['reason']}")
    print(
        f"  submitted {d['created_at']}; deadline {d['deadline_at']}; finished {d.get('finished_at') or '-'}"
    )
    for analysis, per in d.get("planned", {}).items():
        print(f"  planned {analysis}: " + ", ".join(f"{ds} rho {r:.4g}" for ds, r in per.items()))
    for partner, p in d.get("partners", {}).items():
        print(f"  {partner:<16} {p['state']:<9} rho {p['cost_rho']:.4g}  {p.get('message') or ''}")
    for r in d.get("refusals", []):
        print(f"  refused: {r['analysis']}: {r['partner']} {r['kind']}: {r['message']}")
    for t in d.get("tables", []):
        print(f"  table {t['name']} ({t['rows']} rows)")


def _print_review(screen: dict[str, Any]) -> None:
    print(
        f"{screen['run']}  (analyst {screen['owner']}, {screen['state']}); debited: {screen['privacy_debited']}"
    )
    for o in screen["outputs"]:
        print(
            f"  {o['name']:<32} {o['status']:<18} {len(o['approvals'])} of {o['required_approvals']} approvals"
        )
        print("    checks: " + (", ".join(f"{k} {n}" for k, n in o["checks"].items()) or "-"))
        for d in o["decisions"]:
            print(f"    {d['reviewer']}: {d['decision']}" + (f": {d['reason']}" if d["reason"] else ""))
        for r in o["differencing"]:
            where = f"published in run {r['run']}" if r["published"] else "this run"
            print(f"    shares {', '.join(r['shared_keys'])} with {r['output']} ({where}): {r['risk']}")


def _watch(run: Run) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    def table() -> Table:
        t = Table(title=f"{run.id} {run.data['name']}: {run.state}")
        for column in ("partner", "state", "requests", "debited rho", "message"):
            t.add_column(column)
        for partner, p in sorted(run.partners.items()):
            t.add_row(
                partner, p["state"], str(p["requests"]), f"{p['cost_rho']:.4g}", (p.get("message") or "")[:60]
            )
        return t

    with Live(table(), console=Console(), refresh_per_second=4) as live:
        for _ in run.events():
            run.refresh()
            live.update(table())
        run.refresh()
        live.update(table())
    print(f"{run.id}: {run.state}: {run.data.get('reason') or ''}")


def runs_main(args: argparse.Namespace) -> int:
    client = client_of(args)
    try:
        if args.action == "list":
            for run in client.runs(state=args.state, owner=args.owner, limit=args.limit):
                d = run.data
                spent = sum(d.get("debited", {}).values())
                print(
                    f"  {d['id']}  {d['state']:<11} {d['owner']:<12} {d['created_at']}  rho {spent:<8.4g} {d['name']}"
                )
            return ExitCode.OK
        run = client.run(args.run_id)
        if args.action == "show":
            _print_run(run)
        elif args.action == "cancel":
            run.cancel(args.reason)
            print(
                f"{run.id}: {run.state}"
                + (f" (cancel requested: {run.data['cancel_requested']})" if run.state != "cancelled" else "")
            )
        elif args.action == "watch":
            _watch(run)
        elif args.action == "review":
            _print_review(run.review())
        elif args.action in ("approve", "reject", "changes"):
            decision = "approve" if args.action == "approve" else args.action
            out = run.decide(args.output, decision, args.reason)
            print(
                f"{run.id} {out['name']}: {out['status']} ({len(out['approvals'])} of {out['required_approvals']} approvals)"
            )
        else:
            return _fetch(run, args.out / run.id)
    finally:
        client.close()
    return ExitCode.OK


def _fetch(run: Run, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for name in run.tables:
        path = out / f"{name}.parquet"
        path.write_bytes(
            run.client.request("GET", f"/runs/{run.id}/tables/{name}", params={"format": "parquet"}).content
        )
        print(path)
    (out / "manifest.json").write_text(json.dumps(run.manifest(), indent=2, sort_keys=True) + "\n")
    print(out / "manifest.json")
    if run.data["source"] == "blueprint":
        (out / "report.html").write_bytes(run.file("report.html"))
        print(out / "report.html")
    return ExitCode.OK


def run_remote(args: argparse.Namespace) -> int:
    """`oda run SPEC... --url ...`: submit each spec, follow it, print its tables."""
    client = client_of(args)
    try:
        runs = [
            client.submit(path, purpose=args.purpose) for path in args.specs
        ]  # all accepted before any waits
        for run in runs:
            print(f"submitted {run.id} ({run.data['name']})", flush=True)
            run.wait(progress=sys.stdout.isatty())
            _print_run(run)
            for name in run.tables:
                print(f"\n-- {name}")
                print(run.tables[name].to_string(max_rows=12))
    finally:
        client.close()
    return ExitCode.OK
