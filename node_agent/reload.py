"""`oda-node reload` (or SIGHUP on POSIX): apply `node.yaml` changes without a restart.

A restart expires every request waiting for approval (the coordinator must send it again), so
policy and dataset changes are applied to the running node instead. The shell command writes
`state_dir/reload.request`; the running node (`Reloader`, a thread of `oda-node start`) sees it
within a second, or at once on SIGHUP, validates the file and loads its datasets before
swapping anything, and answers in `state_dir/reload.result`. A `node.yaml` with errors changes
nothing: the node keeps running as it was, and the answer says why. Windows has no SIGHUP, so
the request file is the portable way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from node_agent.agent import NodeAgent
from node_agent.config import load_node_config
from privacy.errors import FederationError, UserError

__all__ = ["Reloader", "request_reload"]

log = logging.getLogger("oda.node")

REQUEST = "reload.request"
RESULT = "reload.result"


class Reloader:
    """Watches for reload requests while the node serves; `start()` then `stop()`."""

    def __init__(self, agent: NodeAgent, config_path: Path, stop: threading.Event) -> None:
        self.agent = agent
        self.config_path = config_path
        self.stop = stop
        self.state = Path(agent.config.state_dir)
        self.asked = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oda-reload", daemon=True)

    def start(self) -> None:
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: self.asked.set())
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.asked.wait(1.0)
            request = self.state / REQUEST
            if self.asked.is_set() or request.exists():
                self.asked.clear()
                request.unlink(missing_ok=True)
                self._write(self.apply())

    def apply(self) -> dict[str, object]:
        """Reload now; what happened (never raises: the node keeps serving)."""
        try:
            kept = self.agent.reload(load_node_config(self.config_path))
        except UserError as exc:
            log.error("node.yaml not reloaded, the node runs as before: %s", exc)
            return {"time": time.time(), "ok": False, "message": str(exc)}
        policy = self.agent.config.policy
        lines = [
            f"reloaded {self.config_path}: datasets {', '.join(policy.allowed_datasets)}; approval {policy.approval}"
        ]
        lines += kept
        for line in lines:
            log.info("%s", line)
        return {"time": time.time(), "ok": True, "message": "\n".join(lines)}

    def _write(self, result: dict[str, object]) -> None:
        tmp = self.state / (RESULT + ".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, self.state / RESULT)


def request_reload(state_dir: Path, wait: float = 15.0) -> str:
    """Ask the running node to reload and return its answer.

    Raises:
        FederationError: no running node answered within `wait` seconds.
        UserError: the node answered that the new node.yaml has errors (it runs as before).
    """
    from privacy.errors import ConfigError

    state_dir.mkdir(parents=True, exist_ok=True)
    asked = time.time()
    (state_dir / REQUEST).write_text(f"{asked:.3f}\n")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            result = json.loads((state_dir / RESULT).read_text())
        except (OSError, ValueError):
            result = None
        if result is not None and float(result.get("time", 0)) >= asked:
            if not result.get("ok"):
                raise ConfigError(f"the running node kept its config: {result.get('message')}")
            return str(result.get("message"))
        time.sleep(0.2)
    (state_dir / REQUEST).unlink(missing_ok=True)
    raise FederationError(
        f"no running node answered within {wait:.0f} s: is `oda-node start` running with this node.yaml?"
    )
