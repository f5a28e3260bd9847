"""Federated logistic regression on the embedded federation against the pooled fit.

Six partner processes (DAAG/nassCDS split by accident year) over TLS; the coordinator drives
the Newton rounds and the evaluation through Flower. Prints the pooled fit's time, the
federated fit's wall time, per-request latency, rounds to convergence with DP off (pure
optimiser on exact partial sums) and the held-out AUC of both.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import statsmodels.api as sm
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analyses.documents import parse_document
from analyses.glm import design, local_stats, newton_rounds
from analyses.spec import AnalysisSpec
from coordinator.embedded.federation import EmbeddedFederation
from coordinator.run.orchestrator import run_analysis
from tests.model_data import nass, split_train_test, write_partners

SPEC = Path(__file__).resolve().parent.parent / "configs" / "analyses" / "models" / "crash_fatality.yaml"
FEDAVG = SPEC.with_name("crash_fatality_fedavg.yaml")


class TimedLink:
    """Times each broadcast (one request = one round) of a FlowerLink."""

    def __init__(self, link: object) -> None:
        self.link = link
        self.times: list[float] = []

    def broadcast(self, request: object, timeout: float) -> list[object]:
        started = time.perf_counter()
        replies = self.link.broadcast(request, timeout)  # type: ignore[attr-defined]
        self.times.append(time.perf_counter() - started)
        return replies  # type: ignore[no-any-return]


def rounds_to_converge(spec_text: str, train: object) -> int:
    spec = parse_document(spec_text, AnalysisSpec, source="bench").rounds_step()
    assert spec is not None
    model = spec.model.model_copy(update={"rounds": 50})
    parts = [design(model, part) for _, part in train.groupby("yearacc")]  # type: ignore[attr-defined]
    rounds = newton_rounds(model)
    beta = next(rounds)
    for index in range(1, 51):
        new = rounds.send([local_stats(model, x, y, beta) for x, y in parts])
        if np.abs(new - beta).max() < 1e-8:
            return index
        beta = new
    return 50


def main() -> None:
    train, test = split_train_test(nass())
    spec_text = SPEC.read_text()
    spec = parse_document(spec_text, AnalysisSpec, source="bench").rounds_step()
    assert spec is not None
    x, y = design(spec.model, train)
    started = time.perf_counter()
    pooled = sm.Logit(y, x).fit(disp=0, method="newton", maxiter=100).params
    pooled_seconds = time.perf_counter() - started
    x_test, y_test = design(spec.model, test)
    with tempfile.TemporaryDirectory() as tmp:

        def partners(fleet: str, ca: Path) -> dict[str, Path]:
            return write_partners(Path(tmp) / "partners", train, coordinator=fleet, ca_cert=ca)

        with EmbeddedFederation(Path(tmp) / "fed", partner_configs=partners) as fed:
            link = fed.link()
            timed = TimedLink(link)
            started = time.perf_counter()
            result = run_analysis(spec_text, timed)  # type: ignore[arg-type]
            federated_seconds = time.perf_counter() - started
            started = time.perf_counter()
            fedavg = run_analysis(FEDAVG.read_text(), link)
            fedavg_seconds = time.perf_counter() - started
            link.close()
    assert result.model is not None
    print(f"pooled statsmodels fit on {len(y):,} rows: {pooled_seconds:.3f} s")
    print(
        f"federated DP fit, 6 partner processes over TLS: {federated_seconds:.2f} s for "
        f"{spec.model.rounds} rounds + evaluation ({federated_seconds / max(pooled_seconds, 1e-9):.0f}x pooled)"
    )
    print(
        "per-request latency: median "
        f"{statistics.median(timed.times):.3f} s, max {max(timed.times):.3f} s over {len(timed.times)} requests"
    )
    print(
        f"rounds to converge to 1e-8 with DP off (pure optimiser, exact sums): {rounds_to_converge(spec_text, train)}"
    )
    pooled_auc = roc_auc_score(y_test, x_test @ pooled)
    federated_auc = roc_auc_score(y_test, result.model.predict(test))
    print(
        f"held-out AUC: pooled {pooled_auc:.4f}, federated DP {federated_auc:.4f} (gap {federated_auc - pooled_auc:+.4f})"
    )
    step = fedavg.spec.rounds_step()
    assert step is not None and fedavg.model is not None
    print(
        f"FedAvg network ({step.hidden} hidden units) through Flower's strategy: {fedavg_seconds:.1f} s for "
        f"{step.rounds} rounds ({fedavg_seconds / step.rounds:.2f} s per round); held-out AUC "
        f"{roc_auc_score(y_test, fedavg.model.predict(test)):.4f}"
    )


if __name__ == "__main__":
    main()
