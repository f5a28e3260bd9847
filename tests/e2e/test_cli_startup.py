"""`oda --help` and `oda-node --help` answer without loading OpenDP, pandas or Flower (each takes
seconds to import on a loaded machine); the commands load them when they run."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

HEAVY = ("opendp", "pandas", "flwr", "sklearn", "statsmodels")

PROBE = """
import contextlib, io, sys
from {module} import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main({argv!r})
print(",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("coordinator.cli", ["--help"]),
        ("coordinator.cli", ["blueprint", "--help"]),
        ("coordinator.cli", ["blueprint", "run", "--help"]),
        ("node_agent.cli", ["--help"]),
        ("node_agent.cli", ["enrol", "--help"]),
        ("node_agent.cli", ["fit", "--help"]),
        ("coordinator.cli", ["coordinator", "invite", "--help"]),
    ],
)
def test_help_loads_no_heavy_library(module: str, argv: list[str]) -> None:
    probe = PROBE.format(module=module, argv=argv, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} {' '.join(argv)} loaded {done.stdout.strip()}"


def test_the_probe_sees_a_heavy_import() -> None:
    """The check can fail: a command that does load OpenDP is caught."""
    probe = PROBE.format(module="privacy.budget", argv=[], heavy=HEAVY).replace(
        "from privacy.budget import main", "import privacy.budget\nmain = print"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert "opendp" in done.stdout, done.stderr
