"""The coordinator's cost of idle nodes, and of a query, with the Fleet proxy holding idle pulls
(`fleet_hold_seconds: 10`, the default) against answering every poll at once (0, as before).

For N real node processes (each polling every 50 ms, the embedded federation's setting), prints
per setting: the SuperLink's and the proxy's CPU over 20 s of idleness (as % of one core, and
per node), and the warm one-step query latency (median and p90 of 10, each starting from held
pulls when holding), with the CPU each query takes in
all node processes together and in the SuperLink and proxy. Usage: `python
bench/idle_polling.py [N ...]` (default 3 and 12).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.embedded.federation import EmbeddedFederation
from coordinator.embedded.synthetic import write_many
from coordinator.run.orchestrator import run_analysis

SPEC = """
version: 1
name: warm
dataset: incidents
privacy: {rho: 0.0001, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c}
"""
IDLE_SECONDS = 20.0
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(nodes: int, hold: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def partners(fleet: str, ca: Path) -> dict[str, Path]:
            return write_many(root / "partners", nodes, 3_000, fleet, ca)

        with EmbeddedFederation(root, partner_configs=partners, hold=hold) as fed:
            link = fed.link()
            try:
                run_analysis(SPEC, link)  # warm
                time.sleep(3)
                pids = {n: fed.processes.pid(n) for n in ("superlink", "fleet-proxy")}
                before = {n: cpu_seconds(p) for n, p in pids.items()}
                time.sleep(IDLE_SECONDS)
                idle = {n: (cpu_seconds(p) - before[n]) / IDLE_SECONDS * 100 for n, p in pids.items()}
                node_pids = [fed.node_pid(p) for p in fed.partners]
                coordinator_pids = list(pids.values())
                node_cpu = sum(cpu_seconds(p) for p in node_pids)
                coordinator_cpu = sum(cpu_seconds(p) for p in coordinator_pids)
                latencies = []
                for _ in range(10):
                    t = time.perf_counter()
                    run_analysis(SPEC, link)
                    latencies.append(time.perf_counter() - t)
                    time.sleep(0.5)
                node_cpu = (sum(cpu_seconds(p) for p in node_pids) - node_cpu) / len(latencies)
                coordinator_cpu = (sum(cpu_seconds(p) for p in coordinator_pids) - coordinator_cpu) / len(
                    latencies
                )
                coordinator_rss = sum(rss_mib(p) for p in coordinator_pids)
                node_rss = statistics.median(rss_mib(p) for p in node_pids)
            finally:
                link.close()
    ordered = sorted(latencies)
    return {
        "nodes": nodes,
        "hold": hold,
        "superlink": idle["superlink"],
        "proxy": idle["fleet-proxy"],
        "median": statistics.median(latencies),
        "p90": ordered[8],
        "node_cpu": node_cpu,
        "coordinator_cpu": coordinator_cpu,
        "coordinator_rss": coordinator_rss,
        "node_rss": node_rss,
    }


def line(m: dict[str, float]) -> str:
    n = m["nodes"]
    return (
        f"{n:>3.0f} nodes, hold {m['hold']:>4.0f} s: idle CPU SuperLink {m['superlink']:5.1f}% "
        f"({m['superlink'] / n:.2f}%/node), proxy {m['proxy']:5.1f}% ({m['proxy'] / n:.2f}%/node) of a core; "
        f"warm query median {m['median']:.2f} s, p90 {m['p90']:.2f} s; CPU per query: all nodes together "
        f"{m['node_cpu']:.2f} s, SuperLink + proxy {m['coordinator_cpu']:.2f} s; RSS SuperLink + proxy "
        f"{m['coordinator_rss']:.0f} MiB, a node (median) {m['node_rss']:.0f} MiB (every node runs on the same cores)"
    )


def growth(rows: list[dict[str, float]], key: str) -> str:
    """Least squares in log-log: key = c * nodes^k, with k the growth exponent."""
    xs = [math.log(r["nodes"]) for r in rows]
    ys = [math.log(max(r[key], 1e-6)) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return f"{key} ~ {math.exp(my - k * mx):.3g} * nodes^{k:.2f}"


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [3, 12]
    holds = [float(h) for h in os.environ.get("ODA_BENCH_HOLDS", "0 10").split()]
    rows = []
    for nodes in counts:
        for hold in holds:
            rows.append(measure(nodes, hold))
            print(line(rows[-1]), flush=True)
    for hold in holds:
        same = [r for r in rows if r["hold"] == hold]
        if len(same) >= 2:
            laws = ", ".join(growth(same, key) for key in ("median", "coordinator_cpu", "superlink", "proxy"))
            print(f"growth law, hold {hold:.0f} s (log-log least squares): {laws}")


if __name__ == "__main__":
    main()
