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

import html
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyses.aggregate import ResultTable
from analyses.blueprint import LoadedBlueprint, OutputSpec, RenderedBlueprint
from analyses.derived import composite_index, ratio
from coordinator.geography import area_names, boundaries_geojson
from coordinator.orchestrator import AnalysisResult, Transport, run_analysis
from coordinator.report import (
    Figure,
    ReportInput,
    accuracy_words,
    bar_chart,
    choropleth,
    forest_plot,
    html_table,
    render_report,
    time_chart,
)
from privacy.budget import DISPLAY_DELTA, Rho
from privacy.errors import OdaError, SpecError

__all__ = ["BlueprintRun", "run_blueprint"]


@dataclass
class BlueprintRun:
    """What one run of a blueprint produced."""

    loaded: LoadedBlueprint
    rendered: RenderedBlueprint
    results: dict[str, AnalysisResult] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    derived: dict[str, ResultTable] = field(default_factory=dict)
    out_dir: Path | None = None
    seconds: float = 0.0
    signer: str | None = None

    def table(self, ref: str) -> ResultTable:
        """`ANALYSIS.TABLE`, or a derived output's id.

        Raises:
            SpecError: no such table (the analysis failed, or the name is wrong).
        """
        if ref in self.derived:
            return self.derived[ref]
        analysis, _, name = ref.partition(".")
        result = self.results.get(analysis)
        if result is None:
            why = self.failures.get(analysis, "not run")
            raise SpecError(f"table {ref!r} is not available: analysis {analysis!r} {why}")
        for table in result.tables:
            if table.name == name:
                return table
        known = ", ".join(t.name for t in result.tables)
        raise SpecError(f"analysis {analysis!r} has no table {name!r}; it has: {known}")

    def debited(self) -> dict[str, float]:
        """partner -> rho its node debited for this run (from the releases it sent)."""
        spent: dict[str, float] = {}
        for result in self.results.values():
            for release in result.releases:
                spent[release.partner] = spent.get(release.partner, 0.0) + release.cost_rho
        return spent


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
) -> BlueprintRun:
    """Run every analysis of the blueprint and write the report, exports and provenance.

    `planned` (partner -> analysis -> cost), when known, is shown beside what was debited.
    An analysis that no partner released is reported as failed; the others still run.

    Raises:
        SpecError: bad parameters (nothing is sent).
    """
    started = time.perf_counter()
    blueprint = loaded.blueprint
    rendered = blueprint.render(parameters)
    run = BlueprintRun(loaded, rendered, signer=signer)
    requester = f"blueprint:{blueprint.name}@{blueprint.version}"
    for text, spec in rendered.analyses:
        if progress:
            progress(f"running {spec.name} ({spec.privacy.budget().describe()} per partner) ...")
        try:
            run.results[spec.name] = run_analysis(
                text,
                transport,
                source=f"{blueprint.name}:{spec.name}",
                out_dir=out_dir / "analyses" / spec.name,
                requester=requester,
                timeout=timeout,
            )
        except OdaError as exc:
            run.failures[spec.name] = str(exc)
    for output in blueprint.outputs:
        if output.kind in ("index", "ratio", "profile"):
            try:
                run.derived[output.id] = _derive(run, output)
            except (SpecError, KeyError) as exc:
                run.failures[output.id] = str(exc)
    run.seconds = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_exports(run, out_dir / "exports")
    write_provenance(run, out_dir / "provenance.json", planned)
    (out_dir / "report.html").write_text(_report(run, planned, ["provenance.json", *files]), "utf-8")
    run.out_dir = out_dir
    return run


def _column(run: BlueprintRun, ref: str, key: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """`ANALYSIS.TABLE.COLUMN` as (keys, values, 95% accuracy)."""
    table_ref, _, column = ref.rpartition(".")
    frame = run.table(table_ref).frame
    if column not in frame or key not in frame:
        raise SpecError(
            f"{ref}: table has no column {column!r} or key {key!r}; it has {', '.join(frame.columns)}"
        )
    acc = (
        frame[f"{column}_accuracy95"]
        if f"{column}_accuracy95" in frame
        else pd.Series(0.0, index=frame.index)
    )
    return frame[key], frame[column].astype(float), acc.astype(float)


def _profile(run: BlueprintRun, output: OutputSpec) -> ResultTable:
    rows = []
    for ref in output.inputs:
        frame = run.table(ref).frame
        key = next((c for c in frame.columns if c.endswith("_missing")), None)
        if key is None or "count" not in frame:
            raise SpecError(f"{ref}: a profile input must be a count by a `derive: missing` key")
        counts = dict(zip(frame[key], frame["count"].astype(float), strict=True))
        acc = float(frame["count_accuracy95"].iloc[0])
        missing, present = max(counts.get("missing", 0.0), 0.0), max(counts.get("present", 0.0), 0.0)
        share, share_acc = ratio(
            np.array([missing]),
            np.array([acc]),
            np.array([missing + present]),
            np.array([acc * math.sqrt(2)]),
            100.0,
        )
        rows.append(
            {
                "field": key.removesuffix("_missing"),
                "records": missing + present,
                "missing": missing,
                "percent_missing": float(share[0]),
                "percent_missing_accuracy95": float(share_acc[0]),
            }
        )
    note = "percent missing = 100 x noisy missing / (noisy missing + noisy present); accuracy by the delta method"
    return ResultTable(output.id, pd.DataFrame(rows), (note,))


def _derive(run: BlueprintRun, output: OutputSpec) -> ResultTable:
    key = output.x or ""
    if output.kind == "profile":
        return _profile(run, output)
    if output.kind == "index":
        columns = [_column(run, ref, key) for ref in output.inputs]
        keys = columns[0][0].reset_index(drop=True)
        aligned = []
        for k, v, a in columns:
            lookup = pd.DataFrame({"v": v.to_numpy(), "a": a.to_numpy()}, index=k.to_numpy())
            aligned.append(lookup.reindex(keys.to_numpy()))
        frame = composite_index(
            keys.rename(key),
            [f["v"].to_numpy() for f in aligned],
            [f["a"].fillna(0.0).to_numpy() for f in aligned],
            run.rendered.weights(output) or None,
        )
        note = (
            "index: mean of standardised log indicators (" + ", ".join(output.inputs) + "); intervals "
            "from 2,000 simulated re-releases of the DP noise (seeded); rank 1 is the highest"
        )
        return ResultTable(output.id, frame, (note,))
    nk, nv, na = _column(run, output.numerator or "", key)
    dk, dv, da = _column(run, output.denominator or "", key)
    den = pd.DataFrame({"v": dv.to_numpy(), "a": da.to_numpy()}, index=dk.to_numpy()).reindex(nk.to_numpy())
    values, accuracy = ratio(
        nv.to_numpy(), na.to_numpy(), den["v"].to_numpy(), den["a"].fillna(0).to_numpy(), output.per
    )
    frame = pd.DataFrame({key: nk.to_numpy(), "ratio": values, "ratio_accuracy95": accuracy})
    note = f"ratio = {output.per:g} x {output.numerator} / {output.denominator}; accuracy by the delta method"
    return ResultTable(output.id, frame, (note,))


def _is_area_column(frame: pd.DataFrame, column: str) -> bool:
    values = frame[column].dropna().astype(str)
    return len(values) > 0 and bool(values.str.match(r"^[EW]0[12]\d{6}$").all())


def _figure(run: BlueprintRun, output: OutputSpec) -> Figure:
    """One output of the report; one that cannot be drawn says why, and the rest still render."""
    try:
        return _draw(run, output)
    except (SpecError, KeyError, ValueError, TypeError) as exc:
        why = f"column {exc} not found" if isinstance(exc, KeyError) else str(exc)
        return Figure(output, f'<p class="refused">Not available: {html.escape(why)}</p>')


def _draw(run: BlueprintRun, output: OutputSpec) -> Figure:
    if output.kind == "model":
        return _model_figure(run, output)
    table = run.table(output.id if output.kind in ("index", "ratio", "profile") else output.table or "")
    frame = table.frame
    notes = [*table.notes]
    if output.kind == "table":
        return Figure(output, html_table(frame), notes)
    value = output.value or {"index": "index", "ratio": "ratio", "profile": "percent_missing"}.get(
        output.kind, ""
    )
    x = output.x or ("field" if output.kind == "profile" else "")
    if output.kind == "index":
        shown = frame.copy()
        if _is_area_column(shown, x):
            shown.insert(1, "area_name", area_names(shown[x].astype(str).tolist()))
        words = [
            f"Rank intervals: the area ranked 1 could rank anywhere from {frame['rank_low95'].iloc[0]} to "
            f"{frame['rank_high95'].iloc[0]} (95%); the median width of a rank interval is "
            f"{float(np.median(frame['rank_high95'] - frame['rank_low95'])):.0f} places.",
            *notes,
        ]
        body = html_table(shown, limit=25)
        if output.map:
            margins = ((frame["index_high95"] - frame["index_low95"]) / 2).tolist()
            body = (
                choropleth(frame[x].astype(str).tolist(), frame["index"].tolist(), margins, output.title)
                + body
            )
        return Figure(output, body, words)
    acc_col = f"{value}_accuracy95"
    acc: list[float] = frame[acc_col].astype(float).tolist() if acc_col in frame else []
    noun = value.replace("_", " ")
    if output.kind == "map" or (output.kind == "ratio" and output.map):
        keys = [str(v) for v in frame[x].tolist()]  # one shape per published key, in table order
        by_key = frame.set_index(x)
        vals = [float(by_key[value].get(k, np.nan)) for k in keys]
        margins = [float(by_key[acc_col].get(k, np.nan)) if acc_col in by_key else math.nan for k in keys]
        body = choropleth(keys, vals, margins, output.title)
        words = [accuracy_words(acc, noun, "areas")]
        suppressed = int(np.sum(~np.isfinite(np.asarray(vals, dtype=float))))
        if suppressed:
            words.append(f"{suppressed} of {len(keys)} areas are hatched: too few to publish, or undefined.")
        return Figure(output, body, [*words, *notes])
    if output.kind in ("ratio", "profile"):
        cells = "areas" if output.kind == "ratio" else "fields"
        return Figure(
            output,
            bar_chart(frame, x, value, None, noun) + html_table(frame),
            [accuracy_words(acc, noun, cells), *notes],
        )
    draw = time_chart if output.kind == "time" else bar_chart
    cells = "periods" if output.kind == "time" else "cells"
    return Figure(
        output, draw(frame, x, value, output.series, noun), [accuracy_words(acc, noun, cells), *notes]
    )


def _model_figure(run: BlueprintRun, output: OutputSpec) -> Figure:
    analysis = output.table or ""
    result = run.results.get(analysis)
    if result is None:
        return Figure(
            output, f'<p class="refused">Not available: {run.failures.get(analysis, "not run")}</p>'
        )
    tables = {t.name: t for t in result.tables}
    body = []
    words = []
    if "coefficients" in tables:
        coefficients = tables["coefficients"].frame
        body.append(forest_plot(coefficients))
        body.append(html_table(coefficients))
        limited = int(coefficients.get("noise_limited", pd.Series(dtype=bool)).sum())
        words.append(
            f"{len(coefficients)} terms; 95% intervals include the sampling variance and the privacy noise."
            + (
                f" {limited} term(s) are noise-limited: their estimates are shrunk towards 0."
                if limited
                else ""
            )
        )
    for name in ("evaluation", "calibration"):
        if name in tables:
            frame = tables[name].frame
            if "records" in frame:  # empty score bins say nothing
                frame = frame[frame["records"] > 0]
            body.append(f"<h3>{name.capitalize()}</h3>" + html_table(frame))
    evaluation = tables.get("evaluation")
    if evaluation is not None and "auc" in evaluation.frame:
        pooled = evaluation.frame.iloc[0]
        words.append(
            f"AUC {float(pooled['auc']):.3f} on the partners' own records, from DP score histograms."
        )
    return Figure(output, "".join(body), words)


def _report(run: BlueprintRun, planned: dict[str, dict[str, Rho]] | None, files: list[str]) -> str:
    bp = run.loaded.blueprint
    debited = run.debited()
    partners = sorted(set(debited) | set(planned or {}))
    released = sorted(
        {r.partner for result in run.results.values() for r in result.releases if r.status == "released"}
    )
    budget_rows = []
    for partner in partners:
        plan = sum(c.value for c in (planned or {}).get(partner, {}).values()) if planned else math.nan
        spent = debited.get(partner, 0.0)
        budget_rows.append(
            (
                partner,
                f"{plan:.4g}" if planned else "-",
                f"{spent:.4g}",
                f"{Rho(spent).epsilon(DISPLAY_DELTA):.3g}",
            )
        )
    refusals = [
        (r.get("node", "?"), name, r.get("message", ""))
        for name, result in run.results.items()
        for r in result.refusals
    ] + [("all partners", name, why) for name, why in run.failures.items()]
    report = ReportInput(
        title=bp.title,
        subtitle=f"blueprint {bp.name} {bp.version} · sha256 {run.loaded.sha256[:16]}… · "
        + (f"signed by {run.signer}" if run.signer else f"from {run.loaded.source}"),
        summary=" ".join(bp.summary.split()),
        facts=[
            ("Run", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
            ("Partners that released", ", ".join(released) or "none"),
            ("Analyses", ", ".join(spec.name for _, spec in run.rendered.analyses)),
            ("Time", f"{run.seconds:.1f} s"),
        ],
        governance=[
            ("Purpose", bp.governance.purpose),
            ("Lawful basis", bp.governance.lawful_basis),
            ("DPIA", bp.governance.dpia_ref),
            ("Owner", bp.governance.owner),
            ("Licence", bp.governance.licence),
        ],
        parameters=[(n, str(v), bp.parameters[n].description) for n, v in run.rendered.parameters.items()],
        budget_rows=budget_rows,
        figures=[_figure(run, o) for o in bp.outputs],
        refusals=refusals,
        files=files,
    )
    return render_report(report)


def _export_frame(run: BlueprintRun, analysis: str, table: ResultTable) -> pd.DataFrame:
    frame = table.frame.copy()
    out = pd.DataFrame(
        {"blueprint": run.loaded.blueprint.name, "analysis": analysis, "table": table.name}, index=frame.index
    )
    for column in frame.columns:
        if column.endswith("_accuracy95"):
            continue
        out[column] = frame[column]
        if _is_area_column(frame, column):
            out[f"{column}_name"] = area_names(frame[column].astype(str).tolist())
        acc = f"{column}_accuracy95"
        if acc in frame:
            value = pd.to_numeric(frame[column], errors="coerce")
            out[f"{column}_low95"] = value - frame[acc]
            out[f"{column}_high95"] = value + frame[acc]
            out[f"{column}_suppressed"] = value.isna()
    return out.reset_index(drop=True)


def write_exports(run: BlueprintRun, folder: Path) -> list[str]:
    """One CSV and one Parquet per table, areas.geojson and a data dictionary; return the paths
    relative to the run folder."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    dictionary = []
    tables = [(a, t) for a, r in run.results.items() for t in r.tables] + [
        ("derived", t) for t in run.derived.values()
    ]
    areas: list[str] = []
    for analysis, table in tables:
        frame = _export_frame(run, analysis, table)
        stem = f"{analysis}__{table.name}"
        frame.to_csv(
            folder / f"{stem}.csv", index=False, encoding="utf-8-sig", date_format="%Y-%m-%dT%H:%M:%S"
        )
        frame.to_parquet(folder / f"{stem}.parquet", index=False)
        written += [f"exports/{stem}.csv", f"exports/{stem}.parquet"]
        for column in frame.columns:
            dictionary.append(
                {
                    "file": stem,
                    "column": column,
                    "type": str(frame[column].dtype),
                    "notes": " | ".join(table.notes),
                }
            )
            if _is_area_column(frame, column):
                areas += [str(v) for v in frame[column].tolist()]
    if areas:
        (folder / "areas.geojson").write_text(boundaries_geojson(list(dict.fromkeys(areas))))
        written.append("exports/areas.geojson")
    pd.DataFrame(dictionary).to_csv(folder / "data_dictionary.csv", index=False, encoding="utf-8-sig")
    written.append("exports/data_dictionary.csv")
    return written


def write_provenance(run: BlueprintRun, path: Path, planned: dict[str, dict[str, Rho]] | None) -> None:
    """What was run, with what, by whom, at what cost, and where each node's audit chain stood."""
    bp = run.loaded.blueprint
    nodes: dict[str, dict[str, Any]] = {}
    for name, result in run.results.items():
        for release in result.releases:
            node = nodes.setdefault(
                release.partner,
                {
                    "node_versions": set(),
                    "cost_rho": {},
                    "audit_head": None,
                    "audit_seq": -1,
                    "snapshots": {},
                },
            )
            node["node_versions"].add(release.node_version)
            node["cost_rho"][name] = round(node["cost_rho"].get(name, 0.0) + release.cost_rho, 12)
            node["snapshots"].update(release.snapshots)
            if release.audit_seq is not None and release.audit_seq > node["audit_seq"]:
                node["audit_seq"], node["audit_head"] = release.audit_seq, release.audit_head
    for partner, node in nodes.items():
        node["node_versions"] = sorted(node["node_versions"])
        node["debited_rho"] = round(sum(node["cost_rho"].values()), 12)
        if planned is not None:
            node["planned_rho"] = {a: round(c.value, 12) for a, c in planned.get(partner, {}).items()}
    document = {
        "format": "oda-provenance/1",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "blueprint": {
            "name": bp.name,
            "version": bp.version,
            "sha256": run.loaded.sha256,
            "source": run.loaded.source,
            "signed_by": run.signer,
        },
        "parameters": run.rendered.parameters,
        "analyses": [
            {
                "name": spec.name,
                "spec_hash": spec.spec_hash(),
                "budget_rho": spec.privacy.budget().value,
                "request_id": run.results[spec.name].request_id if spec.name in run.results else None,
                "status": "done"
                if spec.name in run.results
                else f"failed: {run.failures.get(spec.name, '')}",
            }
            for _, spec in run.rendered.analyses
        ],
        "nodes": nodes,
        "refusals": {name: result.refusals for name, result in run.results.items() if result.refusals},
        "seconds": round(run.seconds, 3),
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
