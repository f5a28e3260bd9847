"""Partner IT's whole flow over real processes, with no key or file sent by hand.

The coordinator (`oda coordinator init/start`) serves the node agent's wheel on its public HTTPS
port (`publish-agent`); a fresh virtual environment installs the wheel downloaded from there
(checked against its SHA-256) and runs `oda-node --help`, `init`, then `enrol CODE -> check ->
start`, and the node releases to the coordinator. A used or expired code is refused with what to
do, and `rotate-key` replaces the key and has the old one revoked once the new one connects.

In CI the fresh environment installs the wheel without dependencies and borrows them from the
project's environment (a `.pth` line: a full install fetches ~60 packages, 40 s or more); with
`ODA_FULL_INSTALL=1` it installs them too, as a partner's `pip install` does.
"""

from __future__ import annotations

import hashlib
import os
import signal
import ssl
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.deploy.service import coordinator_link, free_port
from coordinator.embedded.synthetic import write_federation
from coordinator.run.orchestrator import run_analysis
from privacy.exit_codes import ExitCode
from tests.e2e.test_secure_transport import SPEC, _wait_for_text, running_coordinator
from tests.source_tree import source_copy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ODA = [sys.executable, "-m", "coordinator.cli"]


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("enrol")
    folder, port = root / "coordinator", free_port()
    init = [*ODA, "coordinator", "init", str(folder), "--host", "127.0.0.1", "--listen", "127.0.0.1"]
    init += ["--port", str(port), "--superlink-port", str(free_port()), "--api-port", "0"]
    subprocess.run(init, capture_output=True, text=True, check=True)
    with running_coordinator(folder, root / "coordinator.log"):
        yield folder, f"127.0.0.1:{port}"


def _invite(folder: Path, partner: str, *extra: str) -> str:
    done = _run([*ODA, "coordinator", "invite", str(folder), partner, *extra], ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[1].strip()


def _fresh_venv(root: Path, wheel: Path) -> Path:
    """A new virtual environment with `wheel` installed; its bin folder."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if os.environ.get("ODA_FULL_INSTALL") == "1":
        done = _run([*pip, str(wheel)], root, timeout=1200)
    else:
        done = _run([*pip, "--no-deps", str(wheel)], root)
        purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root)
        # the project's third-party packages, after the venv's own (a directory on sys.path, not a
        # site dir: the project's editable .pth there is not read, so only the wheel's code runs)
        Path(purelib.stdout.strip(), "zz-borrowed-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"


def test_a_fresh_venv_installs_the_served_wheel_then_enrols_checks_and_starts(
    coordinator: tuple[Path, str], tmp_path: Path
) -> None:
    folder, fleet = coordinator
    built = _run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--outdir",
            str(tmp_path / "dist"),
            str(source_copy(tmp_path / "src")),
        ],
        ROOT,
        600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("oda_federated-*.whl")
    published = _run([*ODA, "coordinator", "publish-agent", str(folder), str(wheel)], ROOT)
    assert published.returncode == 0, published.stderr
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f"{wheel.name}#sha256={digest}" in published.stdout

    # The partner downloads the wheel from the coordinator and checks it against the published hash.
    verify = ssl.create_default_context(cafile=str(folder / "pki" / "ca.crt"))
    index = httpx.get(f"https://{fleet}/v1/oda/dist/", verify=verify, timeout=10).json()
    assert index[wheel.name]["sha256"] == digest
    served = httpx.get(f"https://{fleet}/v1/oda/dist/{wheel.name}", verify=verify, timeout=30)
    assert served.status_code == 200 and hashlib.sha256(served.content).hexdigest() == digest
    downloaded = tmp_path / "download" / wheel.name
    downloaded.parent.mkdir()
    downloaded.write_bytes(served.content)
    bindir = _fresh_venv(tmp_path, downloaded)

    where = _run([str(bindir / "python"), "-c", "import node_agent; print(node_agent.__file__)"], tmp_path)
    assert where.stdout.startswith(str(tmp_path / "venv")), where.stdout + where.stderr
    helped = _run([str(bindir / "oda-node"), "--help"], tmp_path)
    assert helped.returncode == 0 and "enrol" in helped.stdout, helped.stderr
    fresh = tmp_path / "fresh-site"
    made = _run(
        [str(bindir / "oda-node"), "init", "--partner", "police", "--config", str(fresh / "node.yaml")],
        tmp_path,
    )
    assert made.returncode == 0 and (fresh / "keys" / "node.pub").exists(), made.stderr

    # A partner whose data and node.yaml are ready (no coordinator, no keys yet) enrols with a code.
    config = write_federation(tmp_path / "partners", rows=3_000)["police"]
    for key in (config.parent / "keys").glob("node.*"):
        key.unlink()
    code = _invite(folder, "police")
    enrolled = _run([str(bindir / "oda-node"), "enrol", code, "--config", str(config)], tmp_path)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "pinned the coordinator's CA" in enrolled.stdout and "registered as police" in enrolled.stdout
    checked = _run([str(bindir / "oda-node"), "check", "--config", str(config)], tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "registration: this node's key is registered as police" in checked.stdout

    again = _run([str(bindir / "oda-node"), "enrol", code, "--config", str(config)], tmp_path)
    assert again.returncode == ExitCode.FEDERATION
    assert "this enrolment code was already used" in again.stderr and "oda coordinator invite" in again.stderr

    log = tmp_path / "node.log"
    with log.open("wb") as sink:
        node = subprocess.Popen(
            [str(bindir / "oda-node"), "start", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
    try:
        _wait_for_text(log, ": ready", node, 90)
        link = coordinator_link(folder)
        try:
            result = run_analysis(SPEC, link, timeout=60)
        finally:
            link.close()
        assert [r.partner for r in result.releases] == ["police"]
        node.send_signal(signal.SIGINT)  # Ctrl-C: one line says what was stopped
        assert node.wait(30) == ExitCode.INTERRUPTED
        last = log.read_text().strip().splitlines()[-1]
        assert last.startswith("oda-node: stopped by Ctrl-C: the node disconnected"), last
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            node.wait(30)


def test_expired_and_foreign_codes_are_refused_and_say_what_to_do(
    coordinator: tuple[Path, str], tmp_path: Path
) -> None:
    folder, _ = coordinator
    node = [sys.executable, "-m", "node_agent.cli"]
    code = _invite(folder, "fire", "--expires-hours", "0.0003")  # about one second
    time.sleep(1.5)
    expired = _run([*node, "enrol", code, "--config", str(tmp_path / "fire" / "node.yaml")], ROOT)
    assert expired.returncode == ExitCode.FEDERATION
    assert "this enrolment code has expired: ask the coordinator for a new one" in expired.stderr
    cut = _run([*node, "enrol", code[:40], "--config", str(tmp_path / "fire" / "node.yaml")], ROOT)
    assert cut.returncode == ExitCode.CONFIG and "damaged" in cut.stderr, cut.stderr
    # a code whose CA fingerprint is not the coordinator's (an interceptor's CA): nothing is sent
    from dataclasses import replace

    from privacy.enrolment_code import EnrolmentCode

    genuine = _invite(folder, "ambulance")
    forged = str(replace(EnrolmentCode.parse(genuine), ca_sha256="0" * 64))
    site = tmp_path / "ambulance" / "node.yaml"
    intercepted = _run([*node, "enrol", forged, "--config", str(site), "--wait", "30"], ROOT)
    assert intercepted.returncode == ExitCode.FEDERATION
    assert "someone may be intercepting the connection; nothing was sent" in intercepted.stderr
    assert _run([*node, "enrol", genuine, "--config", str(site), "--wait", "30"], ROOT).returncode == 0
    other = _invite(folder, "council")
    wrong = _run([*node, "enrol", other, "--config", str(tmp_path / "fire" / "node.yaml")], ROOT)
    assert wrong.returncode == ExitCode.CONFIG
    assert "this enrolment code is for partner 'council', but" in wrong.stderr


def test_rotate_key_swaps_the_key_and_the_old_one_is_revoked_once_the_new_one_connects(
    coordinator: tuple[Path, str], tmp_path: Path
) -> None:
    folder, _ = coordinator
    node = [sys.executable, "-m", "node_agent.cli"]
    config = write_federation(tmp_path / "partners", rows=3_000)["council"]
    for key in (config.parent / "keys").glob("node.*"):
        key.unlink()
    assert _run([*node, "enrol", _invite(folder, "council"), "--config", str(config)], ROOT).returncode == 0
    old_public = (config.parent / "keys" / "node.pub").read_text()
    rotated = _run([*node, "rotate-key", "--config", str(config)], ROOT)
    assert rotated.returncode == 0, rotated.stderr
    assert (config.parent / "keys" / "node.pub").read_text() != old_public
    link = coordinator_link(folder)
    try:
        council = [n for n in link.list_nodes() if n.name == "council" and n.status != "unregistered"]
        assert len(council) == 2, "the old key stays valid until the new one connects"
        log = tmp_path / "node.log"
        with log.open("wb") as sink:
            running = subprocess.Popen(
                [*node, "start", "--config", str(config)], stdout=sink, stderr=subprocess.STDOUT
            )
        try:
            _wait_for_text(log, ": ready", running, 90)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                council = [n for n in link.list_nodes() if n.name == "council" and n.status != "unregistered"]
                if len(council) == 1:
                    break
                time.sleep(0.2)
            assert len(council) == 1, council
        finally:
            running.send_signal(signal.SIGTERM)
            running.wait(30)
    finally:
        link.close()
    listed = _run([*ODA, "coordinator", "enrolments", str(folder)], ROOT)
    assert "rotate  council           done" in listed.stdout, listed.stdout
