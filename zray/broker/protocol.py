"""The wire protocol: every message zray sends, declared once.

A message travels as ZeroMQ frames ``[corr, payload, *blobs]``:

* ``corr`` — correlation id of a request (8 bytes) echoed by its reply, or
  ``b""`` for a one-way message;
* ``payload`` — msgpack of ``[type_code, *fields]``;
* ``blobs`` — optional extra frames (raw bytes, sent without copying).

Each record below is a ``NamedTuple`` whose ``CODE`` names it on the wire.
``decode`` raises ``ProtocolError`` for anything that is not a well-formed
message — including a field that is not of the kind its annotation names
(an id of the wrong length, a resource amount that is not a number >= 0, an
address that does not parse; see "Field kinds") — so a daemon can log it and
keep serving, and no handler ever sees such a value. (One field is a blob
checked later, by its reader: ``AddTaskEvents.events``, see
``unpack_task_event_batch``.)
"""
from __future__ import annotations

import collections
import math
import re
import struct
from typing import Any

import msgpack


# -- init (issue 13): records without typing.NamedTuple's import cost ---------
class _RecordMeta(type):
    """Builds each ``class X(NamedTuple)`` below as ``typing.NamedTuple``
    does (a ``collections.namedtuple`` with the defaults, methods, docstring
    and ``__annotations__`` of the class body), except that annotations stay
    the strings written (``_typed`` reads them by name) instead of being
    compiled into ``ForwardRef``s: that compiling was half of this module's
    import time, paid by every zray process at start."""

    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})
    _PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields",
                             "_field_defaults", "_make", "_replace", "_asdict", "_source"})

    def __new__(mcls, typename, bases, ns):
        annotations = ns.get("__annotations__", {})
        defaults = []
        for name in annotations:
            if name in ns:
                defaults.append(ns[name])
            elif defaults:
                raise TypeError(f"{typename}: field {name} without a default follows "
                                f"fields with defaults")
        cls = collections.namedtuple(typename, list(annotations), defaults=defaults,
                                     module=ns["__module__"])
        cls.__annotations__ = cls.__new__.__annotations__ = dict(annotations)
        for key, value in ns.items():
            if key in mcls._PROHIBITED:
                raise AttributeError(f"{typename}: cannot overwrite the namedtuple "
                                     f"attribute {key}")
            if key not in mcls._SPECIAL and key not in cls._fields:
                setattr(cls, key, value)
        return cls


_RECORD_BASE = type.__new__(_RecordMeta, "NamedTuple", (), {})


def NamedTuple(*args, **kwargs):  # noqa: N802 — stands in for typing.NamedTuple here
    """Only a base class in this module: ``class X(NamedTuple): field: Kind``."""
    raise TypeError("protocol.NamedTuple is only a base class: class X(NamedTuple): ...")


NamedTuple.__mro_entries__ = lambda bases: (_RECORD_BASE,)

#: Largest single frame a daemon accepts (bigger values travel through the store).
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


class ProtocolError(ValueError):
    """A frame that is not a well-formed zray message."""


_BY_CODE: dict[int, type] = {}


# --------------------------------------------------------------------------
# Field kinds: a record's annotation names what its field holds, and
# ``decode`` checks every field against it, so no handler ever sees a value
# of the wrong type, an id of the wrong length, a resource amount that is not
# a number, or an address that does not parse.
# --------------------------------------------------------------------------

NodeId = WorkerId = TaskId = ActorId = PgId = FunctionHash = bytes   # 16 bytes
OptId = bytes           # b"" (none) or 16 bytes
ObjectId = bytes        # 20 bytes: a task id and a 4-byte index
JobId = bytes           # 4 bytes, or b"" (a worker not yet bound to a job)
Count = int             # an integer >= 0 (sizes, indexes)
Pid = int               # a process id: 0 <= pid < 2**31
Endpoint = str          # "tcp://host:port" or "ipc://path"
OptEndpoint = str       # an Endpoint or ""
Resources = dict        # {name: finite number >= 0}
ResourceLevels = dict   # {name: finite number} (free amounts dip below 0 when lent)
ResourceList = list     # [Resources, ...]
ObjectIds = list        # [ObjectId, ...]
OptIds = list           # [b"" or a 16-byte id, ...]
Strings = list          # [str, ...]
PeerAddress = list      # an Address as a list: [Endpoint, WorkerId, pid, NodeId]
OptPeerAddress = list   # a PeerAddress or []
TaskSpecFields = list   # a TaskSpec as a list (see task_spec)
TaskSpecList = list     # (actor calls) TaskSpecs as lists
CallResults = list      # (actor calls) [task_id, returns] entries

_ENDPOINT = re.compile(r"tcp://(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}\Z"
                       r"|ipc://[^\0]{1,4000}\Z")
_isfinite = math.isfinite
_NUMBER = (int, float)


def _bad(what: str, value) -> ProtocolError:
    text = repr(value)
    return ProtocolError(f"{what}, got {text[:80]}{'...' if len(text) > 80 else ''}")


# An extra check may carry ``fast``: a Python expression of ``{x}`` (the
# value, its type checked already) that is true only when the check passes
# (``{call}``: the check itself, called); ``_typed`` joins them into one
# expression per record (see _fast_check).
_EMPTY_OR_CALL = "(not {x} or {call})"      # an empty container passes

def _id_check(*sizes: int):
    def check(value: bytes) -> None:
        if len(value) not in sizes:
            raise _bad(f"must be an id of {' or '.join(map(str, sizes))} bytes", value)
    check.fast = f"len({{x}}) in {sizes}" if len(sizes) > 1 else f"len({{x}}) == {sizes[0]}"
    return check


def _count(value: int) -> None:
    if value < 0 or value > 1 << 62:
        raise _bad("must be an integer >= 0", value)


_count.fast = f"0 <= {{x}} <= {1 << 62}"
_good_endpoints: dict[str, None] = {}     # endpoints seen valid (peers repeat them)


def _pid(value: int) -> None:
    if not 0 <= value < 1 << 31:
        raise _bad("must be a process id (0 <= pid < 2**31)", value)


_pid.fast = f"0 <= {{x}} < {1 << 31}"


def _endpoint(value: str) -> None:
    if value in _good_endpoints:
        return
    if _ENDPOINT.match(value) is None or (value[0] == "t" and not
                                          0 < int(value.rpartition(":")[2]) < 65536):
        raise _bad("must be an endpoint tcp://host:port (port 1-65535) or ipc://path", value)
    if len(_good_endpoints) >= 4096:
        _good_endpoints.clear()
    _good_endpoints[value] = None


def _opt_endpoint(value: str) -> None:
    if value:
        _endpoint(value)


_endpoint.fast = "{x} in _good_endpoints"
_opt_endpoint.fast = "(not {x} or {x} in _good_endpoints)"


def _resources(value: dict, low: float | None = 0.0) -> None:
    for name, amount in value.items():
        if type(name) is not str or type(amount) not in _NUMBER or not _isfinite(amount) \
                or (low is not None and amount < low):
            raise ProtocolError(
                f"resource {str(name)[:40]!r}: {str(amount)[:40]!r} is not a finite number"
                f"{' >= 0' if low is not None else ''} named by a str")


def _resource_levels(value: dict) -> None:
    _resources(value, None)


def _resource_list(value: list) -> None:
    for item in value:
        if type(item) is not dict:
            raise _bad("must be a list of {resource: amount} maps", item)
        _resources(item)


_resources.fast = _resource_levels.fast = _resource_list.fast = _EMPTY_OR_CALL


def _list_of(kind, check=None, what=""):
    def check_list(value: list) -> None:
        for item in value:
            if not isinstance(item, kind):
                raise _bad(f"must be a list of {what}", item)
            if check is not None:
                check(item)
    check_list.fast = _EMPTY_OR_CALL
    return check_list


def _peer_address(value: list) -> None:
    if len(value) != 4 or type(value[0]) is not str or type(value[1]) is not bytes \
            or type(value[2]) is not int or type(value[3]) is not bytes:
        raise _bad("must be an address [endpoint, worker id, pid, node id]", value)
    if value[0] not in _good_endpoints:
        _endpoint(value[0])
    if len(value[1]) != 16 or len(value[3]) != 16 or not 0 <= value[2] < 1 << 31:
        raise _bad("must be an address [endpoint, worker id (16 bytes), pid, "
                   "node id (16 bytes)]", value)


def _opt_peer_address(value: list) -> None:
    if value:
        _peer_address(value)


def _task_spec_fields(value: list) -> None:
    task_spec(value)


_KINDS = {   # annotation -> (wire types, extra check or None)
    "bytes": (bytes, None), "str": (str, None), "int": (int, None),
    "bool": ((bool, int), None), "list": (list, None), "dict": (dict, None),
    "float": ((float, int), None),
    "NodeId": (bytes, _id_check(16)), "WorkerId": (bytes, _id_check(16)),
    "TaskId": (bytes, _id_check(16)), "ActorId": (bytes, _id_check(16)),
    "PgId": (bytes, _id_check(16)), "FunctionHash": (bytes, _id_check(16)),
    "OptId": (bytes, _id_check(0, 16)), "ObjectId": (bytes, _id_check(20)),
    "JobId": (bytes, _id_check(0, 4)), "Count": (int, _count), "Pid": (int, _pid),
    "Endpoint": (str, _endpoint), "OptEndpoint": (str, _opt_endpoint),
    "Resources": (dict, _resources), "ResourceLevels": (dict, _resource_levels),
    "ResourceList": (list, _resource_list),
    "ObjectIds": (list, _list_of(bytes, _id_check(20), "object ids (20 bytes)")),
    "OptIds": (list, _list_of(bytes, _id_check(0, 16), "ids (16 bytes) or b''")),
    "Strings": (list, _list_of(str, None, "str")),
    "PeerAddress": (list, _peer_address), "OptPeerAddress": (list, _opt_peer_address),
    "TaskSpecFields": (list, _task_spec_fields),
    # actor calls
    "TaskSpecList": (list, _list_of(list, _task_spec_fields, "task specs (each a list)")),
}


def _typed(cls):
    """Compile each field's kind (from its annotation) into ``cls._checks``:
    ``(index, field name, wire types, extra check or None)``; and into
    ``cls._fast``, see _fast_check."""
    checks = []
    for index, name in enumerate(cls._fields):
        annotation = cls.__annotations__.get(name)
        annotation = getattr(annotation, "__forward_arg__", annotation)
        if not isinstance(annotation, str):
            annotation = getattr(annotation, "__name__", "")
        kind = _KINDS.get(annotation)
        if kind is not None:
            checks.append((index, name, kind[0], kind[1]))
    cls._checks = tuple(checks)
    cls._fast = _fast_check(cls.__name__, cls._checks, len(cls._fields))
    return cls


def _passes(check, value) -> bool:
    """Whether ``value`` passes the extra ``check``."""
    try:
        check(value)
    except ProtocolError:
        return False
    return True


def _fast_check(name: str, checks: tuple, size: int):
    """A function of a record's ``size`` values that is True when they pass
    all ``checks``: one expression (exact wire types, and each extra check's
    ``fast`` form or a call of it), compiled once, so a well-formed message
    costs one call. False means "not sure": ``_check`` then runs the checks
    one by one, which accept what they accept and name what is wrong."""
    env = {"_good_endpoints": _good_endpoints, "_passes": _passes}
    terms = []
    for index, _, types, extra in checks:
        x = f"v{index}"
        alternatives = []
        for kind in types if isinstance(types, tuple) else (types,):
            env[f"_{kind.__name__}"] = kind
            alternatives.append(f"type({x}) is _{kind.__name__}")
        terms.append(f"({' or '.join(alternatives)})")
        if extra is not None:
            env[f"_extra{index}"] = extra
            call = f"_passes(_extra{index}, {x})"
            terms.append(getattr(extra, "fast", "{call}").format(x=x, call=call))
    if not terms or not size:
        return _unsure
    names = ", ".join(f"v{index}" for index in range(size))
    source = (f"def fast_{name}(v):\n"
              f"    if len(v) != {size}:\n"
              f"        return False\n"
              f"    {names}, = v\n"
              f"    return {' and '.join(terms)}\n")
    namespace: dict = {}
    exec(source, env, namespace)   # noqa: S102 — the source is made here, of the declarations
    return namespace[f"fast_{name}"]


def _unsure(values) -> bool:
    """``_fast`` of a record with nothing to check fast."""
    return False


def _declare(code: int):
    def wrap(cls):
        if code in _BY_CODE:
            raise RuntimeError(f"message code {code} declared twice")
        cls.CODE = code
        _BY_CODE[code] = _typed(cls)
        return cls
    return wrap


def _check(cls, values) -> None:
    """ProtocolError naming the first field of ``values`` that is not of its kind."""
    if not cls._fast(values):
        _check_fields(cls, values)


def _check_fields(cls, values) -> None:
    """``_check``, a field at a time."""
    size = len(values)
    for index, name, types, extra in cls._checks:
        if index >= size:
            return
        value = values[index]
        if not isinstance(value, types):
            raise ProtocolError(f"{cls.__name__}.{name} must be "
                                f"{getattr(types, '__name__', None) or types[0].__name__}, "
                                f"got {type(value).__name__}")
        if extra is not None:
            try:
                extra(value)
            except ProtocolError as exc:
                raise ProtocolError(f"{cls.__name__}.{name} {exc}") from None


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
    task_id: TaskId
    job_id: JobId
    kind: int                 # TASK_NORMAL, TASK_ACTOR_CREATION, TASK_ACTOR_METHOD
    function_hash: bytes
    function_name: str
    args: list
    kwarg_names: Strings
    num_returns: int
    resources: Resources
    max_retries: int
    retry_exceptions: bool
    owner: PeerAddress        # Address as a list
    attempt: Count = 0
    actor_id: OptId = b""
    method_name: str = ""
    options: dict = {}

    owner_address = property(lambda self: Address._make(self.owner),
                             doc="the owner, as an Address")


_typed(TaskSpec)


def task_spec(values) -> TaskSpec:
    """A TaskSpec from its wire form; ProtocolError if it is malformed (its
    fields are checked against their kinds, as in ``decode``)."""
    global _last_spec
    last = _last_spec
    if last[0] is values:       # checked already, as a field of the message just decoded
        return last[1]
    if not isinstance(values, (list, tuple)):
        raise ProtocolError("a task spec must be a list")
    try:
        spec = TaskSpec(*values)
    except TypeError:
        raise ProtocolError(f"a task spec has {len(TaskSpec._fields)} fields at most, "
                            f"got {len(values)}") from None
    _check(TaskSpec, spec)
    if spec.kind not in (0, 1, 2, 3):
        raise ProtocolError(f"TaskSpec.kind must be 0, 1, 2 or 3, got {spec.kind}")
    for arg in spec.args:
        if type(arg) is not list or not arg or type(arg[0]) is not int:
            raise _bad("TaskSpec.args must be a list of [ARG_*, ...] entries", arg)
    options = spec.options
    if options:
        for key, types in _OPTION_TYPES:
            if key in options and not isinstance(options[key], types):
                raise _bad(f"TaskSpec.options[{key!r}] must be "
                           f"{getattr(types, '__name__', None) or types[0].__name__}",
                           options[key])
        if options.get("strategy") == "NODE" and "node_id" not in options:
            raise ProtocolError("TaskSpec.options: strategy NODE needs a node_id")
    _last_spec = (values, spec)
    return spec


_last_spec: tuple = (None, None)     # (wire list, TaskSpec) of the last spec checked

#: the kinds of the task options daemons read (others pass through unchecked)
_OPTION_TYPES = (("strategy", str), ("node_id", bytes), ("soft", (bool, int)),
                 ("spilled", int), ("max_concurrency", int), ("is_async", (bool, int)),
                 ("detached", (bool, int)))


ARG_VALUE, ARG_STORED, ARG_REF = 0, 1, 2
TASK_NORMAL, TASK_ACTOR_CREATION, TASK_ACTOR_METHOD = 0, 1, 2
#: (task path) a worker lease: the raylet hands a worker to the spec's owner,
#: which then sends it tasks directly (see zray/worker/lease_manager.py)
TASK_LEASE = 3
STREAMING = -1

# How a return value travels back to its owner.
RET_INLINE, RET_STORED, RET_ERROR = 0, 1, 2


# --------------------------------------------------------------------------
# Task arguments and returns: they travel as msgpack arrays (a NamedTuple is
# one); read them through these records, by name, never by position.
# --------------------------------------------------------------------------

class ValueArg(NamedTuple):
    """An argument small enough to travel inside the task spec."""
    kind: int                  # ARG_VALUE
    blob: bytes                # serialized value


class StoredArg(NamedTuple):
    """An argument in the store of ``node_id``; the raylet that runs the task
    pulls it if needed and sets ``offset`` once it pinned it for the worker."""
    kind: int                  # ARG_STORED
    object_id: bytes
    size: int
    node_id: bytes
    offset: int = -1           # in this node's arena; -1: not pinned yet


class RefArg(NamedTuple):
    """An argument whose value the worker asks its owner for."""
    kind: int                  # ARG_REF
    object_id: bytes
    owner: list                # the owner's Address, as a list

    owner_address = property(lambda self: Address._make(self.owner),
                             doc="the owner, as an Address")


_ARG_RECORDS = {ARG_VALUE: ValueArg, ARG_STORED: StoredArg, ARG_REF: RefArg}


def task_arg(values):
    """The record of one ``TaskSpec.args`` entry (``ProtocolError`` if malformed)."""
    try:
        return _ARG_RECORDS[values[0]](*values)
    except (KeyError, IndexError, TypeError):
        raise _bad("a task argument must be [ARG_VALUE, blob], [ARG_STORED, id, size, "
                   "node_id(, offset)] or [ARG_REF, id, owner]", values) from None


class StoredAt(NamedTuple):
    """Where a stored return lives: the payload of a RET_STORED Return."""
    node_id: NodeId
    size: Count


class Return(NamedTuple):
    """A task's return as its owner gets it: ``payload`` is the serialized
    value (RET_INLINE), ``StoredAt`` fields (RET_STORED) or a serialized
    error (RET_ERROR)."""
    object_id: bytes
    kind: int
    payload: object

    @property
    def stored_at(self) -> StoredAt:
        """Where a RET_STORED value lives."""
        return StoredAt._make(self.payload)


# --------------------------------------------------------------------------
# wire review: records that travel as entries of a message's list field.
# ``decode`` checks each entry (a ProtocolError names the field); read an
# entry through its record (the message's properties below), by name.
# --------------------------------------------------------------------------

class Pinned(NamedTuple):
    """An object pinned in this node's arena (a ``PinObjectsReply.locations``
    entry; also what the raylet tells a worker of a pinned argument)."""
    offset: Count
    size: Count


class SpilledCopy(NamedTuple):
    """The spill file of an object (a ``PinObjectsReply.spilled`` entry)."""
    path: str
    size: Count


class StoreClient(NamedTuple):
    """A driver or worker of a raylet's node (a ``StoreObjectsReply.clients`` entry)."""
    worker_id: WorkerId
    pid: Pid
    kind: str               # "driver" | "worker"


class PinHolder(NamedTuple):
    """Who pins a stored object, and how many times (a ``StoreObject.pinned_by`` entry)."""
    who: str                # named as full-store messages name a client
    count: Count


class StoreObject(NamedTuple):
    """One object of a raylet's store, as ``ray memory`` shows it (a
    ``StoreObjectsReply.objects`` entry)."""
    object_id: ObjectId
    size: Count
    owner_id: OptId         # b"": not known here
    state: str              # BEING_WRITTEN | PINNED | SEALED | SPILLED
    pinned_by: PinHolders
    primary: bool
    freed: bool

    holders = property(lambda self: [PinHolder._make(h) for h in self.pinned_by],
                       doc="who pins it, as PinHolder records")


PinHolders = list       # [PinHolder as a list, ...]
StoreObjects = list     # [StoreObject as a list, ...]

_typed(Pinned)
_typed(SpilledCopy)
_typed(StoreClient)
_typed(StoredAt)
_typed(PinHolder)

ReturnFields = list     # a Return as a list: [ObjectId, RET_*, payload]
Returns = list          # [Return as a list, ...]
OptPinnedList = list    # [Pinned as a list, or None, ...]
OptSpilledList = list   # [SpilledCopy as a list, or None, ...]
StoreClients = list     # [StoreClient as a list, ...]
Offsets = list          # [Count, ...]


def _entry_check(cls, optional: bool = False):
    """Check of one entry that must be ``cls`` as a list (or None if ``optional``)."""
    size = len(cls._fields)

    def check(value) -> None:
        if value is None and optional:
            return
        if type(value) not in (list, tuple) or len(value) != size:
            raise _bad(f"must hold {cls.__name__} entries [{', '.join(cls._fields)}]"
                       f"{' or None' if optional else ''}", value)
        _check(cls, value)
    return check


def _entries_check(cls, optional: bool = False):
    one = _entry_check(cls, optional)

    def check(value: list) -> None:
        for item in value:
            one(item)
    check.fast = _EMPTY_OR_CALL
    return check


_stored_at_check = _entry_check(StoredAt)


def _return_fields(value) -> None:
    if type(value) not in (list, tuple) or len(value) != 3 or type(value[0]) is not bytes \
            or len(value[0]) != 20 or value[1] not in (RET_INLINE, RET_STORED, RET_ERROR) \
            or type(value[1]) is not int:
        raise _bad("must be a return [object id (20 bytes), RET_INLINE | RET_STORED | "
                   "RET_ERROR, payload]", value)
    if value[1] == RET_STORED:
        _stored_at_check(value[2])
    elif type(value[2]) is not bytes:
        raise _bad("must be a return whose payload is bytes (RET_INLINE, RET_ERROR)", value)


def _returns(value: list) -> None:
    for item in value:
        _return_fields(item)


_KINDS.update({
    "ReturnFields": (list, _return_fields), "Returns": (list, _returns),
    "OptPinnedList": (list, _entries_check(Pinned, optional=True)),
    "OptSpilledList": (list, _entries_check(SpilledCopy, optional=True)),
    "StoreClients": (list, _entries_check(StoreClient)),
    "Offsets": (list, _list_of(int, _count, "offsets (integers >= 0)")),
    "PinHolders": (list, _entries_check(PinHolder)),
})
_typed(StoreObject)         # its pinned_by kind is known now
_KINDS["StoreObjects"] = (list, _entries_check(StoreObject))


def _opt_entries(record, field: str, doc: str) -> property:
    """A property reading the entries in ``field`` as ``record``s (None stays None)."""
    make = record._make
    return property(lambda self: [None if e is None else make(e) for e in getattr(self, field)],
                    doc=doc)


# --------------------------------------------------------------------------
# Core worker <-> raylet
# --------------------------------------------------------------------------

@_declare(1)
class RegisterClient(NamedTuple):
    kind: str          # "driver" | "worker"
    worker_id: WorkerId
    pid: Pid
    job_id: JobId
    inbox: Endpoint


@_declare(2)
class RegisterClientReply(NamedTuple):
    node_id: NodeId
    arena_path: str
    arena_size: Count
    gcs_address: str
    session_dir: str
    node_ip: str
    pub_address: Endpoint       # the GCS event stream
    raylet_pid: int = 0    # so a local client can tell at once when its raylet died


@_declare(3)
class SubmitTask(NamedTuple):
    spec: TaskSpecFields


@_declare(4)
class CancelTask(NamedTuple):
    """Cancel a queued or running task. For a lease (a TASK_LEASE task id)
    not ``force``: its owner gives it up, and the raylet ends it on the
    worker that took it (as a ReturnLease would)."""
    task_id: TaskId
    force: bool


@_declare(5)
class WorkerReady(NamedTuple):
    """An idle worker asks for work; carries the task it just finished."""
    worker_id: WorkerId
    finished_task_id: OptId


@_declare(6)
class ExecuteTask(NamedTuple):
    spec: TaskSpecFields


# -- actor calls: several in one message --------------------------------------
@_declare(41)
class ExecuteCalls(NamedTuple):
    """Calls of one caller to one actor, in submission order, in one message
    (calls submitted back to back travel together: one send and one receive
    for the lot). Each entry is a TaskSpec as a list; read them through
    ``calls``."""
    specs: TaskSpecList

    calls = property(lambda self: [TaskSpec._make(s) for s in self.specs],
                     doc="the calls, as TaskSpec records, in order (decode checked each)")


@_declare(7)
class WorkerBlocked(NamedTuple):
    """The worker waits in get(): its CPU may be lent to other tasks."""
    worker_id: WorkerId
    blocked: bool


# -- lifetimes (worker -> raylet) ---------------------------------------------
@_declare(29)
class WorkerOwns(NamedTuple):
    """One-way, from a worker: whether it now owns actors that would die
    with it (non-detached actors it created). The raylet does not stop an
    idle worker that owns some."""
    worker_id: WorkerId
    owns: bool


@_declare(8)
class CreateObject(NamedTuple):
    object_id: ObjectId
    size: Count
    owner_id: WorkerId        # worker id of the object's owner


#: CreateObjectReply.offset when no object was created
CREATE_FULL = -1          # the store is full of pinned/unsealed objects now: retry later
CREATE_EXISTS = -2        # the object is already there (a retried task's result)
CREATE_NEVER_FITS = -3    # the object is larger than the whole store


@_declare(9)
class CreateObjectReply(NamedTuple):
    offset: int          # where to write, or a CREATE_* code (< 0)
    error: str


@_declare(10)
class SealObject(NamedTuple):
    object_id: ObjectId


@_declare(11)
class PinObjects(NamedTuple):
    """Pin objects in this node's store, pulling each from ``sources[i]``
    (a node id, or b"" when unknown) first if it is not here. ``sizes[i]``
    is its size in bytes when the caller knows it, else 0."""
    object_ids: ObjectIds
    sources: OptIds
    sizes: list


@_declare(12)
class PinObjectsReply(NamedTuple):
    """Per id, ``locations[i]`` is ``[offset, size]`` (pinned in the arena)
    or None; then ``spilled[i]`` is ``[path, size]`` when the object is only
    on disk and the store is too full of pinned objects to restore it (read
    the file instead; ask again if it vanished), and ``full[i]`` says why,
    when it is on another node and this store is too full of pinned objects
    to take it now (ask again later); else it is not to be had (lost)."""
    locations: OptPinnedList
    spilled: OptSpilledList
    full: Strings

    pinned = _opt_entries(Pinned, "locations", "per id, a Pinned record or None")

    spill_files = _opt_entries(SpilledCopy, "spilled", "per id, a SpilledCopy record or None")


@_declare(13)
class ReleaseObjects(NamedTuple):
    object_ids: ObjectIds


@_declare(14)
class FreeObjects(NamedTuple):
    object_ids: ObjectIds


# -- objects (issue 13): raylet -> a client's inbox ---------------------------
@_declare(260)
class ReleaseKeptViews(NamedTuple):
    """One-way, from the raylet to a local driver or worker that pins
    objects: the store needs room, so stop keeping views of objects the
    user no longer reads (their pins go with the next ReleaseObjects) and
    drop the blocks it reserved (ReleaseReserved)."""


@_declare(261)
class ReserveObjects(NamedTuple):
    """Reserve blocks of ``size`` bytes, one per placeholder id, that the
    caller fills later without asking (then SealReserved names each). Only
    the first may evict or spill; the others come from free space."""
    placeholder_ids: ObjectIds
    size: Count


@_declare(262)
class ReserveObjectsReply(NamedTuple):
    """``offsets``: one per block reserved (maybe fewer than asked, never
    none unless ``code`` < 0: a CREATE_* code, and ``error`` says why)."""
    offsets: Offsets
    code: int
    error: str


@_declare(263)
class SealReserved(NamedTuple):
    """One-way: the reserved block ``placeholder_id`` now holds the complete
    object ``object_id`` of ``size`` bytes owned by ``owner_id``: seal it."""
    placeholder_id: ObjectId
    object_id: ObjectId
    size: Count
    owner_id: WorkerId


@_declare(264)
class ReleaseReserved(NamedTuple):
    """One-way: the caller no longer needs these reserved blocks."""
    placeholder_ids: ObjectIds


@_declare(15)
class LogLines(NamedTuple):
    job_id: JobId
    pid: Pid
    lines: Strings


@_declare(16)
class Ping(NamedTuple):
    pass


@_declare(17)
class Ack(NamedTuple):
    """Done (a query that returns a value has a reply record of its own).
    ``ok`` False: there was nothing to do (an unknown id)."""
    ok: bool = True


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


@_declare(21)
class ListStoreObjects(NamedTuple):
    """Ask a raylet what its store holds (``ray memory``): at most ``limit``
    objects, the most recently used first."""
    limit: Count = 100


@_declare(22)
class StoreObjectsReply(NamedTuple):
    """``objects``: StoreObject entries; ``total``: objects in the store;
    ``clients``: this node's drivers and workers as StoreClient entries (to
    name owners). Read them through ``store_objects`` and ``store_clients``."""
    objects: StoreObjects
    total: Count
    clients: StoreClients = []

    store_objects = _opt_entries(StoreObject, "objects", "the objects, as StoreObject records")

    store_clients = _opt_entries(StoreClient, "clients", "the clients, as StoreClient records")


# --------------------------------------------------------------------------
# Core worker <-> core worker (one-way, into the peer's inbox ROUTER)
# --------------------------------------------------------------------------

@_declare(30)
class TaskReturned(NamedTuple):
    """Results of a finished task: ``returns`` is a list of
    ``[object_id, RET_*, payload]`` (blob, ``[node_id, size]``, or error blob)."""
    task_id: TaskId
    returns: Returns

    results = _opt_entries(Return, "returns", "the returns, as Return records")


# -- actor calls: several results in one message -----------------------------
_KINDS["CallResults"] = (list, _entries_check(TaskReturned))


@_declare(42)
class CallsReturned(NamedTuple):
    """Results of several calls of one caller to one actor that ran back to
    back (an actor sends the results of the calls that came in one
    ExecuteCalls together, none held longer than a millisecond or so).
    Each entry is a TaskReturned's fields, ``[task_id, returns]``; read them
    through ``results``."""
    returned: CallResults

    results = property(lambda self: [TaskReturned._make(e) for e in self.returned],
                       doc="each call's results, as a TaskReturned (decode checked each)")


@_declare(31)
class TaskFailed(NamedTuple):
    """The task could not run to completion (worker died, cancelled, ...)."""
    task_id: TaskId
    error_type: str
    message: str


@_declare(32)
class GeneratorItem(NamedTuple):
    task_id: TaskId
    index: Count
    ret: ReturnFields      # [object_id, RET_*, payload]

    returned = property(lambda self: Return._make(self.ret), doc="the item, as a Return")


@_declare(33)
class GetObject(NamedTuple):
    """Ask an owner for an object; it answers with ObjectValue when ready."""
    object_id: ObjectId
    reply_to: PeerAddress         # the asker's Address


@_declare(34)
class ObjectValue(NamedTuple):
    object_id: ObjectId
    ret: ReturnFields      # [object_id, RET_*, payload]

    returned = property(lambda self: Return._make(self.ret), doc="the value, as a Return")


@_declare(35)
class AddBorrower(NamedTuple):
    object_ids: ObjectIds
    borrower: WorkerId


@_declare(36)
class RemoveBorrower(NamedTuple):
    object_ids: ObjectIds
    borrower: WorkerId


@_declare(37)
class CancelRunning(NamedTuple):
    task_id: TaskId


@_declare(38)
class TaskInfeasible(NamedTuple):
    task_id: TaskId
    message: str


@_declare(39)
class TaskPlaced(NamedTuple):
    """A raylet took a task from another node: the owner learns where it is,
    to retry it if that node dies."""
    task_id: TaskId
    node_id: NodeId


# -- task path: worker leases (raylet -> leased worker -> owner; owner -> worker)

@_declare(45)
class LeaseGranted(NamedTuple):
    """(leased worker -> owner's inbox) The worker runs the owner's tasks of
    lease ``lease_id`` (a TASK_LEASE spec's task id), sent as ExecuteTask to
    its direct ROUTER, until the owner sends ReturnLease."""
    lease_id: TaskId
    worker: PeerAddress         # the leased worker's Address

    worker_address = property(lambda self: Address._make(self.worker),
                              doc="the leased worker, as an Address")


#: (leases) TaskFailed.error_type of a lease the raylet will not grant: the
#: node can never fit its shape, or the asker is not the driver the lease names
LEASE_REFUSED = "LeaseRefused"
#: (leases) TaskFailed.error_type of a lease the raylet will not queue: its
#: node is full and another node has room, so the owner's queued tasks go the
#: raylet's way, which spreads them over the cluster
LEASE_BUSY = "LeaseBusy"
#: (leases) TaskFailed.error_type of a lease the raylet will not queue: its
#: node is full (and no other node has room): the owner asks again later
LEASE_FULL = "LeaseFull"


@_declare(46)
class ReturnLease(NamedTuple):
    """(owner -> leased worker's direct ROUTER) The owner sends no more tasks:
    the worker tells its raylet it is idle again."""
    lease_id: TaskId


# --------------------------------------------------------------------------
# GCS
# --------------------------------------------------------------------------

@_declare(50)
class RegisterNode(NamedTuple):
    node_id: NodeId
    address: Endpoint           # the raylet's ROUTER over TCP (locally: its IPC socket)
    data_address: Endpoint      # its object-transfer link (sealed frames, see object_transfer)
    node_ip: str
    hostname: str
    pid: Pid
    resources: Resources
    arena_size: Count
    session_dir: str


@_declare(51)
class RegisterNodeReply(NamedTuple):
    pub_address: str
    session_dir: str


@_declare(52)
class Heartbeat(NamedTuple):
    node_id: NodeId
    available: ResourceLevels
    store_used: Count
    total: Resources            # totals change when placement group bundles are reserved
    #: node usage sampled every few seconds (see raylet ``node_stats``): cpu_percent,
    #: mem_used, mem_total, disk_used, disk_total, store_used, store_spilled,
    #: store_capacity, num_workers, time
    stats: dict = {}


@_declare(53)
class UnregisterNode(NamedTuple):
    node_id: NodeId


@_declare(54)
class RegisterJob(NamedTuple):
    driver_pid: Pid
    driver_address: OptPeerAddress
    namespace: str
    sys_path: Strings
    cwd: str


@_declare(55)
class FinishJob(NamedTuple):
    job_id: JobId


@_declare(56)
class GetJob(NamedTuple):
    job_id: JobId


@_declare(57)
class ExportFunction(NamedTuple):
    function_hash: FunctionHash
    blob: bytes


@_declare(58)
class GetFunction(NamedTuple):
    function_hash: FunctionHash


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
    job_id: JobId
    pid: Pid
    node_ip: str
    lines: Strings


@_declare(65)
class GetClusterInfo(NamedTuple):
    """Cluster-wide view: nodes with totals, availability and store usage."""
    pass


# --------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------

@_declare(70)
class RegisterActor(NamedTuple):
    """Create an actor: the GCS records it (its owner is the creation spec's
    ``owner``) and schedules its creation task. Replies RegisterActorReply:
    created False with the live actor of that name when ``get_if_exists``;
    ErrorReply("ValueError") when the name is taken."""
    actor_id: ActorId
    spec: TaskSpecFields                 # the creation TaskSpec
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
    actor_id: ActorId
    worker_id: WorkerId
    address: OptEndpoint               # the actor's ROUTER over TCP (locally: actor_ipc)
    node_id: NodeId
    pid: Pid
    error: bytes


@_declare(72)
class ReportActorDied(NamedTuple):
    """The raylet saw an actor's worker exit (intentional: exit_actor())."""
    actor_id: ActorId
    message: str
    intentional: bool


@_declare(73)
class WatchActor(NamedTuple):
    """Send ActorInfo to ``reply_to`` now and at every state change."""
    actor_id: ActorId
    reply_to: Endpoint


@_declare(74)
class ActorInfo(NamedTuple):
    actor_id: ActorId
    state: str                 # PENDING_CREATION, ALIVE, RESTARTING, DEAD
    address: OptPeerAddress              # [tcp endpoint, worker id, pid, node id] when ALIVE
    incarnation: Count           # how many times it was (re)started
    death_message: str
    death_error: bytes         # serialized cause when the constructor raised


@_declare(75)
class KillActor(NamedTuple):
    actor_id: ActorId
    no_restart: bool


@_declare(76)
class KillActorWorker(NamedTuple):
    actor_id: ActorId


@_declare(77)
class GetNamedActor(NamedTuple):
    name: str
    namespace: str


@_declare(78)
class ListActors(NamedTuple):
    pass


@_declare(79)
class ReportActorOutOfScope(NamedTuple):
    """From an actor's owner: no handle to it is left anywhere and every call
    submitted through one has finished. A non-detached actor then ends (not
    restarted); its death message says all references were removed."""
    actor_id: ActorId


@_declare(85)
class ReportWorkerDied(NamedTuple):
    """From a raylet: a worker or driver of its node exited (or its node is
    going away). The GCS ends the non-detached actors it owned and publishes
    the death on TOPIC_WORKER, so waiters on its objects raise OwnerDiedError."""
    worker_id: WorkerId
    node_id: NodeId
    message: str


# --------------------------------------------------------------------------
# Placement groups
# --------------------------------------------------------------------------

@_declare(80)
class CreatePlacementGroup(NamedTuple):
    pg_id: PgId
    bundles: ResourceList              # [{resource: amount}, ...]
    strategy: str              # PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    name: str
    job_id: JobId
    detached: bool


@_declare(81)
class RemovePlacementGroup(NamedTuple):
    pg_id: PgId


@_declare(82)
class GetPlacementGroups(NamedTuple):
    """All placement groups (pg_id b"") or one; by name when ``name`` is set."""
    pg_id: OptId
    name: str


@_declare(83)
class ReserveBundle(NamedTuple):
    """GCS to raylet: set aside a bundle's resources for a placement group."""
    pg_id: PgId
    index: Count
    resources: Resources


@_declare(84)
class ReturnBundle(NamedTuple):
    pg_id: PgId
    index: Count


# --------------------------------------------------------------------------
# GCS rows: the states and strategies the GCS tables hold (read them from here)
# --------------------------------------------------------------------------

#: an actor's life: PENDING_CREATION -> ALIVE -> (RESTARTING -> ALIVE)* -> DEAD
ACTOR_PENDING, ACTOR_ALIVE = "PENDING_CREATION", "ALIVE"
ACTOR_RESTARTING, ACTOR_DEAD = "RESTARTING", "DEAD"
ACTOR_STATES = (ACTOR_PENDING, ACTOR_ALIVE, ACTOR_RESTARTING, ACTOR_DEAD)

#: a placement group: PENDING until every bundle has a node, then CREATED; REMOVED at the end
PG_PENDING, PG_CREATED, PG_REMOVED = "PENDING", "CREATED", "REMOVED"
PG_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

#: HeartbeatReply.status: the GCS knows the node and it is alive
HEARTBEAT_OK = "ok"
#: the GCS declared the node dead (it missed heartbeats): rejoin as a new node
HEARTBEAT_DEAD = "dead"
#: the GCS does not know the node (it restarted without it): register again, same node id
HEARTBEAT_UNKNOWN = "unknown"


@_declare(66)
class HeartbeatReply(NamedTuple):
    """The GCS's answer to a Heartbeat: HEARTBEAT_OK, HEARTBEAT_DEAD or HEARTBEAT_UNKNOWN."""
    status: str


# --------------------------------------------------------------------------
# Task events and user metrics (what the dashboard shows)
# --------------------------------------------------------------------------

#: Task states as Ray names them; a state travels as its index here.
TASK_STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER",
               "RUNNING", "FINISHED", "FAILED")
(TS_PENDING_ARGS_AVAIL, TS_PENDING_NODE_ASSIGNMENT, TS_SUBMITTED_TO_WORKER, TS_RUNNING,
 TS_FINISHED, TS_FAILED) = range(6)


class TaskEvent(NamedTuple):
    """One state change of a task; its fields travel one after another in
    ``AddTaskEvents.events`` (see ``pack_task_events``).
    ``info`` (a dict or None) is what the reporter knows of the task: name,
    job_id, actor_id, type (TASK_*), required_resources, parent_task_id on
    the owner's first event; error_type, error_message on FAILED; an
    executor's name (``Class.method`` for an actor call), type, job_id,
    actor_id. An executor reports a task that ran once, at its end, with
    ``start_s``: the time it started RUNNING."""
    task_id: bytes
    attempt: int
    state: int                 # index in TASK_STATES
    time_s: float              # wall clock of the change
    info: Any = None
    start_s: Any = None        # float: a FINISHED/FAILED that also says when RUNNING began


#: fields a TaskEvent takes in ``AddTaskEvents.events``
TASK_EVENT_FIELDS = len(TaskEvent._fields)
_INFO = TaskEvent._fields.index("info")
#: a TaskEvent as a fixed-size record (an executor's end of a task it saw
#: start; see ``pack_task_events``): task id, attempt, state, time, start,
#: info (an index of the batch's record infos, -1: none)
TASK_EVENT_RECORD = struct.Struct("<16sIBddi")


@_declare(100)
class AddTaskEvents(NamedTuple):
    """One-way, core worker to GCS, about once a second (a busy executor's
    packed events sooner, a batch per tick): the task state changes it saw
    since its last batch (``count`` of them, packed by
    ``pack_task_events``: the GCS reads them only when its task table is
    read or it has idle time), and how many it dropped."""
    worker_id: WorkerId
    node_id: NodeId
    pid: Pid
    events: bytes              # pack_task_events([TaskEvent fields, ...]), checked when read
    count: Count
    dropped: Count


@_declare(101)
class GetTaskEvents(NamedTuple):
    """The task table, one row per task: the ``limit`` most recently created
    rows (all when ``limit`` <= 0) whose fields equal ``filters``."""
    limit: int = 100
    filters: dict = {}


@_declare(102)
class TaskEventsReply(NamedTuple):
    """Rows (dicts with Ray's field names, see gcs.task_event_manager),
    oldest first; ``dropped``: rows evicted by the bound plus events lost on
    the way."""
    events: list
    dropped: int


@_declare(106)
class GetTaskSummary(NamedTuple):
    """Counts of the task table (cheap: no rows travel)."""
    pass


@_declare(107)
class TaskSummaryReply(NamedTuple):
    """``by_state``: {state: count}; ``by_name``: {task name: {state:
    count}} (as ``zray summary tasks`` shows); ``total`` rows; ``dropped``
    as in TaskEventsReply; ``types``: {task name: its type, as Ray names
    it (NORMAL_TASK, ACTOR_TASK, ACTOR_CREATION_TASK)}."""
    by_state: dict
    by_name: dict
    total: int
    dropped: int
    types: dict = {}


@_declare(103)
class ReportMetrics(NamedTuple):
    """One-way, core worker to GCS: the current values of every user metric
    of that process (counters and histograms cumulative)."""
    worker_id: bytes
    metrics: list              # [{"name", "description", "type", "tag_keys", ...}]


@_declare(104)
class GetMetrics(NamedTuple):
    pass


@_declare(105)
class MetricsReply(NamedTuple):
    """User metrics summed over processes: dicts {"name", "description",
    "type" ("counter"|"gauge"|"histogram"), "tag_keys", "samples":
    [{"tags": {...}, "value": ...}]}; a histogram adds "boundaries" and its
    sample values are {"buckets": [count per bucket, the last one +Inf],
    "sum", "count"}."""
    metrics: list


# --------------------------------------------------------------------------
# The object-transfer link (zray/raylet/object_transfer.py): a puller's
# DEALER logged in to a source raylet's data port. These records travel
# sealed with AES-GCM (security.DataSeal), never to the ROUTERs above:
#   request  [corr, nonce, seal(encode(DataFetch | DataRelease),
#                               aad=b"request" + login id)]
#   answer   [corr, header, nonce, seal(chunk, aad=header + login id)],
#            header = encode(DataChunk)
# --------------------------------------------------------------------------

#: Largest frame the data port reads (requests are ~100 bytes); a bigger one
#: drops the connection before it is buffered.
DATA_REQUEST_MAX_BYTES = 4096


@_declare(90)
class DataFetch(NamedTuple):
    """Puller to source: send ``length`` bytes of ``object_id`` from
    ``offset``. The fetch at offset 0 pins the object for the connection."""
    seq: Count              # strictly increasing per connection (replays refused)
    object_id: ObjectId
    offset: Count
    length: Count


@_declare(91)
class DataRelease(NamedTuple):
    """Puller to source: the pull of ``object_id`` is over; unpin it."""
    seq: Count
    object_id: ObjectId


@_declare(92)
class DataChunk(NamedTuple):
    """Source to puller, the clear header of one sealed chunk."""
    object_id: ObjectId
    offset: Count
    total_size: Count       # the object's size (0 with an error)
    error: str              # "" or why the object cannot be sent


# --------------------------------------------------------------------------
# GCS rows, events and query replies (issue 7). A row travels as a msgpack
# array inside a reply or an event; read it through its record, by name. The
# GCS stores a row as a dict (``to_storage``) so that a row written by an
# older GCS still loads: ``from_storage`` fills a field it lacks with the
# field's default and ignores fields it does not know.
# --------------------------------------------------------------------------

OptFloat = float        # a finite number or None (a time not reached yet)
NodeRowFields = list    # a NodeRow as a list
JobRowFields = list     # a JobRow as a list
OptJobRowFields = list  # a JobRow as a list, or [] (no such job)
ActorSummaryFields = list   # an ActorSummary as a list
NodeRows = JobRows = ActorSummaries = PlacementGroupRows = list   # [row as a list, ...]
ByteStrings = list      # [bytes, ...]
BundleNodes = list      # per bundle: the node id it is reserved on, or None


def _opt_float(value) -> None:
    if value is not None and (type(value) not in _NUMBER or not _isfinite(value)):
        raise _bad("must be a finite number or None", value)


def _bundle_nodes(value: list) -> None:
    for item in value:
        if item is not None and (type(item) is not bytes or len(item) != 16):
            raise _bad("must be a list of node ids (16 bytes) or None", item)


def _row_check(cls, optional: bool = False):
    """Kind check of one row (a list of ``cls``'s fields; [] too if ``optional``)."""
    most = len(cls._fields)
    least = most - len(cls._field_defaults)

    def check(value: list) -> None:
        if optional and not value:
            return
        if not least <= len(value) <= most:
            raise _bad(f"must be a {cls.__name__} ({least} to {most} fields)", value)
        _check(cls, value)
    return check


def _rows_check(cls):
    one = _row_check(cls)

    def check(value: list) -> None:
        for item in value:
            if not isinstance(item, (list, tuple)):
                raise _bad(f"must be a list of {cls.__name__} rows", item)
            one(item)
    return check


def _row(cls):
    """Declare ``cls`` a GCS row: field kinds (as messages have), and
    ``from_storage(dict)`` and ``to_storage() -> dict``."""
    _typed(cls)
    fields, defaults, name, make = cls._fields, cls._field_defaults, cls.__name__, cls._make

    def from_storage(data: dict):
        try:
            return make(map(data.__getitem__, fields))     # a row of this version
        except KeyError:
            pass
        try:
            return make([data[f] if f in data else defaults[f] for f in fields])
        except KeyError as exc:
            raise ValueError(f"a stored {name} has no {exc.args[0]!r} (and that field has "
                             f"no default): the table was written by an incompatible zray "
                             f"version; start the GCS on a new storage") from None

    cls.from_storage = staticmethod(from_storage)
    cls.to_storage = cls._asdict
    return cls


@_row
class NodeRow(NamedTuple):
    """A raylet that joined (table ``nodes``)."""
    node_id: NodeId
    address: Endpoint           # the raylet's ROUTER over TCP (locally: its IPC socket)
    data_address: Endpoint      # its object-transfer link
    node_ip: str
    hostname: str
    pid: Pid
    resources: Resources        # totals (bundles reserved for placement groups included)
    available: ResourceLevels   # free now, as last reported (minus what the GCS reserved since)
    arena_size: Count
    store_used: Count
    alive: bool
    start_time: float
    session_dir: str
    stats: dict = {}            # usage the raylet samples (see Heartbeat.stats)
    end_time: OptFloat = None   # when it was declared dead


@_row
class JobRow(NamedTuple):
    """A driver that connected (table ``jobs``)."""
    job_id: JobId
    driver_pid: Pid
    driver_address: OptPeerAddress
    namespace: str
    sys_path: Strings
    cwd: str
    start_time: float
    end_time: OptFloat = None
    alive: bool = True


@_row
class ActorRow(NamedTuple):
    """An actor (table ``actors``; stays in the GCS: readers get an
    ActorSummary or an ActorInfo). States: ``ACTOR_STATES``."""
    actor_id: ActorId
    spec: TaskSpecFields        # the creation TaskSpec
    name: str
    namespace: str
    detached: bool
    max_restarts: int
    restarts: Count
    class_name: str
    handle_meta: bytes          # what a handle needs (pickled), for get_actor
    job_id: JobId
    state: str
    address: OptEndpoint        # its ROUTER when ALIVE, else ""
    node_id: OptId              # where it lives (or its creation task went)
    pid: Pid
    worker_id: OptId
    incarnation: Count          # how many times it started
    owner_worker_id: WorkerId
    owner_node_id: NodeId
    death_message: str
    death_error: bytes          # serialized cause when the constructor raised
    no_restart: bool
    start_time: float
    end_time: OptFloat = None


@_row
class ActorSummary(NamedTuple):
    """An actor as ``list_actors``, the CLI and the dashboard show it."""
    actor_id: ActorId
    name: str
    namespace: str
    class_name: str
    state: str
    node_id: OptId
    pid: Pid
    restarts: Count
    detached: bool
    job_id: JobId
    death_message: str
    start_time: float
    end_time: OptFloat = None


@_row
class PlacementGroupRow(NamedTuple):
    """A placement group (table ``placement_groups``); states ``PG_*``."""
    pg_id: PgId
    name: str
    bundles: ResourceList
    strategy: str
    job_id: JobId
    detached: bool
    state: str
    nodes: BundleNodes
    created_at: float = 0.0


_KINDS.update({
    "OptFloat": (object, _opt_float),
    "NodeRowFields": (list, _row_check(NodeRow)),
    "OptJobRowFields": (list, _row_check(JobRow, optional=True)),
    "ActorSummaryFields": (list, _row_check(ActorSummary)),
    "NodeRows": (list, _rows_check(NodeRow)), "JobRows": (list, _rows_check(JobRow)),
    "ActorSummaries": (list, _rows_check(ActorSummary)),
    "PlacementGroupRows": (list, _rows_check(PlacementGroupRow)),
    "ByteStrings": (list, _list_of(bytes, None, "bytes")),
    "BundleNodes": (list, _bundle_nodes),
    "JobRowFields": (list, _row_check(JobRow)),
})
for _cls in (NodeRow, JobRow, ActorRow, ActorSummary, PlacementGroupRow):
    _typed(_cls)        # again: the kinds above are known now


def _as_row(record, field: str, doc: str) -> property:
    """A property reading the row in ``field`` (a list) as a ``record``."""
    return property(lambda self: record._make(getattr(self, field)), doc=doc)


def _as_rows(record, field: str, doc: str) -> property:
    """A property reading the rows in ``field`` (lists) as ``record``s."""
    return property(lambda self: [record._make(r) for r in getattr(self, field)], doc=doc)


# -- events of the GCS stream (the payload after the topic frame) ------------------

#: NodeEvent.event
NODE_ADDED, NODE_REMOVED = "added", "removed"
#: JobEvent.event
JOB_STARTED, JOB_FINISHED = "started", "finished"


@_declare(200)
class NodeEvent(NamedTuple):
    """TOPIC_NODE: a node joined (NODE_ADDED) or died (NODE_REMOVED, ``reason``)."""
    event: str
    row: NodeRowFields
    reason: str = ""

    node = _as_row(NodeRow, "row", "the node, as a NodeRow")


@_declare(201)
class ResourcesEvent(NamedTuple):
    """TOPIC_RESOURCES: a node's report (free and total resources, usage)."""
    node_id: NodeId
    available: ResourceLevels
    total: Resources
    stats: dict = {}


@_declare(202)
class JobEvent(NamedTuple):
    """TOPIC_JOB: a job started (JOB_STARTED) or finished (JOB_FINISHED)."""
    event: str
    row: JobRowFields

    job = _as_row(JobRow, "row", "the job, as a JobRow")


@_declare(203)
class ActorEvent(NamedTuple):
    """TOPIC_ACTOR: an actor changed state (``event`` is its new state)."""
    event: str
    row: ActorSummaryFields

    actor = _as_row(ActorSummary, "row", "the actor, as an ActorSummary")


@_declare(204)
class WorkerDiedEvent(NamedTuple):
    """TOPIC_WORKER: a worker or driver died (worker_id b"": every one of node_id)."""
    worker_id: OptId
    node_id: NodeId
    message: str


@_declare(205)
class LogEvent(NamedTuple):
    """log_topic(job_id): lines a worker of that job printed."""
    pid: Pid
    node_ip: str
    lines: Strings


@_declare(206)
class TaskRowsEvent(NamedTuple):
    """TOPIC_TASK_EVENTS: the task rows a batch changed (dicts, as TaskEventsReply's)."""
    rows: list


# -- replies of GCS (and raylet) queries that return a value -----------------------

@_declare(210)
class NodesReply(NamedTuple):
    """GetNodes: every node the GCS knows, dead ones too."""
    rows: NodeRows

    nodes = _as_rows(NodeRow, "rows", "the nodes, as NodeRow records")


@_declare(211)
class ClusterInfoReply(NamedTuple):
    """GetClusterInfo: nodes and jobs, and what the GCS says of itself."""
    node_rows: NodeRows
    job_rows: JobRows
    pub_address: Endpoint
    cluster_id: str
    storage: str               # the storage backend's class name
    requests_served: Count

    nodes = _as_rows(NodeRow, "node_rows", "the nodes, as NodeRow records")

    jobs = _as_rows(JobRow, "job_rows", "the jobs, as JobRow records")


@_declare(212)
class RegisterJobReply(NamedTuple):
    job_id: JobId
    pub_address: Endpoint


@_declare(213)
class JobReply(NamedTuple):
    """GetJob: the job's row, [] when there is no such job."""
    row: OptJobRowFields

    @property
    def job(self) -> JobRow | None:
        return JobRow._make(self.row) if self.row else None


@_declare(214)
class KVValueReply(NamedTuple):
    """KVGet, GetFunction: the value, if ``found``."""
    found: bool
    value: bytes = b""


@_declare(215)
class KVPutReply(NamedTuple):
    added: bool                # False: the key existed and overwrite was False


@_declare(216)
class KVDeleteReply(NamedTuple):
    deleted: bool              # False: there was no such key


@_declare(217)
class KVKeysReply(NamedTuple):
    keys: ByteStrings


@_declare(218)
class RegisterActorReply(NamedTuple):
    """RegisterActor: ``created`` False when get_if_exists found the live
    actor of that name (its id and handle meta are those of that actor)."""
    created: bool
    actor_id: ActorId
    handle_meta: bytes


@_declare(219)
class NamedActorReply(NamedTuple):
    """GetNamedActor: the live actor of that name; actor_id b"" when none."""
    actor_id: OptId
    handle_meta: bytes = b""


@_declare(220)
class ActorsReply(NamedTuple):
    """ListActors: every actor the GCS knows."""
    rows: ActorSummaries

    actors = _as_rows(ActorSummary, "rows", "the actors, as ActorSummary records")


@_declare(221)
class PlacementGroupsReply(NamedTuple):
    """GetPlacementGroups: the groups asked for."""
    rows: PlacementGroupRows

    groups = _as_rows(PlacementGroupRow, "rows", "the groups, as PlacementGroupRow records")


@_declare(222)
class StoreStatsReply(NamedTuple):
    """GetStoreStats (raylet): the store's counters (used, capacity, ...)."""
    stats: dict


# --------------------------------------------------------------------------
# Pub/sub topics of the GCS event stream
# --------------------------------------------------------------------------

TOPIC_NODE = b"node"
TOPIC_JOB = b"job"
TOPIC_LOG = b"log:"        # followed by the job id
TOPIC_ACTOR = b"actor"
TOPIC_RESOURCES = b"resources"
TOPIC_TASK_EVENTS = b"task_events"  # payload: TaskRowsEvent
TOPIC_WORKER = b"worker"   # a worker or driver died: WorkerDiedEvent


def log_topic(job_id: bytes) -> bytes:
    return TOPIC_LOG + job_id.hex().encode()


def encode_event(event) -> bytes:
    """The payload of an event record (NodeEvent, ...) after its topic frame."""
    return encode(event)


def decode_event(payload):
    """The event record in a payload of the GCS stream; ProtocolError if it
    is not a well-formed declared record (checked as ``decode`` checks)."""
    return decode(payload)


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


def pack_task_events(fields: list, records: bytes = b"", record_infos: dict | None = None
                     ) -> bytes:
    """``AddTaskEvents.events``: msgpack ``[infos, fields, records,
    record_infos]``.

    ``fields``: the fields of TaskEvents one after another
    (``TASK_EVENT_FIELDS`` per event), each distinct info dict once in
    ``infos`` and an event's ``info`` its index there (so ``fields`` is
    changed: its infos become indexes). ``records``: more events, packed
    ``TASK_EVENT_RECORD``s one after another, their ``info`` a key of
    ``record_infos`` (-1: none)."""
    infos: list = []
    index: dict = {}
    for k in range(_INFO, len(fields), TASK_EVENT_FIELDS):
        info = fields[k]
        if info is not None:
            i = index.get(id(info))         # (``infos`` keeps each one alive: ids stay apart)
            if i is None:
                i = index[id(info)] = len(infos)
                infos.append(info)
            fields[k] = i
    return _packb([infos, fields, records, record_infos or {}])


def unpack_task_events(blob: bytes) -> list:
    """The TaskEvents in an ``AddTaskEvents.events`` blob, each info an entry
    of the batch's infos (shared by the events that had it), the other fields
    not checked yet; ProtocolError as ``unpack_task_event_batch`` says."""
    events, records, record_infos = unpack_task_event_batch(blob)
    for task_id, attempt, state, time_s, start_s, info in TASK_EVENT_RECORD.iter_unpack(records):
        events.append(TaskEvent(task_id, attempt, state, time_s,
                                None if info == -1 else record_infos[info],
                                None if start_s != start_s else start_s))    # NaN: none
    return events


def unpack_task_event_batch(blob: bytes) -> tuple[list, bytes, dict]:
    """An ``AddTaskEvents.events`` blob as ``(events, records,
    record_infos)``: the TaskEvents of its fields (each info an entry of the
    batch's infos, the other fields not checked yet), and its packed
    records, each one's info index -1 or a key of ``record_infos`` (checked
    here). ProtocolError if the blob is not ``[infos, fields, records,
    record_infos]`` (or the first two alone) with ``TASK_EVENT_FIELDS``
    fields per event and whole records, or an info index is not one."""
    try:
        infos, fields, *packed = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for junk
        raise ProtocolError(f"task events are not msgpack [infos, fields, records, "
                            f"record infos] ({type(exc).__name__}: {exc})") from None
    records, record_infos = packed if len(packed) == 2 else (b"", {})
    if not isinstance(infos, list) or not isinstance(fields, list) \
            or len(fields) % TASK_EVENT_FIELDS or len(packed) not in (0, 2) \
            or not isinstance(records, bytes) or len(records) % TASK_EVENT_RECORD.size \
            or not isinstance(record_infos, dict):
        got = f"{len(fields)} fields" if isinstance(fields, list) else type(fields).__name__
        raise ProtocolError(f"task events are not msgpack [infos, fields, records, record "
                            f"infos] with {TASK_EVENT_FIELDS} fields per event and whole "
                            f"{TASK_EVENT_RECORD.size}-byte records (got "
                            f"{type(infos).__name__}, {got}, {len(packed)} more)")
    events = []
    for i in range(0, len(fields), TASK_EVENT_FIELDS):
        one = fields[i:i + TASK_EVENT_FIELDS]
        info = one[_INFO]
        if info is not None:
            if type(info) is not int or not 0 <= info < len(infos):
                raise ProtocolError(f"task event {i // TASK_EVENT_FIELDS}: info {info!r} is "
                                    f"not an index of the batch's {len(infos)} infos")
            one[_INFO] = infos[info]
        events.append(TaskEvent(*one))
    for index in task_event_record_infos(records):
        if index != -1 and index not in record_infos:
            raise ProtocolError(f"task event record: info {index} is not one of the "
                                f"batch's {len(record_infos)} record infos")
    return events, records, record_infos


def task_event_record_infos(records) -> set[int]:
    """The info indexes (``TASK_EVENT_RECORD``'s last field, an int32) that
    packed records name, each once; read off the bytes, not record by record."""
    size = TASK_EVENT_RECORD.size
    named = set(zip(records[size - 4::size], records[size - 3::size],
                    records[size - 2::size], records[size - 1::size]))
    return {int.from_bytes(bytes(index), "little", signed=True) for index in named}


def message_types() -> dict[int, type]:
    """Every declared message by code (for docs and tests)."""
    return dict(_BY_CODE)
