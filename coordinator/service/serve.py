"""The analyst API's process: run store, worker and API with TLS, for one coordinator folder.

`oda coordinator start DIR` runs `python -m coordinator.service.serve DIR` when
`coordinator.yaml` sets `api_listen`. It reaches the SuperLink on loopback like every other
coordinator command, executes queued runs (`concurrency` at once) and serves `/api/v1` and
`/console` on `api_listen` with the coordinator's server certificate. SIGTERM stops it: runs in
flight withdraw their requests from the nodes and end `interrupted`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from coordinator.deploy.config import CoordinatorConfig, load_coordinator
from coordinator.deploy.pki import Pki
from coordinator.service.api import ServiceState, build_app
from coordinator.service.store import RunStore, default_store_url
from coordinator.service.worker import RunWorker
from privacy.errors import OdaError
from privacy.exit_codes import ExitCode, code_for

__all__ = ["federation_slug", "main", "open_store"]


def open_store(folder: Path, config: CoordinatorConfig) -> RunStore:
    """The run store of the coordinator in `folder`.

    Raises:
        ConfigError: the store cannot be opened or migrated.
    """
    return RunStore.open(config.store_url or default_store_url(folder))


def federation_slug(config: CoordinatorConfig) -> str:
    """The federation's name as it follows an analyst's name at the nodes (`alice@west-midlands`)."""
    slug = "".join(c if c.isalnum() else "-" for c in config.name.lower()).strip("-")
    return "-".join(part for part in slug.split("-") if part)[:60] or "oda"


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m coordinator.service.serve", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dir", type=Path, help="the coordinator folder")
    args = parser.parse_args(argv)
    folder: Path = args.dir
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load_coordinator(folder)
        if not config.api_listen:
            print(f"{folder}/coordinator.yaml sets no api_listen: nothing to serve", file=sys.stderr)
            return ExitCode.CONFIG
        pki = Pki(folder / "pki").require()
        store = open_store(folder, config)
    except OdaError as exc:
        print(f"analyst API: error: {exc}", file=sys.stderr)
        return code_for(exc)
    from coordinator.deploy.service import coordinator_link

    link = coordinator_link(folder)
    federation = federation_slug(config)
    registry = folder / config.blueprints
    worker = RunWorker(
        store, lambda: link, folder / "results", federation, concurrency=config.concurrency, registry=registry
    )

    def nodes() -> list[dict[str, object]]:
        from coordinator.service.fleet import fleet

        return fleet(link.list_nodes(), store.partners_seen())

    state = ServiceState(
        store, federation, folder / "results", registry, worker.wake, nodes, populations=config.populations
    )
    app = build_app(state)
    host, _, port = config.api_listen.rpartition(":")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host.strip("[]"),
            port=int(port),
            ssl_certfile=str(pki.server_cert),
            ssl_keyfile=str(pki.server_key),
            log_level="warning",
            access_log=False,  # tokens travel in headers; nothing about a request is logged
            server_header=False,
            ws="none",  # no websockets: the event stream is SSE
        )
    )
    for row in worker.start():
        print(f"run {row.id}: interrupted ({row.reason})", flush=True)

    def stop(signum: int, _: FrameType | None) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"analyst API: https://{config.api_listen}/api/v1 and /console (federation {federation})", flush=True
    )
    thread = threading.Thread(target=server.run, name="oda-api")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        server.should_exit = True
        worker.stop()
        link.close()
        store.close()
    print("analyst API stopped", flush=True)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
