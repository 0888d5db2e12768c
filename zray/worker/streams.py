"""Generator streams, the owner's side (a part of the core worker): the items
a generator task yields arrive one by one (GeneratorItem) and are handed out
in order; the stream ends with its count in the task's "done" object.

It owns: one ``GeneratorState`` per streaming task that is still read, and
the streams whose ``ObjectRefGenerator`` was garbage collected (``released``).
A caller may rely on: ``next_item`` blocks until item ``index`` arrived or
the stream ended; items nobody took are released with their stream.
Guarded by the core worker's lock (``cond``); ``*_locked`` methods expect it
held.
"""
from __future__ import annotations

import collections

from ..broker import protocol as p
from ..object_ref import ObjectRef
from . import serialization
from .pending_task import return_id

#: the return index of a generator task's "done" object (its value: the count)
GEN_DONE_INDEX = 0xFFFFFFFF


class GeneratorState:
    __slots__ = ("items", "count", "received")

    def __init__(self):
        self.items: dict[int, bytes] = {}     # index -> item not yet handed out
        self.count = None
        self.received = 0                     # indexes below this have arrived


class Streams:
    DONE_INDEX = GEN_DONE_INDEX

    def __init__(self, cond, worker, references):
        self.cond = cond
        self._worker = worker
        self.address = worker.address
        self.references = references
        self.refs = references.refs
        self.generators: dict[bytes, GeneratorState] = {}
        #: task ids of streams whose generator was garbage collected
        self.released: collections.deque = collections.deque()

    def open_locked(self, task_id: bytes) -> None:
        self.generators[task_id] = GeneratorState()

    def item_arrived(self, msg: p.GeneratorItem, is_pending) -> bool:
        """Keep an item of a stream (``is_pending(task_id)``, called with the
        lock held: its task has not ended); False if nobody reads the stream
        (the caller frees the item)."""
        ret = msg.returned
        with self.cond:
            gen = self.generators.get(msg.task_id)
            if gen is None or not is_pending(msg.task_id):
                return False
            entry = self.refs.add_owned(ret.object_id, ret)
            entry.held = True
            gen.items[msg.index] = ret.object_id
            gen.received = max(gen.received, msg.index + 1)
        return True

    def ended_locked(self, task_id: bytes, ret: p.Return) -> None:
        """(lock held) The stream's "done" object arrived: its count."""
        gen = self.generators.get(task_id)
        if gen is not None:
            gen.count = (serialization.deserialize(ret.payload)[1]
                         if ret.kind == p.RET_INLINE else 0)

    def failed_locked(self, task_id: bytes, blob: bytes) -> int:
        """(lock held) The stream's task failed with ``blob``: the error
        comes after the items received. Returns the stream's count."""
        gen = self.generators.get(task_id)
        if gen is None:
            return 0
        index = gen.received
        gen.received += 1
        item_id = return_id(task_id, index + 1)
        entry = self.refs.add_owned(item_id, p.Return(item_id, p.RET_ERROR, blob))
        entry.held = True
        gen.items[index] = item_id
        return gen.received

    def next_item(self, task_id: bytes, index: int):
        """The ref of item ``index`` of a stream, or None past its end."""
        with self.cond:
            while True:
                gen = self.generators.get(task_id)
                if gen is None:
                    return None
                object_id = gen.items.get(index)
                if object_id is not None:
                    entry = self.refs.get(object_id)
                    entry.held = False
                    entry.local += 1
                    del gen.items[index]
                    if gen.count is not None and index + 1 >= gen.count:
                        self.generators.pop(task_id, None)
                    return ObjectRef(object_id, self.address, self._worker)
                if gen.count is not None and index >= gen.count:
                    self.generators.pop(task_id, None)
                    return None
                self._worker.wait_locked(1.0)       # reads the inbox if nobody does

    def drain(self) -> None:
        """Drop the streams whose generator was garbage collected."""
        while self.released:
            try:
                task_id = self.released.popleft()
            except IndexError:
                break
            self.drop(task_id)

    def drop(self, task_id: bytes) -> None:
        with self.cond:
            gen = self.generators.pop(task_id, None)
            if gen is None:
                return
            for object_id in gen.items.values():
                entry = self.refs.get(object_id)
                if entry is not None:
                    entry.held = False
                    entry.local += 1
                    self.references.released.append(object_id)
