"""The runner bundle's name for the coordinator's Flower ServerApp.

Protocol-1 runner bundles import `coordinator.flower_server` by name; the bundle's bytes (and so
its hash, which every node checks) must not change when the code moves, so this module stays
and hands on the app from where it now lives.
"""

from __future__ import annotations

from coordinator.deploy.flower import app

__all__ = ["app"]
