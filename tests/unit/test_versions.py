"""Protocol minor versions: a field added later leaves the spec hash alone while at its default,
and a message's fields a receiver does not know are ignored only when the sender says they may be."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from pydantic import Field

from analyses import AnalysisSpec
from analyses._model import Model, canonical, since
from analyses.documents import parse_document
from analyses.reply import decode_reply, encode_release
from analyses.request import AnalysisRequest
from privacy.errors import ProtocolError
from tests.unit.test_spec import GOOD, _release

SPECS_DIR = Path(__file__).resolve().parents[2] / "configs" / "analyses"
SPECS = sorted(SPECS_DIR.rglob("*.yaml"))


class LaterSpec(AnalysisSpec):
    """The spec model of a later release: one more optional field (`since` 1.1)."""

    smoothing: float = Field(default=0.0, ge=0, json_schema_extra=since("1.1"))


class Inner(Model):
    width: int
    tidy: bool = Field(default=False, json_schema_extra=since("1.2"))


class Outer(Model):
    inners: tuple[Inner, ...]
    name: str = "x"


#: The hash of each shipped spec as the release before minor versions computed it (stop 22,
#: 396a0f7, run on its own tree): a node of that release and this coordinator must agree on them.
PREVIOUS_RELEASE_HASHES = {
    "age_profile_by_partner.yaml": "d662526b1cc1b002e4b59135d1fe625f80d0f9be9798f4cb469b81c819df11a5",
    "incidents_and_deprivation.yaml": "12439168df1a8dceb68ac89c3f6026f5e1aadb950f8d10ec231c2166511ddf82",
    "incidents_by_area.yaml": "01773898b0d7db44d5f9c25a45c86aecbb944dd59c24cd8321b3c9b503f831be",
    "incidents_by_hour.yaml": "6ebeefd039783cea3e5958aa30fe657f5fc928fd6ad545f087739a8ac461fe73",
    "models/crash_fatality.yaml": "caf7a6f6a6b39f92775cf0d377ec4d685cc35c9e477338688f8b3759902d8a38",
    "models/crash_fatality_fedavg.yaml": "23dc26a2315fe2f7f01d128080a02cd791f7c067dd738a30a16937455f049c75",
}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_the_hash_of_every_shipped_spec_is_what_the_previous_release_computed(path: Path) -> None:
    """The disclosure profile (1.1) and any later field stay out of the hash at their defaults."""
    spec = parse_document(path.read_text(), AnalysisSpec, source=str(path))
    assert spec.hash == PREVIOUS_RELEASE_HASHES[str(path.relative_to(SPECS_DIR))]


def test_a_new_optional_field_at_its_default_keeps_the_spec_hash() -> None:
    before = parse_document(GOOD, AnalysisSpec, source="s")
    after = parse_document(GOOD, LaterSpec, source="s")
    assert after.hash == before.hash
    used = parse_document(GOOD.replace("steps:", "smoothing: 0.5\nsteps:"), LaterSpec, source="s")
    assert used.hash != before.hash, "a spec that uses the new field is a different analysis"


def test_nested_fields_added_later_are_left_out_only_at_their_default() -> None:
    outer = Outer(inners=(Inner(width=1), Inner(width=2, tidy=True)))
    assert canonical(outer) == {"inners": [{"width": 1}, {"width": 2, "tidy": True}], "name": "x"}


REQUEST = AnalysisRequest(1, "r-1", "oda", GOOD)


def test_a_request_without_new_fields_has_the_bytes_it_always_had() -> None:
    assert json.loads(REQUEST.to_bytes()) == {
        "protocol": 1,
        "request_id": "r-1",
        "requester": "oda",
        "spec_yaml": GOOD,
        "state": None,
    }


def test_a_node_ignores_new_request_fields_the_sender_marks_optional() -> None:
    data = {**json.loads(REQUEST.to_bytes()), "priority": "high", "optional": ["priority"]}
    assert AnalysisRequest.from_bytes(json.dumps(data)) == REQUEST


def test_a_node_refuses_new_request_fields_that_change_the_meaning() -> None:
    data = {**json.loads(REQUEST.to_bytes()), "noise_multiplier": 0.1}
    with pytest.raises(
        ProtocolError,
        match=r"field 'noise_multiplier', which this node does not know and may not ignore.*upgrade",
    ):
        AnalysisRequest.from_bytes(json.dumps(data))
    with pytest.raises(ProtocolError, match="`optional` must be a short list"):
        AnalysisRequest.from_bytes(json.dumps({**data, "optional": "noise_multiplier"}))


def test_a_coordinator_reads_a_newer_release_with_optional_fields_and_refuses_critical_ones() -> None:
    release = _release("police", {"count": (10, 20)}, 2.0)
    body = json.loads(encode_release(release))
    body["steps"][0]["measurements"][0].update(
        noise_seed_commitment="abc", optional=["noise_seed_commitment"]
    )
    body["node_os"] = "windows"
    body["optional"] = ["node_os"]  # each object lists its own
    assert decode_reply(json.dumps(body)) == release
    del body["optional"]
    with pytest.raises(ProtocolError, match="which this coordinator does not know and may not ignore"):
        decode_reply(json.dumps(body))


def test_an_older_release_without_later_fields_reads_with_their_defaults() -> None:
    release = _release("police", {"count": (10, 20)}, 2.0)
    body = asdict(release)
    del body["snapshots"], body["audit_seq"], body["audit_head"]
    for m in body["steps"][0]["measurements"]:
        del m["unit_value"], m["rounding"]
    assert decode_reply(json.dumps(body)) == release


def test_rendered_blueprints_carry_no_field_of_a_later_minor_version_at_its_default() -> None:
    """A node of the previous release parses the specs a blueprint renders (it refuses unknown fields)."""
    import yaml

    from analyses.blueprint import bundled_blueprints, load_bundled
    from analyses.spec import DisclosureSpec

    later = {n for n, f in DisclosureSpec.model_fields.items() if isinstance(f.json_schema_extra, dict)}
    assert later >= {"profile", "threshold", "false_publication", "non_negative"}
    for name in bundled_blueprints():
        blueprint = load_bundled(name).blueprint
        if blueprint.disclosure.profile != "open":
            continue  # a blueprint that uses a profile needs nodes of the release that has it
        for analysis in blueprint.render({}).analyses:
            disclosure = yaml.safe_load(analysis.text)["disclosure"]
            assert not later & set(disclosure), (name, disclosure)


def test_a_step_of_a_release_follows_the_same_rule() -> None:
    body = json.loads(encode_release(_release("police", {"count": (10, 20)}, 2.0)))
    body["steps"][0]["weighting"] = "by_area"
    with pytest.raises(ProtocolError, match="field 'weighting', which this coordinator does not know"):
        decode_reply(json.dumps(body))
    body["steps"][0]["optional"] = ["weighting"]
    assert decode_reply(json.dumps(body)) == _release("police", {"count": (10, 20)}, 2.0)
