"""Overlap steps on the embedded federation's three agencies (issue 17), through the in-process
twin, which runs each node's own reply path: DP counts of residents known to several agencies
by area cover the generator's true overlaps at their stated 95% accuracy; what the coordinator
relays holds nothing it could match across runs or invert, and nothing it writes holds an
identifier; each node spends once per run; and a hostile relay is refused at every door."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("nacl.bindings", reason="PyNaCl is installed with oda-federated[linkage]")

from analyses import load_keyset
from analyses.request import AnalysisRequest
from coordinator.embedded.synthetic import federation_residents, write_federation
from coordinator.embedded.twin import InProcessTransport
from coordinator.run.orchestrator import run_analysis
from coordinator.run.transport import NodeReply, RunContext, RunWatch
from node_agent.agent import NodeAgent
from node_agent.config import load_node_config
from privacy.errors import FederationError
from privacy.psi import POINT_BYTES, keyed_identifiers, normalise_identifier

ROWS, SEED = 3000, 3
AREAS = list(load_keyset("coventry_lsoa11"))[:40]
SPEC = f"""
version: 1
name: known-to-agencies
dataset: residents
privacy: {{rho: 0.5, unit: {{identifier: resident_id, max_rows: 1}}}}
disclosure: {{profile: open, min_cell: 0}}
steps:
  - kind: overlap
    id: known
    area: {{column: area, values: {json.dumps(AREAS)}}}
    max_per_area: 64
"""


@dataclass
class Relay:
    """The twin behind the relay a test plays: it records every relay the coordinator sends and
    receives, and with `phase` and `rewrite` it rewrites that phase's relays before passing them on."""

    inner: InProcessTransport
    phase: str = ""
    rewrite: Callable[[dict[str, dict[str, object]]], None] | None = None
    relayed: list[str] = field(default_factory=list)

    def broadcast(
        self,
        request: AnalysisRequest,
        timeout: float,
        watch: RunWatch | None = None,
        relays: Mapping[str, str] | None = None,
    ) -> list[NodeReply]:
        if relays is not None and self.rewrite is not None and request.request_id.endswith(self.phase):
            parsed = {node: json.loads(text) for node, text in relays.items()}
            self.rewrite(parsed)
            relays = {node: json.dumps(data) for node, data in parsed.items()}
        self.relayed += list((relays or {}).values())
        replies = self.inner.broadcast(request, timeout, watch, relays)
        for reply in replies:
            if reply.release is not None:
                self.relayed += [s.relay for s in reply.release.steps if s.relay]
        return replies

    def fedavg(self, *args: object, **kwargs: object) -> object:
        raise NotImplementedError


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[NodeAgent]]:
    configs = write_federation(tmp_path / "partners", ROWS, seed=SEED)
    for path in configs.values():  # every cell published, so coverage is measured on all of them
        path.write_text(path.read_text().replace("min_cell: 5", "min_cell: 0"))
    made = [NodeAgent(load_node_config(p)) for p in configs.values()]
    yield made
    for agent in made:
        agent.close()


def _truth() -> tuple[dict[str, pd.Series], dict[str, pd.Series]]:
    world = federation_residents(ROWS, SEED)
    names = sorted(world.holdings)
    combos = {
        "+".join(sorted(c)): world.overlap(list(c)).reindex(AREAS, fill_value=0)
        for c in [*[(a, b) for i, a in enumerate(names) for b in names[i + 1 :]], tuple(names)]
    }
    known = {
        "1": world.known_to(1).reindex(AREAS, fill_value=0),
        "2": world.known_to(2).reindex(AREAS, fill_value=0),
        "3+": world.known_to(3, at_least=True).reindex(AREAS, fill_value=0),
    }
    return combos, known


def _errors(
    frame: pd.DataFrame, label: str, truth: Mapping[str, pd.Series]
) -> tuple[list[float], list[float]]:
    errors, stated = [], []
    for name, expected in truth.items():
        rows = frame[frame[label] == name].set_index("area").reindex(AREAS)
        errors += list(np.abs(rows["count"].to_numpy(dtype=float) - expected.to_numpy(dtype=float)))
        stated += list(rows["count_accuracy95"].to_numpy(dtype=float))
    return errors, stated


def test_dp_overlap_counts_by_area_cover_the_true_overlaps(agents: list[NodeAgent], tmp_path: Path) -> None:
    combos, known = _truth()
    errors: list[float] = []
    stated: list[float] = []
    for run in range(2):
        result = run_analysis(SPEC, InProcessTransport(agents), out_dir=tmp_path / f"out{run}")
        tables = {t.name: t.frame for t in result.tables}
        assert set(tables) == {"known", "known_known_to"}
        assert (tables["known"]["check"] == "pass").all()
        for frame, label, truth in (
            (tables["known"], "agencies", combos),
            (tables["known_known_to"], "known_to_agencies", known),
        ):
            e, s = _errors(frame, label, truth)
            errors += e
            stated += s
    error, accuracy = np.asarray(errors), np.asarray(stated)
    assert len(error) == 2 * 40 * (4 + 3) and not np.isnan(error).any()
    # 560 cells at 95% nominal (correlated within an area, since known-to counts reuse the
    # combination counts): under 90% is far outside the seeded run's spread; a third of the
    # stated accuracy covers far less, so the check can fail
    assert float(np.mean(error <= accuracy)) >= 0.90
    assert float(np.mean(error <= accuracy / 3)) < 0.80
    # residents known to two or more agencies exist in these areas, in numbers the test can see
    assert sum(int(s.sum()) for s in combos.values()) > 100


def test_each_agency_spends_once_and_the_manifest_shows_what(agents: list[NodeAgent], tmp_path: Path) -> None:
    result = run_analysis(SPEC, InProcessTransport(agents), out_dir=tmp_path / "out")
    for agent in agents:
        entries = [e for e in agent.ledger.entries() if e.status == "committed"]
        assert [e.rho for e in entries] == [pytest.approx(0.5)]
        assert entries[0].request_id.endswith("-blind")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    phases = sorted(re.sub(r"^ov-[0-9a-f]+-", "", n["request_id"]) for n in manifest["nodes"])
    assert phases == ["blind"] * 3 + ["count"] + ["hop1"] * 3 + ["hop2"] * 3
    spent = {n["partner"]: n["cost_rho"] for n in manifest["nodes"] if n["request_id"].endswith("-blind")}
    assert spent == {"council": 0.5, "fire": 0.5, "police": 0.5}
    (count,) = [n for n in manifest["nodes"] if n["request_id"].endswith("-count")]
    assert count["partner"] == "council" and count["cost_rho"] == 0
    assert [m["name"] for m in count["steps"][0]["measurements"]] == ["combinations"]
    assert result.tables[0].notes[0].startswith("agencies: council, fire, police; counted by council")


def test_the_coordinator_relays_nothing_it_can_match_and_writes_no_identifier(
    agents: list[NodeAgent], tmp_path: Path
) -> None:
    runs = []
    for run in range(2):
        recording = Relay(InProcessTransport(agents))
        run_analysis(SPEC, recording, out_dir=tmp_path / "coordinator" / f"out{run}")
        runs.append(recording.relayed)

    def points(relays: list[str]) -> set[bytes]:
        out: set[bytes] = set()
        for text in relays:
            data = json.loads(text)
            blobs = [data.get("list")] + [v["list"] for v in data.get("lists", {}).values()]
            for blob in filter(None, blobs):
                raw = base64.b64decode(blob)
                out |= {raw[i : i + POINT_BYTES] for i in range(0, len(raw) - POINT_BYTES + 1, POINT_BYTES)}
        return out

    first, second = points(runs[0]), points(runs[1])
    assert len(first) > 10_000 and not first & second  # fresh secrets and padding every run
    relayed = "".join(runs[0] + runs[1]).encode()
    written = b"".join(p.read_bytes() for p in (tmp_path / "coordinator").rglob("*") if p.is_file())
    key = bytes.fromhex((tmp_path / "partners" / "linkage.key").read_text())
    held = pd.concat(pd.read_parquet(a.config.data_dir + "/residents.parquet").iloc[:, 0] for a in agents)
    assert len(held) > 500
    assert_no_identifier(relayed + written, held.head(300), key)


def assert_no_identifier(data: bytes, identifiers: Iterable[str], key: bytes) -> None:
    """No identifier, as held or normalised, nor its keyed or unkeyed SHA-256 (raw or hex), nor
    the linkage key, is anywhere in `data` (what a coordinator relayed or wrote)."""
    for raw in identifiers:
        norm = normalise_identifier(raw)
        keyed = bytes.fromhex(keyed_identifiers([raw], key)[0])
        unkeyed = hashlib.sha256(norm.encode()).digest()
        for needle in (
            raw.encode(),
            norm.encode(),
            keyed,
            keyed.hex().encode(),
            unkeyed,
            unkeyed.hex().encode(),
        ):
            assert needle not in data, f"{raw!r} is in what the coordinator holds"
    assert key not in data and key.hex().encode() not in data


def _blind(agents: list[NodeAgent], run: str = "ov-test1") -> dict[str, dict[str, object]]:
    """Every agent's blind release for `run`, by partner: its relay."""
    out = {}
    for agent in agents:
        request = RunContext().request(f"{run}-blind", SPEC, {"run": run, "phase": "blind"})
        released = agent.handle(request)
        out[agent.config.partner] = json.loads(released.release.steps[0].relay)  # type: ignore[union-attr]
    return out


def _hop_request(run: str, hop: int, relay: dict[str, object]) -> AnalysisRequest:
    state = {
        "run": run,
        "phase": "hop",
        "hop": hop,
        "parties": ["council", "fire", "police"],
        "counter": "council",
    }
    return RunContext().request(f"{run}-hop{hop}", SPEC, state, json.dumps(relay))


def test_a_hostile_relay_is_refused_at_every_door(agents: list[NodeAgent]) -> None:
    council, fire, police = sorted(agents, key=lambda a: a.config.partner)
    blinded = _blind(agents)
    # at hop 1 council blinds police's list (the ring: c<-p, f<-c, p<-f)
    good = {"owner": "police", "list": blinded["police"]["list"], "tag": blinded["police"]["tag"]}
    with pytest.raises(
        Exception, match="at hop 1 this node blinds police's list, and the relay holds another"
    ):
        council.handle(_hop_request("ov-test1", 1, {**good, "owner": "fire"}))
    raw = base64.b64decode(str(good["list"]))
    forged = base64.b64encode(bytes([raw[0] ^ 1]) + raw[1:]).decode()  # one bit changed, always
    with pytest.raises(Exception, match="police's list at hop 0 does not carry its tag"):
        council.handle(_hop_request("ov-test1", 1, {**good, "list": forged}))
    council.handle(_hop_request("ov-test1", 1, good))
    with pytest.raises(Exception, match="hop1 was done already, and each phase runs once"):
        council.handle(_hop_request("ov-test1", 1, good))
    with pytest.raises(Exception, match="did not release the blind phase of overlap run ov-other"):
        council.handle(_hop_request("ov-other", 1, good))
    state = {
        "run": "ov-test1",
        "phase": "count",
        "parties": ["council", "fire", "police"],
        "counter": "council",
    }
    with pytest.raises(Exception, match="is counted by council, not this node"):
        fire.handle(RunContext().request("ov-test1-count", SPEC, state, json.dumps({"lists": {}})))
    with pytest.raises(Exception, match="has not taken part in every hop yet"):
        council.handle(RunContext().request("ov-test1-count", SPEC, state, json.dumps({"lists": {}})))
    other = {**state, "phase": "hop", "hop": 1, "parties": ["council", "police"], "counter": "council"}
    with pytest.raises(Exception, match="named other agencies or another counter before"):
        council.handle(RunContext().request("ov-test1-hop1", SPEC, other, json.dumps(good)))
    with pytest.raises(Exception, match="must have id 'ov-test1-hop2'"):
        police.handle(replace(_hop_request("ov-test1", 2, good), request_id="ov-test1-hop9"))
    for agent in agents:  # spent once each, at the blind phase, whatever came after
        assert [e.rho for e in agent.ledger.entries() if e.status == "committed"] == [pytest.approx(0.5)]


def test_a_node_without_the_key_or_with_a_full_area_refuses_before_spending(
    agents: list[NodeAgent], tmp_path: Path
) -> None:
    council = next(a for a in agents if a.config.partner == "council")
    keyless = NodeAgent(council.config.model_copy(update={"linkage": None}))
    try:
        with pytest.raises(
            Exception, match="this node holds no linkage key, so it takes no part in overlap steps"
        ):
            keyless.handle(RunContext().request("ov-k-blind", SPEC, {"run": "ov-k", "phase": "blind"}))
    finally:
        keyless.close()
    tight = SPEC.replace("max_per_area: 64", "max_per_area: 2")
    with pytest.raises(
        Exception,
        match=r"has \d+ residents, more than the spec's max_per_area \(2\): raise max_per_area; nothing was spent",
    ):
        council.handle(RunContext().request("ov-t-blind", tight, {"run": "ov-t", "phase": "blind"}))
    assert [e for e in council.ledger.entries() if e.status == "committed"] == []
    with pytest.raises(
        FederationError, match="an overlap needs two or more agencies, and only council blinded"
    ):
        run_analysis(SPEC, InProcessTransport([council]))


def _twice(relays: dict[str, dict[str, object]]) -> None:
    lists = relays["council"]["lists"]
    assert isinstance(lists, dict)
    lists["fire"] = lists["police"]  # police's sealed list, with its tag, in fire's place


def _swap(relays: dict[str, dict[str, object]]) -> None:
    relays["council"], relays["fire"] = relays["fire"], relays["council"]


@pytest.mark.parametrize(
    ("phase", "rewrite", "why"),
    [
        ("-count", _twice, "fire's sealed list does not carry its tag"),
        ("-hop2", _swap, "at hop 2 this node blinds"),
    ],
)
def test_a_relay_that_moves_a_list_to_another_place_stops_the_ring(
    agents: list[NodeAgent], phase: str, rewrite: Callable[[dict[str, dict[str, object]]], None], why: str
) -> None:
    """One agency's list put in another's place would make its padding count as matches (see
    tests/unit/test_psi.py): the tags stop it, the run fails naming the refusal, and each
    agency spent only its blind phase."""
    with pytest.raises(FederationError, match=why):
        run_analysis(SPEC, Relay(InProcessTransport(agents), phase, rewrite))
    for agent in agents:
        assert [e.rho for e in agent.ledger.entries() if e.status == "committed"] == [pytest.approx(0.5)]


def _drop_police(relays: dict[str, dict[str, object]]) -> None:
    del relays["police"]


def test_a_partner_leaving_the_ring_stops_the_run_and_the_manifest_says_what_was_spent(
    agents: list[NodeAgent], tmp_path: Path
) -> None:
    with pytest.raises(
        FederationError, match=r"overlap hop 1: police did not answer, so the ring stops there"
    ):
        run_analysis(SPEC, Relay(InProcessTransport(agents), "-hop1", _drop_police), out_dir=tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "police did not answer" in manifest["stopped"] and manifest["tables"] == []
    blind = {n["partner"]: n["cost_rho"] for n in manifest["nodes"] if n["request_id"].endswith("-blind")}
    assert blind == {"council": 0.5, "fire": 0.5, "police": 0.5}


def test_a_relay_sent_with_an_analysis_without_an_overlap_is_refused(agents: list[NodeAgent]) -> None:
    count = SPEC.split("steps:")[0] + "steps:\n  - {kind: count, id: n}\n"
    with pytest.raises(Exception, match="the request carries a relay, but the analysis has no overlap step"):
        agents[0].handle(RunContext().request("r-1", count, None, "{}"))


def test_the_embedded_partners_share_one_linkage_key_and_keep_their_approval(tmp_path: Path) -> None:
    configs = write_federation(tmp_path, 1000, seed=5, manual=frozenset({"council"}))
    loaded = {p: load_node_config(c) for p, c in configs.items()}
    assert {p: c.policy.approval for p, c in loaded.items()} == {
        "police": "auto",
        "fire": "auto",
        "council": "manual",
    }
    keys = {Path(c.linkage.key_file).read_text() for c in loaded.values() if c.linkage is not None}
    assert len(keys) == 1 and len(bytes.fromhex(keys.pop())) == 32
    assert all(Path(c.linkage.key_file).stat().st_mode & 0o077 == 0 for c in loaded.values() if c.linkage)
