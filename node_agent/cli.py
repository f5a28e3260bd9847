"""`oda-node`: the partner IT command. `check` a config, `start` the node, read the `ledger`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from node_agent.exit_codes import EXIT_HELP, ExitCode, code_for
from privacy.errors import ConfigError, OdaError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {int(c):>3}  {EXIT_HELP[c]}" for c in ExitCode)
    parser = argparse.ArgumentParser(
        prog="oda-node",
        description="oda-federated node agent: releases only differentially private aggregates.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("check", "validate node.yaml and read every allowed dataset"),
        ("start", "connect to the coordinator and answer analysis requests"),
        ("ledger", "print the privacy ledger: spent and remaining budget per population"),
    ]:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", type=Path, default=Path("node.yaml"), help="path to node.yaml")
        if name == "start":
            cmd.add_argument("--coordinator", help="SuperLink Fleet address host:port (overrides node.yaml)")
    return parser


def _check(config_path: Path) -> int:
    from node_agent.agent import NodeAgent
    from node_agent.config import load_node_config

    config = load_node_config(config_path)
    agent = NodeAgent(config)
    try:
        for name in config.policy.allowed_datasets:
            frame = agent.frame(name)
            print(f"dataset {name}: {len(frame):,} rows, columns {', '.join(frame.columns)}")
        for population, cap in sorted(config.policy.total_rho_cap.items()):
            spent = agent.ledger.spent(population)
            print(f"population {population}: spent rho {spent.value:.6g} of {cap:g}")
    finally:
        agent.close()
    print(f"{config_path}: OK")
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
            print(
                f"population {population}: spent rho {spent.value:.6g}, remaining rho {max(cap - spent.value, 0):.6g} of {cap:g}"
            )
    finally:
        ledger.close()
    return ExitCode.OK


def _start(config_path: Path, coordinator: str | None) -> int:
    from node_agent.agent import NodeAgent
    from node_agent.config import load_node_config
    from node_agent.flower_node import serve

    config = load_node_config(config_path)
    address = coordinator or config.coordinator
    if not address:
        raise ConfigError(
            f"{config_path}: coordinator: no coordinator address; set it in node.yaml or pass --coordinator"
        )
    agent = NodeAgent(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        agent.warm_up()
        serve(agent, address, stop=stop)
    finally:
        agent.close()
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.config)
        if args.command == "ledger":
            return _ledger(args.config)
        return _start(args.config, args.coordinator)
    except (OdaError, KeyboardInterrupt) as exc:
        code = code_for(exc)
        print(f"oda-node: error: {exc}\n(exit {int(code)}: {EXIT_HELP[code]})", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
