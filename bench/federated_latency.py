"""End-to-end latency on the embedded federation (real SuperLink and three node processes).

Prints the cold start (federation up and ready), then the warm latency of a one-step analysis
(spec sent, three nodes release, coordinator combines): every run and the median of 9.
Target: warm median <= 3 s (Flower's default path measured about 10 s here).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from coordinator.embedded.federation import EmbeddedFederation
from coordinator.run.orchestrator import run_analysis

SPEC = """
version: 1
name: latency
dataset: incidents
privacy: {rho: 0.01, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c, by: [{column: area, keyset: coventry_lsoa11}]}
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with EmbeddedFederation(Path(tmp), rows=60_000) as federation:
            cold = time.perf_counter() - started
            link = federation.link()
            first = time.perf_counter()
            run_analysis(SPEC, link)
            first_run = time.perf_counter() - first
            runs = []
            for _ in range(9):
                t = time.perf_counter()
                run_analysis(SPEC, link)
                runs.append(time.perf_counter() - t)
            link.close()
    print(f"cold start (SuperLink + 3 nodes ready): {cold:.2f} s; first analysis {first_run:.2f} s")
    print("warm runs: " + ", ".join(f"{r:.3f}" for r in runs))
    print(
        f"warm median {statistics.median(runs):.3f} s (target <= 3 s; Flower default path ~10 s): ratio to target {statistics.median(runs) / 3:.2f}"
    )


if __name__ == "__main__":
    main()
