"""The `tre` disclosure profile (issue 16, first part): a cell of fewer than 10 people is published
with at most the stated probability, however the noise falls; no negative count or sum is
published; and a node's own floor holds whatever the spec asks.

The noise is OpenDP's integer Gaussian, drawn by the very measurement a node releases with
(`integer_gaussian_samples`); three partners' releases are pooled by the coordinator's own
aggregate step (`combine`). Each case counts tens of thousands of cells, so the share published
is known to within a few tenths of a percent; the control shows the check fails for the open
profile's noisy-count rule, which publishes truly small cells far more often.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analyses import AnalysisSpec
from analyses.aggregate import combine
from analyses.documents import parse_document
from analyses.reply import MeasurementRelease, NodeRelease, StepRelease
from privacy import Rho
from privacy.mechanisms import calibrate_scale, integer_gaussian_samples

CELLS = 195  # the coventry_lsoa11 key set
RELEASES = 60  # x 195 cells = 11,700 cells per case
SPEC = """
version: 1
name: small_cells
dataset: incidents
privacy: {{rho: 0.5, unit: {{identifier: person_id, max_rows: {max_rows}}}}}
disclosure: {disclosure}
steps:
  - {{kind: count, id: c, by: [{{column: area, keyset: coventry_lsoa11}}]}}
  - {{kind: sum, id: s, column: harm, bounds: [0, 100], precision: 1, by: [{{column: area, keyset: coventry_lsoa11}}]}}
"""


def _spec(disclosure: str, max_rows: int = 1) -> AnalysisSpec:
    return parse_document(SPEC.format(disclosure=disclosure, max_rows=max_rows), AnalysisSpec, source="t")


def _releases(
    true_rows: np.ndarray, rho: float, max_rows: int, floor: int, seed: int
) -> list[list[NodeRelease]]:
    """RELEASES rounds of three partners' releases of counts that add up to `true_rows` per cell
    (split at random between the partners), each noised by OpenDP; sums of 0 harm each."""
    rng = np.random.default_rng(seed)
    scale = calibrate_scale(max_rows, Rho(rho))
    noisy = {
        p: integer_gaussian_samples(np.zeros(CELLS, dtype=np.int64), max_rows, Rho(rho), RELEASES)
        for p in range(3)
    }
    sums = {
        p: integer_gaussian_samples(np.zeros(CELLS, dtype=np.int64), 100 * max_rows, Rho(rho), RELEASES)
        for p in range(3)
    }
    sum_scale = calibrate_scale(100 * max_rows, Rho(rho))
    rounds = []
    for r in range(RELEASES):
        shares = np.array([rng.multinomial(n, [1 / 3] * 3) for n in true_rows])  # cells x partners
        round_releases = []
        for p in range(3):
            counts = shares[:, p] + noisy[p][r]
            count = MeasurementRelease(
                "count", tuple(int(v) for v in counts), "integer_gaussian", scale, max_rows, rho, 2 * scale
            )
            total = MeasurementRelease(
                "sum",
                tuple(int(v) for v in sums[p][r]),
                "integer_gaussian",
                sum_scale,
                100,
                rho,
                2 * sum_scale,
                1.0,
            )
            steps = (
                StepRelease("c", "count", "hidden", (count,)),
                StepRelease("s", "sum", "hidden", (total, count)),
            )
            round_releases.append(
                NodeRelease(1, f"p{p}", "x", f"r{r}", "h", "released", steps, rho, 1.0, 1e-6, floor, r)
            )
        rounds.append(round_releases)
    return rounds


def _published_share(
    spec: AnalysisSpec, rounds: list[list[NodeRelease]], true_rows: np.ndarray, below: np.ndarray
) -> tuple[float, int, float]:
    """Share of cells in `below` whose count was published, their number, and the least value
    published anywhere (counts and sums)."""
    published = total = 0
    least = math.inf
    for releases in rounds:
        tables = {t.name: t.frame for t in combine(spec, releases)}
        counts = tables["c"]["count"].to_numpy(dtype=float)
        published += int(np.sum(~np.isnan(counts[below])))
        total += int(below.sum())
        for values in (counts, tables["s"]["sum"].to_numpy(dtype=float)):
            shown = values[~np.isnan(values)]
            if shown.size:
                least = min(least, float(shown.min()))
    return published / total, total, least


@pytest.mark.slow
@pytest.mark.parametrize("max_rows", [1, 5])
def test_under_tre_a_cell_of_fewer_than_ten_people_is_published_at_most_one_time_in_a_hundred(
    max_rows: int,
) -> None:
    true_rows = np.arange(CELLS) % (10 * max_rows)  # 0 .. 10k-1 rows: up to 9 people, or 10 at k rows
    # a cell of at most 9 * k rows may be 9 people of k rows each: the worst case the rule covers
    may_be_under_ten = true_rows <= 9 * max_rows
    spec = _spec("{profile: tre}", max_rows)
    rounds = _releases(true_rows, 0.05, max_rows, 5, seed=max_rows)
    share, cells, least = _published_share(spec, rounds, true_rows, may_be_under_ten)
    assert cells > 10_000
    assert share <= spec.disclosure.false_publication, (
        f"{share:.4f} of {cells} cells below 10 people published"
    )
    assert least >= 0, "a negative count or sum was published"


@pytest.mark.slow
def test_the_check_can_fail_the_open_profile_publishes_small_cells_often() -> None:
    true_rows = np.arange(CELLS) % 10
    spec = _spec("{profile: open, min_cell: 10}")
    share, _, least = _published_share(
        spec, _releases(true_rows, 0.05, 1, 0, seed=3), true_rows, true_rows <= 9
    )
    assert share > 0.05, share  # the noisy-count rule publishes truly small cells far more often than 1%
    assert least < 0, "without the profile, negative noisy sums are published as they are"


@pytest.mark.slow
def test_a_nodes_floor_holds_when_the_spec_asks_for_no_suppression() -> None:
    true_rows = np.full(CELLS, 4)
    spec = _spec("{min_cell: 0}")
    rounds = _releases(true_rows, 0.05, 1, floor=10, seed=4)
    share, _, _ = _published_share(spec, rounds, true_rows, np.ones(CELLS, dtype=bool))
    none, _, _ = _published_share(
        spec, _releases(true_rows, 0.05, 1, floor=0, seed=4), true_rows, np.ones(CELLS, dtype=bool)
    )
    assert none == 1.0, "without a floor every cell is published (min_cell: 0)"
    assert share < 0.2, share  # the node's min_cell 10 applies to noisy counts: most cells of 4 are cut


def test_the_threshold_and_its_probability_are_stated_with_the_table() -> None:
    spec = _spec("{profile: tre}")
    tables = combine(spec, _releases(np.full(CELLS, 20), 0.05, 1, 5, seed=5)[0])
    notes = " ".join(next(t for t in tables if t.name == "c").notes)
    assert "cells of fewer than 10 people are suppressed" in notes and "probability at most 0.01" in notes
    assert "negative values of count are published as 0" in notes


@pytest.mark.parametrize(
    ("disclosure", "message"),
    [
        ("{profile: tre, threshold: 5}", "the tre profile's threshold is at least 10; use profile: custom"),
        ("{profile: custom}", "profile: custom needs a threshold"),
        (
            "{profile: open, threshold: 10}",
            "threshold, non_negative and dominance belong to the tre and custom profiles",
        ),
        ("{profile: tre, false_publication: 0.5}", "less than or equal to 0.2"),
    ],
)
def test_bad_disclosure_settings_are_refused_with_their_message(disclosure: str, message: str) -> None:
    from privacy.errors import SpecError

    with pytest.raises(SpecError, match=message):
        _spec(disclosure)
