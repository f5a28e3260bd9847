"""The deployment recipes in configs/deploy say what the code does: the files a Dockerfile
copies exist, the commands the systemd unit and the Windows recipe run are real subcommands, and
the exit codes they treat as "needs a person" are the ones the node uses. The images are built
where a Docker engine answers (skipped, with the reason, elsewhere)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from node_agent.cli import _COMMANDS
from privacy.exit_codes import ExitCode

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "configs" / "deploy"
DOCKERFILES = sorted(DEPLOY.glob("Dockerfile.*"))
NODE_COMMANDS = {name for name, _ in _COMMANDS}


def _scripts() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_a_dockerfile_copies_files_that_exist_and_runs_our_command(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: {line}"
    (entrypoint,) = re.findall(r'^ENTRYPOINT \["([^"]+)"\]', text, re.M)
    assert entrypoint in _scripts()
    assert "USER oda" in text, "the process does not run as root"


def test_the_systemd_unit_runs_start_reloads_with_sighup_and_stops_on_config_errors() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "oda-node.service")
    service = unit["Service"]
    argv = service["ExecStart"].split()
    assert argv[0].endswith("/oda-node") and argv[1] in NODE_COMMANDS and argv[1] == "start"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert {int(c) for c in service["RestartPreventExitStatus"].split()} == {ExitCode.CONFIG, ExitCode.DATA}


def test_the_windows_recipe_names_real_commands_and_exit_codes() -> None:
    text = (DEPLOY / "oda-node-windows.md").read_text()
    used = set(re.findall(r"oda-node(?:\.exe)? ([a-z][a-z-]*)", text))
    assert used <= NODE_COMMANDS and {"enrol", "check", "start", "reload"} <= used, used
    codes = {int(c) for c in re.findall(r"AppExit (\d+) Exit", text)}
    assert codes == {ExitCode.CONFIG, ExitCode.DATA}


def _docker_engine() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed"
    done = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30, check=False)
    return None if done.returncode == 0 else "no Docker engine answers here (`docker info` failed)"


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_builds(dockerfile: Path) -> None:
    why = _docker_engine()
    if why is not None:
        pytest.skip(why)
    docker = shutil.which("docker") or "docker"
    tag = f"oda-test-{dockerfile.suffix.lstrip('.')}"
    built = subprocess.run(
        [docker, "build", "-f", str(dockerfile), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    helped = subprocess.run(
        [docker, "run", "--rm", tag, "--help"], capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0 and "oda" in helped.stdout
