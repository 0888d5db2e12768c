"""Actors: ``@zray.remote`` on a class gives an ``ActorClass``; ``.remote()``
creates the actor (through the GCS, which schedules and restarts it) and
returns an ``ActorHandle`` whose method calls go straight to the actor's
worker, one hop each way."""
from __future__ import annotations

import inspect
import os

import cloudpickle

from . import exceptions as exc
from .broker import protocol as p
from .broker.rpc import RemoteError
from .remote_function import (_strategy_of, parse_num_returns, resource_request,
                              validate_options)
from .util.scheduling_strategies import (PlacementGroupSchedulingStrategy, placed_resources,
                                         strategy_options)
from .worker.global_state import require_worker

ACTOR_OPTIONS = {
    "num_cpus": None, "num_gpus": 0, "memory": 0, "resources": None, "name": None,
    "namespace": None, "lifetime": None, "get_if_exists": False, "max_restarts": 0,
    "max_task_retries": 0, "max_concurrency": None, "scheduling_strategy": None,
    "runtime_env": None, "max_pending_calls": -1, "concurrency_groups": None,
    "accelerator_type": None, "label_selector": None, "_metadata": None,
    "placement_group": None, "placement_group_bundle_index": -1,
    "placement_group_capture_child_tasks": None, "enable_task_events": True,
    "object_store_memory": None,
}


def method(*, num_returns=1, concurrency_group=None, max_task_retries=None, **_):
    """``@zray.method(num_returns=N)`` on an actor method."""
    def wrap(fn):
        fn.__zray_num_returns__ = num_returns
        return fn
    return wrap


def _method_table(cls) -> dict:
    table = {}
    for name, member in inspect.getmembers(cls):
        if name == "__init__" or not (inspect.isfunction(member) or inspect.ismethod(member)):
            continue
        fn = member
        is_gen = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        table[name] = {
            "num_returns": parse_num_returns(getattr(fn, "__zray_num_returns__", None), is_gen),
            "is_async": inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn),
        }
    return table


class ActorClass:
    """What ``@zray.remote`` makes of a class."""

    def __init__(self, cls, options: dict):
        self._cls = cls
        self._name = cls.__qualname__
        validate_options(options, ACTOR_OPTIONS, "actors")
        self._options = {**ACTOR_OPTIONS, **options}
        self._methods = _method_table(cls)
        self._exported = (None, None)
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__module__ = cls.__module__

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_exported"] = (None, None)     # the cache holds this process's sockets
        return state

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actors cannot be instantiated directly. Instead of "
                        f"'{self._name}()', use '{self._name}.remote()'.")

    def remote(self, *args, **kwargs) -> "ActorHandle":
        return self._remote(args, kwargs, self._options)

    def options(self, **options):
        validate_options(options, ACTOR_OPTIONS, "actors")
        merged = {**self._options, **options}
        cls = self

        class ActorClassWithOptions:
            def remote(self, *args, **kwargs):
                return cls._remote(args, kwargs, merged)

        return ActorClassWithOptions()

    def _remote(self, args, kwargs, opts) -> "ActorHandle":
        worker = require_worker()
        cached, digest = self._exported
        if cached is not worker:
            digest = worker.functions.export(self._cls)
            self._exported = (worker, digest)
        lifetime = opts["lifetime"]
        if lifetime not in (None, "detached", "non_detached"):
            raise ValueError(f"lifetime must be 'detached' or 'non_detached', got {lifetime!r}")
        name = opts["name"] or ""
        if not isinstance(name, str):
            raise TypeError(f"actor name must be a string, got {type(name).__name__}")
        namespace = opts["namespace"] if opts["namespace"] is not None else worker.namespace
        is_async = any(m["is_async"] for m in self._methods.values())
        concurrency = opts["max_concurrency"] or (1000 if is_async else 1)
        if type(concurrency) is not int or concurrency < 1:
            raise ValueError(f"max_concurrency must be a positive integer (calls this actor "
                             f"runs at once), got {opts['max_concurrency']!r}")
        detached = lifetime == "detached"
        # "owner": where handles are counted (none for a detached actor, which
        # never goes out of scope); travels to get_actor() callers too.
        meta = {"class_name": self._name, "methods": self._methods,
                "max_task_retries": opts["max_task_retries"],
                "owner": None if detached else list(worker.address)}
        meta_blob = cloudpickle.dumps(meta)
        actor_id = os.urandom(16)
        strategy = _strategy_of(opts)
        request, held = _actor_resources(opts, strategy)
        spec, contained = worker.actor_creation_spec(
            actor_id, digest, self._name, args, kwargs,
            placed_resources(request, strategy),
            {"max_concurrency": concurrency, "is_async": is_async,
             "detached": detached, **held, **strategy_options(strategy)})
        try:
            reply = worker.gcs.call(p.RegisterActor(
                actor_id, list(spec), name, namespace, lifetime == "detached",
                opts["max_restarts"], bool(opts["get_if_exists"]), self._name,
                meta_blob))
            created, actor_id, meta_blob = reply.created, reply.actor_id, reply.handle_meta
        except RemoteError as err:
            if err.error_type == "ValueError":
                raise ValueError(err.message) from None
            raise
        meta = cloudpickle.loads(meta_blob)
        if created:
            worker.watch_creation(actor_id, self._name, spec.resources, contained)
        if created and not detached:
            ref = worker.own_actor_handle(actor_id)
        else:                   # get_if_exists found one: borrow it from its owner
            ref = worker.borrow_actor_handle(actor_id, meta.get("owner"))
        return ActorHandle(actor_id, meta, worker.gcs_address, ref)


def _actor_resources(opts: dict, strategy) -> tuple[dict, dict]:
    """What placing the actor asks for, and the spec options saying what it
    holds while it lives. As in Ray: without ``num_cpus=`` an actor needs 1
    CPU to be placed and holds none after (a node hosts many idle actors);
    an explicit ``num_cpus=`` is held for the actor's lifetime."""
    request = resource_request(opts)
    if opts["num_cpus"] is not None or isinstance(strategy, PlacementGroupSchedulingStrategy):
        return request, {}
    return {**request, "CPU": 1.0}, {"held_resources": dict(request)}


class ActorHandle:
    """A reference to an actor; it can be passed to tasks and other actors.
    A non-detached actor lives while a handle to it exists in any process
    (handles are counted like ObjectRefs, through ``_actor_ref``) and its
    owner lives; calls submitted through a handle finish first."""

    def __init__(self, actor_id: bytes, meta: dict, gcs_address: str, ref=None):
        self._actor_id = actor_id
        self._meta = meta
        self._gcs_address = gcs_address
        self._actor_ref = ref       # the counted reference (None: not counted)

    def __getattr__(self, name):
        if name.startswith("_actor_") or name in ("_meta", "_gcs_address"):
            raise AttributeError(name)
        info = self._meta["methods"].get(name)
        if info is None:
            raise AttributeError(f"'{self._meta['class_name']}' actor has no method {name!r}")
        method = self.__dict__[name] = ActorMethod(self, name, info)    # found directly next time
        return method

    def __reduce__(self):
        # The ref pickles as a ref: the receiver becomes a borrower.
        return ActorHandle, (self._actor_id, self._meta, self._gcs_address, self._actor_ref)

    def __repr__(self):
        return f"Actor({self._meta['class_name']}, {self._actor_id.hex()})"

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self):
        return hash(self._actor_id)

    def _worker(self):
        return _worker_of(self._gcs_address)


def _worker_of(gcs_address: str):
    """This process's core worker, if it is connected to the cluster at ``gcs_address``."""
    worker = require_worker()
    if worker.gcs_address != gcs_address:
        raise exc.RaySystemError(
            f"this actor handle belongs to the cluster at {gcs_address}, but this "
            f"process is connected to the cluster at {worker.gcs_address}")
    return worker


class ActorMethod:
    """``handle.method``: kept by its handle (a method holds what its calls
    need, not the handle, so a dropped handle is freed at once)."""

    def __init__(self, handle: ActorHandle, name: str, info: dict):
        self._actor_id = handle._actor_id
        self._gcs_address = handle._gcs_address
        self._max_task_retries = handle._meta["max_task_retries"]
        self._actor_ref = handle._actor_ref     # counted: the actor outlives this method
        self._name = name
        self._num_returns = info["num_returns"]

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor methods cannot be called directly. Instead of running "
                        f"'object.{self._name}()', try 'object.{self._name}.remote()'.")

    def remote(self, *args, **kwargs):
        return self._remote(args, kwargs, self._num_returns)

    def options(self, num_returns=None, **_):
        num = self._num_returns if num_returns is None else parse_num_returns(num_returns, False)
        method = self

        class MethodWithOptions:
            def remote(self, *args, **kwargs):
                return method._remote(args, kwargs, num)

        return MethodWithOptions()

    def _remote(self, args, kwargs, num_returns):
        return _worker_of(self._gcs_address).submit_actor_task(
            self._actor_id, self._name, args, kwargs, num_returns,
            self._max_task_retries, self._actor_ref)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor now (its pending calls fail with ActorDiedError).
    With ``no_restart=False`` it restarts if it has restarts left."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"zray.kill() takes an actor handle, got {type(actor).__name__}")
    worker = actor._worker()
    worker.gcs.call(p.KillActor(actor._actor_id, no_restart))
    if no_restart:        # calls made after kill() returns must not reach it
        worker.actor_killed(actor._actor_id)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The live actor called ``name`` in ``namespace`` (default: this job's)."""
    worker = require_worker()
    ns = worker.namespace if namespace is None else namespace
    found = worker.gcs.call(p.GetNamedActor(name, ns))
    if not found.actor_id:
        raise ValueError(f"Failed to look up actor with name {name!r} in namespace {ns!r}: "
                         f"no live actor has that name there (check the name and the "
                         f"namespace, and that the actor was created with name=...)")
    meta = cloudpickle.loads(found.handle_meta)
    return ActorHandle(found.actor_id, meta, worker.gcs_address,
                       worker.borrow_actor_handle(found.actor_id, meta.get("owner")))


class ActorExit(SystemExit):
    """Raised by exit_actor(): ends the current actor without a restart."""


def exit_actor() -> None:
    """End the actor this is called in; it is not restarted."""
    worker = require_worker()
    if getattr(worker, "actor_id", None) is None:
        raise TypeError("exit_actor() can only be called inside an actor")
    raise ActorExit(0)
