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


def measure(nodes: int, hold: float) -> str:
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
            finally:
                link.close()
    ordered = sorted(latencies)
    return (
        f"{nodes:>3} nodes, hold {hold:>4.0f} s: idle CPU SuperLink {idle['superlink']:5.1f}% "
        f"({idle['superlink'] / nodes:.2f}%/node), proxy {idle['fleet-proxy']:5.1f}% "
        f"({idle['fleet-proxy'] / nodes:.2f}%/node) of a core; warm query median "
        f"{statistics.median(latencies):.2f} s, p90 {ordered[8]:.2f} s; CPU per query: all nodes together "
        f"{node_cpu:.2f} s, SuperLink + proxy {coordinator_cpu:.2f} s (this bench runs every node on the same cores)"
    )


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [3, 12]
    for nodes in counts:
        for hold in [float(h) for h in os.environ.get("ODA_BENCH_HOLDS", "0 10").split()]:
            print(measure(nodes, hold), flush=True)


if __name__ == "__main__":
    main()
