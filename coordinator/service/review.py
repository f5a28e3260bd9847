"""Output review: a run's outputs are `pending review` until reviewers approve each one.

A reviewer (the service's `reviewer` role, or an admin) approves an output, rejects it with a
reason, or requests changes with a reason; a reviewer's latest decision on an output is the one
that counts. An output is

    approved            when enough distinct reviewers approve it and none rejects it or asks
                        for changes: two under the `tre` profile, one otherwise;
    rejected            when any reviewer's latest decision rejects it;
    changes requested   when any asks for changes (and none rejects);
    pending review      otherwise.

No one reviews a run they submitted. Only approved outputs are published: the `published`
listing and its tables, which every role may read, the reader role's only view of results. The
review screen shows each output with its disclosure checks (the manifest's), the privacy each
partner spent, its accuracy, and the other outputs that share its dimensions (differencing risk:
the difference of two tables with the same keys over overlapping populations can isolate a
small group). Nothing here knows HTTP beyond the `ApiError` it raises.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from coordinator.service.accounts import Account, allowed
from coordinator.service.store import ReviewRow, RunRow, RunStore
from coordinator.service.views import ApiError

__all__ = [
    "DECISIONS",
    "MAX_REASON",
    "Decision",
    "OutputReview",
    "decide",
    "output_reviews",
    "published",
    "published_file",
    "review_screen",
]

Decision = Literal["approve", "reject", "changes"]
DECISIONS: tuple[str, ...] = get_args(Decision)
#: Longest reason a reviewer may give.
MAX_REASON = 2000
#: Distinct approvals an output needs under the `tre` profile (one under the others).
TRE_APPROVALS = 2


@dataclass
class OutputReview:
    """Where one output of a run stands in review."""

    name: str
    analysis: str
    file: str
    rows: int
    required: int
    status: str = "pending review"
    approvals: list[str] = field(default_factory=list)
    decisions: list[dict[str, object]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "analysis": self.analysis,
            "rows": self.rows,
            "status": self.status,
            "approvals": self.approvals,
            "required_approvals": self.required,
            "decisions": self.decisions,
        }


def _manifests(row: RunRow) -> dict[str, dict[str, Any]]:
    """Each analysis of the run's manifest (a spec run has one; a blueprint run one per analysis)."""
    root = Path(row.results_dir or "/nonexistent")
    out: dict[str, dict[str, Any]] = {}
    for table in json.loads(row.tables_json):
        analysis = str(table["analysis"])
        if analysis in out:
            continue
        path = (
            root / "manifest.json" if row.source == "spec" else root / "analyses" / analysis / "manifest.json"
        )
        if path.is_file():
            out[analysis] = json.loads(path.read_text())
    return out


def _required(manifests: dict[str, dict[str, Any]]) -> int:
    """Two approvals when any analysis of the run follows the `tre` profile, else one."""
    profiles = {str(dict(m.get("disclosure") or {}).get("profile", "open")) for m in manifests.values()}
    return TRE_APPROVALS if "tre" in profiles else 1


def output_reviews(row: RunRow, reviews: list[ReviewRow]) -> list[OutputReview]:
    """The review state of every output of `row`, from its reviewers' decisions."""
    required = _required(_manifests(row))
    outputs = {
        str(t["name"]): OutputReview(
            str(t["name"]), str(t["analysis"]), str(t["file"]), int(t["rows"]), required
        )
        for t in json.loads(row.tables_json)
    }
    latest: dict[tuple[str, str], ReviewRow] = {}
    for r in reviews:
        if r.output in outputs:
            outputs[r.output].decisions.append(
                {"reviewer": r.reviewer, "decision": r.decision, "reason": r.reason, "at": r.at}
            )
            latest[(r.output, r.reviewer)] = r
    for output in outputs.values():
        final = [r for (name, _), r in latest.items() if name == output.name]
        output.approvals = sorted(r.reviewer for r in final if r.decision == "approve")
        if any(r.decision == "reject" for r in final):
            output.status = "rejected"
        elif any(r.decision == "changes" for r in final):
            output.status = "changes requested"
        elif len(output.approvals) >= output.required:
            output.status = "approved"
    return list(outputs.values())


def decide(
    store: RunStore, row: RunRow, who: Account, output: str, decision: str, reason: str | None
) -> OutputReview:
    """Record `who`'s decision on one output of `row`; return where the output now stands.

    Raises:
        ApiError: not a reviewer (403), their own run (403), the run not done (409), no such
            output (404), an unknown decision or a rejection without a reason (422).
    """
    if not allowed(who, "review"):
        raise ApiError(403, f"role {who.role} does not review outputs; a reviewer or an admin does")
    if row.owner == who.name:
        raise ApiError(403, f"{who.name} submitted run {row.id}: another reviewer must check its outputs")
    if row.state != "done":
        raise ApiError(409, f"run {row.id} is {row.state}: only a finished run's outputs are reviewed")
    if decision not in DECISIONS:
        raise ApiError(422, f"decision {decision[:40]!r}: choose one of {', '.join(DECISIONS)}")
    reason = (reason or "").strip() or None
    if decision != "approve" and reason is None:
        raise ApiError(422, f"a {decision} decision needs a reason: the analyst reads it")
    if reason is not None and len(reason) > MAX_REASON:
        raise ApiError(422, f"a reason is at most {MAX_REASON} characters")
    names = [o.name for o in output_reviews(row, [])]
    if output not in names:
        raise ApiError(
            404, f"run {row.id} has no output {output[:300]!r}; it has {', '.join(names) or 'none'}"
        )
    store.add_review(
        ReviewRow(
            run_id=row.id, output=output, reviewer=who.name, decision=decision, reason=reason, at=time.time()
        )
    )
    return next(o for o in output_reviews(row, store.reviews(row.id)) if o.name == output)


def _table_checks(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    short = name.split(".", 1)[1] if "." in name else name
    for entry in manifest.get("tables") or []:
        if entry.get("table") in (name, short):
            return {
                "checks": entry.get("checks", {}),
                "notes": entry.get("notes", []),
                "keys": entry.get("keys", []),
            }
    return {"checks": {}, "notes": [], "keys": []}


def _accuracy(path: Path) -> dict[str, float]:
    """The median of each 95% accuracy column of a table (what a typical cell is within)."""
    import pandas as pd

    if not path.is_file():
        return {}
    frame = pd.read_parquet(path)
    return {
        str(c): round(float(frame[c].median()), 6)
        for c in frame.columns
        if str(c).endswith("_accuracy95") and frame[c].notna().any()
    }


def _dimensions(row: RunRow) -> list[dict[str, Any]]:
    """Each output of `row` with its datasets and key columns (from the manifests)."""
    manifests = _manifests(row)
    out = []
    for table in json.loads(row.tables_json):
        manifest = manifests.get(str(table["analysis"]), {})
        out.append(
            {
                "run": row.id,
                "output": str(table["name"]),
                "datasets": list(manifest.get("datasets") or []),
                "keys": list(_table_checks(manifest, str(table["name"]))["keys"]),
            }
        )
    return out


def _differencing(row: RunRow, store: RunStore) -> dict[str, list[dict[str, object]]]:
    """For each output of `row`, the other outputs (published ones, and this run's own) that share
    a key column with it over a shared dataset, with the keys they share."""
    mine = _dimensions(row)
    others = list(mine)
    for run_id in store.reviewed_runs():
        other = store.run(run_id)
        if other is None or other.id == row.id:
            continue
        status = {o.name: o.status for o in output_reviews(other, store.reviews(run_id))}
        others += [d for d in _dimensions(other) if status.get(str(d["output"])) == "approved"]
    risks: dict[str, list[dict[str, object]]] = {}
    for d in mine:
        keys, datasets = set(d["keys"]), set(d["datasets"])
        found = []
        for o in others:
            if o["run"] == d["run"] and o["output"] == d["output"]:
                continue
            shared = sorted(keys & set(o["keys"]))
            if shared and datasets & set(o["datasets"]):
                same = set(o["keys"]) == keys
                found.append(
                    {
                        "run": o["run"],
                        "output": o["output"],
                        "published": o["run"] != row.id,
                        "shared_keys": shared,
                        "risk": "same keys over an overlapping population: check the difference cannot isolate a small group"
                        if same
                        else "shared keys: check margins and sub-tables do not difference to a small cell",
                    }
                )
        risks[str(d["output"])] = found
    return risks


def review_screen(store: RunStore, row: RunRow) -> dict[str, object]:
    """What a reviewer sees of a run: every output with its checks, privacy cost, accuracy, the
    decisions so far and its differencing risk."""
    manifests = _manifests(row)
    root = Path(row.results_dir or "/nonexistent")
    risks = _differencing(row, store) if row.state == "done" else {}
    outputs = []
    for output in output_reviews(row, store.reviews(row.id)):
        checks = _table_checks(manifests.get(output.analysis, {}), output.name)
        outputs.append(
            {
                **output.to_json(),
                **checks,
                "accuracy95_median": _accuracy(root / output.file),
                "differencing": risks.get(output.name, []),
            }
        )
    return {
        "run": row.id,
        "owner": row.owner,
        "state": row.state,
        "purpose": row.purpose,
        "privacy_debited": row.debited(),
        "disclosure": {a: m.get("disclosure") for a, m in manifests.items()},
        "outputs": outputs,
    }


def published(store: RunStore) -> list[dict[str, object]]:
    """Every approved output of every run, oldest first: what the reader role sees."""
    out = []
    for run_id in store.reviewed_runs():
        row = store.run(run_id)
        if row is None:
            continue
        for o in output_reviews(row, store.reviews(run_id)):
            if o.status == "approved":
                out.append(
                    {
                        "run": row.id,
                        "name": o.name,
                        "analysis": o.analysis,
                        "rows": o.rows,
                        "approved_by": o.approvals,
                    }
                )
    return out


def published_file(store: RunStore, run_id: str, name: str) -> Path:
    """The Parquet file of an approved output.

    Raises:
        ApiError: 404 when the run has no such output or it is not (yet) approved.
    """
    row = store.run(run_id)
    found = (
        None
        if row is None
        else next((o for o in output_reviews(row, store.reviews(run_id)) if o.name == name), None)
    )
    if row is None or found is None or found.status != "approved":
        raise ApiError(
            404, f"no published output {name[:300]!r} of run {run_id[:40]!r} (it may still be in review)"
        )
    return Path(str(row.results_dir)) / found.file
