"""What one run of a blueprint produced: its analyses' results and failures, the outputs
derived from them, and how to find one table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analyses.blueprint import LoadedBlueprint, RenderedBlueprint
from analyses.tables import ResultTable
from coordinator.run.results import AnalysisResult
from privacy.errors import SpecError

__all__ = ["BlueprintRun"]


@dataclass
class BlueprintRun:
    """What one run of a blueprint produced."""

    loaded: LoadedBlueprint
    rendered: RenderedBlueprint
    results: dict[str, AnalysisResult] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    derived: dict[str, ResultTable] = field(default_factory=dict)
    out_dir: Path | None = None
    seconds: float = 0.0
    signer: str | None = None

    def table(self, ref: str) -> ResultTable:
        """`ANALYSIS.TABLE`, or a derived output's id.

        Raises:
            SpecError: no such table (the analysis failed, or the name is wrong).
        """
        if ref in self.derived:
            return self.derived[ref]
        analysis, _, name = ref.partition(".")
        result = self.results.get(analysis)
        if result is None:
            why = self.failures.get(analysis, "not run")
            raise SpecError(f"table {ref!r} is not available: analysis {analysis!r} {why}")
        for table in result.tables:
            if table.name == name:
                return table
        known = ", ".join(t.name for t in result.tables)
        raise SpecError(f"analysis {analysis!r} has no table {name!r}; it has: {known}")

    def debited(self) -> dict[str, float]:
        """partner -> rho its node debited for this run (from the releases it sent)."""
        spent: dict[str, float] = {}
        for result in self.results.values():
            for release in result.releases:
                spent[release.partner] = spent.get(release.partner, 0.0) + release.cost_rho
        return spent
