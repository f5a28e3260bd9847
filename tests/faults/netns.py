"""Partners on their own hosts: one Linux network namespace per partner, made by the test.

A bridge on this machine (`odab<tag>`, 10.231.<k>.1/24) is the coordinator's side; each partner
gets a namespace (`odan<tag><i>`) joined to the bridge by a veth pair, with its own address
(10.231.<k>.<10+i>) and its own loopback. Nodes inside reach the coordinator only through the
bridge, so cutting the host end of a partner's veth partitions that partner alone, and `tc netem`
on its end delays only its traffic. Nothing here routes anywhere but these namespaces.

Everything is removed on exit (namespaces, their veths, the bridge), also after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
from types import TracebackType
from typing import Self

__all__ = ["DelayRelay", "Namespaces", "has_netem", "unavailable"]


def _run(argv: list[str]) -> None:
    """Raises: OSError with the command and what it printed, when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise OSError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")


def _ip(*args: str, netns: str | None = None) -> None:
    _run(["ip", *(("netns", "exec", netns, "ip") if netns else ()), *args])


def _netem(netns: str, dev: str, ms: int) -> None:
    """Add `ms` to every packet `dev` sends in namespace `netns` (tc's netem qdisc)."""
    _run(
        ["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{ms}ms"]
    )


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root); the loopback tests cover the rest"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"odaprobe{os.getpid() % 100_000}"
    try:
        _ip("netns", "add", probe)
    except OSError as exc:
        return f"this machine does not permit network namespaces: {exc}"
    _ip("netns", "del", probe)
    return None


def has_netem() -> bool:
    """Whether this kernel has tc's `netem` qdisc (added latency), tried in a namespace of its own."""
    probe = f"odanetem{os.getpid() % 100_000}"
    _ip("netns", "add", probe)
    try:
        _netem(probe, "lo", 1)
    except OSError:
        return False
    else:
        return True
    finally:
        _ip("netns", "del", probe)


class Namespaces:
    """`with Namespaces(["police", "fire"]) as ns:` then `ns.prefix("police")` runs a command
    inside police's namespace; `ns.host` is the coordinator's address on the bridge."""

    _made_here = 0

    def __init__(self, partners: list[str]) -> None:
        Namespaces._made_here += 1
        tag = f"{os.getpid() % 10_000}{Namespaces._made_here % 100}"
        # a /24 of its own: under pytest-xdist each worker (gw0, gw1, ...) takes its own range of
        # 50, so two workers' bridges never share a subnet (the names above differ by PID)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        band = int(worker) % 5 if worker.isdigit() else 0
        self.k = 1 + band * 50 + (os.getpid() + Namespaces._made_here) % 50
        self.bridge = f"odab{tag}"
        self.host = f"10.231.{self.k}.1"
        self.partners = {
            p: (f"odan{tag}x{i}", f"odh{tag}x{i}", f"odv{tag}x{i}") for i, p in enumerate(partners)
        }
        self.addresses = {p: f"10.231.{self.k}.{10 + i}" for i, p in enumerate(partners)}
        self._made: list[tuple[str, str]] = []

    def __enter__(self) -> Self:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.host}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for partner, (ns, host_end, ns_end) in self.partners.items():
                _ip("netns", "add", ns)
                self._made.append(("netns", ns))
                _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
                self._made.append(("link", host_end))  # deleted at once; a namespace's veth lingers
                _ip("link", "set", ns_end, "netns", ns)
                _ip("link", "set", host_end, "master", self.bridge)
                _ip("link", "set", host_end, "up")
                _ip("addr", "add", f"{self.addresses[partner]}/24", "dev", ns_end, netns=ns)
                _ip("link", "set", ns_end, "up", netns=ns)
                _ip("link", "set", "lo", "up", netns=ns)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove what was made, newest first (a namespace's veth goes with it)."""
        for kind, name in reversed(self._made):
            with contextlib.suppress(OSError):  # already gone with its namespace
                _ip(kind, "del", name)
        self._made.clear()

    def prefix(self, partner: str) -> list[str]:
        return ["ip", "netns", "exec", self.partners[partner][0]]

    def partition(self, partner: str) -> None:
        """Cut the partner off: its end of the link to the coordinator goes down."""
        _ip("link", "set", self.partners[partner][1], "down")

    def heal(self, partner: str) -> None:
        _ip("link", "set", self.partners[partner][1], "up")

    def delay(self, partner: str, ms: int) -> None:
        """Add `ms` to every packet the partner sends (tc netem on its end of the link)."""
        ns, _, ns_end = self.partners[partner]
        _netem(ns, ns_end, ms)

    def reachable(self, partner: str, port: int) -> bool:
        """Whether the partner's namespace can open a TCP connection to the coordinator's port."""
        code = f"import socket; socket.create_connection(('{self.host}', {port}), timeout=2).close()"
        done = subprocess.run(
            [*self.prefix(partner), "python3", "-c", code], capture_output=True, timeout=20, check=False
        )
        return done.returncode == 0


class DelayRelay:
    """A TCP relay on the coordinator's side that holds every chunk a partner sends for `delay`
    seconds before passing it on: added latency where the kernel has no `netem` qdisc (seen here:
    "Specified qdisc kind is unknown"). The partner connects to `host:port` instead of the proxy."""

    def __init__(self, host: str, upstream: tuple[str, int], delay: float) -> None:
        self.host = host
        self.upstream = upstream
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="delay-relay", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise OSError("the delay relay did not start")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._connection, self.host, 0))
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pump(reader, up_writer, self.delay),
            self._pump(up_reader, writer, 0.0),
            return_exceptions=True,
        )

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            while True:
                data = await src.read(65536)
                await queue.put((loop.time() + delay, data))
                if not data:
                    return

        async def write() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    dst.close()
                    return
                dst.write(data)
                await dst.drain()

        try:
            await asyncio.gather(read(), write())
        finally:
            dst.close()
