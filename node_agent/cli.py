"""`oda-node`: the partner IT command.

`init` a node folder, `check` it, `start` it, see its `status`; decide on requests waiting in
the `inbox` (`approve`, `deny`); read the `ledger`; `audit verify|export`; write the `report`
for the data protection officer.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from privacy.errors import ConfigError, FederationError, OdaError
from privacy.exit_codes import EXIT_HELP, ExitCode, code_for, no_phone_home

if TYPE_CHECKING:
    from node_agent.config import NodeConfig

__all__ = ["main"]

_COMMANDS = [
    ("init", "write a commented node.yaml and the node key pair, and print the public key"),
    ("enrol", "register this node with the coordinator using the one-time code it sent you"),
    ("rotate-key", "replace the node key: the new key is registered, then the old one revoked"),
    ("check", "validate node.yaml, reach every source, and check the data against its contract"),
    ("fit", "propose the node.yaml dataset block that maps your file onto a blueprint's dataset contract"),
    ("start", "connect to the coordinator and answer analysis requests"),
    ("status", "budget, inbox and audit state of this node"),
    ("inbox", "requests waiting for approval (policy approval: manual)"),
    ("approve", "approve a waiting request: it is released on the node's next poll"),
    ("deny", "deny a waiting request: the reason goes back to the coordinator"),
    ("ledger", "print the privacy ledger: spent and remaining budget per population"),
    ("audit", "verify or export the hash-chained audit log"),
    ("report", "write the HTML transparency report for the data protection officer"),
    ("reload", "apply node.yaml changes to the running node; requests held for approval are kept"),
    ("console", "a live page for the data protection officer on loopback: inbox, budget, what left"),
    (
        "linkage-key",
        "make the partnership's linkage key for overlap steps, to share with partners out of band",
    ),
]


#: What Ctrl-C stopped, per command (one line; state files are transactional, so nothing is half-written).
_STOPPED = {
    "start": "the node disconnected; requests waiting for approval stay in the inbox, and every spend is in "
    "the ledger",
    "enrol": "enrolment interrupted; if the code was already sent, `oda coordinator enrolments` shows it",
    "rotate-key": "rotation interrupted; the current key is still in use (run `oda-node rotate-key` again)",
    "check": "the check was stopped before it finished",
    "report": "no report was written",
    "console": "the console stopped; the node itself keeps running",
}


def _parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {int(c):>3}  {EXIT_HELP[c]}" for c in ExitCode)
    parser = argparse.ArgumentParser(
        prog="oda-node",
        description="oda-federated node agent: releases only differentially private aggregates.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in _COMMANDS:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", type=Path, default=Path("node.yaml"), help="path to node.yaml")
        if name == "init":
            cmd.add_argument("--partner", required=True, help="your organisation's short name")
            cmd.add_argument("--coordinator", default=None, help="the coordinator's Fleet address host:port")
        if name == "console":
            cmd.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
            cmd.add_argument("--port", type=int, default=8765, help="port (default 8765)")
            cmd.add_argument(
                "--allow-host",
                action="append",
                default=[],
                metavar="HOST:PORT",
                help="the Host of your own reverse proxy in front of the console (repeatable)",
            )
        if name == "fit":
            cmd.add_argument(
                "blueprint", help="a blueprint of the catalogue (e.g. road_safety) or a blueprint file"
            )
            cmd.add_argument(
                "--source", type=Path, required=True, help="your CSV or Parquet file (inside data_dir)"
            )
            cmd.add_argument(
                "--dataset", default=None, help="the blueprint's dataset (default: its only one)"
            )
            cmd.add_argument("--write", action="store_true", help="add the block to node.yaml (kept as .bak)")
            cmd.add_argument(
                "--cap", type=float, default=5.0, help="rho cap for the new population (--write)"
            )
            cmd.add_argument(
                "--param", action="append", default=[], metavar="NAME=VALUE", help="a blueprint parameter"
            )
        if name == "enrol":
            cmd.add_argument("code", help="the enrolment code `oda coordinator invite` printed")
            cmd.add_argument("--wait", type=float, default=600.0, help="seconds to wait for registration")
        if name == "start":
            cmd.add_argument("--coordinator", help="SuperLink Fleet address host:port (overrides node.yaml)")
        if name in ("approve", "deny"):
            cmd.add_argument("request_id", help="the request id shown by `oda-node inbox`")
        if name == "deny":
            cmd.add_argument("--reason", required=True, help="why; sent back to the coordinator")
        if name == "audit":
            cmd.add_argument("action", choices=["verify", "export"])
            cmd.add_argument("--out", type=Path, default=None, help="export file (.csv or .jsonl)")
        if name == "report":
            cmd.add_argument("--out", type=Path, default=Path("transparency-report.html"))
        if name == "linkage-key":
            cmd.add_argument("file", type=Path, help="where to write the new key (never overwritten)")
    return parser


def _init(config_path: Path, partner: str, coordinator: str | None) -> int:
    from node_agent.keys import write_key_pair
    from node_agent.templates import node_yaml

    if config_path.exists():
        raise ConfigError(f"{config_path} already exists; init never overwrites a config")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(node_yaml(partner, coordinator))
    (config_path.parent / "data").mkdir(exist_ok=True)
    public = write_key_pair(config_path.parent / "keys")
    print(f"wrote {config_path}: edit the datasets and policy, then run `oda-node check`")
    print(f"wrote the node key pair in {config_path.parent / 'keys'} (keep node.key private)")
    print("send this public key to the coordinator, who registers it with `oda coordinator register-node`:")
    print(public.read_text().strip())
    print(
        f"the coordinator sends back its CA certificate: save it as {config_path.parent / 'keys' / 'ca.crt'}"
    )
    return ExitCode.OK


def _check(config_path: Path) -> int:
    from node_agent.agent import NodeAgent
    from node_agent.config import load_node_config

    config = load_node_config(config_path)
    agent = NodeAgent(config)
    failing = 0
    try:
        for name in config.policy.allowed_datasets:
            data = agent.datasets.loaded(name)
            print(
                f"dataset {name}: {data.source_rows:,} rows, columns {', '.join(data.frame.columns)}; "
                f"times in {config.datasets[name].timezone}"
            )
            for rule, count in data.rules:
                print(f"  {'FAIL' if count else 'ok  '} {rule}: {count:,} rows")
                failing += count > 0
            if data.dropped:
                print(f"  {data.dropped:,} rows break the contract: analyses leave them out until fixed")
        for population, cap in sorted(config.policy.total_rho_cap.items()):
            print(
                f"population {population}: remaining {agent.remaining(population).describe()} of rho {cap:g}"
            )
        entries, head = agent.verified_audit
        print(f"audit log: {entries} entries, chain intact (head {head[:16]})")
        _check_transport(config)
    finally:
        agent.close()
    if failing:
        from privacy.errors import DataError

        raise DataError(
            f"{failing} contract rule(s) fail (row counts above, shown only here); the rows that break "
            "them are left out of every analysis: fix the data or the contract"
        )
    print(f"{config_path}: OK")
    return ExitCode.OK


def _check_transport(config: NodeConfig) -> None:
    from node_agent.transport import connection_settings, probe

    if not config.coordinator:
        print("coordinator: none configured (set `coordinator:` before `oda-node start`)")
        return
    settings = connection_settings(config, config.coordinator)
    trust = (
        "plain HTTP (loopback development)"
        if settings.insecure
        else f"TLS, trusting {settings.ca_path or 'the system CAs'}"
    )
    print(f"node key: {config.transport.node_key} (P-384)")
    if not probe(settings):
        print(f"coordinator {config.coordinator}: NOT reachable now ({trust}); `start` will keep trying")
        return
    print(f"coordinator {config.coordinator}: reachable, {trust}")
    if settings.insecure:
        return
    from node_agent.enrol import registration

    state = registration(settings.address, settings.ca_path, Path(config.transport.node_key))
    if state is None:
        print("registration: this coordinator does not say (it predates enrolment codes)")
    elif state.get("registered"):
        print(f"registration: this node's key is registered as {state['name']} (node {state['node_id']})")
    else:
        raise FederationError(
            f"the coordinator at {config.coordinator} is reachable, but this node's key "
            f"({config.transport.node_key}) is NOT registered there: run `oda-node enrol CODE` with a "
            "code from the coordinator (`oda coordinator invite`), or ask it to register keys/node.pub"
        )


def _fit(args: argparse.Namespace) -> int:
    from analyses.blueprint import parse_parameters
    from node_agent.fit import fit_dataset, load_blueprint_for_fit, write_fit

    data_dir: Path | None = None
    if args.config.exists():
        from node_agent.config import load_node_config

        data_dir = Path(load_node_config(args.config).data_dir)
    loaded = load_blueprint_for_fit(args.blueprint)
    fit, contract = fit_dataset(loaded, args.dataset, args.source, data_dir, parse_parameters(args.param))
    print(fit.yaml(contract), end="")
    matched = len(fit.columns) - len(fit.unmatched)
    print(f"# {matched} of {len(fit.columns)} contract columns found in {args.source}", end="")
    print(f"; not used: {', '.join(fit.unused)}" if fit.unused else "")
    if args.write:
        write_fit(args.config, fit, contract, args.cap)
        print(
            f"added dataset {fit.dataset!r} to {args.config} (the old file is {args.config}.bak); "
            "now run `oda-node check`"
        )
    elif not fit.unmatched:
        print(f"# add it under `datasets:` in {args.config} (or rerun with --write), then `oda-node check`")
    if fit.unmatched:
        from privacy.errors import DataError

        raise DataError(
            f"{', '.join(c.name for c in fit.unmatched)}: no column of {args.source} fits the contract; "
            "map them with `source:` (the proposal marks them TODO)"
        )
    return ExitCode.OK


def _rotate_key(config_path: Path) -> int:
    from node_agent.config import load_node_config
    from node_agent.enrol import rotate_key

    config = load_node_config(config_path)
    if not config.coordinator:
        raise ConfigError(f"{config_path}: coordinator: no coordinator to rotate the key with")
    ca = Path(config.transport.ca_cert) if config.transport.ca_cert else None
    print(rotate_key(config.coordinator, ca, Path(config.transport.node_key).parent))
    return ExitCode.OK


def _status(config_path: Path) -> int:
    from node_agent.agent import NodeAgent
    from node_agent.config import load_node_config

    config = load_node_config(config_path)
    agent = NodeAgent(config)
    try:
        policy = config.policy
        print(
            f"partner {config.partner}; coordinator {config.coordinator or '(none)'}; approval {policy.approval}"
        )
        for population, cap in sorted(policy.total_rho_cap.items()):
            spent = agent.ledger.spent(population, agent.period_start())
            print(
                f"population {population}: spent rho {spent.value:.6g}, remaining "
                f"{agent.remaining(population).describe()} of rho {cap:g}"
            )
        waiting = agent.inbox.items("waiting")
        print(f"inbox: {len(waiting)} waiting" + (" (see `oda-node inbox`)" if waiting else ""))
        contact = agent.contact.last()
        when = datetime.fromtimestamp(contact, UTC).isoformat(timespec="seconds") if contact else "never"
        print(f"last contact with the coordinator: {when}")
        entries, head = agent.verified_audit
        last = agent.audit.entries()[-1] if entries else None
        print(f"audit log: {entries} entries, chain intact, head {head[:16]}")
        if last:
            print(f"last decision: {last.decision} {last.request_id} for {last.requester} at {last.time}")
    finally:
        agent.close()
    return ExitCode.OK


def _inbox(config_path: Path) -> int:
    from node_agent.agent import NodeAgent
    from node_agent.config import load_node_config

    agent = NodeAgent(load_node_config(config_path))
    try:
        items = agent.inbox.items("waiting")
        if not items:
            print("no requests waiting")
        for item in items:
            when = datetime.fromtimestamp(item.received, UTC).isoformat(timespec="seconds")
            print(f"{item.request_id}  {item.analysis}  from {item.requester}  received {when}")
            if item.run_id:
                print(f"  run {item.run_id}" + (f"; purpose: {item.purpose}" if item.purpose else ""))
            print(f"  {item.summary}")
            print(f"  cost rho {item.cost_rho:.6g}; remaining now:")
            for population in sorted(agent.config.policy.total_rho_cap):
                print(f"    {population}: {agent.remaining(population).describe()}")
        recent = [i for i in agent.inbox.items("expired") if time.time() - i.received < 86_400]
        for item in recent:
            print(f"left the inbox: {item.request_id}  {item.analysis}  from {item.requester}: {item.reason}")
    finally:
        agent.close()
    return ExitCode.OK


def _decide(config_path: Path, request_id: str, reason: str | None) -> int:
    from node_agent.agent import NodeAgent
    from node_agent.config import load_node_config

    agent = NodeAgent(load_node_config(config_path))
    try:
        agent.decide(request_id, reason)
        print(
            f"{request_id} {'denied' if reason is not None else 'approved'}; the running node replies on its next poll"
        )
    finally:
        agent.close()
    return ExitCode.OK


def _ledger(config_path: Path) -> int:
    from node_agent.config import load_node_config
    from node_agent.ledger import Ledger

    config = load_node_config(config_path)
    ledger = Ledger(Path(config.state_dir) / "ledger.sqlite")
    try:
        for e in ledger.entries():
            print(f"{e.id:>6}  {e.status:<9}  {e.population:<16}  rho {e.rho:.6g}  request {e.request_id}")
        for population, cap in sorted(config.policy.total_rho_cap.items()):
            spent = ledger.spent(population)
            print(f"population {population}: spent rho {spent.value:.6g} in all; cap rho {cap:g} per period")
    finally:
        ledger.close()
    return ExitCode.OK


def _audit(config_path: Path, action: str, out: Path | None) -> int:
    from node_agent.audit import AuditLog
    from node_agent.config import load_node_config

    config = load_node_config(config_path)
    log = AuditLog(Path(config.state_dir))
    entries, head = log.verify()
    if action == "verify":
        print(f"{log.path}: {entries} entries, chain intact, head {head}")
        return ExitCode.OK
    rows = [asdict(e) for e in log.entries()]
    if out is None or out.suffix == ".jsonl":
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        if out is None:
            sys.stdout.write(text)
        else:
            out.write_text(text)
    else:
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["seq"])
            writer.writeheader()
            writer.writerows(rows)
    if out is not None:
        print(f"exported {entries} verified entries to {out}")
    return ExitCode.OK


def _report(config_path: Path, out: Path) -> int:
    from node_agent.agent import NodeAgent
    from node_agent.config import load_node_config
    from node_agent.report import transparency_report

    agent = NodeAgent(load_node_config(config_path))
    try:
        out.write_text(transparency_report(agent))
    finally:
        agent.close()
    print(f"wrote {out}")
    return ExitCode.OK


def _start(config_path: Path, coordinator: str | None) -> int:
    from node_agent.agent import NodeAgent
    from node_agent.config import load_node_config
    from node_agent.flower_node import serve
    from node_agent.reload import Reloader
    from node_agent.transport import connection_settings, probe

    config = load_node_config(config_path)
    address = coordinator or config.coordinator
    if not address:
        raise ConfigError(
            f"{config_path}: coordinator: no coordinator address; set it in node.yaml or pass --coordinator"
        )
    settings = connection_settings(config, address)  # before anything else: a bad key fails fast
    if not probe(settings):  # a wrong CA or plain HTTP fails here, before the data is loaded
        logging.getLogger("oda.node").warning("the coordinator at %s is not reachable yet; retrying", address)
    agent = NodeAgent(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    reloader = Reloader(agent, config_path, stop)
    try:
        agent.datasets.warm_up()
        reloader.start()
        serve(agent, settings, stop=stop)
    finally:
        stop.set()
        agent.close()
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    no_phone_home()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll would flood the log
    args = _parser().parse_args(argv)
    try:
        command: str = args.command
        if command == "init":
            return _init(args.config, args.partner, args.coordinator)
        if command == "check":
            return _check(args.config)
        if command == "fit":
            return _fit(args)
        if command == "reload":
            from node_agent.config import load_node_config
            from node_agent.reload import request_reload

            try:
                state_dir = Path(load_node_config(args.config).state_dir)
            except ConfigError as exc:
                raise ConfigError(f"{exc}\n(nothing was sent: the running node keeps its config)") from exc
            print(request_reload(state_dir))
            return ExitCode.OK
        if command == "console":
            from node_agent.config import load_node_config
            from node_agent.console import serve_console

            serve_console(load_node_config(args.config), args.host, args.port, frozenset(args.allow_host))
            return ExitCode.OK
        if command == "enrol":
            from node_agent.enrol import enrol

            print(enrol(args.config, args.code, wait=args.wait))
            return ExitCode.OK
        if command == "rotate-key":
            return _rotate_key(args.config)
        if command == "status":
            return _status(args.config)
        if command == "inbox":
            return _inbox(args.config)
        if command in ("approve", "deny"):
            return _decide(args.config, args.request_id, getattr(args, "reason", None))
        if command == "ledger":
            return _ledger(args.config)
        if command == "audit":
            return _audit(args.config, args.action, args.out)
        if command == "report":
            return _report(args.config, args.out)
        if command == "linkage-key":
            from node_agent.linkage import new_linkage_key

            new_linkage_key(args.file)
            print(
                f"wrote a new 256-bit linkage key to {args.file} (owner-only). Every partner that takes part"
            )
            print(
                "in overlap steps needs the same key: share it out of band (never through the coordinator),"
            )
            print("and point linkage.key_file in each node.yaml at it.")
            return ExitCode.OK
        return _start(args.config, args.coordinator)
    except KeyboardInterrupt:
        logging.disable(logging.CRITICAL)  # Flower's threads would log their own ending after this line
        print(
            f"oda-node: stopped by Ctrl-C: {_STOPPED.get(args.command, 'nothing was changed')}",
            file=sys.stderr,
        )
        return ExitCode.INTERRUPTED
    except OdaError as exc:
        code = code_for(exc)
        print(f"oda-node: error: {exc}\n(exit {int(code)}: {EXIT_HELP[code]})", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
