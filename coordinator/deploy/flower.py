"""The coordinator side's one module that speaks Flower.

`FlowerLink` talks to a SuperLink on loopback: it starts a run with the runner bundle through
the Control API, then acts as that run's ServerApp itself (acquiring the task through the
Runtime API, as Flower's own executor would), so no `flwr-serverapp` process is started per
analysis. Replies are collected with a short poll loop instead of `send_and_receive`'s 3 s
sleep. It implements `coordinator.run.transport.Transport`: requests go in typed, replies leave
this module decoded by `analyses.reply` (`NodeReply`: a release or a typed refusal).

`simulate` runs the same orchestration as the ServerApp of Flower's simulation engine (Ray),
through `GridTransport`, the Transport over the Grid Flower hands a ServerApp.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple, TypeVar, cast

import httpx
import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.cli.build import build_fab_from_files
from flwr.clientapp import ClientApp
from flwr.common.constant import SubStatus
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    fab_to_proto,
    run_from_proto,
    user_config_to_proto,
)
from flwr.proto.control_pb2 import (
    ListNodesRequest,
    RegisterNodeRequest,
    StartRunRequest,
    UnregisterNodeRequest,
)
from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    PushTaskOutputRequest,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.constant import TaskType
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectPullError,
    inflate_object_from_contents,
    pull_objects,
)
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.grid import HttpGrid

from analyses.reply import AuditStamp, Refusal, decode_reply
from analyses.request import AnalysisRequest
from analyses.runner_bundle import RUNNER_BUNDLES
from coordinator.run.transport import (
    FedAvgResult,
    NodeReply,
    RunCancelled,
    RunWatch,
    stop_if_cancelled,
    timed_out,
)
from privacy.errors import FederationError, ProtocolError
from privacy.keyfiles import load_node_public_key

__all__ = [
    "FlowerLink",
    "GridTransport",
    "RegisteredNode",
    "RunnerBundle",
    "app",
    "exchange",
    "runner_fab",
    "simulate",
]

T = TypeVar("T")

MESSAGE_TYPE = "query"
CANCEL_TYPE = "query.cancel"
POLL_INTERVAL = 0.02
#: After this many seconds without every reply, replies are pulled every `SLOW_POLL_INTERVAL`:
#: a run waiting hours for a person's approval must not poll the SuperLink 50 times a second.
FAST_POLL_SECONDS = 10.0
SLOW_POLL_INTERVAL = 1.0
#: A request's time to live beyond the time its sender waits: a node that answers later (an
#: approval after the deadline) finds the message expired and spends nothing.
TTL_MARGIN = 10.0
#: How long a cancelled run waits for the nodes to acknowledge the withdrawal.
CANCEL_ACK_SECONDS = 5.0
#: The same at a deadline, shorter: a node that has not answered may be down.
LATE_ACK_SECONDS = 1.0
#: How long a registered reply may take to upload its objects before it counts as lost.
REPLY_UPLOAD_TIMEOUT = 30.0


class RunnerBundle(NamedTuple):
    """A runner bundle (a Flower FAB) and its sha256."""

    sha256: str
    content: bytes


def runner_fab(protocol: int = 1) -> RunnerBundle:
    """The runner bundle of `protocol`."""
    content = build_fab_from_files(RUNNER_BUNDLES[protocol])[0]
    return RunnerBundle(hashlib.sha256(content).hexdigest(), content)


def decode(name: str, reply: Message | str) -> NodeReply:
    """A node's Flower reply as a typed reply: its release (with the audit stamp beside it), or
    its refusal (Flower's error reply); a reply that cannot be read is a protocol refusal.
    `name` is the partner's registered name (or its Flower node id where none is known)."""
    try:
        if isinstance(reply, str):
            raise ProtocolError(reply)
        if reply.has_error():
            return NodeReply(name, decode_reply(reply.error.reason or "{}", refused=True))
        record = reply.content.config_records["release"]
        seq, head = record.get("audit_seq"), record.get("audit_head")
        stamp = AuditStamp(seq, head) if isinstance(seq, int) and isinstance(head, str) else None
        return NodeReply(name, decode_reply(str(record["json"]), stamp=stamp))
    except (ProtocolError, KeyError, TypeError) as exc:
        return NodeReply(name, Refusal(name, "protocol", "ProtocolError", f"unreadable reply: {exc}"))


def exchange(
    grid: Grid,
    request: AnalysisRequest,
    timeout: float,
    watch: RunWatch | None = None,
    names: dict[int, str] | None = None,
    relays: Mapping[str, str] | None = None,
) -> list[NodeReply]:
    """Send a request to every node of the federation and collect one reply each, telling
    `watch` (nodes named by `names` where known) and stopping when it cancels the run. A node
    in `names` (the registered nodes) that is not connected gets no request and is answered
    for as offline, so a run names every partner it did not hear from. With `relays` (node
    name, or id where unnamed -> relay), only those nodes get the request, each its own relay.

    Raises:
        RunCancelled: `watch` cancelled the run; the nodes still to answer were told to
            withdraw the request (a node holding it for approval spends nothing).
    """
    node_ids = list(grid.get_node_ids())
    label = (names or {}).get

    def named(node: int) -> str:
        return label(node) or str(node)

    expected = sorted(relays) if relays is not None else sorted(set((names or {}).values()))
    connected = {named(n) for n in node_ids}
    offline = [
        NodeReply(
            name, Refusal(name, "timeout", "Offline", "offline: not connected when the request went out")
        )
        for name in expected
        if name not in connected
    ]
    if relays is not None:
        node_ids = [n for n in node_ids if named(n) in relays]

    def content(node: int) -> RecordDict:
        sent = request if relays is None else replace(request, relay=relays[named(node)])
        return RecordDict({"request": ConfigRecord({"json": sent.to_json()})})

    ttl = max(timeout + TTL_MARGIN, 30.0)
    messages = [Message(content(n), n, MESSAGE_TYPE, ttl=ttl, group_id="") for n in node_ids]
    ids = _push(grid, messages)
    pending = {mid: n for mid, n in zip(ids, node_ids, strict=True) if mid}
    if watch is not None:
        watch.sent(request.request_id, [label(n) or str(n) for n in pending.values()])
        for absent in offline:
            watch.replied(request.request_id, absent.node, absent)
    replies: list[NodeReply] = list(offline)
    started = time.monotonic()
    deadline = started + timeout
    while pending and time.monotonic() < deadline:
        if watch is not None and (why := watch.cancelled()) is not None:
            _withdraw(grid, request.request_id, why, list(pending.values()))
            raise RunCancelled(why)
        for reply_to, reply in _pull_replies(grid, list(pending)):
            node = pending.pop(reply_to, None)
            if node is not None:
                name = label(node) or str(node)
                replies.append(decode(name, reply))
                if watch is not None:
                    watch.replied(request.request_id, name, replies[-1])
        if pending:
            fast = time.monotonic() - started < FAST_POLL_SECONDS
            time.sleep(POLL_INTERVAL if fast else SLOW_POLL_INTERVAL)
    late = []
    for node in pending.values():
        late.append(timed_out(label(node) or str(node), timeout))
        if watch is not None:
            watch.replied(request.request_id, label(node) or str(node), late[-1])
    if late:
        why = f"no reply within {timeout:.0f} s"
        _withdraw(grid, request.request_id, why, list(pending.values()), wait=LATE_ACK_SECONDS)
    return replies + late


#: Flower builds a message's run and task from one process-wide identity (`TaskIdentity`); the
#: coordinator's service runs several Flower runs at once, so each message is stamped with its
#: own run's identity (grid -> (task id, node id)) before it is pushed.
_IDENTITIES: weakref.WeakKeyDictionary[Grid, tuple[int, int]] = weakref.WeakKeyDictionary()
#: grid -> who tells the Fleet proxy which nodes were just pushed a message (see `Waker`).
_WAKERS: weakref.WeakKeyDictionary[Grid, Waker] = weakref.WeakKeyDictionary()


def _push(grid: Grid, messages: list[Message]) -> list[str]:
    """Push messages under `grid`'s own run (see `_IDENTITIES`); their ids ('' if not taken)."""
    identity = _IDENTITIES.get(grid)
    if identity is not None:
        for message in messages:
            message.metadata.__dict__["_run_id"] = grid.run.run_id
            message.metadata.__dict__["_src_task_id"], message.metadata.__dict__["_src_node_id"] = identity
    ids = list(grid.push_messages(messages))
    waker = _WAKERS.get(grid)
    if waker is not None:
        waker.wake([m.metadata.dst_node_id for m, mid in zip(messages, ids, strict=True) if mid])
    return ids


class Waker:
    """Tells the Fleet proxy (`coordinator.deploy.proxy`) which nodes were just pushed a
    message, so it releases their held pulls at once. Best effort: if the proxy cannot be told,
    the nodes still get the message at the end of their hold (`proxy.HOLD_SECONDS`)."""

    def __init__(self, proxy: str, token: str, ca_cert: bytes, keys: Callable[[], dict[int, bytes]]) -> None:
        context = ssl.create_default_context(cadata=ca_cert.decode())
        context.check_hostname = False  # our own proxy on loopback; its chain is still checked
        self._client = httpx.Client(base_url=f"https://{proxy}", verify=context, timeout=2.0)
        self._token = token
        self._keys = keys
        self._known: dict[int, str] = {}

    def wake(self, node_ids: list[int]) -> None:
        if any(n not in self._known for n in node_ids):
            self._known = {n: base64.b64encode(pem).decode() for n, pem in self._keys().items()}
        keys = [self._known[n] for n in node_ids if n in self._known]
        with contextlib.suppress(httpx.HTTPError):
            self._client.post("/_oda/wake", json={"keys": keys}, headers={"x-oda-wake-token": self._token})

    def close(self) -> None:
        self._client.close()


def _withdraw(
    grid: Grid, request_id: str, why: str, nodes: list[int], wait: float = CANCEL_ACK_SECONDS
) -> None:
    """Tell `nodes` to withdraw `request_id` (a held request leaves the partner's inbox with
    `why`), and wait up to `wait` seconds for their acknowledgements. Best effort: a node that
    never hears of it still finds the message expired or the run ended, and spends nothing."""
    if not nodes:
        return
    content = RecordDict({"cancel": ConfigRecord({"request_id": request_id, "reason": why[:300]})})
    try:
        ids = _push(grid, [Message(content, n, CANCEL_TYPE, ttl=60.0, group_id="") for n in nodes])
        pending = {mid for mid in ids if mid}
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            for reply_to, _ in _pull_replies(grid, list(pending)):
                pending.discard(reply_to)
            time.sleep(POLL_INTERVAL)
    except httpx.HTTPError:
        return


def _pull_replies(grid: Grid, message_ids: list[str]) -> list[tuple[str, Message | str]]:
    """The replies available now, as (id of the message replied to, reply or why it is lost).

    A node registers its reply before uploading the reply's objects, and `HttpGrid.pull_messages`
    waits for missing objects with a backoff starting at 1 s (then 2, 4, ...), although they
    arrive milliseconds later. This pulls them every `POLL_INTERVAL` instead.
    """
    if not isinstance(grid, HttpGrid):  # a grid Flower gave us (stock `flwr run`): its own pull
        return [(m.metadata.reply_to_message_id, m) for m in grid.pull_messages(message_ids)]
    client, run_id = grid._runtime_client, grid.run.run_id  # noqa: SLF001  # flwr==1.42.0 is pinned
    response = client.PullMessages(PullAppMessagesRequest(message_ids=message_ids))
    out: list[tuple[str, Message | str]] = []
    for proto, tree in zip(response.messages_list, response.message_object_trees, strict=True):
        reply_to, object_id = proto.metadata.reply_to_message_id, proto.metadata.message_id
        try:
            contents = pull_objects(
                [t.object_id for t in iterate_object_tree(tree)],
                pull_object_fn=make_pull_object_fn_protobuf(
                    pull_object_protobuf=client.PullObject, node=grid.node, run_id=run_id
                ),
                max_time=REPLY_UPLOAD_TIMEOUT,
                initial_backoff=POLL_INTERVAL,
                backoff_cap=0.25,
            )
        except ObjectPullError as exc:
            out.append(
                (
                    reply_to,
                    f"the node's reply never finished uploading ({exc}): a release in it is lost, and "
                    "the partner may have debited it (its ledger and audit log show the request id)",
                )
            )
            continue
        client.ConfirmMessageReceived(
            ConfirmMessageReceivedRequest(node=grid.node, run_id=run_id, message_object_id=object_id)
        )
        message = cast(Message, inflate_object_from_contents(object_id, contents))
        message.metadata.__dict__["_message_id"] = object_id
        out.append((reply_to, message))
    return out


@dataclass(frozen=True)
class RegisteredNode:
    """A node key registered at the SuperLink, and what the SuperLink knows of its connection."""

    node_id: int
    name: str
    status: str
    public_key_pem: bytes
    #: When the node last connected (activated), and until when it counts as online (Flower's
    #: heartbeat), as the SuperLink reports them ('' when never).
    last_activated_at: str = ""
    online_until: float = 0.0


class FlowerLink:
    """A connection to a SuperLink's Control and Runtime APIs over TLS on loopback.

    Those APIs have no authentication in open-source Flower, which is why the SuperLink binds
    to loopback and only the Fleet API is exposed (through `coordinator.deploy.proxy`).
    """

    def __init__(self, address: str, ca_cert: bytes, wake: tuple[str, str] | None = None) -> None:
        """`wake` is (the Fleet proxy's loopback HOST:PORT, its wake token): each push then
        releases the pushed nodes' held pulls at once."""
        self.address = address
        self._ca_cert = ca_cert
        self._waker = (
            Waker(wake[0], wake[1], ca_cert, lambda: {n.node_id: n.public_key_pem for n in self.list_nodes()})
            if wake
            else None
        )
        version = RuntimeVersionHttpInterceptor(component_name="flwr CLI")
        self._control = ControlHttpClient.from_server_address(
            server_address=address, insecure=False, root_certificates=ca_cert, interceptors=[version]
        )
        self._runtime = RuntimeHttpClient.from_server_address(
            server_address=address,
            insecure=False,
            root_certificates=ca_cert,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        self._fab_hash, self._fab = runner_fab()
        # Starting a run and acquiring its task must not interleave with another thread's: the
        # task handed out next may be the other run's (the analyst service runs several at once).
        self._start_lock = threading.Lock()

    def register_node(self, public_key_openssh: bytes, name: str) -> int:
        """Register a node's public key (OpenSSH form, NIST P-384); return its Flower node id.
        Registering a key that is already registered returns the existing id.

        Raises:
            ConfigError: the key is not an EC P-384 public key in OpenSSH form.
            FederationError: the SuperLink cannot be reached or refuses.
        """
        pem = public_key_to_bytes(load_node_public_key(public_key_openssh))
        for node in self.list_nodes():
            if node.public_key_pem == pem and node.status != "unregistered":
                return node.node_id
        try:
            response = self._control.RegisterNode(RegisterNodeRequest(public_key=pem, name=name))
        except httpx.HTTPError as exc:
            raise FederationError(f"the SuperLink at {self.address} did not register the key: {exc}") from exc
        return int(response.node_id)

    def unregister_node(self, node_id: int) -> None:
        """Raises: FederationError when the SuperLink refuses (e.g. an unknown node id)."""
        try:
            self._control.UnregisterNode(UnregisterNodeRequest(node_id=node_id))
        except httpx.HTTPError as exc:
            raise FederationError(
                f"the SuperLink at {self.address} did not unregister node {node_id}: {exc}"
            ) from exc

    def list_nodes(self) -> list[RegisteredNode]:
        try:
            response = self._control.ListNodes(ListNodesRequest())
        except httpx.HTTPError as exc:
            raise FederationError(
                f"cannot reach the SuperLink at {self.address} ({exc}); is the coordinator running?"
            ) from exc
        return [
            RegisteredNode(
                int(n.node_id),
                n.name,
                n.status,
                bytes(n.public_key),
                n.last_activated_at,
                float(n.online_until),
            )
            for n in response.nodes_info
        ]

    def close(self) -> None:
        self._control.close()
        self._runtime.close()
        if self._waker is not None:
            self._waker.close()

    def names(self) -> dict[int, str]:
        """Flower node id -> the partner name it was registered under (registered nodes only)."""
        return {n.node_id: n.name for n in self.list_nodes() if n.name and n.status != "unregistered"}

    def broadcast(
        self,
        request: AnalysisRequest,
        timeout: float,
        watch: RunWatch | None = None,
        relays: Mapping[str, str] | None = None,
    ) -> list[NodeReply]:
        """Start a run, send `request` to every node (or, with `relays`, to those named, each
        with its own relay), and return their replies.

        Raises:
            FederationError: the SuperLink cannot be reached or refuses the run.
            RunCancelled: `watch` cancelled the run (the nodes were told to withdraw).
        """
        names = self.names()
        grid, finish = self._open_run()
        try:
            return exchange(grid, request, timeout, watch, names, relays)
        except httpx.HTTPError as exc:
            raise FederationError(f"lost the SuperLink at {self.address}: {exc}") from exc
        finally:
            finish()

    def fedavg(
        self,
        request: AnalysisRequest,
        initial: npt.NDArray[np.float64],
        rounds: int,
        timeout: float,
        watch: RunWatch | None = None,
    ) -> FedAvgResult:
        """Train by Flower's FedAvg strategy: each round every node gets the weights and the
        request (the round number is Flower's `server-round`) and answers with its local model,
        its noisy row count as `num-examples`, and its release. Returns the final weights and
        every node reply (releases and refusals) of every round.

        Raises:
            FederationError: the SuperLink cannot be reached, or no node trained in some round.
        """
        names = self.names() if watch is not None else {}
        grid, finish = self._open_run()
        try:
            return _fedavg(grid, request, initial, rounds, timeout, watch, names)
        except httpx.HTTPError as exc:
            raise FederationError(f"lost the SuperLink at {self.address}: {exc}") from exc
        finally:
            finish()

    def _open_run(self) -> tuple[HttpGrid, Callable[[], None]]:
        with self._start_lock:
            return self._open_run_locked()

    def _open_run_locked(self) -> tuple[HttpGrid, Callable[[], None]]:
        try:
            started = self._control.StartRun(
                StartRunRequest(
                    fab=fab_to_proto(Fab(self._fab_hash, self._fab, {})),
                    override_config=user_config_to_proto({}),
                    federation="",
                )
            )
            token = ""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                acquired = self._runtime.AcquireTask(
                    AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP.value])
                )
                if acquired.HasField("task") and acquired.token and acquired.task.run_id == started.run_id:
                    token = acquired.token
                    break
                time.sleep(POLL_INTERVAL)
            if not token:
                raise FederationError(
                    f"the SuperLink at {self.address} did not hand over run {started.run_id}"
                )
            grid = HttpGrid(
                runtime_api_address=self.address, insecure=False, root_certificates=self._ca_cert, token=token
            )
            task = grid._runtime_client.PullTaskInput(PullTaskInputRequest())  # noqa: SLF001  # Flower's executor does the same
            # Flower's executor keeps the task alive with heartbeats; without them the SuperLink
            # revokes the token after 60 s and Flower interrupts this process on the 401.
            heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(grid._runtime_client))  # noqa: SLF001
            heartbeat.start()
        except httpx.HTTPError as exc:
            raise FederationError(
                f"cannot reach the SuperLink at {self.address} ({exc}); is the federation running?"
            ) from exc
        run = run_from_proto(task.run)
        grid.set_run(run)
        TaskIdentity.task_id = task.task_id
        TaskIdentity.run_id = run.run_id
        TaskIdentity.node_id = task.context.node_id
        _IDENTITIES[grid] = (task.task_id, task.context.node_id)
        if self._waker is not None:
            _WAKERS[grid] = self._waker
        context = context_from_proto(task.context)

        def finish() -> None:
            if heartbeat.is_running:
                heartbeat.stop()
            # If this fails the run ends by expiry instead; nothing is lost.
            with contextlib.suppress(httpx.HTTPError):
                grid._runtime_client.PushTaskOutput(  # noqa: SLF001
                    PushTaskOutputRequest(
                        context=context_to_proto(context), sub_status=SubStatus.COMPLETED, details=""
                    )
                )
            grid.close()

        return grid, finish


def _fedavg(
    grid: Grid,
    request: AnalysisRequest,
    initial: npt.NDArray[np.float64],
    rounds: int,
    timeout: float,
    watch: RunWatch | None,
    names: dict[int, str],
) -> FedAvgResult:
    recording = _RecordingGrid(grid, timeout, watch, names, request.request_id)
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    result = strategy.start(
        grid=recording,  # type: ignore[arg-type]  # duck-typed: the Grid calls FedAvg makes
        initial_arrays=ArrayRecord([initial]),
        num_rounds=rounds,
        timeout=timeout,
        train_config=ConfigRecord({"oda-request": request.to_json()}),
    )
    arrays = result.arrays.to_numpy_ndarrays()
    return FedAvgResult(np.asarray(arrays[0], dtype=np.float64), recording.replies)


class GridTransport:
    """`Transport` over a Grid that Flower hands a ServerApp (the simulation engine's): the
    same requests, replies and decoding as `FlowerLink`, without a SuperLink to reach."""

    def __init__(self, grid: Grid, expect: int = 0) -> None:
        """`expect`: how many nodes to wait for (up to a minute) before the first request."""
        self._grid = grid
        self._expect = expect

    def _wait_for_nodes(self) -> None:
        deadline = time.monotonic() + 60
        while self._expect and time.monotonic() < deadline:
            if len(list(self._grid.get_node_ids())) >= self._expect:
                self._expect = 0
                return
            time.sleep(POLL_INTERVAL)

    def broadcast(
        self,
        request: AnalysisRequest,
        timeout: float,
        watch: RunWatch | None = None,
        relays: Mapping[str, str] | None = None,
    ) -> list[NodeReply]:
        self._wait_for_nodes()
        return exchange(self._grid, request, timeout, watch, relays=relays)

    def fedavg(
        self,
        request: AnalysisRequest,
        initial: npt.NDArray[np.float64],
        rounds: int,
        timeout: float,
        watch: RunWatch | None = None,
    ) -> FedAvgResult:
        self._wait_for_nodes()
        return _fedavg(self._grid, request, initial, rounds, timeout, watch, {})


def simulate(
    main: Callable[[GridTransport], T], client_app: ClientApp, partners: int, cpus_per_partner: float = 1.0
) -> T:
    """Run `main` as the ServerApp of Flower's simulation engine (Ray), over `partners` virtual
    SuperNodes that each run `client_app`; return what `main` returned.

    Raises:
        FederationError: the engine is not installed, or it ended without running `main`;
            whatever `main` raised, as raised.
    """
    if importlib.util.find_spec("ray") is None:
        raise FederationError(
            "Flower's simulation engine is not installed: pip install 'oda-federated[simulation]'"
        )
    from flwr.simulation import run_simulation  # Ray: only for `oda simulate`

    # Ray warns on every start that a future release changes how it treats num_gpus=0; opting
    # in now silences it (and pytest turns warnings into errors).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

    box: dict[str, object] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            box["value"] = main(GridTransport(grid, expect=partners))
        except BaseException as exc:  # raised again in the caller's thread
            box["error"] = exc

    run_simulation(
        server,
        client_app,
        partners,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_partner, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False},
        },
    )
    if "error" in box:
        raise cast(BaseException, box["error"])
    if "value" not in box:
        raise FederationError("the simulation ended without running the analysis: see Flower's log above")
    return cast(T, box["value"])


class _RecordingGrid:
    """The Grid calls Flower's strategies make, with replies pulled every `POLL_INTERVAL` (not
    `send_and_receive`'s 3 s) and every reply kept, so the releases reach the manifest."""

    def __init__(
        self, grid: Grid, timeout: float, watch: RunWatch | None, names: dict[int, str], request_id: str
    ) -> None:
        self._grid = grid
        self._timeout = timeout
        self._watch = watch
        self._names = names
        self._request_id = request_id
        self.replies: list[NodeReply] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        ids = _push(self._grid, messages)
        pending = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True) if mid}
        watch, label = self._watch, self._names.get
        if watch is not None:
            watch.sent(self._request_id, [label(n) or str(n) for n in pending.values()])
        got: list[Message] = []
        deadline = time.monotonic() + (timeout or self._timeout)
        while pending and time.monotonic() < deadline:
            stop_if_cancelled(watch)
            for reply_to, reply in _pull_replies(self._grid, list(pending)):
                node = pending.pop(reply_to, None)
                if node is None:
                    continue
                name = label(node) or str(node)
                self.replies.append(decode(name, reply))
                if watch is not None:
                    watch.replied(self._request_id, name, self.replies[-1])
                if not isinstance(reply, str):
                    got.append(reply)
            if pending:
                time.sleep(POLL_INTERVAL)
        self.replies += [timed_out(str(node), timeout or self._timeout) for node in pending.values()]
        return got


# The ServerApp that the runner bundle's shim names, for stock `flwr run` deployments:
# it sends the request in run config key "oda-request" and logs the replies.
app = ServerApp()


@app.main()
def _main(grid: Grid, context: Context) -> None:
    request_json = str(context.run_config.get("oda-request", ""))
    if not request_json:
        raise FederationError("run config 'oda-request' is empty: use `oda run`, which fills it")
    for reply in exchange(grid, AnalysisRequest.from_bytes(request_json), timeout=60):
        outcome = (
            "release"
            if reply.release is not None
            else f"refused ({reply.refusal.kind if reply.refusal else '?'})"
        )
        print(json.dumps({"node": reply.node, "outcome": outcome}))
