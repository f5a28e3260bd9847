"""What a run leaves on disk: `manifest.json`, and one CSV and one Parquet per table."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from coordinator.run.results import AnalysisResult
from coordinator.run.transport import Quorum

__all__ = ["write_outputs"]


def write_outputs(result: AnalysisResult, out_dir: Path, quorum: Quorum | None = None) -> Path:
    """Write tables and the manifest into `out_dir`; return the manifest's path. A run whose
    `quorum` was not met has no tables, and its manifest says why and what each partner spent."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for table in result.tables:
        csv_path = out_dir / f"{table.name}.csv"
        parquet_path = out_dir / f"{table.name}.parquet"
        table.frame.to_csv(csv_path, index=False)
        table.frame.to_parquet(parquet_path, index=False)
        files.append(
            {
                "table": table.name,
                "csv": csv_path.name,
                "parquet": parquet_path.name,
                "rows": len(table.frame),
                "notes": list(table.notes),
            }
        )
    spec = result.spec
    manifest = {
        "analysis": spec.name,
        "spec_hash": spec.hash,
        "request_id": result.request_id,
        "combine": spec.combine,
        "budget_per_node": {"rho": spec.privacy.budget().value, "describe": spec.privacy.budget().describe()},
        "privacy_unit": spec.privacy.unit.model_dump(),
        "nodes": [
            {
                "partner": r.partner,
                "request_id": r.request_id,
                "status": r.status,
                "node_version": r.node_version,
                "cost_rho": r.cost_rho,
                "epsilon": r.epsilon,
                "delta": r.delta,
                "ledger_entry": r.ledger_entry,
                "snapshots": r.snapshots,
                "steps": [
                    {
                        "step": s.step_id,
                        "kind": s.kind,
                        "measurements": [
                            {
                                "name": m.name,
                                "mechanism": m.mechanism,
                                "scale": m.scale,
                                "sensitivity": m.sensitivity,
                                "rho": m.rho,
                                "accuracy95": m.accuracy95 * m.unit_value,
                                "unit": m.unit_value,
                                "rounding_per_row": m.rounding,
                                "cells": len(m.values),
                            }
                            for m in s.measurements
                        ],
                    }
                    for s in r.steps
                ],
            }
            for r in result.releases
        ],
        "refused_or_timed_out": [asdict(r) for r in result.refusals],
        "tables": files,
        "seconds": round(result.seconds, 3),
    }
    if quorum is not None:
        manifest["quorum"] = {
            **quorum.to_json(),
            "met": result.quorum_unmet is None,
            "why": result.quorum_unmet,
        }
    if result.model is not None:
        (out_dir / "model.json").write_text(result.model.to_json() + "\n")
        (out_dir / "model_card.md").write_text(result.model_card)
        manifest["model"] = {
            "file": "model.json",
            "card": "model_card.md",
            "format": json.loads(result.model.to_json())["format"],
        }
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path
