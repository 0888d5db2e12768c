"""zray's exceptions, with Ray's names so ``except ray.exceptions.X`` works.

    RayError
    ├── RayTaskError            a task raised; also an instance of the cause's class
    ├── GetTimeoutError         (also a TimeoutError)
    ├── TaskCancelledError
    ├── WorkerCrashedError
    ├── ObjectLostError
    │   └── OwnerDiedError
    ├── ObjectStoreFullError
    ├── RaySystemError          zray itself failed
    │   └── NodeDiedError       the node this process relies on died
    └── RayActorError
        └── ActorDiedError
"""
from __future__ import annotations


class RayError(Exception):
    """Base of every zray error."""


class RaySystemError(RayError):
    """zray itself failed (a daemon is unreachable, a protocol error, ...)."""


class NodeDiedError(RaySystemError):
    """A node died: for a driver or worker, the raylet of its own node.

    Every call that needs that node (``get``/``wait`` of objects not yet in
    hand, task and actor submissions, ``put``) raises it from then on; the
    process can only ``shutdown()`` and ``init()`` again. ``node_id`` (hex)
    and ``raylet_pid`` name what died, when known."""

    def __init__(self, message: str = "the node died", node_id: str = "",
                 raylet_pid: int = 0):
        super().__init__(message)
        self.node_id = node_id
        self.raylet_pid = raylet_pid

    def __reduce__(self):
        return (type(self), (str(self), self.node_id, self.raylet_pid))


class RayTaskError(RayError):
    """A task raised. ``cause`` is the original exception, ``traceback_str``
    the remote traceback. ``as_instanceof_cause()`` gives an exception that is
    also an instance of the cause's class, which is what ``get`` raises."""

    def __init__(self, function_name: str = "", traceback_str: str = "", cause=None,
                 pid: int = 0, ip: str = ""):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.ip = ip
        super().__init__(self._message())

    def _message(self) -> str:
        return (f"{type(self.cause).__name__ if self.cause else 'Error'} raised in "
                f"{self.function_name} (pid={self.pid}, ip={self.ip})\n{self.traceback_str}")

    def __reduce__(self):
        return (_rebuild_task_error,
                (self.function_name, self.traceback_str, self.cause, self.pid, self.ip))

    def __str__(self):
        return self._message()

    def as_instanceof_cause(self) -> "RayTaskError":
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(RayTaskError, cause_cls) \
                or isinstance(self.cause, RayTaskError):
            return self
        try:
            dual = _dual_classes.get(cause_cls)
            if dual is None:
                dual = type(f"RayTaskError({cause_cls.__name__})", (RayTaskError, cause_cls),
                            {"__init__": _dual_init, "__reduce__": RayTaskError.__reduce__,
                             "__str__": RayTaskError.__str__})
                _dual_classes[cause_cls] = dual
            err = dual(self.function_name, self.traceback_str, self.cause, self.pid, self.ip)
            return err
        except TypeError:          # the cause's class cannot be subclassed
            return self


_dual_classes: dict = {}


def _dual_init(self, function_name, traceback_str, cause, pid, ip):
    RayTaskError.__init__(self, function_name, traceback_str, cause, pid, ip)
    self.args = getattr(cause, "args", ())


def _rebuild_task_error(function_name, traceback_str, cause, pid, ip):
    return RayTaskError(function_name, traceback_str, cause, pid, ip)


class GetTimeoutError(RayError, TimeoutError):
    """``get`` did not finish within its timeout."""


class GcsUnreachableError(RaySystemError, TimeoutError):
    """A call that needs the GCS found no GCS for ``gcs_reconnect_timeout_s``
    (the message names its address)."""


class TaskCancelledError(RayError):
    """The task was cancelled with ``zray.cancel``."""

    def __init__(self, message: str = "the task was cancelled"):
        super().__init__(message)


class WorkerCrashedError(RayError):
    """The worker running the task died, and the task had no retries left."""


class ObjectLostError(RayError):
    """The object's value is gone and cannot be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """The process that owned the object died."""


class ObjectStoreFullError(RayError, MemoryError):
    """The object store is full and nothing could be evicted or spilled.

    Raised by ``put`` (or a task storing its result) at once for an object
    larger than the whole store, else when the store stayed full of pinned
    and half-written objects for ``object_store_full_timeout_s``. The message
    says how much is pinned and by whom (which driver or worker, running
    which task, holding which objects): drop those ObjectRefs and the arrays
    or views obtained from them, or raise ``object_store_memory``."""


class RayActorError(RayError):
    """The actor died or could not be created."""

    def __init__(self, message: str = "the actor died", cause=None):
        super().__init__(message)
        self.cause = cause


class ActorDiedError(RayActorError):
    """The actor is dead; ``cause`` is why, when known."""


class ActorUnavailableError(RayActorError):
    """The actor is restarting and cannot take the call now."""


class CrossLanguageError(RayError):
    pass


#: names a daemon may send in a TaskFailed message
BY_NAME = {cls.__name__: cls for cls in (
    RayError, RaySystemError, NodeDiedError, GetTimeoutError, TaskCancelledError,
    WorkerCrashedError, ObjectLostError, OwnerDiedError, ObjectStoreFullError, RayActorError,
    ActorDiedError, ActorUnavailableError)}
