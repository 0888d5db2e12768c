"""``@zray.remote`` on a function: a ``RemoteFunction`` whose ``.remote()``
submits a task and returns its ObjectRef(s)."""
from __future__ import annotations

import functools
import inspect
import numbers

from .broker import protocol as p
from .util.scheduling_strategies import (PlacementGroupSchedulingStrategy, placed_resources,
                                         strategy_options)
from .worker.global_state import require_worker

TASK_OPTIONS = {
    "num_cpus": 1, "num_gpus": 0, "memory": 0, "resources": None, "num_returns": 1,
    "max_retries": 3, "retry_exceptions": False, "name": None, "scheduling_strategy": None,
    "runtime_env": None, "max_calls": 0, "accelerator_type": None, "label_selector": None,
    "_metadata": None, "placement_group": None, "placement_group_bundle_index": -1,
    "placement_group_capture_child_tasks": None, "enable_task_events": True,
}


def validate_options(options: dict, allowed: dict, what: str) -> dict:
    """Check option names and values; raise ValueError/TypeError saying what is wrong."""
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"Invalid option keyword {key!r} for {what}. "
                             f"Valid ones are: {', '.join(sorted(allowed))}")
        if key in ("num_cpus", "num_gpus", "memory") and value is not None:
            if not isinstance(value, numbers.Number) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be a number >= 0, got {value!r}")
        if key == "resources" and value is not None:
            if not isinstance(value, dict):
                raise TypeError(f"resources must be a dict, got {type(value).__name__}")
            for name, amount in value.items():
                if name in ("CPU", "GPU"):
                    raise ValueError("Use the 'num_cpus' and 'num_gpus' keywords instead of "
                                     "'CPU' and 'GPU' in 'resources'")
                if not isinstance(amount, numbers.Number) or amount < 0:
                    raise ValueError(f"resource {name!r} must be a number >= 0, got {amount!r}")
        if key == "max_retries" and (not isinstance(value, int) or value < -1):
            raise ValueError(f"max_retries must be an int >= -1, got {value!r}")
    return options


def resource_request(opts: dict) -> dict:
    """The resources a task or actor asks for, as the raylet counts them."""
    request = {}
    if opts.get("num_cpus"):
        request["CPU"] = float(opts["num_cpus"])
    if opts.get("num_gpus"):
        request["GPU"] = float(opts["num_gpus"])
    if opts.get("memory"):
        request["memory"] = float(opts["memory"])
    for name, amount in (opts.get("resources") or {}).items():
        if amount:
            request[name] = float(amount)
    return request


def parse_num_returns(value, is_generator: bool) -> int:
    if value in ("streaming", "dynamic") or (is_generator and value is None):
        return p.STREAMING
    if value is None:
        return 1
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"num_returns must be an int >= 0 or 'streaming', got {value!r}")
    return value


def _strategy_of(opts: dict):
    """The scheduling strategy, including Ray's older ``placement_group=`` option."""
    if opts.get("placement_group") not in (None, "default"):
        return PlacementGroupSchedulingStrategy(opts["placement_group"],
                                                opts.get("placement_group_bundle_index", -1))
    return opts.get("scheduling_strategy")


class RemoteFunction:
    def __init__(self, function, options: dict):
        if not callable(function):
            raise TypeError(f"@zray.remote needs a function or a class, got {function!r}")
        self._function = function
        self._name = getattr(function, "__qualname__", repr(function))
        self._is_generator = inspect.isgeneratorfunction(function)
        self._options = {**TASK_OPTIONS, **validate_options(options, TASK_OPTIONS,
                                                            "remote functions")}
        if "num_returns" not in options:
            self._options["num_returns"] = None
        self._exported = (None, None)   # (core worker, hash)
        functools.update_wrapper(self, function, updated=())

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Remote functions cannot be called directly. Instead of running "
                        f"'{self._name}()', try '{self._name}.remote()'.")

    def remote(self, *args, **kwargs):
        return self._remote(args, kwargs, self._options)

    def options(self, **options):
        validate_options(options, TASK_OPTIONS, "remote functions")
        merged = {**self._options, **options}
        func = self

        class FunctionWithOptions:
            def remote(self, *args, **kwargs):
                return func._remote(args, kwargs, merged)

            def options(self, **more):
                return func.options(**{**options, **more})

        return FunctionWithOptions()

    def _remote(self, args, kwargs, opts):
        worker = require_worker()
        cached_worker, digest = self._exported
        if cached_worker is not worker:
            digest = worker.functions.export(self._function)
            self._exported = (worker, digest)
        num_returns = parse_num_returns(opts["num_returns"], self._is_generator)
        retry = opts["retry_exceptions"]
        if isinstance(retry, (list, tuple)):
            retry = tuple(retry)
        strategy = _strategy_of(opts)
        return worker.submit_task(
            digest, opts["name"] or self._name, args, kwargs, num_returns,
            placed_resources(resource_request(opts), strategy), opts["max_retries"], retry,
            options=strategy_options(strategy))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_exported"] = (None, None)     # the cache holds this process's sockets
        return state

    def __repr__(self):
        return f"<zray remote function {self._name}>"
