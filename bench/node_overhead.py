"""A node's idle memory and its per-request overhead.

Prints:
- idle resident memory of each `oda-node start` process of the embedded federation (the agent
  and its Flower client are one process: no SuperNode or ClientApp processes), after warm-up
  and after 10 requests;
- per-request overhead in the agent: a one-cell count request handled end to end (parse, policy,
  catalogue, ledger reserve and commit with fsync, audit append with fsync, release) against the
  bare OpenDP release of the same step, median of 30, same process.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from analyses import AnalysisSpec, LocalData, parse_document, release_steps
from analyses.request import AnalysisRequest
from coordinator.embedded.federation import EmbeddedFederation
from coordinator.embedded.synthetic import write_federation
from coordinator.run.orchestrator import run_analysis
from node_agent.agent import NodeAgent
from node_agent.config import load_node_config

SPEC = """
version: 1
name: overhead
dataset: incidents
privacy: {rho: 0.001, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c}
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory() -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedFederation(Path(tmp), rows=60_000) as fed:
        time.sleep(2)
        idle = {p: rss_mib(fed.node_pid(p)) for p in fed.partners}
        link = fed.link()
        for _ in range(10):
            run_analysis(SPEC, link)
        link.close()
        after = {p: rss_mib(fed.node_pid(p)) for p in fed.partners}
    for partner in idle:
        print(
            f"node {partner:<8} idle RSS {idle[partner]:6.0f} MiB; after 10 requests {after[partner]:6.0f} MiB "
            "(one process: agent + Flower client)"
        )


def overhead() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = load_node_config(write_federation(Path(tmp), rows=60_000)["police"])
        agent = NodeAgent(config)
        spec = parse_document(SPEC, AnalysisSpec, source="bench")
        frame = agent.frame("incidents")
        handled, bare = [], []
        for i in range(30):
            t = time.perf_counter()
            agent.handle(AnalysisRequest(1, f"r{i}", "bench", SPEC))
            handled.append(time.perf_counter() - t)
            t = time.perf_counter()
            release_steps(spec, spec.steps, {"incidents": LocalData(frame)})
            bare.append(time.perf_counter() - t)
        agent.close()
    h, b = statistics.median(handled), statistics.median(bare)
    print(
        f"one-cell request: handled {h * 1000:.1f} ms vs bare release {b * 1000:.1f} ms; "
        f"per-request overhead {1000 * (h - b):.1f} ms (ratio {h / b:.2f})"
    )


if __name__ == "__main__":
    overhead()
    memory()
