"""``ActorPool``: spread work over a fixed set of actors, as ``ray.util.ActorPool``."""
from __future__ import annotations

import zray


class ActorPool:
    """Submit ``fn(actor, value)`` calls to whichever actor is idle.

    ``map``/``map_unordered`` yield results in submission / completion order;
    ``submit`` + ``get_next``/``get_next_unordered`` do it one call at a time.
    """

    def __init__(self, actors: list):
        if not actors:
            raise ValueError("ActorPool needs at least one actor")
        self._idle = list(actors)
        self._future_to_actor: dict = {}
        self._index_to_future: dict = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending: list = []        # (fn, value) waiting for an idle actor

    def map(self, fn, values):
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn, values):
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next_unordered()

    def submit(self, fn, value) -> None:
        if self._idle:
            actor = self._idle.pop()
            future = fn(actor, value)
            self._future_to_actor[future] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = future
            self._next_task_index += 1
        else:
            self._pending.append((fn, value))

    def has_next(self) -> bool:
        return bool(self._future_to_actor) or bool(self._pending)

    def has_free(self) -> bool:
        return bool(self._idle) and not self._pending

    def get_next(self, timeout=None, ignore_if_timedout=False):
        """The result of the next call in submission order."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after "
                             "get_next_unordered().")
        future = self._index_to_future[self._next_return_index]
        ready, _ = zray.wait([future], timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError("Timed out waiting for result")
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(future)
        self._return_actor(actor)
        return zray.get(future)

    def get_next_unordered(self, timeout=None, ignore_if_timedout=False):
        """The result of whichever call finishes first."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = zray.wait(list(self._future_to_actor), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError("Timed out waiting for result")
        future = ready[0]
        index, actor = self._future_to_actor.pop(future)
        self._index_to_future.pop(index, None)
        self._next_return_index = max(self._next_return_index, index + 1)
        self._return_actor(actor)
        return zray.get(future)

    def push(self, actor) -> None:
        """Add an idle actor to the pool."""
        self._return_actor(actor)

    def pop_idle(self):
        return self._idle.pop() if self.has_free() else None

    def _return_actor(self, actor) -> None:
        self._idle.append(actor)
        if self._pending:
            fn, value = self._pending.pop(0)
            self.submit(fn, value)
