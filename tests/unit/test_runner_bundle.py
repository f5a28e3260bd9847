"""The runner bundle every node checks by hash: its bytes must not change when code moves."""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

import pytest

from analyses.runner_bundle import RUNNER_BUNDLES

#: sha256 of the protocol-1 runner bundle as first released (nodes in the field accept it).
PROTOCOL_1_BUNDLE = "2c602401dcc711a4b6196cd3d778b127ba203f9fafdbb56ee9d8236f8f4d0ee6"


def test_the_protocol_1_bundle_keeps_its_hash() -> None:
    from flwr.cli.build import build_fab_from_files

    from node_agent.flower_node import accepted_bundle_hashes

    content = build_fab_from_files(RUNNER_BUNDLES[1])[0]
    assert hashlib.sha256(content).hexdigest() == PROTOCOL_1_BUNDLE
    assert accepted_bundle_hashes() == {PROTOCOL_1_BUNDLE: 1}


def test_the_modules_the_bundle_names_still_hand_on_the_apps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shim imports `node_agent.flower_node` and `coordinator.flower_server` by name."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    for name, data in RUNNER_BUNDLES[1].items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path))
    shim = importlib.import_module("oda_runner.shim")
    try:
        assert isinstance(shim.app, ClientApp)
        assert isinstance(shim.server, ServerApp)
    finally:
        sys.modules.pop("oda_runner.shim", None)
        sys.modules.pop("oda_runner", None)
