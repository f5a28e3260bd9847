"""Scale studies on Flower's simulation engine: hundreds to thousands of virtual partners.

`oda simulate SPEC --partners 1000` writes a synthetic partition per virtual partner (data and
node.yaml under one folder, shaped like the demo's police, fire and council in turn), then runs
the spec with the same orchestrator over Flower's Ray-based engine. Each virtual partner answers
with the same node code as a real one (`node_agent.flower_node.handle_message`: its own policy,
OpenDP releases, and its own persistent ledger, so a second simulation over the same folder
spends again and is refused once a cap is reached). Nothing connects anywhere: the engine runs
in this process and its Ray workers. For studies of accuracy and cost at a federation's size,
not the everyday demo.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from analyses.spec import LoadedSpec
from coordinator.deploy.flower import GridTransport, simulate
from coordinator.embedded.synthetic import write_virtual_partner
from coordinator.run.orchestrator import run_analysis
from coordinator.run.results import AnalysisResult
from coordinator.run.transport import RunContext
from node_agent.flower_node import SIMULATION_ROOT, simulation_app, virtual_partner
from node_agent.ledger import Ledger
from privacy.errors import ConfigError

__all__ = ["MAX_PARTNERS", "Simulated", "simulate_spec", "write_partitions"]

#: The most virtual partners one simulation takes (each is a folder on disk).
MAX_PARTNERS = 10_000


@dataclass(frozen=True)
class Simulated:
    """What a simulation did: the run's result, and how long each phase took."""

    result: AnalysisResult
    partners: int
    root: Path
    write_seconds: float  # writing the partitions (kept between runs over one folder)
    engine_seconds: float  # the whole simulation, the engine's start included
    query_seconds: float  # from the ServerApp's start to the result: the federated run itself
    spent: tuple[float, float]  # the least and the most rho any virtual partner's ledger holds


def write_partitions(root: Path, partners: int, rows: int, seed: int) -> None:
    """One folder per virtual partner under `root` (see `write_virtual_partner`)."""
    for index in range(partners):
        write_virtual_partner(root, index, virtual_partner(index), rows, seed)


def simulate_spec(
    spec: LoadedSpec | str,
    partners: int,
    *,
    rows: int = 300,
    seed: int = 7,
    out_dir: Path | None = None,
    root: Path | None = None,
    timeout: float = 600.0,
    cpus_per_partner: float = 1.0,
) -> Simulated:
    """Run the spec (loaded, or its YAML text) over `partners` virtual partners of `rows` rows each.

    Raises:
        ConfigError: a partner count or row count out of range.
        FederationError: the simulation engine is not installed, or it failed.
        The run's own errors (a refused spec, a quorum not met), as `oda run` raises them.
    """
    if not 1 <= partners <= MAX_PARTNERS:
        raise ConfigError(f"--partners must be between 1 and {MAX_PARTNERS}, not {partners}")
    if not 10 <= rows <= 1_000_000:
        raise ConfigError(f"--rows must be between 10 and 1000000, not {rows}")
    cores = os.cpu_count() or 1
    if not 0 < cpus_per_partner <= cores:
        raise ConfigError(
            f"--cpus-per-partner must be above 0 and at most this machine's {cores} CPUs, not {cpus_per_partner}"
        )
    root = root or Path(tempfile.mkdtemp(prefix="oda-simulation-"))
    started = time.perf_counter()
    write_partitions(root, partners, rows, seed)
    written = time.perf_counter()
    os.environ[SIMULATION_ROOT] = str(root.resolve())  # the engine's workers inherit it
    query: dict[str, float] = {}

    def main(transport: GridTransport) -> AnalysisResult:
        begun = time.perf_counter()
        try:
            context = RunContext("simulation", None, f"scale study over {partners} virtual partners")
            return run_analysis(spec, transport, out_dir=out_dir, context=context, timeout=timeout)
        finally:
            query["seconds"] = time.perf_counter() - begun

    result = simulate(main, simulation_app, partners, cpus_per_partner)
    done = time.perf_counter()
    spent = []
    for index in range(partners):
        ledger = Ledger(root / virtual_partner(index) / "state" / "ledger.sqlite")
        try:
            spent.append(sum(e.rho for e in ledger.entries()))  # the ledger's rule: whatever the status
        finally:
            ledger.close()
    return Simulated(
        result,
        partners,
        root,
        written - started,
        done - written,
        query.get("seconds", 0.0),
        (min(spent), max(spent)),
    )
