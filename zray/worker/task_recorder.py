"""An executor's record of the tasks it runs: their starts, and their ends packed.

``Recorder`` is the C one (``_task_recorder.c``, built at install) when it
was built, else ``PyRecorder``, which does the same in Python. The executor
notes each task it runs here, twice (``start`` as it starts, ``finish`` as it
ends). In C that costs an actor's call well under half of what the same
noting costs in Python (a tuple, a dict entry, a packed bytes and two floats
per task): 0.8-1.8 against 2.4-3.0 us of the actor's CPU per call, measured
with ``benchmarks/task_events_toggle.py``, on calls of 20-35 us.

What a caller may rely on, in both:
- ``start(task_id, attempt, info)`` notes that the task starts now and gives
  its slot, an int (``info``: any object; an int is an index of infos the
  reporter registered).
- ``finish(slot)`` notes that it finished now: packs the record
  (``p.TASK_EVENT_RECORD``: task id, attempt, the finished state, now, its
  start, info) and returns None; or, when the record cannot hold it (``info``
  not an int32, attempt past 32 bits, a task id longer than 16 bytes),
  forgets it and returns ``(task_id, attempt, start, info)`` for the caller
  to report otherwise. KeyError for a slot not started; a slot finished or
  popped may be given again to a task started later (the C one reuses
  them), so each is finished or popped once.
- ``pop(task_id)``: ``(attempt, start, info)`` of its start, forgotten; None
  when it is not running.
- ``start`` and ``pop`` take a task id as ``bytes`` (TypeError otherwise),
  ``start`` an attempt of 0 or more.
- ``running()``: ``(task_id, attempt, start, info)`` of each task started and
  not finished.
- ``take()``: ``(records, infos)``: the packed records so far, joined (the
  oldest first), and the distinct info indexes they name (in no set
  order); emptied.
- ``len()``: the records waiting.
- Any thread may call any of them: each is atomic under the GIL.
"""
from __future__ import annotations

import itertools
import struct
import time

from ..broker import protocol as p

_pack = p.TASK_EVENT_RECORD.pack
_time = time.time
_ID_SIZE = 16       # TASK_EVENT_RECORD's task id ("16s")


class PyRecorder:
    """The recorder in Python (see the module's docstring)."""

    def __init__(self, finished_state: int):
        self._state = finished_state
        self._slots: dict = {}          # slot -> (task_id, attempt, start, info)
        self._next_slot = itertools.count()
        self._records: list = []        # packed, each bytes

    def start(self, task_id: bytes, attempt: int, info) -> int:
        if task_id.__class__ is not bytes:
            raise TypeError(f"start: task_id must be bytes, not {type(task_id).__name__}")
        if attempt < 0:
            raise ValueError(f"start: attempt must be 0 or more, not {attempt}")
        slot = next(self._next_slot)
        self._slots[slot] = (task_id, attempt, _time(), info)
        return slot

    def finish(self, slot: int):
        task_id, attempt, start, info = begun = self._slots.pop(slot)
        if info.__class__ is int and len(task_id) <= _ID_SIZE:
            try:
                self._records.append(_pack(task_id, attempt, self._state, _time(), start, info))
                return None
            except struct.error:        # attempt or info out of the record's range
                pass
        return begun

    def pop(self, task_id: bytes):
        if task_id.__class__ is not bytes:
            raise TypeError(f"pop: task_id must be bytes, not {type(task_id).__name__}")
        for slot, (started, attempt, start, info) in self._slots.copy().items():
            if started == task_id:
                if self._slots.pop(slot, None) is not None:     # (not taken meanwhile)
                    return attempt, start, info
        return None

    def running(self) -> list:
        return list(self._slots.copy().values())

    def take(self) -> tuple[bytes, list]:
        records = self._records
        count = len(records)
        taken = records[:count]
        del records[:count]         # (records appended meanwhile stay)
        joined = b"".join(taken)
        return joined, sorted(p.task_event_record_infos(joined))

    def __len__(self) -> int:
        return len(self._records)


try:
    from ._task_recorder import Recorder
except ImportError:             # not built (no C compiler at install): the same, slower
    Recorder = PyRecorder
