"""The analyst service's cost: API overhead per run, and 50 analysts at once.

Prints:
- a one-step count run through the API (submit, the worker runs it, the client waits on the
  run's event stream and fetches the table) against `run_analysis` on the same in-process partners, median of
  15 each, in the same process: the ratio is what the service adds;
- 50 concurrent clients (threads, one httpx client each) listing runs and fetching a table,
  20 requests each: p50 and p99 latency, requests per second, and this process's RSS (the API
  server, its store and the worker live in it).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from coordinator.embedded.synthetic import write_federation
from coordinator.embedded.twin import InProcessTransport
from coordinator.run.orchestrator import run_analysis
from coordinator.service.accounts import add_user
from coordinator.service.api import ServiceState, build_app
from coordinator.service.client import Client
from coordinator.service.store import RunStore
from coordinator.service.worker import RunWorker
from node_agent.agent import NodeAgent
from node_agent.config import load_node_config
from tests.service.server import serving

SPEC = """
version: 1
name: bench-{i}
dataset: incidents
privacy: {{rho: 0.001, unit: {{identifier: person_id, max_rows: 5}}}}
steps:
  - {{kind: count, id: c, by: [{{column: area, keyset: coventry_lsoa11}}]}}
"""
RUNS = 15
CLIENTS = 50
PER_CLIENT = 20


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        configs = write_federation(root / "fed", rows=60_000, seed=5)
        agents = [
            NodeAgent(load_node_config(p).model_copy(update={"state_dir": str(root / k)}))
            for k, p in configs.items()
        ]
        transport = InProcessTransport(agents)
        store = RunStore.open(f"sqlite:///{root / 'runs.db'}")
        token = add_user(store, "alice", "analyst").token
        worker = RunWorker(store, lambda: transport, root / "results", "bench", poll=0.05)
        worker.start()
        state = ServiceState(store, "bench", root / "results", None, worker.wake)
        with serving(build_app(state)) as url, Client(url, token) as client:
            run_analysis(SPEC.format(i="warm"), transport)  # warm caches
            client.submit(SPEC.format(i="warm-api")).wait()
            direct, api = [], []
            for i in range(RUNS):
                t = time.perf_counter()
                run_analysis(SPEC.format(i=f"d{i}"), transport, out_dir=root / "direct" / str(i))
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                run = client.submit(SPEC.format(i=f"a{i}")).wait()
                _ = run.tables["c"]
                api.append(time.perf_counter() - t)
            d, a = statistics.median(direct), statistics.median(api)
            print(
                f"one run, median of {RUNS}: direct run_analysis {d * 1000:.0f} ms; through the API "
                f"(submit, worker, event stream, fetch) {a * 1000:.0f} ms; ratio {a / d:.2f}x, overhead {(a - d) * 1000:.0f} ms"
            )
            finished = run.id
            rss_before = rss_mib()
            latencies: list[float] = []
            lock = threading.Lock()

            def analyst(n: int) -> None:
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
                    for k in range(PER_CLIENT):
                        path = "/api/v1/runs?limit=20" if k % 2 == 0 else f"/api/v1/runs/{finished}/tables/c"
                        t = time.perf_counter()
                        response = http.get(path)
                        elapsed = time.perf_counter() - t
                        if response.status_code != 200:
                            raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
                        with lock:
                            latencies.append(elapsed)

            t = time.perf_counter()
            with ThreadPoolExecutor(CLIENTS) as pool:
                list(pool.map(analyst, range(CLIENTS)))
            wall = time.perf_counter() - t
            print(
                f"{CLIENTS} concurrent clients x {PER_CLIENT} requests (runs list of {len(store.runs(limit=20))}, "
                f"a {len(run.tables['c'])}-row table as JSON): p50 {pct(latencies, 0.5) * 1000:.0f} ms, "
                f"p99 {pct(latencies, 0.99) * 1000:.0f} ms, {len(latencies) / wall:.0f} requests/s; "
                f"RSS {rss_before:.0f} MiB before, {rss_mib():.0f} MiB after (API, store, worker and 3 in-process nodes)"
            )
        worker.stop()
        store.close()
        for agent in agents:
            agent.close()


if __name__ == "__main__":
    main()
