"""`oda`: the analyst's command. Run an analysis spec on a federation, embedded or real."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from privacy.errors import OdaError
from privacy.exit_codes import EXIT_HELP, ExitCode, code_for, no_phone_home

if TYPE_CHECKING:
    from coordinator.deploy.flower import FlowerLink
    from coordinator.run.results import AnalysisResult

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {int(c):>3}  {EXIT_HELP[c]}" for c in ExitCode)
    parser = argparse.ArgumentParser(
        prog="oda",
        description="oda-federated coordinator: federated, differentially private analyses.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one or more analysis specs and print the result tables")
    run.add_argument("specs", type=Path, nargs="+", help="analysis spec YAML files")
    run.add_argument("--out", type=Path, default=Path("out"), help="output folder (default ./out/NAME)")
    run.add_argument(
        "--coordinator",
        type=Path,
        default=os.environ.get("ODA_COORDINATOR"),
        help="folder of a running coordinator (`oda coordinator start`; env ODA_COORDINATOR); "
        "without it an embedded federation of three partners is started on loopback",
    )
    run.add_argument(
        "--rows", type=int, default=60_000, help="rows of synthetic data in the embedded federation"
    )
    run.add_argument(
        "--work-dir", type=Path, default=None, help="embedded federation folder (default: a temporary one)"
    )
    run.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for node replies")
    run.add_argument(
        "--purpose", default=None, help="why the run is made (every partner's inbox and audit log show it)"
    )
    run.add_argument(
        "--min-partners", type=int, default=None, help="fail unless at least this many partners release"
    )
    run.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="PARTNER",
        help="a partner that must release (repeatable)",
    )
    from coordinator.service.cli import add_connection, add_runs_parser

    add_connection(run)
    add_runs_parser(sub)
    schema = sub.add_parser("schema", help="write the JSON Schemas of analysis specs and node configs")
    schema.add_argument("--out", type=Path, default=Path("configs/schema"))
    synth = sub.add_parser("synth", help="write seeded synthetic partner data and node.yaml files")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--rows", type=int, default=60_000)
    synth.add_argument("--seed", type=int, default=7)
    simulate = sub.add_parser(
        "simulate",
        help="run a spec over hundreds to thousands of virtual partners on Flower's simulation engine "
        "(pip install 'oda-federated[simulation]')",
    )
    simulate.add_argument("spec", type=Path)
    simulate.add_argument("--partners", type=int, default=100, help="virtual partners (default 100)")
    simulate.add_argument("--rows", type=int, default=300, help="rows of synthetic data each (default 300)")
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--out", type=Path, default=None, help="write the tables and manifest here")
    simulate.add_argument(
        "--root", type=Path, default=None, help="the virtual partners' folders (kept: their ledgers persist)"
    )
    simulate.add_argument("--cpus-per-partner", type=float, default=1.0, help="Ray's CPUs per partner task")
    score = sub.add_parser(
        "score-spec", help="write the spec that scores every record at each node with a fitted model.json"
    )
    score.add_argument("model", type=Path, help="model.json written by a model run")
    score.add_argument("--dataset", required=True, help="the logical dataset to score")
    score.add_argument("--identifier", required=True, help="the dataset's identifier column")
    score.add_argument("--max-rows", type=int, default=1, help="privacy unit: rows per person (default 1)")
    score.add_argument("--rho", type=float, default=0.05, help="budget of the published score histogram")
    score.add_argument("--name", default="risk_scores", help="analysis name")
    score.add_argument("--out", type=Path, required=True, help="spec file to write")
    score.add_argument(
        "--evaluate",
        action="store_true",
        help="an evaluate step instead: AUC etc. on each node's true outcomes",
    )
    _coordinator_parser(sub)
    from coordinator.blueprints.cli import add_parser

    add_parser(sub)
    return parser


def _coordinator_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    coord = sub.add_parser(
        "coordinator",
        help="set up and run the coordinator: CA, certificates, node keys, SuperLink and Fleet proxy",
        description="The coordinator's SuperLink listens on 127.0.0.1 only; partners reach the "
        "Fleet API through a TLS proxy that forwards nothing else.",
    )
    actions = coord.add_subparsers(dest="action", required=True)
    init = actions.add_parser("init", help="create the CA, the server certificate and coordinator.yaml")
    init.add_argument("dir", type=Path, help="the coordinator folder to create")
    init.add_argument(
        "--host",
        action="append",
        required=True,
        help="a name or address partners use to reach this coordinator (repeatable; the first is "
        "the one printed for node.yaml)",
    )
    init.add_argument("--name", default="oda federation", help="the federation's name")
    init.add_argument("--listen", default="0.0.0.0", help="interface of the public Fleet proxy")  # noqa: S104
    init.add_argument("--port", type=int, default=9092, help="port of the public Fleet proxy")
    init.add_argument("--superlink-port", type=int, default=9091, help="the SuperLink's port on 127.0.0.1")
    init.add_argument(
        "--api-port", type=int, default=9093, help="port of the analyst API and web console (0: none)"
    )
    cert = actions.add_parser("issue-cert", help="re-issue the server certificate (new names, or renewal)")
    cert.add_argument("dir", type=Path)
    cert.add_argument("--host", action="append", required=True, help="name or address (repeatable)")
    start = actions.add_parser("start", help="run the SuperLink (loopback) and the Fleet proxy until stopped")
    start.add_argument("dir", type=Path)
    register = actions.add_parser(
        "register-node", help="register a partner's public key (the coordinator must be running)"
    )
    register.add_argument("dir", type=Path)
    register.add_argument("public_key", type=Path, help="the partner's keys/node.pub")
    register.add_argument("--name", required=True, help="the partner's name")
    nodes = actions.add_parser("nodes", help="list registered nodes and whether they are online")
    nodes.add_argument("dir", type=Path)
    unregister = actions.add_parser("unregister-node", help="revoke a node: its key is no longer accepted")
    unregister.add_argument("dir", type=Path)
    unregister.add_argument("node_id", type=int)
    from coordinator.deploy.partners_cli import add_partner_parsers
    from coordinator.service.cli import add_user_parser

    add_partner_parsers(actions)
    add_user_parser(actions)
    openapi = actions.add_parser("openapi", help="write the analyst API's OpenAPI document")
    openapi.add_argument("--out", type=Path, default=Path("configs/openapi/analyst-api.json"))


def _print_result(result: AnalysisResult) -> None:
    spec = result.spec
    print(f"\n== {spec.name}: {spec.description.strip()}")
    print(f"   budget per partner: {spec.privacy.budget().describe()}; combine: {spec.combine}")
    for r in result.releases:
        print(
            f"   {r.partner}: {r.status}, cost rho {r.cost_rho:.4g} (epsilon {r.epsilon:.3g} at delta {r.delta:g})"
        )
    for refusal in result.refusals:
        print(f"   {refusal.partner}: {refusal.kind}: {refusal.message}")
    _print_tables(result)
    if result.out_dir:
        print(
            f"\n   files: {result.out_dir}/ (manifest.json, one CSV and one Parquet per table); {result.seconds:.2f} s"
        )


def _print_tables(result: AnalysisResult, notes: bool = True) -> None:
    import pandas as pd

    with pd.option_context("display.max_rows", 12, "display.width", 160, "display.max_columns", 12):
        for table in result.tables:
            said = "; " + "; ".join(table.notes) if notes else ""
            print(f"\n-- table {table.name} ({len(table.frame)} rows){said}")
            print(table.frame.to_string(max_rows=12, float_format=lambda x: f"{x:,.1f}"))


def _simulate(args: argparse.Namespace) -> int:
    from analyses.spec import read_spec
    from coordinator.embedded.simulation import simulate_spec

    spec = read_spec(args.spec)
    done = simulate_spec(
        spec,
        args.partners,
        rows=args.rows,
        seed=args.seed,
        out_dir=args.out,
        root=args.root,
        cpus_per_partner=args.cpus_per_partner,
    )
    result = done.result
    kinds: dict[str, int] = {}
    for refusal in result.refusals:
        kinds[refusal.kind] = kinds.get(refusal.kind, 0) + 1
    print(f"\n== {result.spec.name} over {done.partners} virtual partners ({args.rows} rows each)")
    print(
        f"   {len(result.releases)} released, "
        + (", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none refused")
        + f"; each partner's ledger holds rho {done.spent[0]:.4g} to {done.spent[1]:.4g} (folders: {done.root})"
    )
    for refusal in result.refusals[:5]:
        print(f"   {refusal.partner}: {refusal.kind}: {refusal.message}")
    print(
        f"   time: partitions {done.write_seconds:.1f} s, engine {done.engine_seconds:.1f} s, "
        f"of which the federated run {done.query_seconds:.1f} s"
    )
    _print_tables(result, notes=False)  # a table's notes name every partner: 1,000 of them here
    return ExitCode.OK


def _run(args: argparse.Namespace) -> int:
    from analyses.spec import read_spec
    from coordinator.embedded.federation import EmbeddedFederation
    from coordinator.run.orchestrator import run_analysis

    if args.url:
        from coordinator.service.cli import run_remote

        return run_remote(args)
    specs = [(path, read_spec(path)) for path in args.specs]  # every spec loaded before anything starts
    from coordinator.run.transport import Quorum, RunContext

    quorum = Quorum(args.min_partners, tuple(args.require)) if args.min_partners or args.require else None
    context = RunContext(purpose=args.purpose, quorum=quorum)

    def run_all(link: FlowerLink) -> None:
        try:
            for path, loaded in specs:
                result = run_analysis(
                    loaded, link, out_dir=args.out / path.stem, context=context, timeout=args.timeout
                )
                _print_result(result)
        finally:
            link.close()

    if args.coordinator:
        from coordinator.deploy.service import coordinator_link

        run_all(coordinator_link(Path(args.coordinator)))
        return ExitCode.OK
    with tempfile.TemporaryDirectory(prefix="oda-federation-") as tmp:
        work = args.work_dir or Path(tmp)
        print(
            f"starting the embedded federation (SuperLink + police, fire, council nodes) in {work} ...",
            flush=True,
        )
        with EmbeddedFederation(work, rows=args.rows) as federation:
            print(f"federation up: Fleet API (TLS) on {federation.fleet_address}", flush=True)
            run_all(federation.link())
        print("embedded federation stopped")
    return ExitCode.OK


def _coordinator(args: argparse.Namespace) -> int:
    from coordinator.deploy.service import coordinator_link

    if args.action == "openapi":
        from coordinator.service.api import openapi_document

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
        print(args.out)
        return ExitCode.OK
    folder: Path = args.dir
    if args.action == "init":
        from coordinator.deploy.config import init_coordinator

        config = init_coordinator(
            folder, args.name, args.host, args.listen, args.port, args.superlink_port, args.api_port or None
        )
        print(
            f"wrote {folder / 'coordinator.yaml'} and the CA in {folder / 'pki'} (keep ca.key offline if you can)"
        )
        print(f"partners reach it at {config.fleet_address}; run `oda coordinator start {folder}`, then give")
        print(
            f"each partner a one-time code from `oda coordinator invite {folder} PARTNER` (`oda-node enrol CODE`)"
        )
        if config.api_listen:
            print(
                f"analysts: `oda coordinator user add {folder} NAME --role analyst` prints a token for "
                f"https://{config.fleet_address.rpartition(':')[0]}:{config.api_listen.rpartition(':')[2]}"
            )
        return ExitCode.OK
    if args.action == "issue-cert":
        from coordinator.deploy.pki import issue_server_certificate

        pki = issue_server_certificate(folder / "pki", args.host)
        print(
            f"wrote {pki.server_cert} for {', '.join(pki.server_hosts())}; restart the coordinator to use it"
        )
        return ExitCode.OK
    if args.action == "start":
        return _serve_coordinator(folder)
    if args.action == "user":
        from coordinator.service.cli import user_main

        return user_main(args)
    from coordinator.deploy.partners_cli import PARTNER_ACTIONS, partners_main

    if args.action in PARTNER_ACTIONS:
        return partners_main(args)
    link = coordinator_link(folder)
    try:
        if args.action == "register-node":
            try:
                key = args.public_key.read_bytes()
            except OSError as exc:
                from privacy.errors import ConfigError

                raise ConfigError(f"{args.public_key}: cannot read the public key: {exc.strerror}") from exc
            node_id = link.register_node(key, args.name)
            print(f"registered {args.name} as node {node_id}; it can now connect with `oda-node start`")
        elif args.action == "unregister-node":
            link.unregister_node(args.node_id)
            print(f"unregistered node {args.node_id}: its key is no longer accepted")
        else:
            from coordinator.deploy.config import load_coordinator
            from coordinator.service.fleet import fleet, fleet_lines
            from coordinator.service.serve import open_store

            store = open_store(folder, load_coordinator(folder))
            try:
                print("\n".join(fleet_lines(fleet(link.list_nodes(), store.partners_seen()))))
            finally:
                store.close()
    finally:
        link.close()
    return ExitCode.OK


def _serve_coordinator(folder: Path) -> int:
    import signal
    import threading

    from coordinator.deploy.service import CoordinatorService

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with CoordinatorService(folder) as service, service.enrolments() as tend:
        print(
            f"coordinator {service.config.name}: SuperLink on {service.superlink_address} (loopback), "
            f"Fleet API on https://{service.fleet_listen}"
            + (f", analyst API on https://{service.config.api_listen}" if service.config.api_listen else "")
            + "; Ctrl-C stops",
            flush=True,
        )
        while not stop.wait(1.0):
            service.processes.check_alive()
            for line in tend():
                print(line, flush=True)
    return ExitCode.OK


def _score_spec(args: argparse.Namespace) -> int:
    from analyses.documents import parse_document
    from analyses.glm import GlmModel
    from analyses.spec import AnalysisSpec
    from coordinator.run.models import score_spec
    from privacy.errors import SpecError

    try:
        model = GlmModel.from_json(args.model.read_text())
    except OSError as exc:
        raise SpecError(f"{args.model}: cannot read the model: {exc.strerror}") from exc
    kind = "evaluate" if args.evaluate else "score"
    text = score_spec(model, args.name, args.dataset, args.rho, args.identifier, args.max_rows, kind)
    parse_document(text, AnalysisSpec, source=str(args.out))  # what we write must be valid
    args.out.write_text(text)
    print(f"wrote {args.out}: run it with `oda run {args.out}`; each partner keeps its scores locally")
    return ExitCode.OK


def _schema(out: Path) -> int:
    from coordinator.embedded.documents import schema_models

    out.mkdir(parents=True, exist_ok=True)
    for name, model in schema_models():
        (out / name).write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
        print(out / name)
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    no_phone_home()
    args = _parser().parse_args(argv)
    try:
        if args.command == "schema":
            return _schema(args.out)
        if args.command == "synth":
            from coordinator.embedded.synthetic import write_federation

            for partner, path in write_federation(args.out, args.rows, args.seed).items():
                print(f"{partner}: {path}")
            return ExitCode.OK
        if args.command == "coordinator":
            return _coordinator(args)
        if args.command == "score-spec":
            return _score_spec(args)
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "runs":
            from coordinator.service.cli import runs_main

            return runs_main(args)
        if args.command == "blueprint":
            from coordinator.blueprints.cli import main as blueprint_main

            return blueprint_main(args)
        return _run(args)
    except KeyboardInterrupt:
        what = {
            "run": "the processes this command started were stopped; the analyses that had finished are in "
            "--out, the one under way wrote nothing",
            "simulate": "the simulation was stopped; nothing was written",
            "coordinator": "the coordinator's processes were stopped",
        }.get(args.command, "nothing was changed")
        print(f"oda: stopped by Ctrl-C: {what}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except OdaError as exc:
        code = code_for(exc)
        print(f"oda: error: {exc}\n(exit {int(code)}: {EXIT_HELP[code]})", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
