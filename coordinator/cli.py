"""`oda`: the analyst's command. Run an analysis spec on a federation, embedded or real."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

from node_agent.exit_codes import EXIT_HELP, ExitCode, code_for
from privacy.errors import OdaError

__all__ = ["main"]

DEFAULT_SPEC = Path("configs/analyses/incidents_by_area.yaml")


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
        "--superlink",
        default=os.environ.get("ODA_SUPERLINK"),
        help="SuperLink address of a running federation (env ODA_SUPERLINK); "
        "without it an embedded federation of three partners is started on loopback",
    )
    run.add_argument(
        "--rows", type=int, default=60_000, help="rows of synthetic data in the embedded federation"
    )
    run.add_argument(
        "--work-dir", type=Path, default=None, help="embedded federation folder (default: a temporary one)"
    )
    run.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for node replies")
    schema = sub.add_parser("schema", help="write the JSON Schemas of analysis specs and node configs")
    schema.add_argument("--out", type=Path, default=Path("configs/schema"))
    synth = sub.add_parser("synth", help="write seeded synthetic partner data and node.yaml files")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--rows", type=int, default=60_000)
    synth.add_argument("--seed", type=int, default=7)
    return parser


def _print_result(result: object) -> None:
    from coordinator.orchestrator import AnalysisResult

    assert isinstance(result, AnalysisResult)  # noqa: S101  # narrowing only
    spec = result.spec
    print(f"\n== {spec.name}: {spec.description.strip()}")
    print(f"   budget per partner: {spec.privacy.budget().describe()}; combine: {spec.combine}")
    for r in result.releases:
        print(
            f"   {r.partner}: {r.status}, cost rho {r.cost_rho:.4g} (epsilon {r.epsilon:.3g} at delta {r.delta:g})"
        )
    for refusal in result.refusals:
        print(f"   {refusal['node']}: {refusal['outcome']}: {refusal['message']}")
    with pd.option_context("display.max_rows", 12, "display.width", 160, "display.max_columns", 12):
        for table in result.tables:
            print(f"\n-- table {table.name} ({len(table.frame)} rows); " + "; ".join(table.notes))
            print(table.frame.to_string(max_rows=12, float_format=lambda x: f"{x:,.1f}"))
    if result.out_dir:
        print(
            f"\n   files: {result.out_dir}/ (manifest.json, one CSV and one Parquet per table); {result.seconds:.2f} s"
        )


def _run(args: argparse.Namespace) -> int:
    from coordinator.federation import EmbeddedFederation
    from coordinator.flower_server import FlowerLink
    from coordinator.orchestrator import run_analysis

    texts = []
    for path in args.specs:
        try:
            texts.append((path, path.read_text("utf-8")))
        except OSError as exc:
            from privacy.errors import SpecError

            raise SpecError(f"{path}: cannot read the spec: {exc.strerror}") from exc
    # Validate every spec before starting anything.
    from analyses.documents import parse_document
    from analyses.spec import AnalysisSpec

    for path, text in texts:
        parse_document(text, AnalysisSpec, source=str(path))

    def run_all(address: str) -> None:
        link = FlowerLink(address)
        try:
            for path, text in texts:
                name = path.stem
                result = run_analysis(
                    text, link, source=str(path), out_dir=args.out / name, timeout=args.timeout
                )
                _print_result(result)
        finally:
            link.close()

    if args.superlink:
        run_all(args.superlink)
        return ExitCode.OK
    with tempfile.TemporaryDirectory(prefix="oda-federation-") as tmp:
        work = args.work_dir or Path(tmp)
        print(
            f"starting the embedded federation (SuperLink + police, fire, council nodes) in {work} ...",
            flush=True,
        )
        with EmbeddedFederation(work, rows=args.rows) as federation:
            print(f"federation up on {federation.address}", flush=True)
            run_all(federation.address)
        print("embedded federation stopped")
    return ExitCode.OK


def _schema(out: Path) -> int:
    from analyses.spec import AnalysisSpec
    from node_agent.config import NodeConfig

    out.mkdir(parents=True, exist_ok=True)
    models: list[tuple[str, type[AnalysisSpec] | type[NodeConfig]]] = [
        ("analysis-spec.v1.json", AnalysisSpec),
        ("node-config.v1.json", NodeConfig),
    ]
    for name, model in models:
        (out / name).write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
        print(out / name)
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "schema":
            return _schema(args.out)
        if args.command == "synth":
            from coordinator.synthetic import write_federation

            for partner, path in write_federation(args.out, args.rows, args.seed).items():
                print(f"{partner}: {path}")
            return ExitCode.OK
        return _run(args)
    except (OdaError, KeyboardInterrupt) as exc:
        code = code_for(exc)
        print(f"oda: error: {exc}\n(exit {int(code)}: {EXIT_HELP[code]})", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
