"""Blueprint catalogue on one embedded federation: seconds per blueprint, and what the report costs.

For each blueprint of the catalogue: the wall time of its whole run (analyses over Flower, derived
outputs, report, exports, provenance) and the share of it spent after the federated analyses
(report, maps, exports), as a ratio to the analyses' own time in the same run. Also the one-off
cost of loading the LSOA boundaries (34,753 polygons) for maps.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from analyses.blueprint import bundled_blueprints, load_bundled
from coordinator.blueprints.geography import _features
from coordinator.blueprints.runner import run_blueprint
from coordinator.embedded.example_data import write_blueprint_federation
from coordinator.embedded.federation import EmbeddedFederation


def main() -> None:
    started = time.perf_counter()
    _features()
    print(f"LSOA 2011 boundaries loaded once: {time.perf_counter() - started:.2f} s")
    names = bundled_blueprints()
    loaded = {n: load_bundled(n) for n in names}
    with tempfile.TemporaryDirectory(prefix="oda-bench-blueprints-") as tmp:
        work = Path(tmp)
        pairs = [(b.blueprint, b.blueprint.resolve()) for b in loaded.values()]

        def partners(fleet: str, ca: Path) -> dict[str, Path]:
            return write_blueprint_federation(work / "partners", pairs, fleet, ca)

        t0 = time.perf_counter()
        with EmbeddedFederation(work / "fed", partner_configs=partners) as federation:
            print(
                f"federation with example data for {len(names)} blueprints up in {time.perf_counter() - t0:.1f} s"
            )
            print(f"{'blueprint':<32}{'total s':>9}{'analyses s':>12}{'report etc s':>14}{'ratio':>8}")
            total = 0.0
            for name in names:
                link = federation.link()
                t1 = time.perf_counter()
                try:
                    run = run_blueprint(loaded[name], {}, link, work / "out" / name, timeout=60)
                finally:
                    link.close()
                wall = time.perf_counter() - t1
                analyses = sum(r.seconds for r in run.results.values())
                after = wall - analyses
                total += wall
                status = "" if not run.failures else f"  FAILED {list(run.failures)}"
                print(
                    f"{name:<32}{wall:>9.2f}{analyses:>12.2f}{after:>14.2f}{after / analyses:>8.2f}{status}"
                )
            print(f"whole catalogue: {total:.1f} s")


if __name__ == "__main__":
    main()
