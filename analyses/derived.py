"""Quantities derived from published tables at the coordinator: post-processing, no budget.

- `composite_index`: several area-level indicators (from different agencies) standardised and
  averaged into one index per area, with 95% intervals for the index and for each area's rank,
  by simulating the known DP noise of every input.
- `ratio`: one table's column over another's, joined on a key, with a delta-method interval
  (e.g. where events happen against where people at risk live).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from privacy.accuracy import ratio_accuracy95

__all__ = ["Z95", "composite_index", "ratio"]

Z95 = 1.959963984540054


def _standardise(values: np.ndarray) -> np.ndarray:
    """log(1 + max(v, 0)), centred and scaled over areas (axis -1)."""
    logged = np.log1p(np.maximum(values, 0.0))
    mean = logged.mean(axis=-1, keepdims=True)
    sd = logged.std(axis=-1, keepdims=True)
    return np.asarray((logged - mean) / np.where(sd > 0, sd, 1.0))


def composite_index(
    keys: pd.Series,
    values: Sequence[np.ndarray],
    accuracy95: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    draws: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Weighted mean of standardised log indicators per area, ranked (1 = highest).

    Each input's noise is Gaussian with the scale implied by its published 95% accuracy; the
    intervals come from `draws` simulated re-releases (seeded, so a report is reproducible).
    Missing (suppressed) cells count as 0 in every draw.
    """
    w = np.asarray(weights if weights else [1.0] * len(values), dtype=float)
    w = w / w.sum()
    observed = np.stack([np.nan_to_num(np.asarray(v, dtype=float)) for v in values])
    sd = np.stack([np.broadcast_to(np.asarray(a, dtype=float) / Z95, observed.shape[1]) for a in accuracy95])
    point = np.tensordot(w, _standardise(observed), axes=1)
    rng = np.random.default_rng(seed)
    sims = observed[None] + rng.normal(size=(draws, *observed.shape)) * sd[None]
    index = np.einsum("k,dka->da", w, _standardise(sims))
    ranks = (-index).argsort(axis=1).argsort(axis=1) + 1
    point_rank = (-point).argsort().argsort() + 1
    frame = pd.DataFrame(
        {
            keys.name or "key": keys.to_numpy(),
            "index": point,
            "index_low95": np.percentile(index, 2.5, axis=0),
            "index_high95": np.percentile(index, 97.5, axis=0),
            "rank": point_rank,
            "rank_low95": np.percentile(ranks, 2.5, axis=0, method="lower").astype(int),
            "rank_high95": np.percentile(ranks, 97.5, axis=0, method="higher").astype(int),
        }
    )
    return frame.sort_values("rank").reset_index(drop=True)


def ratio(
    numerator: np.ndarray,
    numerator_accuracy95: np.ndarray,
    denominator: np.ndarray,
    denominator_accuracy95: np.ndarray,
    per: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """`per * numerator / denominator` and its approximate 95% accuracy (NaN where undefined)."""
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    num_acc = np.broadcast_to(np.asarray(numerator_accuracy95, dtype=float), num.shape)
    den_acc = np.broadcast_to(np.asarray(denominator_accuracy95, dtype=float), den.shape)
    values = np.full(num.shape, np.nan)
    accuracy = np.full(num.shape, np.nan)
    for i in range(len(num)):
        if not (np.isfinite(num[i]) and np.isfinite(den[i])) or den[i] <= 0:
            continue
        values[i] = per * num[i] / den[i]
        acc = ratio_accuracy95(num[i], den[i], num_acc[i] / Z95, den_acc[i] / Z95)
        accuracy[i] = per * acc if np.isfinite(acc) else np.nan
    return values, accuracy
