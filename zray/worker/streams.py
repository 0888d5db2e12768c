"""Generator tasks, the owner's side (a part of CoreWorker): the items a
generator yields arrive one by one (GeneratorItem) and are handed out in
order; the stream ends with its count in the task's "done" object.
"""
from __future__ import annotations

from ..broker import protocol as p
from ..object_ref import ObjectRef

#: the return index of a generator task's "done" object (its value: the count)
GEN_DONE_INDEX = 0xFFFFFFFF


class GeneratorState:
    __slots__ = ("items", "count", "received")

    def __init__(self):
        self.items: dict[int, bytes] = {}     # index -> item not yet handed out
        self.count = None
        self.received = 0                     # indexes below this have arrived


class Streams:
    """Methods of CoreWorker for generator streams; they use its lock
    (``cond``) and object table."""

    def _on_generator_item(self, msg: p.GeneratorItem) -> None:
        with self.cond:
            gen = self.generators.get(msg.task_id)
            if gen is None or msg.task_id not in self.tasks:
                self._free_orphans([msg.ret])
                return
            entry = self.refs.add_owned(msg.ret[0], msg.ret)
            entry.held = True
            gen.items[msg.index] = msg.ret[0]
            gen.received = max(gen.received, msg.index + 1)
            self._wake()

    def next_generator_item(self, task_id: bytes, index: int, timeout=None):
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
                    return ObjectRef(object_id, self.address, self)
                if gen.count is not None and index >= gen.count:
                    self.generators.pop(task_id, None)
                    return None
                self._wait_locked(None)

    def drop_generator(self, task_id: bytes) -> None:
        with self.cond:
            gen = self.generators.pop(task_id, None)
            if gen is None:
                return
            for object_id in gen.items.values():
                entry = self.refs.get(object_id)
                if entry is not None:
                    entry.held = False
                    entry.local += 1
                    self.released_refs.append(object_id)
