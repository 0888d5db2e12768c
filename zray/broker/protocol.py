"""The wire protocol: every message zray sends, declared once.

A message travels as ZeroMQ frames ``[corr, payload, *blobs]``:

* ``corr`` — correlation id of a request (8 bytes) echoed by its reply, or
  ``b""`` for a one-way message;
* ``payload`` — msgpack of ``[type_code, *fields]``;
* ``blobs`` — optional extra frames (raw bytes, sent without copying).

Each record below is a ``NamedTuple`` whose ``CODE`` names it on the wire.
``decode`` raises ``ProtocolError`` for anything that is not a well-formed
message, so a daemon can log it and keep serving.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

#: Largest single frame a daemon accepts (bigger values travel through the store).
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


class ProtocolError(ValueError):
    """A frame that is not a well-formed zray message."""


_BY_CODE: dict[int, type] = {}


_KINDS = {"bytes": bytes, "str": str, "int": int, "bool": (bool, int), "list": list,
          "dict": dict, "float": (float, int)}


def _typed(cls):
    """Record each field's expected wire type (from its annotation) on ``cls``."""
    def kind(annotation):
        name = getattr(annotation, "__forward_arg__", annotation)
        return _KINDS.get(name if isinstance(name, str) else getattr(name, "__name__", ""))
    cls._kinds = tuple(kind(cls.__annotations__.get(name)) for name in cls._fields)
    return cls


def _declare(code: int):
    def wrap(cls):
        if code in _BY_CODE:
            raise RuntimeError(f"message code {code} declared twice")
        cls.CODE = code
        _BY_CODE[code] = _typed(cls)
        return cls
    return wrap


def _check(cls, values) -> None:
    for value, kind, name in zip(values, cls._kinds, cls._fields):
        if kind is not None and not isinstance(value, kind):
            raise ProtocolError(f"{cls.__name__}.{name} must be "
                                f"{getattr(kind, '__name__', kind)}, got {type(value).__name__}")


# --------------------------------------------------------------------------
# Shared records (travel inside messages)
# --------------------------------------------------------------------------

class Address(NamedTuple):
    """Where a core worker (driver or worker) can be reached: from its own
    node through its IPC inbox (derived from worker_id), from elsewhere at
    ``endpoint`` (TCP)."""
    endpoint: str      # its inbox ROUTER, over TCP
    worker_id: bytes
    pid: int
    node_id: bytes


class TaskSpec(NamedTuple):
    """Everything a worker needs to run a task, and a raylet to schedule it.

    ``args`` entries: ``[ARG_VALUE, blob]``, ``[ARG_STORED, object_id, size,
    node_id]`` (in the store of that node; the raylet pulls it if needed and
    appends the offset when it pinned it for the worker) or ``[ARG_REF,
    object_id, owner_address]`` (ask the owner). The last ``len(kwarg_names)`` entries are keyword arguments.
    ``num_returns == STREAMING`` marks a generator task.
    """
    task_id: bytes
    job_id: bytes
    kind: int                 # TASK_NORMAL, TASK_ACTOR_CREATION, TASK_ACTOR_METHOD
    function_hash: bytes
    function_name: str
    args: list
    kwarg_names: list
    num_returns: int
    resources: dict
    max_retries: int
    retry_exceptions: bool
    owner: list               # Address as a list
    attempt: int = 0
    actor_id: bytes = b""
    method_name: str = ""
    options: dict = {}


_typed(TaskSpec)


def task_spec(values) -> TaskSpec:
    """A TaskSpec from its wire form; ProtocolError if it is malformed."""
    if not isinstance(values, (list, tuple)):
        raise ProtocolError("a task spec must be a list")
    try:
        spec = TaskSpec(*values)
    except TypeError:
        raise ProtocolError(f"a task spec has {len(TaskSpec._fields)} fields at most, "
                            f"got {len(values)}") from None
    _check(TaskSpec, spec)
    for name, amount in spec.resources.items():
        if not isinstance(name, str) or not isinstance(amount, (int, float)) or amount < 0:
            raise ProtocolError(f"task resource {name!r}: {amount!r} is not a number >= 0")
    if len(spec.owner) != 4 or not isinstance(spec.owner[0], str):
        raise ProtocolError("a task spec's owner must be [endpoint, worker id, pid, node id]")
    return spec


ARG_VALUE, ARG_STORED, ARG_REF = 0, 1, 2
TASK_NORMAL, TASK_ACTOR_CREATION, TASK_ACTOR_METHOD = 0, 1, 2
STREAMING = -1

# How a return value travels back to its owner.
RET_INLINE, RET_STORED, RET_ERROR = 0, 1, 2


# --------------------------------------------------------------------------
# Core worker <-> raylet
# --------------------------------------------------------------------------

@_declare(1)
class RegisterClient(NamedTuple):
    kind: str          # "driver" | "worker"
    worker_id: bytes
    pid: int
    job_id: bytes
    inbox: str


@_declare(2)
class RegisterClientReply(NamedTuple):
    node_id: bytes
    arena_path: str
    arena_size: int
    gcs_address: str
    session_dir: str
    node_ip: str
    pub_address: str       # the GCS event stream


@_declare(3)
class SubmitTask(NamedTuple):
    spec: list


@_declare(4)
class CancelTask(NamedTuple):
    task_id: bytes
    force: bool


@_declare(5)
class WorkerReady(NamedTuple):
    """An idle worker asks for work; carries the task it just finished."""
    worker_id: bytes
    finished_task_id: bytes


@_declare(6)
class ExecuteTask(NamedTuple):
    spec: list


@_declare(7)
class WorkerBlocked(NamedTuple):
    """The worker waits in get(): its CPU may be lent to other tasks."""
    worker_id: bytes
    blocked: bool


@_declare(8)
class CreateObject(NamedTuple):
    object_id: bytes
    size: int
    owner_id: bytes        # worker id of the object's owner


@_declare(9)
class CreateObjectReply(NamedTuple):
    offset: int          # -1 on failure
    error: str


@_declare(10)
class SealObject(NamedTuple):
    object_id: bytes


@_declare(11)
class PinObjects(NamedTuple):
    """Pin objects in this node's store, pulling each from ``sources[i]``
    (a node id, or b"" when unknown) first if it is not here."""
    object_ids: list
    sources: list


@_declare(12)
class PinObjectsReply(NamedTuple):
    locations: list      # per id: [offset, size] or None


@_declare(13)
class ReleaseObjects(NamedTuple):
    object_ids: list


@_declare(14)
class FreeObjects(NamedTuple):
    object_ids: list


@_declare(15)
class LogLines(NamedTuple):
    job_id: bytes
    pid: int
    lines: list


@_declare(16)
class Ping(NamedTuple):
    pass


@_declare(17)
class Ack(NamedTuple):
    value: Any = None


@_declare(18)
class ErrorReply(NamedTuple):
    error_type: str
    message: str


@_declare(19)
class GetStoreStats(NamedTuple):
    pass


@_declare(20)
class DisconnectClient(NamedTuple):
    """A driver or worker leaves: release what it held."""
    worker_id: bytes


# --------------------------------------------------------------------------
# Core worker <-> core worker (one-way, into the peer's inbox ROUTER)
# --------------------------------------------------------------------------

@_declare(30)
class TaskReturned(NamedTuple):
    """Results of a finished task: ``returns`` is a list of
    ``[object_id, RET_*, payload]`` (blob, ``[node_id, size]``, or error blob)."""
    task_id: bytes
    returns: list


@_declare(31)
class TaskFailed(NamedTuple):
    """The task could not run to completion (worker died, cancelled, ...)."""
    task_id: bytes
    error_type: str
    message: str


@_declare(32)
class GeneratorItem(NamedTuple):
    task_id: bytes
    index: int
    ret: list              # [object_id, RET_*, payload]


@_declare(33)
class GetObject(NamedTuple):
    """Ask an owner for an object; it answers with ObjectValue when ready."""
    object_id: bytes
    reply_to: list         # the asker's Address


@_declare(34)
class ObjectValue(NamedTuple):
    object_id: bytes
    ret: list              # [object_id, RET_*, payload]


@_declare(35)
class AddBorrower(NamedTuple):
    object_ids: list
    borrower: bytes


@_declare(36)
class RemoveBorrower(NamedTuple):
    object_ids: list
    borrower: bytes


@_declare(37)
class CancelRunning(NamedTuple):
    task_id: bytes


@_declare(38)
class TaskInfeasible(NamedTuple):
    task_id: bytes
    message: str


@_declare(39)
class TaskPlaced(NamedTuple):
    """A raylet took a task from another node: the owner learns where it is,
    to retry it if that node dies."""
    task_id: bytes
    node_id: bytes


# --------------------------------------------------------------------------
# GCS
# --------------------------------------------------------------------------

@_declare(50)
class RegisterNode(NamedTuple):
    node_id: bytes
    address: str           # the raylet's ROUTER over TCP (locally: its IPC socket)
    data_address: str      # its object-transfer link (sealed frames, see object_transfer)
    node_ip: str
    hostname: str
    pid: int
    resources: dict
    arena_size: int
    session_dir: str


@_declare(51)
class RegisterNodeReply(NamedTuple):
    pub_address: str
    session_dir: str


@_declare(52)
class Heartbeat(NamedTuple):
    node_id: bytes
    available: dict
    store_used: int
    total: dict            # totals change when placement group bundles are reserved


@_declare(53)
class UnregisterNode(NamedTuple):
    node_id: bytes


@_declare(54)
class RegisterJob(NamedTuple):
    driver_pid: int
    driver_address: list
    namespace: str
    sys_path: list
    cwd: str


@_declare(55)
class FinishJob(NamedTuple):
    job_id: bytes


@_declare(56)
class GetJob(NamedTuple):
    job_id: bytes


@_declare(57)
class ExportFunction(NamedTuple):
    function_hash: bytes
    blob: bytes


@_declare(58)
class GetFunction(NamedTuple):
    function_hash: bytes


@_declare(59)
class KVPut(NamedTuple):
    namespace: str
    key: bytes
    value: bytes
    overwrite: bool


@_declare(60)
class KVGet(NamedTuple):
    namespace: str
    key: bytes


@_declare(61)
class KVDelete(NamedTuple):
    namespace: str
    key: bytes


@_declare(62)
class KVKeys(NamedTuple):
    namespace: str
    prefix: bytes


@_declare(63)
class GetNodes(NamedTuple):
    pass


@_declare(64)
class PublishLogs(NamedTuple):
    job_id: bytes
    pid: int
    node_ip: str
    lines: list


@_declare(65)
class GetClusterInfo(NamedTuple):
    """Cluster-wide view: nodes with totals, availability and store usage."""
    pass


# --------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------

@_declare(70)
class RegisterActor(NamedTuple):
    """Create an actor: the GCS records it and schedules its creation task.
    Replies Ack([created: bool, ActorInfo fields of the existing actor or None])."""
    actor_id: bytes
    spec: list                 # the creation TaskSpec
    name: str
    namespace: str
    detached: bool
    max_restarts: int
    get_if_exists: bool
    class_name: str
    handle_meta: bytes         # what a handle needs (pickled), for get_actor


@_declare(71)
class ActorStarted(NamedTuple):
    """A worker finished an actor's constructor (error: a serialized error, or b"")."""
    actor_id: bytes
    worker_id: bytes
    address: str               # the actor's ROUTER over TCP (locally: actor_ipc)
    node_id: bytes
    pid: int
    error: bytes


@_declare(72)
class ReportActorDied(NamedTuple):
    """The raylet saw an actor's worker exit (intentional: exit_actor())."""
    actor_id: bytes
    message: str
    intentional: bool


@_declare(73)
class WatchActor(NamedTuple):
    """Send ActorInfo to ``reply_to`` now and at every state change."""
    actor_id: bytes
    reply_to: str


@_declare(74)
class ActorInfo(NamedTuple):
    actor_id: bytes
    state: str                 # PENDING_CREATION, ALIVE, RESTARTING, DEAD
    address: list              # [tcp endpoint, worker id, pid, node id] when ALIVE
    incarnation: int           # how many times it was (re)started
    death_message: str
    death_error: bytes         # serialized cause when the constructor raised


@_declare(75)
class KillActor(NamedTuple):
    actor_id: bytes
    no_restart: bool


@_declare(76)
class KillActorWorker(NamedTuple):
    actor_id: bytes


@_declare(77)
class GetNamedActor(NamedTuple):
    name: str
    namespace: str


@_declare(78)
class ListActors(NamedTuple):
    pass


# --------------------------------------------------------------------------
# Placement groups
# --------------------------------------------------------------------------

@_declare(80)
class CreatePlacementGroup(NamedTuple):
    pg_id: bytes
    bundles: list              # [{resource: amount}, ...]
    strategy: str              # PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    name: str
    job_id: bytes
    detached: bool


@_declare(81)
class RemovePlacementGroup(NamedTuple):
    pg_id: bytes


@_declare(82)
class GetPlacementGroups(NamedTuple):
    """All placement groups (pg_id b"") or one; by name when ``name`` is set."""
    pg_id: bytes
    name: str


@_declare(83)
class ReserveBundle(NamedTuple):
    """GCS to raylet: set aside a bundle's resources for a placement group."""
    pg_id: bytes
    index: int
    resources: dict


@_declare(84)
class ReturnBundle(NamedTuple):
    pg_id: bytes
    index: int


# --------------------------------------------------------------------------
# Pub/sub topics of the GCS event stream
# --------------------------------------------------------------------------

TOPIC_NODE = b"node"
TOPIC_JOB = b"job"
TOPIC_LOG = b"log:"        # followed by the job id
TOPIC_ACTOR = b"actor"
TOPIC_RESOURCES = b"resources"


def log_topic(job_id: bytes) -> bytes:
    return TOPIC_LOG + job_id.hex().encode()


def encode_event(event) -> bytes:
    """The payload of an event on the GCS stream (after its topic frame)."""
    return _packb(event)


def decode_event(payload):
    """An event from the GCS stream; ProtocolError if it is not msgpack."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for junk
        raise ProtocolError(f"event is not msgpack: {exc}") from None


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------

_packb = msgpack.Packer(use_bin_type=True).pack


def encode(message) -> bytes:
    """msgpack ``[CODE, *fields]`` of a declared message."""
    return _packb([message.CODE, *message])


def decode(payload) -> Any:
    """The declared message in ``payload``; ProtocolError if it is not one."""
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for junk
        raise ProtocolError(f"payload is not msgpack: {exc}") from None
    if not isinstance(data, list) or not data or not isinstance(data[0], int):
        raise ProtocolError("payload is not a [code, *fields] list")
    cls = _BY_CODE.get(data[0])
    if cls is None:
        raise ProtocolError(f"unknown message code {data[0]}")
    try:
        message = cls(*data[1:])
    except TypeError:
        raise ProtocolError(
            f"{cls.__name__} takes {len(cls._fields)} fields, got {len(data) - 1}") from None
    _check(cls, message)
    return message


def message_types() -> dict[int, type]:
    """Every declared message by code (for docs and tests)."""
    return dict(_BY_CODE)
