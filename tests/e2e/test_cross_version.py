"""66 partners never upgrade on the same day: the previous release's node against this
coordinator, and this release's node against the previous coordinator, over real processes.

The previous release is the source tree of `PREVIOUS` (the last commit that landed before
minor versions, canonical spec hashes and state-file versions), taken from git and run with this
environment's packages (`PYTHONPATH` puts its tree first). A count and a federated model run in
both directions; each side's audit head shows which release wrote it (the previous one wrote two
fields, this one three).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest

from coordinator.deploy.service import free_port
from coordinator.embedded.federation import EmbeddedFederation
from coordinator.embedded.synthetic import write_federation
from coordinator.run.orchestrator import run_analysis
from tests.adversarial.test_attacks import GLM_SPEC
from tests.e2e.test_secure_transport import _wait_for_text, running_coordinator

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: Stop 22's landing: the release before protocol minor versions.
PREVIOUS = "396a0f7"
COUNT = (ROOT / "configs" / "analyses" / "incidents_by_area.yaml").read_text()
MODEL = GLM_SPEC


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's source tree."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the previous release cannot be taken from history")
    git = shutil.which("git") or "git"
    archive = subprocess.run(
        [git, "-C", str(ROOT), "archive", "--format=tar", PREVIOUS], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(
            f"commit {PREVIOUS} is not in this checkout's history (a shallow clone?): {archive.stderr[:200]!r}"
        )
    tree = tmp_path_factory.mktemp("previous")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    assert not (tree / "node_agent" / "enrol.py").exists(), "the previous release predates enrolment"
    return tree


def _audit_fields(config: Path) -> int:
    return len((config.parent / "state" / "audit.head").read_text().split())


def test_this_coordinator_runs_analyses_on_the_previous_releases_nodes(
    previous: Path, tmp_path: Path
) -> None:
    # `python -m` puts the working folder first on sys.path: run from the previous tree
    old = ["env", "-C", str(previous), f"PYTHONPATH={previous}"]

    def previous_configs(fleet: str, ca: Path) -> dict[str, Path]:
        """This release's partners, less what the previous release's node.yaml cannot hold (the
        linkage key arrived later: those nodes refuse an unknown field, as they should)."""
        configs = write_federation(tmp_path, 6_000, coordinator=fleet, ca_cert=ca)
        for path in configs.values():
            path.write_text(
                "".join(x for x in path.read_text().splitlines(True) if not x.startswith("linkage:"))
            )
        return configs

    with EmbeddedFederation(tmp_path, partner_configs=previous_configs, node_prefix=lambda _: old) as fed:
        link = fed.link()
        try:
            count = run_analysis(COUNT, link, timeout=60)
            model = run_analysis(MODEL, link, timeout=120)
        finally:
            link.close()
        configs = fed.configs
    assert sorted(r.partner for r in count.releases) == ["council", "fire", "police"]
    assert count.tables[0].frame["count"].notna().any()
    assert model.tables, "the federated model finished on the previous release's nodes"
    assert {_audit_fields(c) for c in configs.values()} == {2}, "the nodes ran the previous release"


def _start(argv: list[str], log: Path, env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


@pytest.fixture
def previous_coordinator(previous: Path, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], Path]]:
    env = {**os.environ, "PYTHONPATH": str(previous)}
    folder, port = tmp_path / "coordinator", free_port()
    oda = [sys.executable, "-m", "coordinator.cli", "coordinator"]
    init = [*oda, "init", str(folder), "--host", "127.0.0.1", "--listen", "127.0.0.1", "--api-port", "0"]
    init += ["--port", str(port), "--superlink-port", str(free_port())]
    subprocess.run(init, env=env, cwd=previous, check=True, capture_output=True)
    with running_coordinator(folder, tmp_path / "coordinator.log", env, cwd=previous):
        yield folder, env, previous


def test_the_previous_coordinator_runs_analyses_on_this_releases_nodes(
    previous_coordinator: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    folder, old_env, old_tree = previous_coordinator
    fleet = next(
        line.split(": ", 1)[1].split()[0]
        for line in (folder / "coordinator.yaml").read_text().splitlines()
        if line.startswith("fleet_address:")
    )
    configs = write_federation(
        tmp_path / "partners", rows=6_000, coordinator=fleet, ca_cert=folder / "pki" / "ca.crt"
    )
    oda = [sys.executable, "-m", "coordinator.cli"]
    for partner, config in configs.items():
        key = config.parent / "keys" / "node.pub"
        register = [*oda, "coordinator", "register-node", str(folder), str(key), "--name", partner]
        subprocess.run(register, env=old_env, cwd=old_tree, check=True, capture_output=True)
    new_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    nodes = {
        p: _start(
            [sys.executable, "-m", "node_agent.cli", "start", "--config", str(c)],
            c.parent / "node.log",
            new_env,
        )
        for p, c in configs.items()
    }
    try:
        for partner, node in nodes.items():
            _wait_for_text(configs[partner].parent / "node.log", ": ready", node, 90)
        specs = tmp_path / "specs"
        specs.mkdir()
        (specs / "count.yaml").write_text(COUNT)
        (specs / "model.yaml").write_text(MODEL)
        run = [
            *oda,
            "run",
            str(specs / "count.yaml"),
            str(specs / "model.yaml"),
            "--coordinator",
            str(folder),
        ]
        ran = subprocess.run(
            [*run, "--out", str(tmp_path / "out"), "--timeout", "120"],
            env=old_env,
            cwd=old_tree,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    finally:
        for node in nodes.values():
            node.send_signal(signal.SIGTERM)
            node.wait(30)
    # the output folders are named after the spec files
    assert (tmp_path / "out" / "count" / "manifest.json").exists() and (tmp_path / "out" / "model").is_dir()
    assert {_audit_fields(c) for c in configs.values()} == {3}, "the nodes ran this release"
