"""A pooled count over 100, 300 and 1,000 virtual partners on Flower's simulation engine (Ray),
each answered by the node code with its own ledger (`oda simulate`).

Each size runs in a fresh process (Ray starts and stops with it) and prints: the time to write
the partitions, the engine's whole time, the federated run inside it (the ServerApp's start to
the result: what "a pooled count after start-up" means), the run's time per partner, the driver
process's peak RSS, and the pooled count's stated 95% accuracy. Then a fitted growth law
run_seconds = a + b * partners (least squares), and each size against the smallest as a ratio.
Usage: `python bench/simulation.py [N ...]` (default 100 300 1000). Needs '.[simulation]'.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPEC = """
version: 1
name: pooled-count
dataset: incidents
privacy: {rho: 0.01, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c}
"""


def one(partners: int) -> dict[str, float]:
    from coordinator.embedded.simulation import simulate_spec

    with tempfile.TemporaryDirectory() as root:
        done = simulate_spec(SPEC, partners, rows=200, root=Path(root))
    frame = done.result.tables[0].frame
    return {
        "partners": partners,
        "released": len(done.result.releases),
        "write": done.write_seconds,
        "engine": done.engine_seconds,
        "run": done.query_seconds,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "count": float(frame["count"].iloc[0]),
        "accuracy95": float(frame["count_accuracy95"].iloc[0]),
    }


def main(sizes: list[int]) -> None:
    rows = []
    for n in sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=False
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(f"{n} partners: failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
            continue
        row = json.loads(lines[-1])
        rows.append(row)
        print(
            f"{n:>5} partners: {row['released']} released; partitions {row['write']:.1f} s, engine "
            f"{row['engine']:.1f} s, federated run {row['run']:.1f} s ({1000 * row['run'] / n:.0f} ms per "
            f"partner); driver RSS {row['rss_mib']:.0f} MiB; pooled count {row['count']:,.0f} "
            f"+/- {row['accuracy95']:,.0f} (95%)"
        )
    if len(rows) >= 2:
        xs = [r["partners"] for r in rows]
        ys = [r["run"] for r in rows]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        a = my - b * mx
        print(f"growth law (least squares): run_seconds = {a:.2f} + {1000 * b:.1f} ms * partners")
        base = rows[0]
        for r in rows[1:]:
            print(
                f"  {r['partners']} vs {base['partners']} partners: x{r['partners'] / base['partners']:.0f} "
                f"partners, x{r['run'] / base['run']:.2f} run time"
            )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one(int(sys.argv[2]))))
    else:
        main([int(a) for a in sys.argv[1:]] or [100, 300, 1000])
