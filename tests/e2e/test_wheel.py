"""The wheel a partner installs holds every package of the source tree and its data, and builds
without setuptools warnings (an explicit package list once left coordinator.deploy, .run and
analyses.operators out of it, so a pip-installed node could not start)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.source_tree import source_copy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_every_package_and_builds_quietly(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            str(source_copy(tmp_path / "src")),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert "Warning" not in built.stdout + built.stderr.replace("WARNING: Location", ""), built.stderr[-3000:]
    (wheel,) = tmp_path.glob("oda_federated-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("privacy", "analyses", "node_agent", "coordinator"):
        for init in (ROOT / package).rglob("__init__.py"):
            assert str(init.relative_to(ROOT)) in names, init
    assert any(n.startswith("analyses/blueprints/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("analyses/keysets/") and n.endswith(".csv") for n in names)
    assert "coordinator/service/templates/run.html" in names
    assert "coordinator/service/migrations/versions/0001_initial.py" in names
