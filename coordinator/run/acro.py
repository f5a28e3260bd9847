"""A run's outputs as ACRO writes them, so the SACRO viewer used in UK TREs can open a run.

`acro/results.json` follows the format ACRO's `Records.finalise_json` writes and its
`load_records` reads (ACRO 1.0.2): one record per published table, each with its status
(`pass`, `review`, `fail`), type (`table` or `regression`), the CSV file of the table, the
`sdc` summary and suppressed cells by rule, the `outcome` of every cell, the command that made
it, the notes as comments, and an exception text for outputs that need a person's look. Each
file's SHA-256 is in `acro/checksums/`, as ACRO writes them.

How oda's checks map onto ACRO's (README, "Checker interop"):

    oda outcome              ACRO sdc cell list        ACRO status
    suppressed:threshold     threshold                 review (suppressed)
    suppressed:min_cell      threshold                 review (suppressed)
    suppressed:dominance     p-ratio and nk-rule       review (suppressed)
    review                   (none)                    review, with an exception text
    suppressed:residual_df   properties.dof            fail (the model is withheld)
    pass                     (none)                    pass

ACRO's `suppressed` is true: the rules were applied before anything was stored, as ACRO does
with `suppress=True`; a `review` status then means "cells were suppressed: check the table".
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyses.tables import CHECK, ResultTable, check_columns
from coordinator.run.results import AnalysisResult

__all__ = ["ACRO_VERSION", "write_acro_results"]

#: The ACRO release whose results.json this is (its `load_records` requires the same version).
ACRO_VERSION = "1.0.2"
#: ACRO's cell lists, in its order, and the oda outcomes each one holds.
_RULES: dict[str, tuple[str, ...]] = {
    "negative": (),
    "missing": (),
    "threshold": ("suppressed:threshold", "suppressed:min_cell"),
    "p-ratio": ("suppressed:dominance",),
    "nk-rule": ("suppressed:dominance",),
    "all-values-are-same": (),
}


def _value_columns(columns: list[str], check: str, keys: list[str]) -> list[str]:
    """Of a table's `columns` (its check columns left out), the value columns a check column
    covers (a joined table's `step_check` covers `step_*`)."""
    prefix = check[: -len(CHECK)]
    return [c for c in columns if c not in keys and c.startswith(prefix) and not c.endswith("_accuracy95")]


def _table_record(uid: str, table: ResultTable, keys: list[str], command: str) -> dict[str, Any]:
    frame = table.frame.reset_index(drop=True)
    checks = check_columns(frame)
    columns = [str(c) for c in frame.columns if str(c) not in checks]
    outcome = {column: np.full(len(frame), "ok", dtype=object) for column in columns}
    cells: dict[str, list[list[int]]] = {rule: [] for rule in _RULES}
    reviewed = 0
    for check in checks:
        results = frame[check].astype(str).to_numpy()
        reviewed += int((results == "review").sum())
        for column in _value_columns(columns, check, keys):
            position = columns.index(column)
            said = np.full(len(frame), "", dtype=object)
            negative_values = pd.to_numeric(frame[column], errors="coerce").lt(0).to_numpy()
            cells["negative"] += [[int(r), position] for r in negative_values.nonzero()[0]]
            for rule, held in _RULES.items():
                if not held:
                    continue  # negative (above) and the rules oda has no counterpart of
                hit = np.isin(results, held)
                cells[rule] += [[int(r), position] for r in hit.nonzero()[0]]
                said = np.where(hit, said + f"{rule}; ", said)
            said = np.where((said == "") & (results == "review"), "review; ", said)
            outcome[column] = np.where(said == "", "ok", said)
    negative = len(cells["negative"])
    outcome_frame = pd.DataFrame(outcome, index=frame.index)
    summary = {rule: len(positions) for rule, positions in cells.items()}
    suppressed = any(summary[r] for r in ("threshold", "p-ratio", "nk-rule"))
    status = "review" if suppressed or reviewed or negative else "pass"
    text = "; ".join(
        f"{rule}: {n} cells suppressed"
        for rule, n in summary.items()
        if n and rule not in ("negative", "missing")
    )
    if negative:
        text = f"negative values found; {text}".rstrip("; ")
    if reviewed:
        text = f"{text}; {reviewed} rows to review".lstrip("; ")
    return {
        "uid": uid,
        "status": status,
        "type": "table",
        "properties": {"method": "oda-federated", "oda_table": table.name},
        "files": [
            {
                "name": f"{uid}_0.csv",
                "sdc": {"summary": {"suppressed": suppressed, **summary}, "cells": cells},
            }
        ],
        "outcome": json.loads(outcome_frame.to_json()),
        "command": command,
        "summary": f"{status}; {text}" if text else status,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "comments": list(table.notes),
        "exception": (
            "published under differential privacy; rows marked review need a person's check (see comments)"
            if reviewed
            else ""
        ),
        "fair": {},
    }


def write_acro_results(result: AnalysisResult, out_dir: Path, keys: dict[str, list[str]]) -> Path:
    """Write `out_dir/acro/results.json`, a CSV per table and their checksums; return the JSON's
    path. `keys` are each table's key columns (as the manifest has them)."""
    folder = out_dir / "acro"
    folder.mkdir(parents=True, exist_ok=True)
    spec = result.spec
    records: dict[str, Any] = {}
    for index, table in enumerate(result.tables):
        uid = f"output_{index}"
        command = f"oda run {spec.name} (spec {spec.hash[:12]}): table {table.name}"
        if table.name == "coefficients" and result.model_check is not None:
            check = result.model_check
            status = "pass" if check.outcome == "pass" else "fail"
            record = _table_record(uid, table, keys.get(table.name, []), command)
            record.update(
                {
                    "status": status,
                    "type": "regression",
                    "properties": {"method": "oda-federated glm", "dof": round(check.residual_df, 3)},
                    "files": [{"name": f"{uid}_0.csv", "sdc": {}}],
                    "outcome": {},
                    "summary": f"{status}; residual degrees of freedom {check.residual_df:.0f} (at least 10 needed)",
                }
            )
        else:
            record = _table_record(uid, table, keys.get(table.name, []), command)
        table.frame.to_csv(folder / f"{uid}_0.csv")
        records[uid] = record
    document = {
        "version": ACRO_VERSION,
        "tool": {
            "@type": "SoftwareApplication",
            "name": "oda-federated (ACRO-compatible results)",
            "url": "https://github.com/AI-SDC/ACRO",
            "version": ACRO_VERSION,
        },
        "results": records,
    }
    path = folder / "results.json"
    path.write_text(json.dumps(document, indent=4) + "\n")
    checksums = folder / "checksums"
    checksums.mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        if file.is_file():
            (checksums / f"{file.name}.txt").write_text(hashlib.sha256(file.read_bytes()).hexdigest())
    return path
