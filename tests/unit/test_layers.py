"""Architecture rules, read from the code's imports:

- `privacy/` and `analyses/` stay pure: no I/O module, and never the layers above them;
- `privacy/` never imports `analyses/`;
- exactly one module per side speaks Flower;
- `node_agent/` never imports `coordinator/`, and `coordinator/` imports `node_agent/` only from
  its one composition place, `coordinator/embedded/`;
- no import circle anywhere, counting imports inside functions (they hide circles) but not
  those under `if TYPE_CHECKING:` (which never run).

Each rule is a function of an import graph, so the tests can also plant a violation in a tree
of their own and see the rule catch it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("privacy", "analyses", "node_agent", "coordinator")
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
FLOWER_MODULES = {"node_agent/flower_node.py", "coordinator/deploy/flower.py"}
COMPOSITION_PLACE = "coordinator/embedded/"


@dataclass
class ImportGraph:
    """Our modules (by file) and what each imports: module names as written, and our files."""

    root: Path
    external: dict[str, set[str]] = field(default_factory=dict)  # file -> top-level names imported
    edges: dict[str, set[str]] = field(default_factory=dict)  # file -> our files imported

    @staticmethod
    def of(root: Path, packages: tuple[str, ...] = PACKAGES) -> ImportGraph:
        graph = ImportGraph(root)
        files = {str(p.relative_to(root)): p for pkg in packages for p in (root / pkg).rglob("*.py")}
        modules = {_module(path): path for path in files}
        for path, full in files.items():
            names = _imports(full, _module(path), path.endswith("__init__.py"))
            graph.external[path] = {n.split(".")[0] for n in names}
            graph.edges[path] = {
                f for name in names if (f := _file_of(name, modules)) is not None and f != path
            }
        return graph

    def importers_of(self, package: str) -> set[str]:
        """Files that import anything of `package`."""
        return {f for f, names in self.external.items() if package in names}

    def circles(self) -> list[list[str]]:
        """Every import circle (strongly connected set of more than one file), each sorted."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []
        counter = [0]

        def visit(node: str) -> None:  # Tarjan's algorithm
            index[node] = low[node] = counter[0]
            counter[0] += 1
            stack.append(node)
            on_stack.add(node)
            for nxt in sorted(self.edges.get(node, ())):
                if nxt not in index:
                    visit(nxt)
                    low[node] = min(low[node], low[nxt])
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

        for node in sorted(self.edges):
            if node not in index:
                visit(node)
        return found


def _module(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _file_of(name: str, modules: dict[str, str]) -> str | None:
    """The file of our module `name` (or of the package it names), if it is ours."""
    while name:
        if name in modules:
            return modules[name]
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path, module: str, is_package: bool) -> set[str]:
    """Module names `path` imports when it runs (anywhere in it, also inside functions), as
    absolute names; `from X import y` counts as X.y (a submodule) or X."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks never run
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    base = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                source = f"{parent}.{node.module}" if node.module else parent
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


# -- the rules, as functions of a graph ------------------------------------------------------------


def impure(graph: ImportGraph, package: str) -> dict[str, list[str]]:
    return {
        f: sorted(names & FORBIDDEN_IN_PURE)
        for f, names in graph.external.items()
        if f.startswith(f"{package}/") and names & FORBIDDEN_IN_PURE
    }


def upward(graph: ImportGraph, package: str, above: set[str]) -> set[str]:
    return {f for f, names in graph.external.items() if f.startswith(f"{package}/") and names & above}


def flower_speakers(graph: ImportGraph) -> set[str]:
    return {f for f in graph.importers_of("flwr") if f.split("/")[0] in ("node_agent", "coordinator")}


def node_agent_importers_outside_the_composition_place(graph: ImportGraph) -> set[str]:
    return {
        f
        for f in graph.importers_of("node_agent")
        if f.startswith("coordinator/") and not f.startswith(COMPOSITION_PLACE)
    }


# -- the rules on this code ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return ImportGraph.of(ROOT)


@pytest.mark.parametrize("package", ["privacy", "analyses"])
def test_pure_package_imports_no_io_module(graph: ImportGraph, package: str) -> None:
    assert impure(graph, package) == {}


@pytest.mark.parametrize("package", ["privacy", "analyses"])
def test_pure_package_imports_no_io_layer(graph: ImportGraph, package: str) -> None:
    assert upward(graph, package, {"node_agent", "coordinator"}) == set()


def test_privacy_never_imports_analyses(graph: ImportGraph) -> None:
    assert upward(graph, "privacy", {"analyses"}) == set()


def test_only_one_module_per_side_speaks_flower(graph: ImportGraph) -> None:
    assert flower_speakers(graph) == FLOWER_MODULES


def test_node_agent_never_imports_the_coordinator(graph: ImportGraph) -> None:
    assert upward(graph, "node_agent", {"coordinator"}) == set()


def test_the_coordinator_imports_node_agent_only_from_its_composition_place(graph: ImportGraph) -> None:
    assert node_agent_importers_outside_the_composition_place(graph) == set()
    assert graph.importers_of("node_agent") & {f for f in graph.external if f.startswith(COMPOSITION_PLACE)}


def test_there_is_no_import_circle(graph: ImportGraph) -> None:
    assert graph.circles() == []


# -- and the rules catch what they are for ---------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> ImportGraph:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return ImportGraph.of(tmp_path)


def test_a_planted_import_of_node_agent_from_coordinator_run_is_caught(tmp_path: Path) -> None:
    graph = _tree(
        tmp_path,
        {
            "node_agent/agent.py": "X = 1\n",
            "coordinator/run/__init__.py": "",
            "coordinator/run/orchestrator.py": "def run():\n    from node_agent.agent import X\n    return X\n",
            "coordinator/embedded/__init__.py": "",
            "coordinator/embedded/twin.py": "from node_agent.agent import X\n",
        },
    )
    assert node_agent_importers_outside_the_composition_place(graph) == {"coordinator/run/orchestrator.py"}


def test_a_planted_circle_is_caught_even_through_a_function_level_import(tmp_path: Path) -> None:
    graph = _tree(
        tmp_path,
        {
            "coordinator/run/__init__.py": "",
            "coordinator/run/models.py": "from coordinator.run.orchestrator import collect\n",
            "coordinator/run/orchestrator.py": "def run():\n    from coordinator.run import models\n",
            "coordinator/run/outputs.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from coordinator.run.models import x\n",
        },
    )
    assert graph.circles() == [["coordinator/run/models.py", "coordinator/run/orchestrator.py"]]


def test_a_planted_forbidden_import_in_a_pure_package_is_caught(tmp_path: Path) -> None:
    graph = _tree(
        tmp_path,
        {"analyses/bad.py": "import httpx\nfrom flwr.app import Message\nfrom node_agent import agent\n"},
    )
    assert impure(graph, "analyses") == {"analyses/bad.py": ["flwr", "httpx"]}
    assert upward(graph, "analyses", {"node_agent", "coordinator"}) == {"analyses/bad.py"}


def test_opendp_features_never_idealized() -> None:
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or path.name == "test_layers.py":
            continue
        text = path.read_text()
        assert "idealized-numerics" not in text.replace('"idealized-numerics" (float', ""), path
