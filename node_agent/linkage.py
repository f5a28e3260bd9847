"""An overlap step's phases at one node (see `analyses.operators.linkage` and `privacy.psi`).

Each phase is one request of the run, with its own id (`RUN-blind`, `RUN-hopH`, `RUN-count`);
what the coordinator relays arrives in the request's `relay` and is checked here before use:
its size, every tag (made under the partnership's linkage key, which the coordinator lacks, so
it cannot forge, reorder or replay a list into another place of the ring) and every point.

- `blind` is the only phase that spends: it goes through the node's one release path (dry run,
  reserve, release, audit, commit) and debits the step's whole budget; it keeps the run's fresh
  secrets in `state/linkage/RUN.json` (owner-only), which no later phase sends anywhere;
- `hop` H blinds the list the ring gives this node at H (once: a phase done is refused again);
- `count`, at the counting agency only, opens the sealed lists, counts and releases the DP
  counts, then deletes the run's secrets.

Later phases release nothing new of this node's data that its blind phase did not pay for, so
they go on without a person under `approval: manual` (the blind phase waits for one), each is
audited with cost 0, and a run this node did not blind in is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import pandas as pd

from analyses.local_data import LocalData
from analyses.local_step import measurement_release
from analyses.operators.linkage import OverlapStep, RingState, read_relay
from analyses.reply import StepRelease
from node_agent.admission import Admission
from node_agent.config import NodeConfig
from privacy.budget import shares
from privacy.errors import ConfigError, DataError, InternalError, PolicyRefusal, ProtocolError, SpecError
from privacy.keyfiles import write_secret
from privacy.mechanisms import integer_gaussian
from privacy.psi import (
    MIN_KEY_BYTES,
    Blinder,
    SealKey,
    keyed_identifiers,
    normalise_identifier,
    pattern_counts,
    ring_sources,
    sealed_for,
    sensitivity_cells,
    tag,
    tag_matches,
)

__all__ = [
    "LINKAGE_DIR",
    "RUN_SECONDS",
    "Node",
    "linkage_key",
    "new_linkage_key",
    "run_phase",
    "sets_by_area",
]

#: What the node's release path returns (the agent's `Released`).
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Node(Protocol[R_co]):
    """What the phases need of the node agent (`node_agent.agent.NodeAgent`): its config, its
    data, and its two release paths, the one that debits and the one that spends nothing."""

    config: NodeConfig

    def frame(self, dataset: str) -> pd.DataFrame: ...

    def debited(
        self,
        admission: Admission,
        bundle_hash: str,
        compute: Callable[[], tuple[StepRelease, ...]],
        check: Callable[[], None],
    ) -> R_co: ...

    def free_release(
        self, admission: Admission, bundle_hash: str, steps: tuple[StepRelease, ...]
    ) -> R_co: ...


#: Where a node keeps each overlap run's secrets between phases (under its state folder).
LINKAGE_DIR = "linkage"
#: A run's secrets are deleted this long after its blind phase, counted or not.
RUN_SECONDS = 24 * 3600


def new_linkage_key(path: Path) -> None:
    """Write a fresh 256-bit linkage key (hex) to `path`, readable by its owner only.

    Raises:
        ConfigError: `path` exists (a key is never overwritten).
    """
    if path.exists():
        raise ConfigError(f"{path} exists: a linkage key is never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret(path, (os.urandom(32).hex() + "\n").encode())


def linkage_key(agent: Node[Any]) -> bytes:
    """The partnership's linkage key, from `linkage.key_file`.

    Raises:
        ConfigError: no key configured, unreadable, or shorter than 256 bits.
    """
    linkage = agent.config.linkage
    if linkage is None:
        raise ConfigError(
            "this node holds no linkage key, so it takes no part in overlap steps: set linkage.key_file "
            "in node.yaml to the partnership's key (`oda-node linkage-key FILE` makes one to share)"
        )
    try:
        text = Path(linkage.key_file).read_text().strip()
        key = bytes.fromhex(text)
    except OSError as exc:
        raise ConfigError(f"cannot read linkage.key_file: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError("linkage.key_file must hold the key as hex digits") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the linkage key must be at least {MIN_KEY_BYTES} bytes ({2 * MIN_KEY_BYTES} hex digits), not {len(key)}"
        )
    return key


def sets_by_area(frame: pd.DataFrame, identifier: str, step: OverlapStep, key: bytes) -> list[list[str]]:
    """Each area's keyed identifiers: every resident once, in the area most of their rows name
    (ties: the first area in the key set's order); rows outside the key set or without an
    identifier are left out.

    Raises:
        SpecError: the identifier column is missing.
    """
    if identifier not in frame.columns:
        raise SpecError(f"the dataset has no identifier column {identifier!r}")
    codes = LocalData(frame).codes(step.area)
    ids = frame[identifier]
    keep = (codes >= 0) & ids.notna().to_numpy()
    people = pd.DataFrame({"id": [normalise_identifier(v) for v in ids[keep]], "area": codes[keep]})
    people = people[people["id"] != ""]
    counted = people.groupby(["id", "area"]).size().reset_index(name="rows")
    chosen = counted.sort_values(["rows", "area"], ascending=[False, True]).drop_duplicates("id")
    out: list[list[str]] = [[] for _ in range(step.groups())]
    for code, person in zip(chosen["area"].to_numpy(dtype=np.int64), chosen["id"], strict=True):
        out[int(code)].append(str(person))
    return [keyed_identifiers(people, key) for people in out]


@dataclass
class _RunFile:
    """One run's secrets and progress at this node."""

    path: Path
    data: dict[str, Any]

    @staticmethod
    def of(agent: Node[Any], run: str) -> _RunFile:
        folder = Path(agent.config.state_dir) / LINKAGE_DIR
        return _RunFile(folder / f"{run}.json", {})

    def load(self, run: str, spec_hash: str) -> _RunFile:
        """Raises: PolicyRefusal when this node did not blind in the run (or its secrets expired)."""
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise PolicyRefusal(
                f"this node holds no secrets of overlap run {run} (it did not blind in it, or the run "
                "was counted or expired): nothing was released"
            ) from exc
        if self.data.get("spec_hash") != spec_hash:
            raise PolicyRefusal(f"overlap run {run} was blinded for another spec: refused")
        return self

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_secret(self.path, json.dumps(self.data).encode(), replace=True)

    def done(self, phase: str, run: str) -> None:
        """Raises: PolicyRefusal when `phase` was done already (each phase runs once)."""
        if phase in self.data.get("done", []):
            raise PolicyRefusal(f"overlap run {run}: {phase} was done already, and each phase runs once")
        self.data.setdefault("done", []).append(phase)


def _sweep(agent: Node[Any]) -> None:
    """Delete the secrets of runs blinded more than RUN_SECONDS ago."""
    folder = Path(agent.config.state_dir) / LINKAGE_DIR
    if not folder.is_dir():
        return
    now = time.time()
    for path in folder.glob("*.json"):
        try:
            if now - path.stat().st_mtime > RUN_SECONDS:
                path.unlink()
        except OSError:
            continue


def _list_fields(state: RingState, spec_hash: str, owner: str, hop: int, data: bytes) -> tuple[str, ...]:
    """What the tag of `owner`'s list after `hop` covers (0: as blinded, before the ring's
    agencies are named)."""
    agencies = ",".join(state.parties) if hop else ""
    return (state.run, spec_hash, owner, str(hop), agencies, hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class _Phase(Generic[R]):
    """One later phase at this node: the admitted request, its step and state, the key, the run."""

    agent: Node[R]
    admission: Admission
    bundle_hash: str
    step: OverlapStep
    state: RingState
    key: bytes
    run: _RunFile

    def tagged(self, owner: str, hop: int, data: bytes, given: object) -> bool:
        fields = _list_fields(self.state, self.admission.spec.hash, owner, hop, data)
        return tag_matches(self.key, given, *fields)

    def tag(self, owner: str, data: bytes) -> str:
        """The tag of `owner`'s list as this phase hands it on."""
        return tag(self.key, *_list_fields(self.state, self.admission.spec.hash, owner, self.state.hop, data))


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"the relay's {what} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ProtocolError(f"the relay's {what} is not base64") from exc


def _relay(text: str | None, what: str) -> dict[str, Any]:
    if text is None:
        raise ProtocolError(f"the {what} phase needs a relay from the coordinator, and the request has none")
    return read_relay(text, "the relay")


def run_phase(agent: Node[R], admission: Admission, bundle_hash: str) -> R:
    """Run the phase an admitted overlap request carries (see the module docstring).

    Raises:
        ConfigError, SpecError, DataError, PolicyRefusal, BudgetExhausted, ProtocolError:
            refusals; nothing is released.
    """
    state, step = admission.state, admission.rounds_step
    if not isinstance(state, RingState) or not isinstance(step, OverlapStep):
        raise InternalError("run_phase is for overlap steps, with their phase state")
    key = linkage_key(agent)
    if state.phase == "blind":
        return _blind(agent, admission, bundle_hash, step, state, key)
    run = _RunFile.of(agent, state.run).load(state.run, admission.spec.hash)
    me = agent.config.partner
    if me not in state.parties:
        raise PolicyRefusal(f"overlap run {state.run} names agencies {list(state.parties)}, not this node")
    kept = run.data.get("parties")
    if kept is None:
        run.data["parties"], run.data["counter"] = list(state.parties), state.counter
    elif kept != list(state.parties) or run.data.get("counter") != state.counter:
        raise PolicyRefusal(
            f"overlap run {state.run} named other agencies or another counter before: refused"
        )
    phase = _Phase(agent, admission, bundle_hash, step, state, key, run)
    return _hop(phase) if state.phase == "hop" else _count(phase)


def _blind(
    agent: Node[R], admission: Admission, bundle_hash: str, step: OverlapStep, state: RingState, key: bytes
) -> R:
    spec = admission.spec
    dataset = spec.dataset_of(step)
    identifier = spec.unit_of(step).identifier
    _sweep(agent)
    prepared: dict[str, list[list[str]]] = {}

    def check() -> None:
        try:
            sets = sets_by_area(agent.frame(dataset), identifier, step, key)
        except KeyError as exc:
            raise DataError(f"the dataset has no column {exc}") from exc
        for area, items in zip(step.area.keys(), sets, strict=True):
            if len(items) > step.max_per_area:
                raise SpecError(
                    f"area {area!r} has {len(items):,} residents, more than the spec's max_per_area "
                    f"({step.max_per_area:,}): raise max_per_area; nothing was spent"
                )
        prepared["sets"] = sets

    def compute() -> tuple[StepRelease, ...]:
        sets = prepared["sets"]
        blinder, seal = Blinder.fresh(), SealKey.fresh()
        keys = step.area.keys()
        areas = [str(a) for a in keys]
        blinded = blinder.blind(sets, step.max_per_area, areas)
        own_share = shares(spec.request_budget(step.id), step.measurement_weights())[0]
        noisy = integer_gaussian(np.asarray([len(s) for s in sets], dtype=np.int64), 1, own_share)
        me = agent.config.partner
        run = _RunFile.of(agent, state.run)
        run.data = {
            "spec_hash": spec.hash,
            "scalar": blinder.scalar.hex(),
            "seal": seal.private.hex(),
            "done": ["blind"],
        }
        run.save()
        relay = {
            "owner": me,
            "list": base64.b64encode(blinded).decode(),
            "tag": tag(key, *_list_fields(state, spec.hash, me, 0, blinded)),
            "seal": seal.public.hex(),
            "seal_tag": tag(key, state.run, spec.hash, "seal", me, seal.public),
        }
        measurement = measurement_release("residents", 1.0, noisy)
        return (StepRelease(step.id, step.kind, "hidden", (measurement,), relay=json.dumps(relay)),)

    return agent.debited(admission, bundle_hash, compute, check)


def _hop(phase: _Phase[R]) -> R:
    agent, admission, step, state, key, run = (
        phase.agent,
        phase.admission,
        phase.step,
        phase.state,
        phase.key,
        phase.run,
    )
    spec, me, parties = admission.spec, agent.config.partner, state.parties
    relay = _relay(admission.request.relay, "hop")
    owner = ring_sources(parties, state.hop)[me]
    if relay.get("owner") != owner:
        raise ProtocolError(
            f"at hop {state.hop} this node blinds {owner}'s list, and the relay holds another"
        )
    data = _b64(relay.get("list"), "list")
    if not phase.tagged(owner, state.hop - 1, data, relay.get("tag")):
        raise ProtocolError(f"{owner}'s list at hop {state.hop - 1} does not carry its tag: refused")
    last = state.hop == len(parties) - 1
    seal = b""
    if last:
        seal = bytes.fromhex(str(relay.get("seal", ""))) if _hex(relay.get("seal")) else b""
        if not tag_matches(key, relay.get("seal_tag"), state.run, spec.hash, "seal", state.counter, seal):
            raise ProtocolError(f"the counting agency's ({state.counter}) seal key does not carry its tag")
    run.done(f"hop{state.hop}", state.run)
    run.save()
    blinder = Blinder(bytes.fromhex(run.data["scalar"]))
    out = blinder.reblind(data, step.groups(), step.max_per_area)
    if last:
        out = sealed_for(seal, out)
    answer = {
        "owner": owner,
        "list": base64.b64encode(out).decode(),
        "tag": phase.tag(owner, out),
    }
    release = StepRelease(step.id, step.kind, "hidden", (), relay=json.dumps(answer))
    return agent.free_release(admission, phase.bundle_hash, (release,))


def _count(phase: _Phase[R]) -> R:
    agent, admission, step, state, run = phase.agent, phase.admission, phase.step, phase.state, phase.run
    me, parties = agent.config.partner, state.parties
    if me != state.counter:
        raise PolicyRefusal(f"overlap run {state.run} is counted by {state.counter}, not this node")
    done = run.data.get("done", [])
    if any(f"hop{h}" not in done for h in range(1, len(parties))):
        raise PolicyRefusal(f"overlap run {state.run}: this node has not taken part in every hop yet")
    relay = _relay(admission.request.relay, "count")
    lists = relay.get("lists")
    if not isinstance(lists, dict) or sorted(lists) != list(parties):
        raise ProtocolError("the count relay must hold one sealed list for each agency")
    seal = SealKey(bytes.fromhex(run.data["seal"]))
    final = len(parties) - 1
    opened = []
    for owner in parties:
        entry = lists[owner]
        if not isinstance(entry, dict):
            raise ProtocolError(f"malformed count relay entry for {owner}")
        data = _b64(entry.get("list"), f"{owner} list")
        if not phase.tagged(owner, final, data, entry.get("tag")):
            raise ProtocolError(f"{owner}'s sealed list does not carry its tag: refused")
        opened.append(seal.open(data))
    run.done("count", state.run)
    run.save()
    counts = pattern_counts(opened, step.groups(), step.max_per_area)
    share = shares(admission.spec.request_budget(step.id), step.measurement_weights())[1]
    noisy = integer_gaussian(counts.reshape(-1), sensitivity_cells(len(parties)), share)
    del counts, opened
    run.path.unlink(missing_ok=True)  # the run's secrets: no phase needs them any more
    release = StepRelease(step.id, step.kind, "hidden", (measurement_release("combinations", 1.0, noisy),))
    return agent.free_release(admission, phase.bundle_hash, (release,))


def _hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
