"""A blueprint run's report: a figure per output (charts, maps, model results) and the page
around them (`coordinator.blueprints.report` draws them)."""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from analyses.blueprint import OutputSpec
from coordinator.blueprints.geography import area_names
from coordinator.blueprints.outcome import BlueprintRun
from coordinator.blueprints.report import (
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
from privacy.errors import SpecError

__all__ = ["is_area_column", "report_page"]


def is_area_column(frame: pd.DataFrame, column: str) -> bool:
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
    for column, wanted in output.where.items():
        frame = frame[frame[column].astype(str) == wanted].reset_index(drop=True)
    notes = [*table.notes]
    if output.kind == "table":
        return Figure(output, html_table(frame), notes)
    value = output.value or {"index": "index", "ratio": "ratio", "profile": "percent_missing"}.get(
        output.kind, ""
    )
    x = output.x or ("field" if output.kind == "profile" else "")
    if output.kind == "index":
        shown = frame.copy()
        if is_area_column(shown, x):
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


def report_page(run: BlueprintRun, planned: dict[str, dict[str, Rho]] | None, files: list[str]) -> str:
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
        (r.partner, name, r.message) for name, result in run.results.items() for r in result.refusals
    ] + [("all partners", name, why) for name, why in run.failures.items()]
    report = ReportInput(
        title=bp.title,
        subtitle=f"blueprint {bp.name} {bp.version} · sha256 {run.loaded.sha256[:16]}… · "
        + (f"signed by {run.signer}" if run.signer else f"from {run.loaded.source}"),
        summary=" ".join(bp.summary.split()),
        facts=[
            ("Run", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
            ("Partners that released", ", ".join(released) or "none"),
            ("Analyses", ", ".join(loaded.spec.name for loaded in run.rendered.analyses)),
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
