"""Fuzzing the two doors a coordinator can knock on: the spec loader and the node's request
handler. Any input may be refused, but only with one of our typed user errors (never a crash,
a RecursionError, a UnicodeError or an internal error), and a refusal spends nothing.

Bounded for CI (`ODA_FUZZ_EXAMPLES`, default 150 per test); by hand, e.g.
`ODA_FUZZ_EXAMPLES=5000 ./dev test tests/adversarial/test_fuzz.py`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyses.documents import parse_document
from analyses.request import AnalysisRequest
from analyses.spec import AnalysisSpec
from node_agent.agent import NodeAgent
from node_agent.config import load_node_config
from privacy import UserError

EXAMPLES = int(os.environ.get("ODA_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

VALID = {
    "version": 1,
    "name": "fuzz",
    "dataset": "incidents",
    "privacy": {"rho": 0.01, "unit": {"identifier": "person_id", "max_rows": 5}},
    "steps": [
        {"kind": "count", "id": "c", "by": [{"column": "area", "keyset": "coventry_lsoa11"}]},
        {
            "kind": "mean",
            "id": "m",
            "column": "harm",
            "bounds": [0, 100],
            "by": [{"column": "occurred_at", "derive": "hour"}],
        },
        {"kind": "quantile", "id": "q", "column": "age", "bounds": [0, 100], "bins": 50, "quantiles": [0.5]},
    ],
}

any_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=400)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=40,
)


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """The valid spec with a few values replaced by anything at all."""
    spec: Any = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        node = spec
        path = draw(st.lists(st.integers(0, 8), min_size=1, max_size=4))
        for i, step in enumerate(path):
            keys = (
                list(node)
                if isinstance(node, dict)
                else list(range(len(node)))
                if isinstance(node, list)
                else []
            )
            if not keys:
                break
            key = keys[step % len(keys)]
            if i == len(path) - 1 or not isinstance(node[key], dict | list):
                node[key] = draw(trees)
                break
            node = node[key]
    return spec


def _loads(text: str) -> None:
    with contextlib.suppress(UserError):
        parse_document(text, AnalysisSpec, source="fuzz")


@FUZZ
@given(any_text)
def test_the_spec_loader_refuses_any_text_with_a_typed_error(text: str) -> None:
    _loads(text)


@FUZZ
@given(trees)
def test_the_spec_loader_refuses_any_yaml_tree_with_a_typed_error(tree: object) -> None:
    _loads(yaml.safe_dump(tree, allow_unicode=True))


@FUZZ
@given(mutated_specs())
def test_the_spec_loader_refuses_any_mutated_spec_with_a_typed_error(spec: dict[str, Any]) -> None:
    _loads(json.dumps(spec, allow_nan=True))


@pytest.fixture(scope="module")
def agent(federation_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    source = federation_data["police"]
    state = tmp_path_factory.mktemp("fuzz-state")
    text = source.read_text().replace("data_dir: data", f"data_dir: {source.parent / 'data'}")
    text = text.replace("state_dir: state", f"state_dir: {state}")
    text = text.replace("incidents: 5.0", "incidents: 100.0")
    text = text.replace("key_file: keys/", f"key_file: {source.parent / 'keys'}/")
    path = state / "node.yaml"
    path.write_text(text)
    made = NodeAgent(load_node_config(path))
    yield made
    made.close()


envelopes = st.fixed_dictionaries(
    {},
    optional={
        "protocol": st.one_of(st.just(1), scalars),
        "request_id": st.one_of(st.text(alphabet="abc123-_.:", min_size=1, max_size=20), scalars),
        "requester": st.one_of(st.just("central"), scalars),
        "spec_yaml": st.one_of(mutated_specs().map(lambda s: json.dumps(s, allow_nan=True)), scalars, trees),
        "state": st.one_of(st.none(), trees),
        "run_id": st.one_of(st.text(alphabet="r0-9.:", min_size=1, max_size=20), scalars),
        "purpose": st.one_of(st.text(max_size=600), scalars),
        "extra": scalars,
    },
)
counter = iter(range(10**9))


@FUZZ
@given(envelopes)
def test_the_request_handler_answers_any_envelope_with_a_release_or_a_typed_refusal(
    agent: NodeAgent, envelope: dict[str, Any]
) -> None:
    if isinstance(envelope.get("request_id"), str):  # distinct ids, so replays are not what we test
        envelope["request_id"] = f"{envelope['request_id']}{next(counter)}"
    before = agent.ledger.spent("incidents").value
    try:
        request = AnalysisRequest.from_bytes(json.dumps(envelope, allow_nan=True))
        agent.handle(request)
    except UserError:
        assert agent.ledger.spent("incidents").value == before  # a refusal spends nothing


OVERLAP = """
version: 1
name: fuzz-overlap
dataset: residents
privacy: {rho: 0.2, unit: {identifier: resident_id, max_rows: 1}}
steps:
  - {kind: overlap, id: known, area: {column: area, values: [E01009564, E01009565]}, max_per_area: 64}
"""
names = st.sampled_from(["police", "fire", "council", "evil", ""])
blobs = st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode())
relay_fields = st.fixed_dictionaries(
    {},
    optional={
        "owner": st.one_of(names, scalars),
        "list": st.one_of(blobs, scalars),
        "tag": st.one_of(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), scalars),
        "seal": st.one_of(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), scalars),
        "seal_tag": scalars,
        "lists": st.one_of(
            st.dictionaries(names, st.fixed_dictionaries({"list": blobs, "tag": scalars})), trees
        ),
    },
)
phases = st.fixed_dictionaries(
    {"run": st.just("ov-fuzz"), "phase": st.sampled_from(["hop", "count", "blind", "other"])},
    optional={
        "hop": st.one_of(st.integers(-1, 9), scalars),
        # mostly the real ring, so the relay's own checks are reached
        "parties": st.one_of(st.just(["council", "fire", "police"]), st.lists(names, max_size=4), trees),
        "counter": st.one_of(st.just("council"), names, scalars),
    },
)


@pytest.fixture(scope="module")
def blinded(agent: NodeAgent) -> NodeAgent:
    """The fuzzed node after it blinded in run ov-fuzz (its secrets kept for the later phases)."""
    pytest.importorskip("nacl.bindings", reason="PyNaCl is installed with oda-federated[linkage]")
    agent.handle(
        AnalysisRequest(1, "ov-fuzz-blind", "central", OVERLAP, {"run": "ov-fuzz", "phase": "blind"})
    )
    return agent


@FUZZ
@given(phases, st.one_of(relay_fields.map(json.dumps), any_text, st.none()))
def test_an_overlap_phase_answers_any_state_and_relay_with_a_typed_refusal_and_spends_nothing(
    blinded: NodeAgent, state: dict[str, Any], relay: str | None
) -> None:
    before = blinded.ledger.spent("residents").value
    request_id = f"ov-fuzz-{state['phase']}{state.get('hop', '') if state['phase'] == 'hop' else ''}"
    with contextlib.suppress(UserError):  # no valid tag can be guessed: every one is refused
        blinded.handle(AnalysisRequest(1, request_id, "central", OVERLAP, state, relay=relay))
        pytest.fail(f"an overlap phase was released for a fuzzed relay: {state} {relay!r:.200}")
    assert blinded.ledger.spent("residents").value == before
