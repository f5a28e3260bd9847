"""Running an overlap step: the coordinator relays a ring of blinded lists between partners
(`analyses.operators.linkage`, `privacy.psi`, `node_agent.linkage`).

    blind   every node: its DP resident counts, its blinded list, the seal key it would count with
    hop H   (H = 1..n-1) each agency gets the list the ring gives it, and returns it blinded again;
            the last hop's lists come back sealed to the counting agency
    count   the counting agency gets every sealed list and releases DP combination counts

The coordinator sees only points under secrets it does not hold, tags it cannot forge and sealed
lists it cannot open; it never keeps a relay (the results and manifest hold the DP releases
only). Partners connect outbound only: every list travels in a request or a reply.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from analyses.aggregate import combine
from analyses.operators.linkage import OverlapStep, RingState, read_relay
from analyses.reply import NodeRelease, Refusal
from analyses.spec import LoadedSpec
from coordinator.run.replies import collect, require_holders
from coordinator.run.results import AnalysisResult
from coordinator.run.transport import NodeReply, RunContext, Transport
from privacy.errors import FederationError, InternalError, ProtocolError
from privacy.psi import ring_sources

__all__ = ["run_overlap"]


def _relay(release: NodeRelease, step: OverlapStep) -> dict[str, Any]:
    """The relay a node's release carries for `step`.

    Raises:
        ProtocolError: none, or not a JSON object.
    """
    text = next((s.relay for s in release.steps if s.step_id == step.id), "")
    return read_relay(text, f"{release.partner}'s relay")


def _without_relays(release: NodeRelease) -> NodeRelease:
    """A release as the results keep it: its DP measurements, not the points it relayed."""
    return replace(release, steps=tuple(replace(s, relay="") for s in release.steps))


def _phase(
    transport: Transport,
    loaded: LoadedSpec,
    context: RunContext,
    timeout: float,
    state: RingState,
    relays: dict[str, str],
    address: dict[str, str],
    kept: list[NodeRelease],
    refusals: list[Refusal],
) -> dict[str, NodeRelease]:
    """Send one phase to the partners in `relays` (partner -> relay) and return their releases.

    Raises:
        FederationError: a partner did not release: the ring cannot go on without it.
    """
    request = context.request(state.request_id(), loaded.text, state.model_dump())
    replies: Sequence[NodeReply] = transport.broadcast(
        request, timeout, context.watch, {address[p]: text for p, text in relays.items()}
    )
    collected = collect(loaded.spec, replies, request.request_id)
    refusals += collected.refusals
    got = {r.partner: r for r in collected.releases if r.status == "released" and r.partner in relays}
    kept += [_without_relays(r) for r in got.values()]
    missing = sorted(set(relays) - set(got))
    if missing:
        why = "; ".join(f"{r.partner}: {r.kind}: {r.message}" for r in collected.refusals) or "no reply"
        phase = f"hop {state.hop}" if state.phase == "hop" else state.phase
        raise FederationError(
            f"overlap {phase}: {', '.join(missing)} did not answer, so the ring stops there and no "
            f"table is published; each partner spent only its blind phase ({why})"
        )
    return got


def run_overlap(
    loaded: LoadedSpec, transport: Transport, context: RunContext, timeout: float
) -> AnalysisResult:
    """Run an overlap step's phases across the federation and assemble its tables. A run that
    cannot finish (fewer than two agencies blinded, the spec's counter did not, or a partner left
    the ring) comes back `stopped`, without tables, with every release it got: the nodes have
    spent at the blind phase, and the manifest says so.

    Raises:
        UserError: nobody blinded (typed by the nodes' refusals).
    """
    spec = loaded.spec
    step = spec.rounds_step()
    if not isinstance(step, OverlapStep):
        raise InternalError(f"{spec.name!r} has no overlap step")
    run = f"ov-{uuid.uuid4().hex[:16]}"
    blind = RingState(run=run, phase="blind")
    request = context.request(blind.request_id(), loaded.text, blind.model_dump())
    replies = transport.broadcast(request, timeout, context.watch)
    collected = collect(spec, replies, request.request_id)
    holders = require_holders(spec, collected, len(replies))
    refusals = list(collected.refusals)
    by_node = {reply.release.partner: reply.node for reply in replies if reply.release is not None}
    address = {r.partner: by_node[r.partner] for r in holders}
    parties = sorted(address)
    kept = [_without_relays(r) for r in collected.releases]
    counter = step.counted_by or parties[0]
    if len(parties) < 2 or counter not in parties:
        why = (
            f"an overlap needs two or more agencies, and only {', '.join(parties)} blinded"
            if len(parties) < 2
            else f"the spec's counted_by {counter!r} did not blind: the overlap cannot be counted"
        )
        return AnalysisResult(loaded, request.request_id, [], kept, refusals, stopped=why)
    relays = {r.partner: _relay(r, step) for r in holders}
    lists = {p: {"list": relays[p].get("list"), "tag": relays[p].get("tag")} for p in parties}
    seal = {"seal": relays[counter].get("seal"), "seal_tag": relays[counter].get("seal_tag")}
    try:
        count = _ring(
            transport,
            loaded,
            context,
            timeout,
            step,
            run,
            parties,
            counter,
            address,
            lists,
            seal,
            kept,
            refusals,
        )
    except (FederationError, ProtocolError) as exc:  # a partner left the ring, or answered out of place
        return AnalysisResult(loaded, request.request_id, [], kept, refusals, stopped=str(exc))
    tables = combine(spec, [*holders, count])  # the tables read the measurements, never a relay
    return AnalysisResult(loaded, request.request_id, tables, kept, refusals)


def _ring(
    transport: Transport,
    loaded: LoadedSpec,
    context: RunContext,
    timeout: float,
    step: OverlapStep,
    run: str,
    parties: list[str],
    counter: str,
    address: dict[str, str],
    lists: dict[str, dict[str, Any]],
    seal: dict[str, Any],
    kept: list[NodeRelease],
    refusals: list[Refusal],
) -> NodeRelease:
    """The hops and the count; the counter's release.

    Raises:
        FederationError, ProtocolError: a partner did not answer, or answered out of place.
    """
    for hop in range(1, len(parties)):
        state = RingState(run=run, phase="hop", hop=hop, parties=tuple(parties), counter=counter)
        sources = ring_sources(parties, hop)
        last = hop == len(parties) - 1
        out = {
            p: json.dumps({"owner": owner, **lists[owner], **(seal if last else {})})
            for p, owner in sources.items()
        }
        got = _phase(transport, loaded, context, timeout, state, out, address, kept, refusals)
        for p, release in got.items():
            answer = _relay(release, step)
            owner = sources[p]
            if answer.get("owner") != owner:
                raise ProtocolError(
                    f"{p} returned a list for {answer.get('owner')!r} at hop {hop}, not {owner}'s"
                )
            lists[owner] = {"list": answer.get("list"), "tag": answer.get("tag")}
    state = RingState(run=run, phase="count", parties=tuple(parties), counter=counter)
    got = _phase(
        transport,
        loaded,
        context,
        timeout,
        state,
        {counter: json.dumps({"lists": lists})},
        address,
        kept,
        refusals,
    )
    return got[counter]
