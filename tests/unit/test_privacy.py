"""privacy/: budgets, units, OpenDP releases, accuracy, disclosure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy import (
    PrivacyUnit,
    Rho,
    SpecError,
    calibrate_scale,
    contribution_mask,
    gaussian_accuracy95,
    integer_gaussian,
    pooled_accuracy95,
    rho_from_epsilon_delta,
    suppress_small,
    truncate_contributions,
)


def test_rho_epsilon_matches_opendp_reference() -> None:
    assert Rho(0.1).epsilon(1e-6) == pytest.approx(2.14, abs=0.01)


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 10), st.sampled_from([1e-5, 1e-6, 1e-8]))
def test_rho_from_epsilon_never_exceeds_epsilon(epsilon: float, delta: float) -> None:
    rho = rho_from_epsilon_delta(epsilon, delta)
    assert rho.epsilon(delta) <= epsilon + 1e-9
    assert Rho(rho.value * 1.01).epsilon(delta) > epsilon - 1e-6


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 5), min_size=1, max_size=10))
def test_rho_composition_is_addition(parts: list[float]) -> None:
    total = Rho(0.0)
    for p in parts:
        total = total + Rho(p)
    assert total.value == pytest.approx(sum(parts))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-0.1, "rho must be a finite number >= 0"),
        (math.inf, "rho must be a finite"),
        (math.nan, "rho must be"),
    ],
)
def test_rho_rejects_bad_values(value: float, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        Rho(value)


@pytest.mark.parametrize(
    ("epsilon", "delta", "message"),
    [
        (0, 1e-6, "epsilon must be"),
        (-1, 1e-6, "epsilon must be"),
        (1, 0, "delta must be"),
        (1, 1.5, "delta must be"),
    ],
)
def test_rho_from_epsilon_delta_rejects_bad_values(epsilon: float, delta: float, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        rho_from_epsilon_delta(epsilon, delta)


@pytest.mark.parametrize("sensitivity", [1, 3, 250])
@pytest.mark.parametrize("rho", [0.01, 0.5, 2.0])
def test_calibrated_scale_costs_at_most_the_budget_and_is_tight(sensitivity: int, rho: float) -> None:
    scale = calibrate_scale(sensitivity, Rho(rho))
    assert sensitivity**2 / (2 * scale**2) <= rho * (1 + 1e-12)
    assert scale == pytest.approx(sensitivity / math.sqrt(2 * rho), rel=1e-6)


def test_integer_gaussian_reports_opendp_cost_and_accuracy() -> None:
    release = integer_gaussian(np.zeros(10, dtype=np.int64), 2, Rho(0.5))
    assert release.cost.value <= 0.5 + 1e-12
    assert release.mechanism == "integer_gaussian"
    assert release.accuracy95 == gaussian_accuracy95(release.scale)
    assert len(release.values) == 10


def test_integer_gaussian_noise_respects_its_stated_accuracy() -> None:
    # OpenDP draws from the OS; the bound below fails with probability far below 1e-6.
    release = integer_gaussian(np.full(4000, 100, dtype=np.int64), 1, Rho(0.0005))
    errors = np.abs(np.asarray(release.values) - 100)
    inside = float(np.mean(errors <= release.accuracy95))
    assert 0.935 <= inside <= 0.975
    # and a claim three times too tight would be caught by the same check
    assert float(np.mean(errors <= release.accuracy95 / 3)) < 0.9


@pytest.mark.parametrize(
    ("sensitivity", "rho", "message"),
    [(0, Rho(1.0), "sensitivity must be"), (1, Rho(0.0), "budget above zero")],
)
def test_integer_gaussian_refuses_degenerate_inputs(sensitivity: int, rho: Rho, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        integer_gaussian([1, 2], sensitivity, rho)


def test_pooled_accuracy_grows_with_root_of_partners_and_adds_nothing_for_rounding() -> None:
    # four partners at scale 10: the sum has sd 20; the 95% half-width is 39 (not 39 + 4)
    assert pooled_accuracy95([10.0, 10.0, 10.0, 10.0]) == 39.0


@pytest.mark.parametrize("scales", [[0.4], [0.8, 0.3], [2.0] * 3, [1.5] * 10, [30.0] * 5])
def test_integer_accuracy_is_the_smallest_half_width_covering_95_percent(scales: list[float]) -> None:
    """Against a brute-force convolution of the discrete Gaussians' mass functions."""
    radius = 400
    x = np.arange(-radius, radius + 1)
    mass = np.zeros(1)
    mass[0] = 1.0
    for s in scales:
        w = np.exp(-(x**2) / (2 * s * s))
        mass = np.convolve(mass, w / w.sum())
    centre = (len(mass) - 1) // 2
    inside = [mass[centre - a : centre + a + 1].sum() for a in range(radius)]
    expected = next(a for a, p in enumerate(inside) if p >= 0.95)
    assert pooled_accuracy95(scales) == expected


def test_pooled_counts_cover_their_truth_95_percent_of_the_time() -> None:
    """Three partners' integer-Gaussian releases summed: the stated half-width covers the truth in
    93-97% of 6,000 cells (a binomial check that fails if the claim is off by 2 points)."""
    budget = Rho(0.02)
    truth = np.arange(2000, dtype=np.int64)
    releases = [integer_gaussian(truth, 5, budget) for _ in range(3)]
    pooled = np.sum([np.asarray(r.values) for r in releases], axis=0) - 3 * truth
    half = pooled_accuracy95([r.scale for r in releases])
    inside = float(np.mean(np.abs(pooled) <= half))
    assert 0.93 <= inside <= 0.97, inside


def test_accuracy_takes_bounded_time_at_any_scale() -> None:
    """The coordinator picks the scale: a scale of 1e14 must not freeze a node (OpenDP's own
    figure takes time linear in the scale: hours here)."""
    assert gaussian_accuracy95(1e14) == pytest.approx(1.959963984540054e14, rel=1e-9)
    assert pooled_accuracy95([1e14] * 66) == pytest.approx(1.959963984540054e14 * math.sqrt(66), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=300), st.integers(1, 5))
def test_truncation_keeps_at_most_max_rows_per_person(ids: list[int], k: int) -> None:
    frame = pd.DataFrame({"pid": ids, "row": range(len(ids))})
    kept = truncate_contributions(frame, PrivacyUnit("pid", k))
    assert kept.groupby("pid").size().max() <= k
    expected = sum(min(c, k) for c in pd.Series(ids).value_counts())
    assert len(kept) == expected
    # the first rows of each person are the ones kept
    assert list(kept["row"]) == sorted(kept["row"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(0, 6), st.integers(-(2**62), 2**62)), max_size=200),
    st.integers(1, 4),
    st.sampled_from(["Int64", "float", "object", "str"]),
)
def test_contribution_mask_keeps_the_first_rows_of_each_person(
    ids: list[int | None], k: int, dtype: str
) -> None:
    nullable = pd.Series(ids, dtype="Int64")
    series = {
        "Int64": nullable,
        "float": nullable.astype("Float64").astype(float),
        "object": nullable.astype(object),
        "str": nullable.astype("string[pyarrow]"),
    }[dtype]
    keep = contribution_mask(series, k)
    seen: dict[object, int] = {}
    expected = []
    for person in series.tolist():
        if pd.isna(person):
            expected.append(False)
            continue
        seen[person] = seen.get(person, 0) + 1
        expected.append(seen[person] <= k)
    assert list(keep) == expected


def test_contribution_mask_uses_dense_integer_ids_directly() -> None:
    ids = pd.Series(np.arange(1_000, 1_010).repeat(3))
    assert list(contribution_mask(ids, 2)) == [True, True, False] * 10


def test_truncation_drops_missing_identifiers() -> None:
    frame = pd.DataFrame({"pid": [1.0, None, 1.0]})
    assert len(truncate_contributions(frame, PrivacyUnit("pid", 5))) == 2


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        (("pid", 0), "max_rows must be between"),
        (("", 1), "needs an identifier"),
        (("pid", 5000), "max_rows must be between"),
    ],
)
def test_privacy_unit_rejects_bad_bounds(unit: tuple[str, int], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        PrivacyUnit(*unit)


def test_truncation_needs_the_identifier_column() -> None:
    with pytest.raises(SpecError, match="identifier column 'pid' is not in the dataset"):
        truncate_contributions(pd.DataFrame({"x": [1]}), PrivacyUnit("pid", 1))


def test_suppression_hides_small_cells_only() -> None:
    assert math.isnan(suppress_small(5.0, 4.0, 10))
    assert suppress_small(50.0, 40.0, 10) == 50.0


def test_suppression_off_keeps_negative_noisy_counts() -> None:
    assert suppress_small(-3.0, -3.0, 0) == -3.0
