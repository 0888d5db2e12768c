"""``ObjectRef``: a reference to a value that exists, or will, somewhere in the
cluster; and ``ObjectRefGenerator``, what calling a generator task returns.

A ref is counted by the process it lives in: creating one adds a reference,
its garbage collection removes one. When no process refers to an object any
more, its owner frees it everywhere.
"""
from __future__ import annotations

from .worker import global_state


class ObjectRef:
    __slots__ = ("_id", "_owner", "_worker", "__weakref__")

    def __init__(self, object_id: bytes, owner, worker=None):
        self._id = object_id
        self._owner = owner           # protocol.Address as a tuple/list
        self._worker = worker         # the CoreWorker counting this ref, or None

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> bytes:
        return self._id[:16]

    @property
    def owner_address(self):
        return self._owner

    def __repr__(self):
        return f"ObjectRef({self._id.hex()})"

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self):
        return hash(self._id)

    def __reduce__(self):
        from .worker.serialization import collecting_refs
        refs = collecting_refs()
        if refs is not None:
            refs.append(self)
        return _rebuild_ref, (self._id, tuple(self._owner))

    def __del__(self):
        worker = self._worker
        if worker is not None:
            try:
                worker.released_refs.append(self._id)
            except AttributeError:      # the worker is torn down (interpreter exit)
                return

    def __await__(self):
        from .worker.global_state import require_worker
        return require_worker().await_ref(self).__await__()

    def future(self):
        """A ``concurrent.futures.Future`` resolved with the value."""
        from .worker.global_state import require_worker
        return require_worker().future_of(self)


def _rebuild_ref(object_id: bytes, owner) -> ObjectRef:
    worker = global_state.worker
    if worker is None:
        return ObjectRef(object_id, owner)
    return worker.deserialized_ref(object_id, owner)


class ObjectRefGenerator:
    """Iterates over the refs a generator task yields, as they are produced."""

    def __init__(self, task_id: bytes, worker, done_ref: ObjectRef):
        self._task_id = task_id
        self._worker = worker
        self._index = 0
        self._done_ref = done_ref     # keeps the stream alive while we iterate

    def __iter__(self):
        return self

    def __next__(self) -> ObjectRef:
        ref = self._worker.next_generator_item(self._task_id, self._index)
        if ref is None:
            raise StopIteration
        self._index += 1
        return ref

    def __aiter__(self):
        return self

    async def __anext__(self) -> ObjectRef:
        import asyncio
        ref = await asyncio.get_running_loop().run_in_executor(
            None, self._worker.next_generator_item, self._task_id, self._index)
        if ref is None:
            raise StopAsyncIteration
        self._index += 1
        return ref

    def __del__(self):
        try:
            self._worker.released_generators.append(self._task_id)
        except AttributeError:          # the worker is torn down (interpreter exit)
            return

    def completed(self) -> ObjectRef:
        """A ref that is ready when the generator has finished."""
        return self._done_ref

    def __repr__(self):
        return f"ObjectRefGenerator({self._task_id.hex()})"


class DynamicObjectRefGenerator:
    """What ``get`` returns for a generator task (``num_returns="dynamic"``):
    the refs of every value it yielded, in order, once it has finished."""

    def __init__(self, refs: list):
        self._refs = list(refs)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self):
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"
