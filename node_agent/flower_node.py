"""The node side's one module that speaks Flower.

`serve` connects to a SuperLink's Fleet API (outbound only), pulls messages, and answers each
with a release or an error reply, never silence (a SuperNode that does not reply leaves the run
blocked until the message expires). Before anything runs, the run's app bundle must be the
runner of a protocol version this node speaks; any other bundle is refused.

Messages are answered through the node's reply path (`node_agent.reply`), the same code the
in-process twin calls, in this process by `NodeAgent`, which keeps data and OpenDP warm:
there is no per-message process, and the idle poll interval is the node's own setting rather
than Flower's 3 s. `app` is the same handler as a Flower `ClientApp`, which is what the runner
bundle's shim points at, so a stock `flower-supernode` would run identical code.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, cast

import httpx
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.cli.build import build_fab_from_files
from flwr.clientapp import ClientApp
from flwr.common.constant import TIMESTAMP_TOLERANCE
from flwr.common.logger import LOGGER_NAME
from flwr.proto.fleet_pb2 import PullMessagesRequest
from flwr.proto.node_pb2 import Node
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_tree,
    iterate_object_tree,
)
from flwr.supercore.inflatable.inflatable_utils import (
    inflate_object_from_contents,
    pull_objects,
    push_object_contents_from_iterable,
)
from flwr.supercore.run import RunNotRunningException
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.fleet_http_connection import http_request_response
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

from analyses.reply import NodeRelease
from analyses.request import REQUEST_ID, AnalysisRequest
from analyses.runner_bundle import RUNNER_BUNDLES
from node_agent.agent import NodeAgent, Pending
from node_agent.config import NodeConfig, load_node_config
from node_agent.reply import (
    Answer,
    TrainAnswer,
    answer,
    answer_approved,
    answer_denied,
    answer_pending,
    answer_train,
    refusal_answer,
    refused,
)
from node_agent.transport import ConnectionSettings
from privacy.errors import FederationError, InternalError, ProtocolError

__all__ = [
    "ERROR_CODE_INTERNAL",
    "ERROR_CODE_REFUSED",
    "SIMULATION_ROOT",
    "Decided",
    "Handled",
    "accepted_bundle_hashes",
    "answer_decided",
    "app",
    "handle_message",
    "serve",
    "simulation_app",
    "virtual_partner",
]

log = logging.getLogger("oda.node")

#: Error codes in replies (Flower's own codes are below 100).
ERROR_CODE_REFUSED = 400
ERROR_CODE_INTERNAL = 500
MESSAGE_TYPE = "query"
TRAIN_TYPE = "train"
#: The coordinator withdraws a request it sent (its run was cancelled or expired).
CANCEL_TYPE = "query.cancel"
#: Longest cancellation reason kept from a coordinator's message.
MAX_CANCEL_REASON = 300
#: Seconds between looks at whether the runs of held requests are still open.
HELD_SWEEP_INTERVAL = 5.0
#: A reply this close (seconds) to its message's expiry is not sent: it would be dropped.
REPLY_MARGIN = 1.0


@cache
def accepted_bundle_hashes() -> dict[str, int]:
    """sha256 of each runner bundle this node accepts -> its protocol version."""
    return {
        hashlib.sha256(build_fab_from_files(files)[0]).hexdigest(): version
        for version, files in RUNNER_BUNDLES.items()
    }


def _to_message(message: Message, ans: Answer, train: TrainAnswer | None = None) -> Message:
    """The Flower reply carrying a reply payload: a release in a record with its audit stamp (and
    for a FedAvg round the local model), a refusal as Flower's error reply, never silence."""
    if ans.refused:
        code = ERROR_CODE_INTERNAL if ans.internal else ERROR_CODE_REFUSED
        return Message(Error(code=code, reason=ans.payload.decode()), reply_to=message)
    record = ConfigRecord({"json": ans.payload.decode()})
    if ans.stamp is not None:
        record["audit_seq"], record["audit_head"] = ans.stamp.seq, ans.stamp.head
    content = RecordDict({"release": record})
    if train is not None and train.weights is not None:
        content["arrays"] = ArrayRecord([train.weights])
        content["metrics"] = MetricRecord({"num-examples": train.examples})
    return Message(content, reply_to=message)


def _require_runner(fab_hash: str) -> None:
    """Raises: ProtocolError unless the run's app bundle is the runner of a protocol we speak."""
    if fab_hash not in accepted_bundle_hashes():
        raise ProtocolError(
            f"app bundle {fab_hash[:12]} is not the oda runner of any protocol version "
            f"this node speaks ({sorted(set(accepted_bundle_hashes().values()))}); refused"
        )


@dataclass(frozen=True)
class Handled:
    """A message handled: the Flower reply to send (None while a person decides), the release
    it carries, and the request filed for approval."""

    reply: Message | None
    release: NodeRelease | None = None
    pending: Pending | None = None
    #: A cancel message: the request it withdraws, and the coordinator's reason.
    withdraw: tuple[str, str] | None = None


def _cancel_of(message: Message) -> Handled:
    """A cancel message, checked: the request id it withdraws and the reason (bounded), and
    the acknowledgement to send. Nothing else is read from it.

    Raises:
        ProtocolError: the message carries no well-formed request id.
    """
    record = message.content.config_records.get("cancel")
    request_id = record.get("request_id") if record is not None else None
    reason = record.get("reason") if record is not None else None
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise ProtocolError("a cancel message needs a 'cancel' record with a well-formed 'request_id'")
    text = reason if isinstance(reason, str) and reason.isprintable() else "no reason given"
    ack = Message(RecordDict({"cancelled": ConfigRecord({"request_id": request_id})}), reply_to=message)
    return Handled(ack, withdraw=(request_id, text[:MAX_CANCEL_REASON]))


def handle_message(agent: NodeAgent, message: Message, fab_hash: str) -> Handled:
    """Answer one message through the node's reply path (`node_agent.reply`): a release or an
    error reply naming why; nothing yet when the request was filed for manual approval."""
    message_id = message.metadata.message_id
    if message.metadata.message_type == TRAIN_TYPE:
        config = message.content.config_records.get("config")
        arrays = message.content.array_records.get("arrays")
        try:
            _require_runner(fab_hash)
            if config is None or arrays is None or not isinstance(config.get("oda-request"), str):
                raise ProtocolError("a train message needs 'arrays' and a 'config' with 'oda-request'")
            weights = arrays.to_numpy_ndarrays()
            if len(weights) != 1:
                raise ProtocolError(f"a train message carries {len(weights)} arrays; expected 1")
        except Exception as exc:
            ans = refusal_answer(agent, exc, None, fab_hash, what="train message")
            return Handled(_to_message(message, ans))
        trained = answer_train(
            agent,
            cast(str, config["oda-request"]),
            config.get("server-round"),
            weights[0],
            fab_hash,
            message_id,
        )
        return Handled(_to_message(message, trained.answer, trained), trained.answer.release)
    record = message.content.config_records.get("request")
    try:
        if message.metadata.message_type == CANCEL_TYPE:
            return _cancel_of(message)
        if message.metadata.message_type != MESSAGE_TYPE:
            raise ProtocolError(
                f"message type {message.metadata.message_type!r} is not handled; expected {MESSAGE_TYPE!r}"
            )
        if record is None or not isinstance(record.get("json"), str):
            raise ProtocolError("the message carries no analysis request")
        _require_runner(fab_hash)
    except Exception as exc:
        request = None
        if record is not None and isinstance(record.get("json"), str):
            with contextlib.suppress(Exception):
                request = AnalysisRequest.from_bytes(cast(str, record["json"]))
        return Handled(_to_message(message, refusal_answer(agent, exc, request, fab_hash)))
    ans = answer(agent, cast(str, record["json"]), fab_hash, message_id)
    if ans.pending is not None:
        return Handled(None, pending=ans.pending)
    return Handled(_to_message(message, ans), ans.release)


@dataclass(frozen=True)
class Decided:
    """A reply for a held request that a person decided on, and the release it carries."""

    reply: Message
    release: NodeRelease | None = None


def answer_decided(
    agent: NodeAgent, held: dict[str, Message], closed: Callable[[Message], str | None] = lambda _: None
) -> list[Decided]:
    """Replies for held requests that a person approved or denied since the last look.

    An approved request whose run has ended (`closed` says why) is not run: nothing is spent,
    and the inbox and audit log say it expired.
    """
    replies: list[Decided] = []
    for request_id in list(held):
        item = agent.inbox.get(request_id)
        if item.status == "waiting":
            continue
        message = held.pop(request_id)
        if item.status == "approved":
            ended = closed(message)
            if ended is not None:
                agent.expire(request_id, f"approved after {ended}: nothing was released or spent")
                continue
            ans = answer_approved(agent, request_id)
            replies.append(Decided(_to_message(message, ans), ans.release))
        else:
            replies.append(Decided(_to_message(message, answer_denied(agent, request_id))))
    return replies


def _sweep_held(agent: NodeAgent, held: dict[str, Message], closed: Callable[[Message], str | None]) -> None:
    """Withdraw held requests whose run ended or whose message expired while a person had not
    yet decided: the inbox says why, and nothing is reserved or spent."""
    for request_id, message in list(held.items()):
        ended = closed(message)
        if ended is not None and agent.cancel(
            request_id, f"withdrawn: {ended} before anyone decided; nothing was reserved or spent"
        ):
            del held[request_id]


def _pull(pull_object: Callable[[int, str], bytes], run_id: int, object_id: str) -> bytes:
    return pull_object(run_id, object_id)


class _FlowerErrors(logging.Handler):
    """Keeps the error lines Flower logs before it exits, to put them in our own error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _connection_refused(settings: ConnectionSettings, flower_said: list[str]) -> FederationError:
    said = " ".join(" ".join(flower_said).split())
    if "activate SuperNode" in said or "2004" in said:
        why = (
            "it does not know this node's key. Send keys/node.pub to the coordinator, "
            "who registers it with `oda coordinator register-node`, then start again"
        )
    elif settings.insecure:
        why = "it did not accept plain HTTP: remove transport.insecure and set transport.ca_cert"
    else:
        why = (
            "it refused this node or stayed unreachable (transport.connect_timeout): check the address, "
            "transport.ca_cert, and that the coordinator is running"
        )
    return FederationError(
        f"cannot connect to the coordinator at {settings.address}: {why}. Flower said: {said}"
    )


def _key_still_accepted(settings: ConnectionSettings, node_id: int) -> bool:
    """One signed Fleet call: False only when the SuperLink answers 401."""
    key = settings.private_key
    try:
        with FleetHttpClient.from_server_address(
            settings.address,
            settings.insecure,
            settings.root_certificates,
            interceptors=[NodeAuthHttpInterceptor(key, key.public_key())],
        ) as client:
            client.PullMessages(PullMessagesRequest(node=Node(node_id=node_id)))
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code != 401
    except httpx.HTTPError:
        return True  # unreachable now: not a verdict on the key
    return True


def serve(
    agent: NodeAgent,
    settings: ConnectionSettings,
    *,
    stop: threading.Event | None = None,
) -> None:
    """Connect to the coordinator's Fleet API and answer messages until stopped.

    Raises:
        FederationError: the coordinator refused this node (unregistered key, plain HTTP, an
            untrusted certificate) or stayed unreachable for `transport.connect_timeout`.
    """
    stop = stop or threading.Event()
    interval = agent.config.poll_interval
    address = settings.address
    expired = agent.inbox.expire_waiting("the node restarted; the coordinator must send the request again")
    if expired:
        log.warning("%d request(s) in the approval inbox expired: the node restarted", expired)
    keys = (settings.private_key, settings.private_key.public_key())
    flower_errors = _FlowerErrors()
    flower_log = logging.getLogger(LOGGER_NAME)
    flower_log.addHandler(flower_errors)
    failure: BaseException | None = None
    connected = False
    node_id = 0
    try:
        with http_request_response(
            address,
            settings.insecure,
            settings.root_certificates,
            keys,
            None,
            agent.config.transport.connect_timeout,
        ) as conn:
            connected, node_id = True, int(conn[0])
            flower_log.removeHandler(flower_errors)  # only the set-up's errors are wanted
            try:
                _serve_loop(agent, conn, stop, interval)
            except Exception as exc:  # Flower's context manager would log and swallow it
                failure = exc
    except SystemExit as exc:  # Flower exits when it cannot set up the connection
        if connected:
            raise
        raise _connection_refused(settings, flower_errors.lines) from exc
    except KeyboardInterrupt:
        # Flower interrupts its own process when the SuperLink answers 401 (a revoked key or a
        # clock far off); tell that apart from Ctrl-C by asking once more.
        if connected and not _key_still_accepted(settings, node_id):
            raise FederationError(
                f"the coordinator at {address} no longer accepts this node's key: it was unregistered, "
                f"or this machine's clock is more than {TIMESTAMP_TOLERANCE} s off. Check the clock, "
                "then ask the coordinator to register keys/node.pub again"
            ) from None
        raise
    finally:
        flower_log.removeHandler(flower_errors)
    if failure is not None:
        raise failure


def _serve_loop(agent: NodeAgent, conn: tuple[Any, ...], stop: threading.Event, interval: float) -> None:
    """Pull, handle, reply, until stopped. Nothing a coordinator does ends this loop: a message
    that cannot be fetched or handled gets an error reply where possible and is logged; a reply
    that cannot be delivered (an ended run, an expired message, a lost link) is logged, and a
    release in it is recorded as spent but not delivered."""
    verified: set[str] = set()  # bundle hashes whose fetched bytes were checked
    held: dict[str, Message] = {}  # request id -> message waiting for a person's decision
    node_id, receive, send, get_run, get_fab, pull_object, push_object, confirm = conn
    log.info("node %s connected as Flower node %s", agent.config.partner, node_id)
    print(f"oda-node {agent.config.partner}: ready (flower node {node_id})", flush=True)

    def reply(answer: Message, started: float, release: NodeRelease | None, fab_hash: str) -> None:
        try:
            meta = answer.metadata
            # The SuperLink drops an expired reply without telling the sender, so the node
            # applies the same rule (with a second's margin for clock skew) before sending.
            if meta.ttl <= REPLY_MARGIN or meta.created_at + meta.ttl <= time.time() + REPLY_MARGIN:
                raise TimeoutError("the request's time to live ran out while it was being answered")
            answer.metadata.__dict__["_message_id"] = answer.object_id
            objects = get_all_nested_objects(answer)
            to_push, session = send(answer, get_object_tree(answer), time.perf_counter() - started)
            push_object_contents_from_iterable(
                ((oid, objects[oid].deflate()) for oid in to_push),
                push_object_fn=partial(push_object, answer.metadata.run_id, session),
            )
        except (Exception, RunNotRunningException) as exc:  # Flower's is a BaseException
            why = f"the coordinator did not take the reply ({type(exc).__name__}: {exc or 'the run is not running'})"
            log.warning("reply to run %s not delivered: %s", answer.metadata.run_id, why)
            if release is not None and release.status == "released":
                agent.undelivered(release, fab_hash, why)

    def closed(message: Message) -> str | None:
        """Why a held message can no longer be answered, or None while its run is open."""
        meta = message.metadata
        if meta.created_at + meta.ttl < time.time():
            return "its message expired"
        try:
            status = get_run(meta.run_id).status.status
        except RunNotRunningException:  # Flower raises this (a BaseException) for an ended run
            return "its run ended"
        except Exception:
            return "its run is no longer known to the coordinator"
        return "its run ended" if status == "finished" else None

    def withdraw(request_id: str, why: str, cancel: Message) -> None:
        """A cancel from the run that sent the request withdraws it from the inbox."""
        message = held.get(request_id)
        if message is None or message.metadata.run_id != cancel.metadata.run_id:
            return
        if agent.cancel(request_id, f"the coordinator cancelled it: {why}; nothing was reserved or spent"):
            del held[request_id]

    swept = time.monotonic()
    while not stop.is_set():
        received: tuple[Message, Any] | None = None
        try:
            for decided in answer_decided(agent, held, closed):
                reply(decided.reply, time.perf_counter(), decided.release, "")
            if held and time.monotonic() - swept > HELD_SWEEP_INTERVAL:
                swept = time.monotonic()
                _sweep_held(agent, held, closed)
            received = _wait_for_work(receive, stop)
            if not stop.is_set():
                agent.contact.touch()  # the coordinator answered the pull (with work or without)
            if received is None:
                stop.wait(interval)
                continue
            handled, fab_hash, full, started = _fetch_and_handle(
                agent, received, verified, get_run, get_fab, pull_object, confirm, interval
            )
            if handled.pending is not None:
                held[handled.pending.request_id] = full
            elif handled.reply is not None:
                if handled.withdraw is not None:
                    withdraw(*handled.withdraw, full)
                reply(handled.reply, started, handled.release, fab_hash)
        except KeyboardInterrupt:
            raise  # Flower's signal for a revoked key: `serve` tells it apart from Ctrl-C
        except (Exception, RunNotRunningException) as exc:  # a malformed message or tree, an ended run
            log.error("a coordinator message could not be handled; the node keeps serving", exc_info=exc)
            if received is not None:  # the sender still gets a reply, never silence
                why = ProtocolError(f"the node could not handle the message: {type(exc).__name__}")
                with contextlib.suppress(Exception, RunNotRunningException):
                    reply(_to_message(received[0], refused(agent, why)), time.perf_counter(), None, "")
            stop.wait(interval)


def _wait_for_work(receive: Callable[[], Any], stop: threading.Event) -> Any:  # Flower's pull result
    """Flower's pull for this node's next message, given up when the node is told to stop.

    The coordinator's Fleet proxy holds an idle node's pull for up to its hold (10 s): run in a
    daemon thread, a stopping node does not wait for it. A message that such an abandoned pull
    still takes is not answered; the coordinator counts that partner as not replying.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def pull() -> None:
        try:
            box["value"] = receive()
        except BaseException as exc:  # Flower's KeyboardInterrupt (a revoked key) too
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=pull, name="oda-pull", daemon=True).start()
    while not done.wait(0.1):
        if stop.is_set():
            return None
    if "error" in box:
        raise box["error"]
    return box["value"]


def _fetch_and_handle(
    agent: NodeAgent,
    received: tuple[Message, Any],
    verified: set[str],
    get_run: Callable[[int], Any],
    get_fab: Callable[[str, int], Any],
    pull_object: Callable[[int, str], bytes],
    confirm: Callable[[int, str], None],
    interval: float,
) -> tuple[Handled, str, Message, float]:
    """Fetch a pulled message's bundle and contents, and handle it; also return the bundle hash,
    the whole message, and when its handling started."""
    message, tree = received
    run_id = message.metadata.run_id
    run = get_run(run_id)
    # The bundle is identified by its hash. Only a bundle whose hash we accept is fetched; the
    # bytes are re-hashed so a lying SuperLink cannot substitute one.
    fab_hash = run.fab_hash
    if fab_hash in accepted_bundle_hashes() and fab_hash not in verified:
        fab = get_fab(fab_hash, run_id)
        if hashlib.sha256(fab.content).hexdigest() == fab_hash:
            verified.add(fab_hash)  # content-addressed: the same hash is the same bytes
        else:
            fab_hash = hashlib.sha256(fab.content).hexdigest()
    contents = pull_objects(
        [t.object_id for t in iterate_object_tree(tree)],
        pull_object_fn=partial(_pull, pull_object, run_id),
        initial_backoff=min(interval, 0.1),  # Flower's 1 s first backoff dominates a query
        backoff_cap=1.0,
        max_time=30.0,
    )
    confirm(run_id, message.metadata.message_id)
    full = cast(Message, inflate_object_from_contents(message.metadata.message_id, contents))
    full.metadata.__dict__["_message_id"] = message.metadata.message_id
    started = time.perf_counter()
    return handle_message(agent, full, fab_hash), fab_hash, full, started


# The ClientApp that the runner bundle's shim names, for stock Flower SuperNodes.
app = ClientApp()


@app.query()
def _query(message: Message, context: Context) -> Message:
    config_path = os.environ.get("ODA_NODE_CONFIG") or str(context.node_config.get("oda-node-config", ""))
    if not config_path:
        raise InternalError("set ODA_NODE_CONFIG (or node config 'oda-node-config') to the node.yaml path")
    return _answer(Path(config_path), message)


#: The ClientApp of Flower's simulation engine (`oda simulate`): virtual partner N is the node
#: folder `$ODA_SIMULATION_ROOT/partner-NNNNN/` (its node.yaml, data and ledger), answered by the
#: same `handle_message` as a real node; it cannot hold a request for a person.
SIMULATION_ROOT = "ODA_SIMULATION_ROOT"
simulation_app = ClientApp()


@simulation_app.query()
def _simulated_query(message: Message, context: Context) -> Message:
    root = os.environ.get(SIMULATION_ROOT, "")
    if not root:
        raise InternalError(f"{SIMULATION_ROOT} is not set: start simulations with `oda simulate`")
    path = Path(root) / virtual_partner(int(context.node_config["partition-id"])) / "node.yaml"
    return _answer(_simulated_config(str(path)), message)


@cache
def _simulated_config(path: str) -> NodeConfig:
    """A virtual partner's node.yaml, read once per engine worker (as a real node reads it once
    at start): a third of the time a virtual partner took to answer went to parsing it."""
    return load_node_config(Path(path))


def virtual_partner(index: int) -> str:
    """The folder and partner name of the simulation's virtual partner `index`."""
    return f"partner-{index:05d}"


def _answer(config: Path | NodeConfig, message: Message) -> Message:
    agent = NodeAgent(config if isinstance(config, NodeConfig) else load_node_config(config))
    try:
        fab_hash = next(iter(accepted_bundle_hashes()))  # stock SuperNodes verify bundles themselves
        handled = handle_message(agent, message, fab_hash)
        if handled.reply is None:  # a stock SuperNode cannot hold a message while a person decides
            return _to_message(message, answer_pending(agent))
        return handled.reply
    finally:
        agent.close()
