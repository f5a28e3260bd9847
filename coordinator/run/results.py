"""What one run of an analysis produced: tables, the releases behind them, who refused why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analyses.glm import GlmModel
from analyses.reply import NodeRelease, Refusal
from analyses.sgd import SgdModel
from analyses.spec import AnalysisSpec, LoadedSpec
from analyses.tables import ModelCheck, ResultTable

__all__ = ["AnalysisResult"]


@dataclass
class AnalysisResult:
    """The outcome of one run: tables, the releases behind them, and who refused why."""

    loaded: LoadedSpec
    request_id: str
    tables: list[ResultTable]
    releases: list[NodeRelease]
    refusals: list[Refusal] = field(default_factory=list)
    out_dir: Path | None = None
    seconds: float = 0.0
    model: GlmModel | SgdModel | None = None
    model_card: str = ""
    #: A model's residual degrees of freedom check (its model is withheld when it fails).
    model_check: ModelCheck | None = None
    #: Why the run's quorum was not met (its tables are then withheld), or None.
    quorum_unmet: str | None = None
    #: Why the run stopped before its tables (a partner left an overlap's ring), or None: no
    #: table is kept, and the manifest records what each partner spent.
    stopped: str | None = None

    @property
    def spec(self) -> AnalysisSpec:
        return self.loaded.spec
