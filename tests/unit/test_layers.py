"""Architecture rules: pure layers stay pure; one module per side speaks Flower."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_PURE = {
    "flwr",
    "grpc",
    "httpx",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "sqlite3",
    "psycopg",
    "requests",
    "urllib3",
    "socket",
    "uvicorn",
}
FLOWER_MODULES = {"node_agent/flower_node.py", "coordinator/flower_server.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["privacy", "analyses"])
def test_pure_package_imports_no_io_module(package: str) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN_IN_PURE)
        for p in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("package", ["privacy", "analyses"])
def test_pure_package_imports_no_io_layer(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        assert not _imports(path) & {"node_agent", "coordinator"}, path


def test_privacy_never_imports_analyses() -> None:
    for path in (ROOT / "privacy").rglob("*.py"):
        assert "analyses" not in _imports(path), path


def test_only_one_module_per_side_speaks_flower() -> None:
    speakers = {
        str(p.relative_to(ROOT))
        for package in ("node_agent", "coordinator")
        for p in (ROOT / package).rglob("*.py")
        if "flwr" in _imports(p)
    }
    assert speakers == FLOWER_MODULES


def test_layer_check_detects_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import httpx\nfrom flwr.app import Message\n")
    assert _imports(bad) & FORBIDDEN_IN_PURE == {"httpx", "flwr"}


def test_opendp_features_never_idealized() -> None:
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or path.name == "test_layers.py":
            continue
        text = path.read_text()
        assert "idealized-numerics" not in text.replace('"idealized-numerics" (float', ""), path
