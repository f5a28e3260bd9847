"""Node-local release time of a grouped count + sum, against a bare pandas groupby of the same data.

Prints, for 1M and 10M rows: the pandas groupby time (baseline), the release time (truncation to
the privacy unit, exact aggregates, two OpenDP integer-Gaussian releases), and their ratio.
Target ratio <= 1.5. Both are measured in this process, best of 3, on the same frame.
"""

from __future__ import annotations

import sys
import time

import pandas as pd

from analyses import AnalysisSpec, parse_document, release_step, truncate_for
from coordinator.synthetic import generate_partner

SPEC = """
version: 1
name: bench
dataset: incidents
privacy: {rho: 0.5, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c, by: [{column: area, keyset: coventry_lsoa11}, {column: occurred_at, derive: hour}]}
  - {kind: sum, id: s, column: harm, bounds: [0, 100], by: [{column: area, keyset: coventry_lsoa11}, {column: occurred_at, derive: hour}]}
"""


def best(fn: object, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1_000_000, 10_000_000]
    spec = parse_document(SPEC, AnalysisSpec, source="bench")
    for rows in sizes:
        frame = generate_partner("police", rows, seed=1).incidents

        def baseline(frame: pd.DataFrame = frame) -> None:
            frame.assign(hour=frame.occurred_at.dt.hour).groupby(["area", "hour"]).harm.agg(["size", "sum"])

        def release(frame: pd.DataFrame = frame) -> None:
            truncated = truncate_for(spec, spec.steps[0], frame)
            for step in spec.steps:
                release_step(spec, step, truncated)

        b, r = best(baseline), best(release)
        print(
            f"rows {rows:>11,}: pandas groupby {b:7.3f} s | DP release {r:7.3f} s | ratio {r / b:5.2f} (target <= 1.5)",
            flush=True,
        )


if __name__ == "__main__":
    main()
