"""Every public name a package or module declares in `__all__` exists, and `__all__` is sorted
the way the linter sorts it (httpx's `tests/test_exported_members.py` in spirit)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ("privacy", "analyses", "node_agent", "coordinator")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(module.__path__, f"{package}.")]
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", [])
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names {missing}, which it does not define"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
