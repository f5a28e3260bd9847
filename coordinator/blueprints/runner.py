"""Running a blueprint: its analyses on a federation, then its report, exports and provenance.

`run_blueprint` renders the blueprint with the given parameters (every analysis a spec the nodes
parse themselves), runs each analysis through the ordinary orchestrator, derives indices and
ratios from the published tables (post-processing, no budget) and writes:

- `report.html`: charts with 95% error bars, time profiles, maps, model results, plain words;
- `exports/`: one CSV (UTF-8 with BOM) and one Parquet per table in a flat, typed layout that
  Tableau, Power BI and Qlik read as they are (`_low95`/`_high95`/`_suppressed` beside each
  measure, `area_name` beside area codes), `areas.geojson` for their maps, and a data dictionary;
- `provenance.json`: blueprint hash and signer, parameters, spec hashes, node versions, per-node
  cost (planned and debited) and each node's audit-chain head after its last release.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from analyses.blueprint import LoadedBlueprint
from coordinator.blueprints.derive import derive
from coordinator.blueprints.exports import write_exports, write_provenance
from coordinator.blueprints.figures import report_page
from coordinator.blueprints.outcome import BlueprintRun
from coordinator.run.orchestrator import run_analysis
from coordinator.run.transport import RunCancelled, RunContext, Transport
from privacy.budget import Rho
from privacy.errors import OdaError, SpecError

__all__ = ["BlueprintRun", "run_blueprint"]


def run_blueprint(
    loaded: LoadedBlueprint,
    parameters: dict[str, object],
    transport: Transport,
    out_dir: Path,
    *,
    timeout: float = 60.0,
    planned: dict[str, dict[str, Rho]] | None = None,
    signer: str | None = None,
    progress: Callable[[str], None] | None = None,
    context: RunContext | None = None,
) -> BlueprintRun:
    """Run every analysis of the blueprint and write the report, exports and provenance.

    `planned` (partner -> analysis -> cost), when known, is shown beside what was debited.
    An analysis that no partner released is reported as failed; the others still run.
    `context` names the requester and run to the nodes (by default the blueprint is the
    requester).

    Raises:
        SpecError: bad parameters (nothing is sent).
        RunCancelled: the run was cancelled (`context.watch`); nothing more is sent.
    """
    started = time.perf_counter()
    blueprint = loaded.blueprint
    rendered = blueprint.render(parameters)
    run = BlueprintRun(loaded, rendered, signer=signer)
    context = context or RunContext(requester=f"blueprint:{blueprint.name}@{blueprint.version}")
    for analysis in rendered.analyses:
        spec = analysis.spec
        if progress:
            progress(f"running {spec.name} ({spec.privacy.budget().describe()} per partner) ...")
        try:
            run.results[spec.name] = run_analysis(
                analysis,
                transport,
                out_dir=out_dir / "analyses" / spec.name,
                context=context,
                timeout=timeout,
            )
        except RunCancelled:
            raise
        except OdaError as exc:
            run.failures[spec.name] = str(exc)
    for output in blueprint.outputs:
        if output.kind in ("index", "ratio", "profile"):
            try:
                run.derived[output.id] = derive(run, output)
            except (SpecError, KeyError) as exc:
                run.failures[output.id] = str(exc)
    run.seconds = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_exports(run, out_dir / "exports")
    write_provenance(run, out_dir / "provenance.json", planned)
    (out_dir / "report.html").write_text(report_page(run, planned, ["provenance.json", *files]), "utf-8")
    run.out_dir = out_dir
    return run
