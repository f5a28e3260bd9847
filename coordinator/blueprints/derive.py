"""Outputs a blueprint derives from its published tables: composite indices, ratios and
profiles. Post-processing of DP results: no budget."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analyses.blueprint import OutputSpec
from analyses.derived import composite_index, ratio
from analyses.tables import ResultTable
from coordinator.blueprints.outcome import BlueprintRun
from privacy.errors import SpecError

__all__ = ["derive"]


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


def derive(run: BlueprintRun, output: OutputSpec) -> ResultTable:
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
