"""A blueprint run's files for others: flat, typed exports for Tableau, Power BI and Qlik, the
areas as GeoJSON, a data dictionary, and the provenance record."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from analyses.tables import ResultTable
from coordinator.blueprints.figures import is_area_column
from coordinator.blueprints.geography import area_names, boundaries_geojson
from coordinator.blueprints.outcome import BlueprintRun
from privacy.budget import Rho

__all__ = ["write_exports", "write_provenance"]


def _export_frame(run: BlueprintRun, analysis: str, table: ResultTable) -> pd.DataFrame:
    frame = table.frame.copy()
    out = pd.DataFrame(
        {"blueprint": run.loaded.blueprint.name, "analysis": analysis, "table": table.name}, index=frame.index
    )
    for column in frame.columns:
        if column.endswith("_accuracy95"):
            continue
        out[column] = frame[column]
        if is_area_column(frame, column):
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
            if is_area_column(frame, column):
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
            for spec in (loaded.spec for loaded in run.rendered.analyses)
        ],
        "nodes": nodes,
        "refusals": {name: result.refusals for name, result in run.results.items() if result.refusals},
        "seconds": round(run.seconds, 3),
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
