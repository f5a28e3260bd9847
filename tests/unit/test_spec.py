"""analyses/: spec parsing (every bad input has its message), keys, local and aggregate steps."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyses import (
    AnalysisSpec,
    LocalData,
    MeasurementRelease,
    NodeRelease,
    StepRelease,
    combine,
    parse_document,
)
from analyses.catalog import check_steps
from analyses.keys import KeySpec
from analyses.operators import STEP_KINDS
from analyses.operators.counting import MeanStep
from analyses.reply import decode_reply, encode_release
from privacy import SpecError
from privacy.unit import PrivacyUnit, truncate_contributions

GOOD = """
version: 1
name: t
dataset: incidents
privacy: {rho: 0.5, unit: {identifier: pid, max_rows: 2}}
steps:
  - {kind: count, id: c, by: [{column: area, values: [a, b, c]}]}
"""


def spec_with(step: str, head: str = "") -> str:
    base = (
        head
        or "version: 1\nname: t\ndataset: incidents\nprivacy: {rho: 0.5, unit: {identifier: pid, max_rows: 2}}\n"
    )
    return base + "steps:\n" + textwrap.indent(step.strip("\n"), "  ") + "\n"


BAD_SPECS = [
    ("missing bounds", spec_with("- {kind: sum, id: s, column: x}"), r"steps\[0\]\.bounds: Field required"),
    ("null bounds", spec_with("- {kind: mean, id: s, column: x, bounds: null}"), "numeric steps need bounds"),
    ("inverted bounds", spec_with("- {kind: sum, id: s, column: x, bounds: [5, 1]}"), "lower < upper"),
    ("infinite bounds", spec_with("- {kind: sum, id: s, column: x, bounds: [0, .inf]}"), "finite"),
    ("unknown step", spec_with("- {kind: regress, id: s}"), "unknown step kind 'regress'"),
    ("negative rho", GOOD.replace("rho: 0.5", "rho: -1"), r"privacy\.rho: Input should be greater than 0"),
    (
        "absurd epsilon",
        GOOD.replace("rho: 0.5", "epsilon: 1000, delta: 1.0e-6"),
        r"privacy\.epsilon: Input should be less than or equal to 50",
    ),
    ("epsilon without delta", GOOD.replace("rho: 0.5", "epsilon: 1"), "'epsilon' needs 'delta'"),
    ("both budgets", GOOD.replace("rho: 0.5", "rho: 0.5, epsilon: 1, delta: 1.0e-6"), "not both"),
    (
        "group by identifier",
        spec_with("- {kind: count, id: c, by: [{column: pid, values: [1, 2]}]}"),
        "identifiers are never published",
    ),
    ("unknown field", GOOD.replace("name: t", "name: t\ncolour: red"), "colour: unknown field"),
    ("python tag", "!!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
    (
        "oversized keys",
        spec_with(
            "- {kind: count, id: c, by: [{column: a, values: KEYS}, {column: b, values: KEYS}]}".replace(
                "KEYS", str(list(range(1000)))
            )
        ),
        "over the limit of 200,000",
    ),
    (
        "unknown keyset",
        spec_with("- {kind: count, id: c, by: [{column: area, keyset: atlantis}]}"),
        "unknown key set 'atlantis'",
    ),
    ("no key source", spec_with("- {kind: count, id: c, by: [{column: area}]}"), "give exactly one of"),
    (
        "duplicate step id",
        spec_with("- {kind: count, id: c}\n- {kind: count, id: c}"),
        "step id 'c' is used twice",
    ),
    (
        "unsupported version",
        GOOD.replace("version: 1", "version: 7"),
        "spec version 7 is not supported; this release reads 1",
    ),
    (
        "unit too large",
        GOOD.replace("max_rows: 2", "max_rows: 100000"),
        r"max_rows: Input should be less than or equal to 1000",
    ),
    ("not a mapping", "- just\n- a list\n", "expected a mapping"),
    ("no steps", GOOD.split("steps:")[0] + "steps: []\n", "steps: Tuple should have at least 1 item"),
    (
        "bad quantile",
        spec_with("- {kind: quantile, id: q, column: x, bounds: [0, 1], quantiles: [1.5]}"),
        "strictly between 0 and 1",
    ),
    (
        "band without edges",
        spec_with("- {kind: count, id: c, by: [{column: age, derive: band}]}"),
        "needs 'edges'",
    ),
    (
        "mixed datasets without join",
        spec_with("- {kind: count, id: c, dataset: other}"),
        "need combine: join",
    ),
]


@pytest.mark.parametrize(("label", "text", "message"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_is_refused_with_its_message(label: str, text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_document(text, AnalysisSpec, source="spec.yaml")


def test_every_problem_is_reported_at_once_with_file_and_path() -> None:
    text = spec_with("- {kind: sum, id: s, column: x}\n- {kind: mean, id: m, column: y, bounds: [3, 1]}")
    with pytest.raises(SpecError) as info:
        parse_document(text, AnalysisSpec, source="spec.yaml")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("spec.yaml: steps[0].bounds:")
    assert any(line.startswith("spec.yaml: steps[1]") for line in lines)


def test_an_unknown_kind_is_one_line_naming_every_kind() -> None:
    with pytest.raises(SpecError) as info:
        parse_document(spec_with("- {kind: regress, id: s}"), AnalysisSpec, source="spec.yaml")
    kinds = ", ".join(STEP_KINDS)
    assert str(info.value) == f"spec.yaml: steps[0]: unknown step kind 'regress'; expected one of {kinds}"


def test_good_spec_hash_is_stable_and_content_sensitive() -> None:
    a = parse_document(GOOD, AnalysisSpec, source="s")
    b = parse_document(GOOD + "\n# a comment\n", AnalysisSpec, source="s")
    c = parse_document(GOOD.replace("rho: 0.5", "rho: 0.4"), AnalysisSpec, source="s")
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()


def test_catalog_check_lists_unknown_and_mistyped_columns() -> None:
    spec = parse_document(
        spec_with(
            "- {kind: sum, id: s, column: name, bounds: [0, 1], by: [{column: when, derive: hour}, {column: nope, values: [1]}]}"
        ),
        AnalysisSpec,
        source="s",
    )
    with pytest.raises(SpecError) as info:
        check_steps(spec, {"incidents": {"pid": "int", "name": "str", "when": "int"}})
    message = str(info.value)
    assert "derive hour needs a datetime column" in message
    assert "unknown column 'nope'" in message
    assert "sum needs a numeric column, 'name' is str" in message


def test_key_frame_is_row_major_product() -> None:
    spec = parse_document(
        spec_with(
            "- {kind: count, id: c, by: [{column: a, values: [x, y]}, {column: b, values: [1, 2, 3]}]}"
        ),
        AnalysisSpec,
        source="s",
    )
    frame = spec.steps[0].key_frame()
    assert list(zip(frame["a"], frame["b"], strict=True))[:4] == [("x", 1), ("x", 2), ("x", 3), ("y", 1)]


def test_exact_aggregates_match_pandas() -> None:
    spec = parse_document(
        spec_with(
            "- {kind: mean, id: m, column: v, bounds: [0, 10], by: [{column: area, values: [a, b, c]}, {column: t, derive: hour}]}"
        ),
        AnalysisSpec,
        source="s",
    )
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "pid": rng.integers(0, 50, 500),
            "area": rng.choice(["a", "b", "c", "zz"], 500),
            "t": pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 48 * 60, 500), unit="m"),
            "v": rng.integers(-5, 20, 500).astype(float),
        }
    )
    unit = PrivacyUnit("pid", 2)
    out = spec.steps[0].exact(LocalData(frame), unit, None)
    truth = truncate_contributions(frame, unit)
    truth = truth[truth.area != "zz"].assign(h=lambda f: f.t.dt.hour, v=lambda f: f.v.clip(0, 10))
    grouped = truth.groupby(["area", "h"]).v.agg(["sum", "size"])
    step = spec.steps[0]
    assert isinstance(step, MeanStep)
    counts = out["count"].vector.reshape(3, 24)
    # sums travel centred on the bounds' midpoint, in units of the step's quantum
    sums = out["sum"].vector.reshape(3, 24) * step.quantum() + step.centre() * counts
    for row in grouped.reset_index().to_dict("records"):
        i, hour = "abc".index(str(row["area"])), int(row["h"])
        assert sums[i, hour] == row["sum"] and counts[i, hour] == row["size"]
    # centred, a row moves the sum by half the bounds' width (5), not by their largest end (10)
    assert out["sum"].sensitivity * step.quantum() == pytest.approx(2 * 5, rel=1e-5)
    assert out["count"].sensitivity == 2
    assert out["sum"].rounding == step.quantum() / 2  # a float column: up to half a unit per row


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 8), st.sampled_from("abc"), st.integers(-3, 12)), min_size=1, max_size=80
    ),
    st.integers(0, 8),
)
def test_removing_one_person_moves_releases_by_at_most_the_sensitivity(
    rows: list[tuple[int, str, int]], victim: int
) -> None:
    spec = parse_document(
        spec_with(
            "- {kind: mean, id: m, column: v, bounds: [-2, 10], by: [{column: area, values: [a, b, c]}]}"
        ),
        AnalysisSpec,
        source="s",
    )
    frame = pd.DataFrame(rows, columns=["pid", "area", "v"]).astype({"v": float})
    unit = PrivacyUnit("pid", 2)
    with_all = spec.steps[0].exact(LocalData(frame), unit, None)
    without = spec.steps[0].exact(LocalData(frame[frame.pid != victim]), unit, None)
    for name, part in with_all.items():
        assert np.linalg.norm(part.vector - without[name].vector) <= part.sensitivity


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.integers(-(2**27), 2**27).map(lambda m: m * 60)), min_size=1, max_size=60
    ),
    st.sampled_from(["ns", "us", "ms", "s"]),
)
def test_hour_and_weekday_codes_match_pandas(seconds: list[int | None], unit: str) -> None:
    stamps = [np.datetime64("NaT") if s is None else np.datetime64(s, "s") for s in seconds]
    when = pd.Series(np.array(stamps, dtype="datetime64[s]").astype(np.dtype(f"datetime64[{unit}]")))
    data = LocalData(pd.DataFrame({"t": when}))
    hour = data.codes(KeySpec(column="t", derive="hour"))
    weekday = data.codes(KeySpec(column="t", derive="weekday"))
    assert list(hour) == list(when.dt.hour.fillna(-1).astype(int))
    assert list(weekday) == list(when.dt.day_of_week.fillna(-1).astype(int))


def test_string_keys_are_coded_the_same_from_arrow_and_python_strings() -> None:
    key = KeySpec(column="area", values=("a", "b", "c"))
    raw = ["c", "zz", None, "a", "b", "a"]
    arrow = LocalData(pd.DataFrame({"area": pd.Series(raw, dtype="string[pyarrow]")})).codes(key)
    python = LocalData(pd.DataFrame({"area": pd.Series(raw, dtype=object)})).codes(key)
    assert list(arrow) == list(python) == [2, -1, -1, 0, 1, 0]


def test_local_data_truncates_once_per_unit_and_never_copies_the_frame() -> None:
    frame = pd.DataFrame({"pid": [1, 1, 1, 2], "area": ["a", "b", "c", "a"]})
    data = LocalData(frame)
    by = (KeySpec(column="area", values=("a", "b", "c")),)
    one, three = PrivacyUnit("pid", 1), PrivacyUnit("pid", 3)
    assert list(data.cells(by, one)) == [0, 3, 3, 0]  # 3 is the outside cell
    assert list(data.cells(by, three)) == [0, 1, 2, 0]
    assert data.cells(by, one) is data.cells(by, one)
    assert data.frame is frame


def test_local_data_needs_the_identifier_column() -> None:
    with pytest.raises(SpecError, match="identifier column 'pid' is not in the dataset"):
        LocalData(pd.DataFrame({"x": [1]})).keep(PrivacyUnit("pid", 1))


def _release(
    partner: str,
    values: dict[str, tuple[int, ...]],
    scale: float,
    min_cell: int = 0,
    units: dict[str, float] | None = None,
) -> NodeRelease:
    ms = tuple(
        MeasurementRelease(n, v, "integer_gaussian", scale, 1, 0.1, 2 * scale, (units or {}).get(n, 1.0))
        for n, v in values.items()
    )
    return NodeRelease(
        1,
        partner,
        "x",
        "r",
        "h",
        "released",
        (StepRelease("c", "count", "hidden", ms),),
        0.1,
        2.0,
        1e-6,
        min_cell,
        1,
    )


def test_pool_sums_cells_and_propagates_scale_exactly() -> None:
    spec = parse_document(
        GOOD.replace("steps:", "disclosure: {min_cell: 0}\nsteps:"), AnalysisSpec, source="s"
    )
    tables = combine(
        spec, [_release("p", {"count": (10, 20, 30)}, 3.0), _release("f", {"count": (1, 2, 3)}, 4.0)]
    )
    frame = tables[0].frame
    assert list(frame["count"]) == [11, 22, 33]
    # sd sqrt(3^2 + 4^2) = 5: the smallest integer covering 95% is ceil(1.96 x 5 - 1/2) = 10
    assert frame["count_accuracy95"].iloc[0] == 10


def test_pool_suppresses_cells_below_the_strictest_min_cell() -> None:
    spec = parse_document(
        GOOD.replace("steps:", "disclosure: {min_cell: 5}\nsteps:"), AnalysisSpec, source="s"
    )
    frame = combine(spec, [_release("p", {"count": (3, 20, 30)}, 1.0, min_cell=25)])[0].frame
    assert frame["count"].isna().tolist() == [True, True, False]


def test_by_partner_keeps_partners_apart() -> None:
    spec = parse_document(
        GOOD.replace("dataset: incidents", "dataset: incidents\ncombine: by_partner").replace(
            "steps:", "disclosure: {min_cell: 0}\nsteps:"
        ),
        AnalysisSpec,
        source="s",
    )
    frame = combine(
        spec, [_release("p", {"count": (10, 20, 30)}, 3.0), _release("f", {"count": (1, 2, 3)}, 4.0)]
    )[0].frame
    assert frame.groupby("partner")["count"].sum().to_dict() == {"p": 60, "f": 6}


def test_mean_is_pooled_sum_over_pooled_count() -> None:
    spec = parse_document(
        spec_with(
            "- {kind: mean, id: c, column: v, bounds: [0, 10], by: [{column: area, values: [a]}]}"
        ).replace("steps:", "disclosure: {min_cell: 0}\nsteps:"),
        AnalysisSpec,
        source="s",
    )
    step = spec.steps[0]
    assert isinstance(step, MeanStep) and step.centre() == 5.0
    q = step.quantum()
    # 10 rows averaging 7 and 30 averaging 9, summed centred on 5 in units of q
    r1 = _release("p", {"sum": (round(2 * 10 / q),), "count": (10,)}, 1.0, units={"sum": q})
    r2 = _release("f", {"sum": (round(4 * 30 / q),), "count": (30,)}, 1.0, units={"sum": q})
    frame = combine(spec, [r1, r2])[0].frame
    assert frame["mean"].iloc[0] == pytest.approx(8.5)
    assert frame["count"].iloc[0] == 40


def test_release_of_wrong_shape_is_a_protocol_error() -> None:
    from privacy import ProtocolError

    spec = parse_document(GOOD, AnalysisSpec, source="s")
    with pytest.raises(ProtocolError, match="a release has 2 cells, the spec defines 3"):
        combine(spec, [_release("p", {"count": (1, 2)}, 1.0)])


def test_release_json_round_trip_and_version_refusal() -> None:
    from privacy import ProtocolError

    r = _release("p", {"count": (1, 2, 3)}, 1.0)
    assert decode_reply(encode_release(r)) == r
    with pytest.raises(
        ProtocolError, match=r"release protocol 9 is not supported; this coordinator speaks \[1\]"
    ):
        decode_reply(encode_release(r).replace(b'"protocol": 1', b'"protocol": 9'))
