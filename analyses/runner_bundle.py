"""The runner app bundle: the only Flower app a node will accept, as plain file contents.

The bundle is a thin shim that imports the *installed* node agent, so its bytes do not change
with the package version: a node accepts the bundles of the protocol versions it speaks, and
refuses every other bundle with an error reply. Both sides build the bundle from these bytes,
and Flower's bundle hash is deterministic, so the hashes match.
"""

from __future__ import annotations

__all__ = ["RUNNER_BUNDLES"]

_PYPROJECT_V1 = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "oda-runner"
version = "1.0.0"
description = "oda-federated runner shim, protocol 1: imports the installed node agent"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "oda-federated"

[tool.flwr.app.components]
serverapp = "oda_runner.shim:server"
clientapp = "oda_runner.shim:app"

[tool.flwr.app.config]
"""

_SHIM_V1 = '''\
"""oda-federated runner, protocol 1: a shim over the installed packages, never new code."""

import importlib


def __getattr__(name: str) -> object:
    if name == "app":
        return importlib.import_module("node_agent.flower_node").app
    if name == "server":
        return importlib.import_module("coordinator.flower_server").app
    raise AttributeError(name)
'''

#: protocol version -> {relative path: file bytes}
RUNNER_BUNDLES: dict[int, dict[str, bytes]] = {
    1: {
        "pyproject.toml": _PYPROJECT_V1.encode(),
        "oda_runner/__init__.py": b"",
        "oda_runner/shim.py": _SHIM_V1.encode(),
    }
}
