"""What a run leaves on disk: `manifest.json`, one CSV and one Parquet per table, and the
ACRO-compatible `acro/results.json` (`coordinator.run.acro`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from analyses.aggregate import publication_of
from analyses.tables import check_columns
from coordinator.run.acro import write_acro_results
from coordinator.run.results import AnalysisResult
from coordinator.run.transport import Quorum
from privacy.disclosure import DOMINANCE_K, DOMINANCE_N, DOMINANCE_P

__all__ = ["disclosure", "write_outputs"]


def _outcomes(frame: object) -> dict[str, int]:
    """How many cells (or models) of a table each check outcome has."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        return {}
    counts: dict[str, int] = {}
    for column in check_columns(frame):
        for outcome, n in frame[column].value_counts().items():
            counts[str(outcome)] = counts.get(str(outcome), 0) + int(n)
    return dict(sorted(counts.items()))


def _keys(result: AnalysisResult, name: str, frame: object) -> list[str]:
    """The key (dimension) columns of a published table: its step's, with `partner` for a
    `by_partner` table; of a joined table, the keys its steps share."""
    import pandas as pd

    spec = result.spec
    step = next((s for s in spec.steps if s.id == name), None)
    if step is not None:
        keys = list(step.key_columns())
        return ["partner", *keys] if spec.combine == "by_partner" else keys
    every = {k for s in spec.steps for k in s.key_columns()}
    return [str(c) for c in frame.columns if c in every] if isinstance(frame, pd.DataFrame) else []


def disclosure(result: AnalysisResult) -> dict[str, object]:
    """The manifest's account of the disclosure rules a run's outputs followed, and what each
    data-dependent decision cost: every rule reads only released noisy values and public bounds."""
    spec = result.spec
    released = [r for r in result.releases if r.status == "released"]
    publication = publication_of(spec, [r.min_cell for r in released])
    out: dict[str, object] = {
        "profile": spec.disclosure.profile,
        "min_cell": publication.min_cell,
        "people_threshold": publication.threshold,
        "false_publication": publication.false_publication if publication.threshold else None,
        "non_negative": publication.non_negative,
        "round_to": publication.round_to,
        "node_floors": {r.partner: r.min_cell for r in released},
        "dominance": (
            {
                "n": DOMINANCE_N,
                "k": DOMINANCE_K,
                "p": DOMINANCE_P,
                "decided_from": "each cell's released noisy total and the step's public bounds",
                "privacy_cost": "0: post-processing of DP releases (no exact contribution is read)",
            }
            if publication.dominance
            else None
        ),
    }
    if result.model_check is not None:
        out["model"] = result.model_check.to_json()
    return out


def write_outputs(result: AnalysisResult, out_dir: Path, quorum: Quorum | None = None) -> Path:
    """Write tables and the manifest into `out_dir`; return the manifest's path. A run whose
    `quorum` was not met has no tables, and its manifest says why and what each partner spent."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    keys: dict[str, list[str]] = {}
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
                "checks": _outcomes(table.frame),
                "keys": keys.setdefault(table.name, _keys(result, table.name, table.frame)),
            }
        )
    spec = result.spec
    manifest = {
        "analysis": spec.name,
        "spec_hash": spec.hash,
        "request_id": result.request_id,
        "combine": spec.combine,
        "datasets": sorted({spec.dataset_of(s) for s in spec.steps}),
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
        "disclosure": disclosure(result),
        "seconds": round(result.seconds, 3),
    }
    if result.stopped is not None:
        manifest["stopped"] = result.stopped
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
    acro = write_acro_results(result, out_dir, keys)
    manifest["acro_results"] = str(acro.relative_to(out_dir))
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path
