"""When the node last heard from its coordinator: `state_dir/last_contact`, for the DPO console
and `oda-node status` (the running node writes it; the shell commands read it).

Written after a poll the coordinator answered, at most once every `EVERY` seconds, so a node
polling fast does not write its disk fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["EVERY", "Contact"]

#: Least seconds between two writes of the file.
EVERY = 5.0


class Contact:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "last_contact"
        self._written = 0.0

    def touch(self, now: float | None = None) -> None:
        """Record that the coordinator answered just now (rate-limited; never raises)."""
        now = time.time() if now is None else now
        if now - self._written < EVERY:
            return
        self._written = now
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(f"{now:.3f}\n")
            os.replace(tmp, self.path)
        except OSError:
            pass  # a full disk must not stop the node; the console then shows an older time

    def last(self) -> float | None:
        """Unix time of the last recorded contact, or None when there was none."""
        try:
            return float(self.path.read_text().strip())
        except (OSError, ValueError):
            return None
