"""The README's examples work as written: every `oda` and `oda-node` command it shows is one the
command-line tools accept (subcommands, options, argument types), and every analysis spec it
shows is valid and runs on the embedded federation. The flows behind the commands (enrolment,
fit, console, reload, blueprints, the analyst service) run in their own end-to-end tests."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from analyses.spec import load_spec
from coordinator.cli import _parser as oda_parser
from coordinator.embedded.federation import EmbeddedFederation
from coordinator.run.orchestrator import run_analysis
from node_agent.cli import _parser as node_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
#: Placeholders the README writes in capitals, and a value of the right type for each.
PLACEHOLDERS = {
    "NODE_ID": "1",
    "RUN": "r1",
    "ID": "req-1",
    "REQUEST_ID": "abc",
    "CODE": "oda1.x",
    "DIR": "coord",
}


def _blocks(kind: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README) if lang == kind]


def _commands() -> list[str]:
    found = []
    for body in _blocks("sh") + _blocks(""):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith(("oda ", "oda-node ", "./dev ")) or "/bin/oda-node " in line:
                found.append(line)
    return found


def test_the_readme_shows_the_commands_of_every_audience() -> None:
    commands = _commands()
    for needed in (
        "oda-node enrol",
        "oda-node fit",
        "oda-node console",
        "oda-node reload",
        "oda coordinator invite",
        "oda synth",
    ):
        assert any(c.startswith(needed) for c in commands) or needed in README, needed


@pytest.mark.parametrize("line", _commands(), ids=lambda line: line[:60])
def test_each_readme_command_is_accepted_by_its_tool(line: str) -> None:
    if line.startswith("./dev "):
        assert line.split()[1] in ("demo", "test", "check", "bench", "setup")
        return
    argv = [PLACEHOLDERS.get(word, word) for word in shlex.split(line)]
    tool, args = argv[0].rsplit("/", 1)[-1], argv[1:]
    parser = oda_parser() if tool == "oda" else node_parser()
    try:
        parser.parse_args(args)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"README command refused by {tool}: {line} (exit {exc.code})")


SPECS = [body for body in _blocks("yaml") if re.search(r"^version: 1$", body, re.M) and "steps:" in body]


def test_the_readme_shows_specs() -> None:
    assert len(SPECS) >= 2


@pytest.mark.e2e
def test_every_readme_spec_runs_on_the_embedded_federation(tmp_path: Path) -> None:
    loaded = [load_spec(text, f"README spec {i}") for i, text in enumerate(SPECS)]
    with EmbeddedFederation(tmp_path, rows=8_000) as fed:
        link = fed.link()
        try:
            for spec in loaded:
                result = run_analysis(spec, link, timeout=120)
                assert {r.partner for r in result.releases} == {"council", "fire", "police"}, spec.spec.name
                assert result.tables, spec.spec.name
        finally:
            link.close()
