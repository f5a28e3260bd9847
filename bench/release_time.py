"""Node-local release time of a grouped count + sum, against a bare pandas groupby of the same data.

Prints, for 1M and 10M rows: the pandas groupby time (baseline), the release time (truncation to
the privacy unit, exact aggregates, two OpenDP integer-Gaussian releases), and their ratio.
Target ratio <= 1.5. All are measured in this process, best of 3, on the same frame.

It also splits the release into its two parts: the data path (truncation and exact aggregates,
which grows with rows) and OpenDP's noise (which grows with cells only: 2 x 195 x 24 here).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from analyses import AnalysisSpec, LocalData, parse_document, release_steps
from coordinator.embedded.synthetic import generate_partner
from privacy import Rho, integer_gaussian

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
            release_steps(spec, spec.steps, {"incidents": LocalData(frame)})

        def data_path(frame: pd.DataFrame = frame) -> None:
            data = LocalData(frame)
            for step in spec.steps:
                step.exact(data, spec.unit_of(step).to_unit(), None)

        b, r, d = best(baseline), best(release), best(data_path)
        print(
            f"rows {rows:>11,}: pandas groupby {b:7.3f} s | DP release {r:7.3f} s | ratio {r / b:5.2f} "
            f"(target <= 1.5) | data path alone {d:7.3f} s, ratio {d / b:5.2f}",
            flush=True,
        )
    cells = spec.steps[0].groups()
    zeros = np.zeros(cells, dtype=np.int64)
    noise = best(lambda: integer_gaussian(zeros, 500, Rho(0.25)))
    print(
        f"OpenDP noise alone: {noise:.3f} s per {cells:,}-cell vector ({noise / cells * 1e6:.1f} us per cell), "
        f"x{len(spec.steps)} measurements, drawn on parallel threads",
        flush=True,
    )


if __name__ == "__main__":
    main()
