"""The task event table: one row per task, its latest state and its history.

Core workers send the state changes they see in batches (``AddTaskEvents``):
owners their tasks' submission, scheduling and end, executors when a task
runs and how it ended. Batches from different processes arrive in any order,
so a row's state is the furthest one reached by its latest attempt (a
FAILED beats a FINISHED of the same attempt), never the last one received.

The table keeps at most ``max_rows`` rows (``config.task_events_max``): a new
task beyond that drops the oldest row, and ``dropped`` counts the dropped
rows together with the events workers could not deliver.

A batch is not read when it arrives: it waits, packed as it came, until the
table is read (every reading method applies what waits first) or the GCS
has idle time for it (``apply_waiting`` in slices). So a burst of tasks
does not share its cores with the GCS building rows nobody looks at yet.
Past ``max_waiting`` events (or ``MAX_WAITING_BYTES``) the oldest batches
are applied as new ones arrive. Past twice the table's rows of events
waiting, the GCS sheds load: the oldest batch only updates the rows the
table holds, and its other events are dropped unread, counted in
``dropped_events``. In a long burst of short tasks nobody reads, the rows
they would make are dropped for newer ones before any read (the table read
then is the one applying everything makes), and the GCS spends no time
making them; a task whose events straddle that point may lose its older
ones (an owner's PENDING), and a new task of a batch that only updates rows
is dropped, as Ray drops task events under load.
"""
from __future__ import annotations

import collections
import logging
import struct
import time

from ..broker import protocol as p

log = logging.getLogger(__name__)

_STATES = p.TASK_STATES
_RANK = (0, 1, 2, 3, 4, 4)          # FINISHED and FAILED both end an attempt
_TYPES = {p.TASK_NORMAL: "NORMAL_TASK", p.TASK_ACTOR_CREATION: "ACTOR_CREATION_TASK",
          p.TASK_ACTOR_METHOD: "ACTOR_TASK"}
#: state changes kept per row (a task retried many times keeps its latest ones)
MAX_HISTORY = 32
_MAX_TEXT = 4096           # an error message keeps its last 4 KiB (the traceback's end)
#: waiting batches, in bytes at most (an event packs into ~50 bytes)
MAX_WAITING_BYTES = 32 << 20
#: an event packs into at least this many bytes (six fields): how many events a
#: batch's bytes can hold at most, whatever its sender says
_MIN_EVENT_BYTES = 6
#: bytes a waiting batch costs besides its blob
_BATCH_OVERHEAD = 200
#: junk in batches is logged at most once in this many seconds
COMPLAINT_INTERVAL_S = 10.0


_iter_records = p.TASK_EVENT_RECORD.iter_unpack
_RECORD_SIZE = p.TASK_EVENT_RECORD.size
#: the task ids of packed records (each record's first field, 16 bytes)
_iter_record_ids = struct.Struct(f"<16s{_RECORD_SIZE - 16}x").iter_unpack


def _batch_bytes(msg: p.AddTaskEvents) -> int:
    """What a waiting batch holds in memory, about."""
    return len(msg.events) + len(msg.worker_id) + len(msg.node_id) + _BATCH_OVERHEAD


def _hex(value) -> str | None:
    return value.hex() if value else None


def _ms(seconds) -> int | None:
    return None if seconds is None else int(seconds * 1000)


class _Row:
    """One task (compact: the table holds up to 100,000 of these). A row
    made by ``TaskEventManager._new_ended`` sets each field itself."""
    __slots__ = ("task_id", "attempt", "state", "name", "job_id", "actor_id", "type",
                 "node_id", "worker_id", "worker_pid", "created", "start", "end",
                 "error_type", "error_message", "history", "resources", "parent")

    def __init__(self, task_id: bytes):
        self.task_id = task_id
        self.attempt = 0
        self.state = -1
        self.name = ""
        self.job_id = self.actor_id = self.node_id = self.worker_id = b""
        self.type = p.TASK_NORMAL
        self.worker_pid = 0
        self.created = self.start = self.end = None
        self.error_type = self.error_message = None
        self.history: list = []         # [state, time_s, state, time_s, ...]
        self.resources = None
        self.parent = None


_BLANK = _Row(b"")
#: (name, job_id, actor_id, type, resources, parent, error_type,
#: error_message) of a row no info described yet: _Row's defaults
_NO_INFO = (_BLANK.name, _BLANK.job_id, _BLANK.actor_id, _BLANK.type, _BLANK.resources,
            _BLANK.parent, _BLANK.error_type, _BLANK.error_message)
del _BLANK


# How a filter reads each public field off a row (without building the row's dict).
_GETTERS = {
    "task_id": lambda r: r.task_id.hex(),
    "attempt_number": lambda r: r.attempt,
    "name": lambda r: r.name,
    "func_or_class_name": lambda r: r.name,
    "state": lambda r: _STATES[r.state] if r.state >= 0 else None,
    "job_id": lambda r: _hex(r.job_id),
    "actor_id": lambda r: _hex(r.actor_id),
    "node_id": lambda r: _hex(r.node_id),
    "worker_id": lambda r: _hex(r.worker_id),
    "worker_pid": lambda r: r.worker_pid or None,
    "type": lambda r: _TYPES.get(r.type, "NORMAL_TASK"),
    "start_time_ms": lambda r: _ms(r.start),
    "end_time_ms": lambda r: _ms(r.end),
    "creation_time_ms": lambda r: _ms(r.created),
    "error_type": lambda r: r.error_type,
    "error_message": lambda r: r.error_message,
    "parent_task_id": lambda r: _hex(r.parent),
}


class TaskEventManager:
    def __init__(self, max_rows: int, max_waiting: int | None = None):
        self.max_rows = max(1, max_rows)
        #: events waiting to be applied at most (default: three per row the
        #: table holds; past two, the oldest batches shed load: see the module)
        self.max_waiting = 3 * self.max_rows if max_waiting is None else max(0, max_waiting)
        self._waiting: collections.deque = collections.deque()   # (count, AddTaskEvents)
        self.waiting = 0                  # events in them, as their senders counted
        self._waiting_bytes = 0
        self._complained = -COMPLAINT_INTERVAL_S     # see _complain
        self._untold = 0
        self.rows: collections.OrderedDict[bytes, _Row] = collections.OrderedDict()
        self.changed: dict[bytes, _Row] = {}     # since the last take_changed()
        self._held: dict[bytes, _Row] = {}       # changed in the interval before it
        self.unpublished = 0                      # changed rows take_changed() left out
        self.dropped_rows = 0
        self.dropped_events = 0           # lost before they reached the table
        self._names: dict[str, str] = {}  # one string object per task name
        self._shapes: dict[tuple, dict] = {}    # one dict per resource shape
        self._last_shape: dict | None = None
        #: the last info a new row took, and the fields it gave that row: the
        #: next new row with an equal info (the same function, job and actor:
        #: most of a burst) takes them without reading the info again
        self._fresh_info: tuple | None = None
        self._ids: dict[bytes, bytes] = {}

    @property
    def dropped(self) -> int:
        return self.dropped_rows + self.dropped_events

    # -- taking events in ---------------------------------------------------
    def add(self, msg: p.AddTaskEvents) -> None:
        """Take a batch in: it waits to be applied (see the module's doc);
        when too many events wait, the oldest batches are applied now."""
        if type(msg.dropped) is int and msg.dropped > 0:
            self.dropped_events += msg.dropped
        # the sender's count, kept within what its bytes can hold (a batch
        # counts as one event at least, so empty ones cannot pile up)
        count = min(max(msg.count, 1), len(msg.events) // _MIN_EVENT_BYTES + 1)
        self._waiting.append((count, msg))
        self.waiting += count
        self._waiting_bytes += _batch_bytes(msg)
        while self.waiting > self.max_waiting or self._waiting_bytes > MAX_WAITING_BYTES:
            self._apply_batch()

    def apply_waiting(self, max_events: int = 0) -> int:
        """Apply the waiting batches, oldest first: all of them, or (given
        ``max_events``) batches until that many events were applied. The rows
        they change join ``changed``. Returns the events still waiting."""
        goal = self.waiting - max_events if max_events > 0 else 0
        while self._waiting and (self.waiting > goal or not max_events):
            self._apply_batch()
        return self.waiting

    def _apply_batch(self) -> None:
        """Apply the oldest waiting batch. Malformed events are skipped and
        counted in ``dropped_events``; so are all the events of a batch that
        is not a msgpack array of whole events (as many as it claimed, within
        what its bytes could hold). When the events still waiting after it
        could fill the table twice over, it updates only the rows the table
        holds (``_of_held_rows``: load shedding, see the module)."""
        count, msg = self._waiting.popleft()
        self.waiting -= count
        self._waiting_bytes -= _batch_bytes(msg)
        overflow = self.waiting >= 2 * self.max_rows
        try:
            events, records, record_infos = p.unpack_task_event_batch(msg.events)
        except p.ProtocolError as exc:
            self.dropped_events += count
            self._complain("dropped a batch of task events from worker %r: %s",
                           msg.worker_id.hex(), exc)
            return
        bad = 0
        if overflow:
            events, records = self._of_held_rows(events, records)
        for event in events:
            task_id, attempt, state = event.task_id, event.attempt, event.state
            time_s, info, start = event.time_s, event.info, event.start_s
            if type(task_id) is not bytes or type(attempt) is not int or attempt < 0 \
                    or type(state) is not int or not 0 <= state < 6 \
                    or type(time_s) is not float or time_s - time_s \
                    or not self._apply_event(task_id, attempt, state, time_s, info,
                                             start if type(start) is float
                                             and not start - start else None, msg):
                bad += 1        # (x - x is 0.0 for a finite float, NaN for the others)
        # the packed records (their fields' types are the record's): most are
        # a short task's one event, a new row
        changed = self.changed
        rows = self.rows
        new_ended = self._new_ended
        where = None            # (node id, worker id) of the batch, interned once
        for task_id, attempt, state, time_s, start, info in _iter_records(records):
            info = None if info == -1 else record_infos[info]
            if state > 5 or time_s - time_s:    # (not finite: NaN)
                bad += 1
                continue
            if start - start:               # NaN (none) or infinite
                start = None
            elif state >= 4 and task_id not in rows and (info is None or type(info) is dict):
                if where is None:
                    where = (self._intern(msg.node_id), self._intern(msg.worker_id))
                try:
                    changed[task_id] = new_ended(task_id, attempt, state, start, time_s, info,
                                                 where, msg.pid)
                except (TypeError, ValueError):     # junk inside info
                    bad += 1
                continue
            if not self._apply_event(task_id, attempt, state, time_s, info, start, msg):
                bad += 1
        if bad:
            self.dropped_events += bad
            self._complain("dropped %d malformed task event(s) from worker %r", bad,
                           msg.worker_id.hex())

    def _of_held_rows(self, events: list, records: bytes) -> tuple:
        """``(events, records)`` of the rows the table holds (and events
        whose task id is malformed, counted as such later); the others are
        dropped unread and counted in ``dropped_events``."""
        rows = self.rows
        held = [event for event in events
                if type(event.task_id) is not bytes or event.task_id in rows]
        ids = [task_id in rows for (task_id,) in _iter_record_ids(records)]
        self.dropped_events += len(events) - len(held) + ids.count(False)
        if not all(ids):
            records = b"".join(records[i * _RECORD_SIZE:(i + 1) * _RECORD_SIZE]
                               for i, known in enumerate(ids) if known)
        return held, records

    def _apply_event(self, task_id, attempt, state, time_s, info, start, msg) -> bool:
        """Apply one event of ``msg`` (its fields' types checked; ``start``
        a float or None); False if junk inside its info refused it."""
        if info is not None and type(info) is not dict:
            info = None
        try:
            if start is not None and state >= 4:
                if task_id not in self.rows:
                    # the common case: a short task its executor reports once
                    self.changed[task_id] = self._new_ended(
                        task_id, attempt, state, start, time_s, info,
                        (self._intern(msg.node_id), self._intern(msg.worker_id)), msg.pid)
                    return True
                # RUNNING, then the end with the info (read after RUNNING
                # moved the row to a new attempt, which clears its error)
                self._apply(task_id, attempt, 3, start, None, msg)
            self.changed[task_id] = self._apply(task_id, attempt, state, time_s, info, msg)
        except (TypeError, ValueError):     # junk inside info
            return False
        return True

    def _complain(self, *args) -> None:
        """Log a dropped batch or event at most once per COMPLAINT_INTERVAL_S
        (a peer sending junk in a loop cannot flood the log)."""
        now = time.monotonic()
        if now - self._complained < COMPLAINT_INTERVAL_S:
            self._untold += 1
            return
        if self._untold:
            log.warning("(%d more complaints about task events since the last one)",
                        self._untold)
        self._complained, self._untold = now, 0
        log.warning(*args)

    def record(self, task_id: bytes, attempt: int, state: int, time_s: float,
               info: dict | None) -> _Row:
        """A state change the GCS itself saw (an actor's creation task)."""
        row = self.changed[task_id] = self._apply(task_id, attempt, state, time_s, info, None)
        return row

    def hold_changed(self) -> None:
        """(Nobody follows the changes) Forget the rows changed before the
        last call; those since stay for the next ``take_changed``."""
        self._held, self.changed = self.changed, {}

    def take_changed(self, limit: int) -> list[dict]:
        """The rows changed since the last call (of this or of
        ``hold_changed``), as ``public`` dicts: the ``limit`` last changed
        when more did (the rest are counted in ``unpublished``; they are in
        the table all the same). Applies what waits first."""
        self.apply_waiting()
        changed, self.changed = self.changed, {}
        if self._held:
            held, self._held = self._held, {}
            held.update(changed)
            changed = held
        rows = changed.values()
        if len(changed) > limit:
            self.unpublished += len(changed) - limit
            rows = list(rows)[-limit:]
        public = self.public
        return [public(row) for row in rows]

    def _apply(self, task_id, attempt, state, time_s, info, msg) -> _Row:
        row = self.rows.get(task_id)
        if row is None:
            row = self._new_row(task_id)
            row.created = time_s
        history = row.history
        history.append(state)
        history.append(time_s)
        if len(history) > 2 * MAX_HISTORY:
            del history[:2]
        if state < 2 and time_s < row.created:
            row.created = time_s
        current = row.attempt
        if attempt < current:
            if info:                        # an earlier attempt's error is not this one's
                self._take_info(row, info, errors=False)
            return row                      # history only
        if attempt > current:               # a retry: the row follows the new attempt
            row.attempt = attempt
            row.state = state
            row.start = row.end = row.error_type = row.error_message = None
        elif row.state < 0 or _RANK[state] > _RANK[row.state] \
                or (state == 5 and row.state == 4):
            row.state = state
        if info:
            self._take_info(row, info)
        if state == 3:                      # RUNNING, reported by the executor
            row.start = time_s
            if msg is not None:
                row.node_id = self._intern(msg.node_id)
                row.worker_id = self._intern(msg.worker_id)
                row.worker_pid = msg.pid
        elif state >= 4 and (row.end is None or time_s < row.end):
            row.end = time_s
        return row

    def _new_ended(self, task_id, attempt, state, start, end, info, where, pid) -> _Row:
        """A new row for a task that ran from ``start`` and ended in ``state``
        at ``end``: what ``_apply`` of RUNNING, then of the end, makes of it."""
        row = _Row.__new__(_Row)            # every field set here, once
        row.task_id = task_id
        row.attempt = attempt
        row.state = state
        row.node_id, row.worker_id = where
        row.worker_pid = pid
        row.created = row.start = start
        row.end = end
        row.history = [3, start, state, end]
        fresh = self._fresh_info
        if not info:
            row.name, row.job_id, row.actor_id, row.type, row.resources, row.parent, \
                row.error_type, row.error_message = _NO_INFO
        elif fresh is not None and (info is fresh[0] or info == fresh[0]):
            _, row.name, row.job_id, row.actor_id, row.type, row.resources, \
                row.parent, row.error_type, row.error_message = fresh
        else:
            row.name, row.job_id, row.actor_id, row.type, row.resources, row.parent, \
                row.error_type, row.error_message = _NO_INFO
            self._take_info(row, info)
            self._fresh_info = (info, row.name, row.job_id, row.actor_id, row.type,
                                row.resources, row.parent, row.error_type,
                                row.error_message)
        self._add_row(task_id, row)
        return row

    def _new_row(self, task_id: bytes) -> _Row:
        """A new row, the newest; the oldest goes when the table is full."""
        row = _Row(task_id)
        self._add_row(task_id, row)
        return row

    def _add_row(self, task_id: bytes, row: _Row) -> None:
        rows = self.rows
        rows[task_id] = row
        if len(rows) > self.max_rows:
            rows.popitem(last=False)
            self.dropped_rows += 1

    def _intern(self, value: bytes) -> bytes:
        """One object per distinct id (ids of jobs, actors, nodes and workers
        repeat over many rows)."""
        shared = self._ids.get(value)
        if shared is None:
            if len(self._ids) > 100_000:
                self._ids.clear()
            shared = self._ids[value] = value
        return shared

    def _take_info(self, row: _Row, info: dict, errors: bool = True) -> None:
        """Copy what ``info`` says of the task onto ``row`` (its error too,
        unless ``errors`` is False)."""
        get = info.get
        name = get("name")
        if type(name) is str and name and ("." in name or not row.name):
            name = name[:512]
            names = self._names
            if len(names) > 100_000:
                names.clear()
            row.name = names.setdefault(name, name)
        value = get("job_id")
        if value and type(value) is bytes:
            row.job_id = self._intern(value)
        value = get("actor_id")
        if value and type(value) is bytes:
            row.actor_id = self._intern(value)
        value = get("type")
        if value in _TYPES:
            row.type = value
        value = get("required_resources")
        if value and type(value) is dict:         # one dict per distinct shape
            shared = self._last_shape
            if value != shared:
                key = tuple(sorted(value.items()))
                shared = self._shapes.get(key)
                if shared is None:
                    if len(self._shapes) > 10_000:
                        self._shapes.clear()
                    shared = self._shapes[key] = value
                self._last_shape = shared
            row.resources = shared
        value = get("parent_task_id")
        if value and type(value) is bytes:
            row.parent = value
        if errors and "error_type" in info:
            value = info["error_type"]
            if type(value) is str:
                row.error_type = value[:128]
            message = get("error_message")
            if type(message) is str and (message or not row.error_message):
                row.error_message = message[-_MAX_TEXT:]

    # -- reading ------------------------------------------------------------
    def query(self, limit: int, filters: dict) -> list[dict]:
        """The ``limit`` most recently created rows equal to ``filters``
        (all when ``limit`` <= 0), oldest first. ValueError names an
        unknown filter field."""
        unknown = [k for k in filters if k not in _GETTERS]
        if unknown:
            raise ValueError(f"cannot filter task events by {unknown}: the fields are "
                             f"{sorted(_GETTERS)}")
        self.apply_waiting()
        checks = [(_GETTERS[k], v) for k, v in filters.items()]
        out = []
        want = limit if limit > 0 else len(self.rows)
        for row in reversed(self.rows.values()):
            if len(out) >= want:
                break
            if row.state < 0:
                continue
            if all(get(row) == value for get, value in checks):
                out.append(row)
        out.reverse()
        return [self.public(r) for r in out]

    def summary(self) -> tuple[dict, dict, dict]:
        """({state: count}, {task name: {state: count}}, {task name: type
        as Ray names it}) over the table."""
        self.apply_waiting()
        by_name: dict[str, collections.Counter] = {}
        types: dict[str, str] = {}
        for row in self.rows.values():
            if row.state >= 0:
                counter = by_name.get(row.name)
                if counter is None:
                    counter = by_name[row.name] = collections.Counter()
                    types[row.name] = _TYPES.get(row.type, "NORMAL_TASK")
                counter[row.state] += 1
        by_state: collections.Counter = collections.Counter()
        named = {}
        for name, counter in by_name.items():
            named[name] = {_STATES[state]: n for state, n in counter.items()}
            for state, n in counter.items():
                by_state[_STATES[state]] += n
        return dict(by_state), named, types

    @staticmethod
    def public(row: _Row) -> dict:
        """The row as the dashboard and the State API see it (Ray's names)."""
        h = row.history
        return {
            "task_id": row.task_id.hex(), "attempt_number": row.attempt,
            "name": row.name, "func_or_class_name": row.name,
            "state": _STATES[row.state] if row.state >= 0 else None,
            "job_id": _hex(row.job_id), "actor_id": _hex(row.actor_id),
            "node_id": _hex(row.node_id), "worker_id": _hex(row.worker_id),
            "worker_pid": row.worker_pid or None,
            "type": _TYPES.get(row.type, "NORMAL_TASK"),
            "creation_time_ms": _ms(row.created),
            "start_time_ms": _ms(row.start), "end_time_ms": _ms(row.end),
            "error_type": row.error_type, "error_message": row.error_message,
            "parent_task_id": _hex(row.parent),
            "required_resources": row.resources or {},
            "events": _history(h),
        }


def _history(h: list) -> list[dict]:
    """A row's state changes in time order, a state reported twice in a row
    (by the owner and the executor) once. A state reported without the ones
    before it (a short task is reported by its executor alone: RUNNING and
    its end) implies them, at the same time."""
    times = h[1::2]
    if len(times) > 1 and times != sorted(times):
        pairs = sorted(zip(times, [_RANK[x] for x in h[0::2]], h[0::2]))
        h = [value for t, _, state in pairs for value in (state, t)]
    out, last = [], None
    for i in range(0, len(h), 2):
        state = h[i]
        if state != last:
            ms = int(h[i + 1] * 1000)
            if state <= 3:
                for implied in range(0 if last is None or last >= state else last + 1, state):
                    out.append({"state": _STATES[implied], "created_ms": ms})
            out.append({"state": _STATES[state], "created_ms": ms})
            last = state
    return out
