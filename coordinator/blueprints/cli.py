"""`oda blueprint`: list, show, cost, run, publish and pull blueprints."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from privacy.errors import SpecError
from privacy.exit_codes import ExitCode

if TYPE_CHECKING:  # loaded when a command runs, so `oda --help` stays quick (OpenDP takes seconds)
    from analyses.blueprint import LoadedBlueprint, RenderedBlueprint, SignedBlueprint
    from privacy.budget import Rho

__all__ = ["add_parser", "main"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bp = sub.add_parser(
        "blueprint",
        help="published, parameterised analyses: list, show, cost, run, publish, pull",
        description="A blueprint is named from the shipped catalogue, a registry (--registry), or a "
        "YAML file path. Parameters are given as --param NAME=VALUE.",
    )
    actions = bp.add_subparsers(dest="action", required=True)
    registry_help = "a blueprint registry folder (env ODA_BLUEPRINTS); its blueprints are verified when read"
    default_registry = os.environ.get("ODA_BLUEPRINTS")

    def common(p: argparse.ArgumentParser, params: bool = True) -> None:
        p.add_argument("blueprint", help="NAME, NAME@VERSION (registry) or a path to a blueprint YAML")
        p.add_argument("--registry", type=Path, default=default_registry, help=registry_help)
        if params:
            p.add_argument(
                "--param", action="append", default=[], metavar="NAME=VALUE", help="set a parameter"
            )

    lst = actions.add_parser("list", help="the shipped catalogue, and a registry's published blueprints")
    lst.add_argument("--registry", type=Path, default=default_registry, help=registry_help)
    common(actions.add_parser("show", help="everything about a blueprint, and what it costs"))
    cost = actions.add_parser("cost", help="the privacy cost each partner will be debited, before running")
    common(cost)
    cost.add_argument(
        "--nodes",
        type=Path,
        nargs="*",
        default=None,
        help="partners' node.yaml files (default: the embedded federation's example partners)",
    )
    cost.add_argument("--json", action="store_true", help="print the costs as JSON")
    cost.add_argument(
        "--coordinator",
        type=Path,
        default=None,
        help="a coordinator folder: also what the run may cost one resident of each of its populations, "
        "against the federation's cap and what earlier runs spent",
    )
    run = actions.add_parser("run", help="run a blueprint and write its report, exports and provenance")
    common(run)
    run.add_argument(
        "--out", type=Path, default=Path("out/blueprints"), help="output folder (default out/blueprints/NAME)"
    )
    run.add_argument(
        "--coordinator",
        type=Path,
        default=os.environ.get("ODA_COORDINATOR"),
        help="folder of a running coordinator; without it an embedded federation with example data is started",
    )
    run.add_argument(
        "--work-dir", type=Path, default=None, help="embedded federation folder (default: temporary)"
    )
    run.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for node replies")
    publish = actions.add_parser("publish", help="sign a blueprint file and store it in a registry")
    publish.add_argument("file", type=Path)
    publish.add_argument(
        "--registry", type=Path, required=True, help="the registry folder (a coordinator's blueprints/)"
    )
    publish.add_argument(
        "--key", type=Path, required=True, help="your publisher.key (`oda blueprint keygen`)"
    )
    publish.add_argument("--publisher", required=True, help="who publishes it, e.g. the office's name")
    pull = actions.add_parser("pull", help="fetch a blueprint from another coordinator, verify it, store it")
    pull.add_argument("url", help="the other coordinator, https://HOST:PORT")
    pull.add_argument("blueprint", help="NAME or NAME@VERSION")
    pull.add_argument("--registry", type=Path, required=True, help="your registry folder to store it in")
    pull.add_argument(
        "--trust",
        type=Path,
        action="append",
        required=True,
        help="the publisher's publisher.pub (repeatable)",
    )
    pull.add_argument("--ca-cert", type=Path, default=None, help="the other coordinator's CA certificate")
    keygen = actions.add_parser("keygen", help="create a publisher key pair (ed25519) for signing blueprints")
    keygen.add_argument("dir", type=Path)
    keygen.add_argument("--publisher", required=True, help="the name recorded with the public key")


def resolve(ref: str, registry: Path | None) -> SignedBlueprint:
    """A blueprint by file path, registry name (verified) or catalogue name; and its signer."""
    from analyses.blueprint import SignedBlueprint, blueprint_file, load_bundled

    loaded = blueprint_file(ref)
    if loaded is not None:
        return SignedBlueprint(loaded, None)
    name, _, version = ref.partition("@")
    if registry is not None:
        from coordinator.blueprints.registry import LocalRegistry

        reg = LocalRegistry(registry)
        if reg.versions(name):
            return reg.load(name, version or None, reg.trusted_keys())
        if version:
            raise SpecError(f"registry {registry} has no blueprint {name!r}")
    if version:
        raise SpecError(f"{ref}: a version needs --registry (the catalogue holds one version of each)")
    return SignedBlueprint(load_bundled(name), None)


def _example_partners(rendered: RenderedBlueprint) -> dict[str, tuple[set[str], bool]]:
    from coordinator.embedded.example_data import LAW_ENFORCEMENT_PARTNERS

    partners: dict[str, tuple[set[str], bool]] = {}
    for dataset, contract in rendered.blueprint.datasets.items():
        for partner in contract.example_holders:
            held, _ = partners.setdefault(partner, (set(), partner in LAW_ENFORCEMENT_PARTNERS))
            held.add(dataset)
    return partners


def planned_costs(
    rendered: RenderedBlueprint, partners: dict[str, tuple[set[str], bool]]
) -> dict[str, dict[str, Rho]]:
    """partner -> analysis -> rho its node will debit."""
    return {p: rendered.partner_cost(held, le) for p, (held, le) in sorted(partners.items())}


def _print_cost(
    rendered: RenderedBlueprint,
    planned: dict[str, dict[str, Rho]],
    where: str,
    partners: dict[str, tuple[set[str], bool]],
) -> None:
    from privacy.budget import DISPLAY_DELTA, Rho

    print(
        f"privacy cost of {rendered.blueprint.name} {rendered.blueprint.version} (zCDP rho; epsilon at delta {DISPLAY_DELTA:g}):"
    )
    for analysis, per in rendered.dataset_cost().items():
        spec = rendered.spec(analysis)
        only = " (law enforcement partners only)" if spec.law_enforcement_only else ""
        print(f"  {analysis}{only}: " + ", ".join(f"{d} rho {c.value:.6g}" for d, c in per.items()))
    print(f"per partner ({where}):")
    for partner, costs in planned.items():
        total = Rho(sum(c.value for c in costs.values()))
        held, law_enforcement = partners[partner]
        detail = ", ".join(f"{a} {c.value:.6g}" for a, c in costs.items() if c.value > 0) or "nothing"
        refused = [
            name
            for spec in (loaded.spec for loaded in rendered.analyses)
            if (name := spec.name)
            and spec.law_enforcement_only
            and not law_enforcement
            and held & {spec.dataset_of(s) for s in spec.steps}
        ]
        if refused:
            detail += f" (refuses {', '.join(refused)}: its policy does not mark it as law enforcement)"
        print(f"  {partner}: rho {total.value:.6g} (epsilon {total.epsilon(DISPLAY_DELTA):.3g}) = {detail}")


def _show(loaded: LoadedBlueprint, signer: str | None, rendered: RenderedBlueprint) -> None:
    bp = loaded.blueprint
    print(f"{bp.name} {bp.version}: {bp.title}")
    print(f"  sha256 {loaded.sha256}  ({'signed by ' + signer if signer else loaded.source})")
    print("  " + " ".join(bp.summary.split()))
    print("governance:")
    for field, value in bp.governance.model_dump().items():
        if value:
            print(f"  {field}: {value}")
    print("parameters:")
    for name, param in bp.parameters.items():
        limits = f" [{param.min:g}, {param.max:g}]" if param.min is not None and param.max is not None else ""
        choices = f" one of {', '.join(param.choices)}" if param.choices else ""
        print(
            f"  {name} ({param.type}{limits}{choices}) = {rendered.parameters[name]!r}: {param.description}"
        )
    print("dataset contracts:")
    for name, contract in bp.datasets.items():
        print(f"  {name}: {contract.description} Identifier: {contract.identifier}.")
        for column, c in contract.columns.items():
            extra = f"; one of {', '.join(map(str, c.allowed))}" if c.allowed else ""
            if c.keyset:
                extra += f"; keys of {bp.keyset_of(name, column, rendered.parameters)}"
            print(f"    {column} ({c.type}{', may be missing' if c.nullable else ''}): {c.meaning}{extra}")
    rules = bp.disclosure
    profile = f"profile {rules.profile}"
    if rules.people_threshold():
        profile += (
            f" (cells of fewer than {rules.people_threshold()} people published with probability at most "
            f"{rules.false_publication:g}; negative values {'shown as 0' if rules.clamps() else 'kept'})"
        )
    print(f"disclosure: {profile}, min_cell {rules.min_cell}, round_to {rules.round_to}")
    print("outputs:")
    for output in bp.outputs:
        print(f"  {output.id} ({output.kind}): {output.title}")


def main(args: argparse.Namespace) -> int:
    action = args.action
    if action == "keygen":
        from coordinator.blueprints.registry import key_id, load_public_key, write_publisher_key

        private, public = write_publisher_key(args.dir, args.publisher)
        print(
            f"wrote {private} (keep it secret) and {public} (key {key_id(load_public_key(public))}): send the .pub to "
            "whoever pulls your blueprints"
        )
        return ExitCode.OK
    if action == "list":
        from analyses.blueprint import bundled_blueprints, load_bundled

        for name in bundled_blueprints():
            loaded = load_bundled(name)
            print(f"  {name:<32} {loaded.blueprint.version:<8} catalogue  {loaded.blueprint.title}")
        if args.registry is not None:
            from coordinator.blueprints.registry import LocalRegistry

            for e in LocalRegistry(args.registry).entries():
                print(
                    f"  {e.name:<32} {e.version:<8} {e.publisher} (key {e.key_id}) sha256 {e.sha256[:12]}  {e.title}"
                )
        return ExitCode.OK
    if action == "publish":
        from coordinator.blueprints.registry import LocalRegistry

        try:
            data = args.file.read_bytes()
        except OSError as exc:
            raise SpecError(f"{args.file}: cannot read the blueprint: {exc.strerror}") from exc
        entry = LocalRegistry(args.registry).publish(data, args.key, args.publisher)
        print(
            f"published {entry.name} {entry.version} (sha256 {entry.sha256}) signed by {entry.publisher} "
            f"(key {entry.key_id}) in {args.registry}"
        )
        return ExitCode.OK
    if action == "pull":
        from coordinator.blueprints.registry import LocalRegistry, load_public_key, pull

        name, _, version = args.blueprint.partition("@")
        trusted = [load_public_key(p) for p in args.trust]
        entry, loaded = pull(
            args.url, name, version or None, LocalRegistry(args.registry), trusted, args.ca_cert
        )
        print(
            f"pulled {entry.name} {entry.version}: sha256 {entry.sha256} verified, signed by {entry.publisher} "
            f"(key {entry.key_id}); stored in {args.registry}"
        )
        print(f"run it with: oda blueprint run {entry.name}@{entry.version} --registry {args.registry}")
        return ExitCode.OK
    loaded, signer = resolve(args.blueprint, args.registry)
    from analyses.blueprint import parse_parameters

    rendered = loaded.blueprint.render(parse_parameters(args.param))
    if action == "show":
        _show(loaded, signer, rendered)
        partners = _example_partners(rendered)
        _print_cost(
            rendered,
            planned_costs(rendered, partners),
            "the embedded federation's example partners",
            partners,
        )
        return ExitCode.OK
    if action == "cost":
        from coordinator.embedded.documents import node_partners

        partners = node_partners(args.nodes) if args.nodes else _example_partners(rendered)
        planned = planned_costs(rendered, partners)
        if args.json:
            print(
                json.dumps(
                    {p: {a: c.value for a, c in costs.items()} for p, costs in planned.items()}, indent=2
                )
            )
        else:
            where = "from their node.yaml" if args.nodes else "the embedded federation's example partners"
            _print_cost(rendered, planned, where, partners)
        if args.coordinator is not None:
            _print_populations(
                args.coordinator,
                {a: {d: c.value for d, c in per.items()} for a, per in rendered.dataset_cost().items()},
            )
        return ExitCode.OK
    return _run(args, loaded, signer, rendered)


def _print_populations(folder: Path, planned: dict[str, dict[str, float]]) -> None:
    """What a run may cost one resident of each of the coordinator's populations."""
    from coordinator.deploy.config import load_coordinator
    from coordinator.service.populations import preview
    from coordinator.service.serve import open_store

    config = load_coordinator(folder)
    store = open_store(folder, config)
    try:
        shown = preview(planned, config.populations, store.population_spent())
    finally:
        store.close()
    if not shown:
        print("no population of this federation is touched (coordinator.yaml populations:)")
    for name, p in shown.items():
        verdict = "REFUSED: over the cap" if p["would_exceed"] else "within the cap"
        print(
            f"population {name}: rho {p['per_resident_rho']:.4g} a resident (held by up to "
            f"{len(p['holders'])} agencies); spent {p['spent_rho']:.4g} of {p['cap_rho']:g}; {verdict}"  # type: ignore[arg-type]
        )


def _run(
    args: argparse.Namespace, loaded: LoadedBlueprint, signer: str | None, rendered: RenderedBlueprint
) -> int:
    from coordinator.blueprints.runner import run_blueprint
    from coordinator.run.transport import Transport

    out = args.out / loaded.blueprint.name
    from analyses.blueprint import parse_parameters

    params = parse_parameters(args.param)

    def go(link: Transport, planned: dict[str, dict[str, Rho]] | None) -> int:
        run = run_blueprint(
            loaded,
            params,
            link,
            out,
            timeout=args.timeout,
            planned=planned,
            signer=signer,
            progress=lambda m: print(f"  {m}", flush=True),
        )
        for name, why in run.failures.items():
            print(f"  {name}: FAILED: {why}")
        for name, result in run.results.items():
            for r in result.refusals:
                print(f"  {name}: {r.partner} {r.kind}: {r.message}")
        print(
            f"report: {out / 'report.html'}\nexports: {out / 'exports'}/\nprovenance: {out / 'provenance.json'}"
        )
        print(
            "debited: "
            + ", ".join(f"{p} rho {v:.6g}" for p, v in sorted(run.debited().items()))
            + f"; {run.seconds:.1f} s"
        )
        return ExitCode.OK if not run.failures else ExitCode.FEDERATION

    if args.coordinator:
        from coordinator.deploy.service import coordinator_link

        print("planned cost per dataset held:")
        for analysis, per in rendered.dataset_cost().items():
            print(f"  {analysis}: " + ", ".join(f"{d} rho {c.value:.6g}" for d, c in per.items()))
        link = coordinator_link(Path(args.coordinator))
        try:
            return go(link, None)
        finally:
            link.close()
    from coordinator.embedded.example_data import write_blueprint_federation
    from coordinator.embedded.federation import EmbeddedFederation

    example = _example_partners(rendered)
    planned = planned_costs(rendered, example)
    _print_cost(rendered, planned, "the embedded federation's example partners", example)
    with tempfile.TemporaryDirectory(prefix="oda-blueprint-") as tmp:
        work = args.work_dir or Path(tmp)
        values = rendered.parameters

        def partners(fleet: str, ca: Path) -> dict[str, Path]:
            return write_blueprint_federation(work, [(loaded.blueprint, values)], fleet, ca)

        print(
            f"starting the embedded federation with example data for {loaded.blueprint.name} in {work} ...",
            flush=True,
        )
        with EmbeddedFederation(work, partner_configs=partners) as federation:
            link = federation.link()
            try:
                return go(link, planned)
            finally:
                link.close()
