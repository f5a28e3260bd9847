"""What a node answered, as a plain object (the Flower adapter produces these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["NodeReply"]


@dataclass(frozen=True)
class NodeReply:
    """A release (JSON), a refusal or error (reason JSON), or nothing in time."""

    node_id: int
    outcome: Literal["release", "refused", "error", "timeout"]
    body: str
