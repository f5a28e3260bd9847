"""Running one analysis across the federation: send, collect, combine, write.

Transport-agnostic: anything that implements `Transport` will do (the Flower link, or the
in-process twin). A spec is loaded once (`LoadedSpec`) and travels as it is; how it runs follows
from its steps: one request (`once`), Newton rounds (`rounds`, `coordinator.run.models`),
Flower's FedAvg (`fedavg`), or the phases of a linkage ring (`ring`, `coordinator.run.linkage`).
When no partner released anything, the error raised is typed by what the nodes said (a budget
refusal is a `BudgetExhausted`, so the CLI exits with the budget code).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from analyses.aggregate import combine
from analyses.spec import LoadedSpec, load_spec
from coordinator.run.linkage import run_overlap
from coordinator.run.models import run_model, run_sgd
from coordinator.run.outputs import write_outputs
from coordinator.run.replies import collect, require_holders
from coordinator.run.results import AnalysisResult
from coordinator.run.transport import QuorumNotMet, RunContext, Transport
from privacy.errors import FederationError

__all__ = ["run_analysis"]


def run_analysis(
    spec: LoadedSpec | str,
    transport: Transport,
    *,
    source: str = "spec",
    out_dir: Path | None = None,
    context: RunContext | None = None,
    timeout: float = 60.0,
) -> AnalysisResult:
    """Send a spec to the federation, combine the releases, write the outputs.

    `spec` is a loaded spec, or its text (loaded here, as `source`). `context` names the
    requester, the run and its purpose to every node, and who follows the run; `timeout` is how
    long each request waits for replies (a partner with manual approval answers once a person
    decides).

    Raises:
        SpecError: the spec is invalid (nothing is sent).
        UserError: no node released anything, typed by the nodes' refusals (every refusal is in
            the message); FederationError when they refused for different reasons.
        RunCancelled: `context.watch` cancelled the run while it waited.
        QuorumNotMet: fewer partners released than `context.quorum` needs; no table is kept, and
            the manifest (written all the same) records what each partner spent.
        FederationError: a partner left an overlap's ring; likewise, no table is kept and the
            manifest records what each partner spent.
    """
    context = context or RunContext()
    started = time.perf_counter()
    loaded = load_spec(spec, source) if isinstance(spec, str) else spec
    flow = step.flow if (step := loaded.spec.rounds_step()) is not None else "once"
    if flow == "rounds":
        result = run_model(loaded, transport, context, timeout)
    elif flow == "fedavg":
        result = run_sgd(loaded, transport, context, timeout)
    elif flow == "ring":
        result = run_overlap(loaded, transport, context, timeout)
    else:
        request = context.request(uuid.uuid4().hex, loaded.text)
        replies = transport.broadcast(request, timeout, context.watch)
        collected = collect(loaded.spec, replies)
        holders = require_holders(loaded.spec, collected, len(replies))
        result = AnalysisResult(
            loaded, request.request_id, combine(loaded.spec, holders), collected.releases, collected.refusals
        )
    result.seconds = time.perf_counter() - started
    if context.quorum is not None:
        released = sorted({r.partner for r in result.releases if r.status == "released"})
        missing = [
            (r.partner, f"{r.kind}: {r.message}") for r in result.refusals if r.partner not in released
        ]
        result.quorum_unmet = context.quorum.unmet(released, missing)
        if result.quorum_unmet is not None:
            result.tables = []
    if out_dir is not None:
        write_outputs(result, out_dir, context.quorum)
        result.out_dir = out_dir
    where = f"; the manifest records what each partner spent: {out_dir / 'manifest.json'}" if out_dir else ""
    if result.quorum_unmet is not None:
        raise QuorumNotMet(result.quorum_unmet + where)
    if result.stopped is not None:
        raise FederationError(result.stopped + where)
    return result
