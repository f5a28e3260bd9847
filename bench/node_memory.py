"""Where a node's memory goes: RSS import by import, and real node processes at idle and after
queries.

1. In a fresh interpreter, the RSS after each import a node makes, in the order it makes them
   (each line: what that import added, and the total), and beside it what `opendp.prelude`
   (which the node imported before: OpenDP's polars, scikit-learn and numpy extras) would add.
2. The embedded federation's three node processes: VmRSS once ready and idle, after a pooled
   count, and after the README's two-step spec (count and mean by area).

Usage: `python bench/node_memory.py`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = [
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "pydantic",
    "yaml",
    "httpx",
    "opendp.measurements",
    "privacy",
    "analyses.spec",
    "analyses.operators",
    "node_agent.agent",
    "flwr.app",
    "flwr.supernode.fleet_http_connection",
    "node_agent.flower_node",
]
PROBE = """
import importlib, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
print("interpreter", rss(), flush=True)
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(name, rss(), flush=True)
"""
COUNT = """
version: 1
name: memory-count
dataset: incidents
privacy: {rho: 0.0001, unit: {identifier: person_id, max_rows: 5}}
steps:
  - {kind: count, id: c}
"""


def _probe(names: list[str]) -> list[tuple[str, float]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *names], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return [(line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1])) for line in out.splitlines()]


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def imports() -> None:
    print("RSS import by import (a fresh interpreter, MiB):")
    rows = _probe(IMPORTS)
    previous = rows[0][1]
    print(f"  {'interpreter':40s} {previous:7.1f}")
    for name, total in rows[1:]:
        print(f"  {name:40s} {total:7.1f}  (+{total - previous:.1f})")
        previous = total
    core = _probe(["opendp.measurements"])[-1][1]
    prelude = _probe(["opendp.prelude"])[-1][1]
    print(
        f"  opendp.prelude alone: {prelude:.0f} MiB against {core:.0f} MiB for the core the node imports "
        f"(x{prelude / core:.2f})"
    )


def processes() -> None:
    from coordinator.embedded.federation import EmbeddedFederation
    from coordinator.run.orchestrator import run_analysis

    readme_spec = (ROOT / "configs" / "analyses" / "incidents_by_area.yaml").read_text()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedFederation(Path(tmp)) as fed:
        pids = {p: fed.node_pid(p) for p in fed.partners}
        time.sleep(3)
        idle = {p: _rss(pid) for p, pid in pids.items()}
        link = fed.link()
        try:
            run_analysis(COUNT, link, timeout=60)
            after_count = {p: _rss(pid) for p, pid in pids.items()}
            run_analysis(readme_spec, link, timeout=60)
            after_two = {p: _rss(pid) for p, pid in pids.items()}
        finally:
            link.close()
    print("node processes (VmRSS, MiB):")
    for partner in pids:
        print(
            f"  {partner:8s} idle {idle[partner]:6.1f}   after a count {after_count[partner]:6.1f}   "
            f"after count+mean by area {after_two[partner]:6.1f}"
        )


if __name__ == "__main__":
    imports()
    processes()
