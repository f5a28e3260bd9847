"""A copy of the source tree to build a wheel from, so a build never writes into the checkout
(its build/ folder and egg-info) and two builds in two test workers never share one."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What a build does not read: environments, caches, outputs and earlier builds.
_LEFT_OUT = shutil.ignore_patterns(
    ".git",
    ".venv",
    "out",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
)


def source_copy(dest: Path) -> Path:
    """The checkout's sources copied to `dest` (which must not exist); `dest`."""
    shutil.copytree(ROOT, dest, ignore=_LEFT_OUT)
    return dest
