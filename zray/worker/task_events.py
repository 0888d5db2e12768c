"""Task events, the reporting side.

A core worker notes each state change of the tasks it owns or runs — a
task's start and end into its ``Recorder`` (task_recorder.py, in C), or an
event's fields into a deque, or a time onto the owner's record of the task,
the only cost on the task path — and its I/O
thread sends what piled up to the GCS about once a second
(``config.task_events_report_interval_ms``; 0 turns task events off), in one
``AddTaskEvents`` message, together with the process's user metrics; a busy
executor's packed events go sooner, a batch per tick of the I/O thread once
a thousand piled up.

Events wait as their fields, one after another (``p.TASK_EVENT_FIELDS``
each) in a deque, not as a tuple each: a million waiting tuples would keep
the garbage collector busy in the task's own process. The commonest event,
an executor's end of a task it saw start, waits packed instead
(``p.TASK_EVENT_RECORD``, 41 bytes, its info an index of the infos the
executor registered), in the recorder's buffer: it keeps no Python object
alive until the flush, which sends the records as they are.

A short task costs one event: its executor reports it once it ended (what
it is, when it started and ended, where). The owner reports a task it
submitted only when a flush finds it still waiting a whole interval after it
was submitted (the owner stamps its record of the task with the time,
nothing more; ``waiting_events``), or when it sees it fail; the executor
reports RUNNING only for a task still running at a flush (``started``). So a
long wait or a long run shows up live, and the GCS shows the states a short
task went through at the times it has.

The send never blocks: when the GCS does not take the batch (unreachable, or
QUEUED_BATCHES already wait for it), the batch is dropped and counted, and the
count travels with the next batch that goes through.
"""
from __future__ import annotations

import collections
import itertools
import logging
import sys
import threading
import time

import zmq

from .. import exceptions as exc
from ..broker import protocol as p
from ..broker import sockets
from ..config import config
from .task_recorder import Recorder

log = logging.getLogger(__name__)

_NOBLOCK = int(zmq.NOBLOCK)
_FIELDS = p.TASK_EVENT_FIELDS
_time = time.time

#: batches queued for a GCS that does not read before further ones are dropped
QUEUED_BATCHES = 4
#: packed records that go to the GCS at the next tick of the I/O thread (every
#: 50 ms), without waiting for the interval, if the connection has room: a
#: busy executor sends batches of tens of KB, which its allocator reuses, not
#: one of megabytes a second, which costs thousands of fresh pages a second in
#: the task's own process
EARLY_BATCH_RECORDS = 1000
#: an error message longer than this is cut (a traceback's end is kept)
MAX_ERROR_CHARS = 4096
#: infos an executor may register for packed events (more go the deque's way;
#: below 2**16: a record's index is read from its two low bytes)
MAX_RECORD_INFOS = 10_000
_RECORD_SIZE = p.TASK_EVENT_RECORD.size

#: Ray's ErrorType name of each zray error a task can end with
_ERROR_TYPES = (
    (exc.TaskCancelledError, "TASK_CANCELLED"),
    (exc.WorkerCrashedError, "WORKER_DIED"),
    (exc.ActorUnavailableError, "ACTOR_UNAVAILABLE"),
    (exc.RayActorError, "ACTOR_DIED"),
    (exc.OwnerDiedError, "OWNER_DIED"),
    (exc.ObjectLostError, "OBJECT_LOST"),
    (exc.NodeDiedError, "NODE_DIED"),
    (exc.ObjectStoreFullError, "OUT_OF_MEMORY"),
    (exc.RayTaskError, "TASK_EXECUTION_EXCEPTION"),
)


def error_info(error) -> dict:
    """``{"error_type", "error_message"}`` of a task that ended with ``error``
    (an exception, or the serialized error of a failed dependency)."""
    if isinstance(error, (bytes, bytearray, memoryview)):
        return {"error_type": "TASK_EXECUTION_EXCEPTION",
                "error_message": "an argument of this task is the error of a failed task"}
    kind = next((name for cls, name in _ERROR_TYPES if isinstance(error, cls)),
                "TASK_EXECUTION_EXCEPTION")
    try:
        text = str(error)
    except Exception:        # noqa: BLE001 — a user exception whose __str__ fails
        text = ""
    if not isinstance(error, exc.RayError):
        text = f"{type(error).__name__}: {text}"
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS // 4] + "\n...\n" + text[-MAX_ERROR_CHARS * 3 // 4:]
    return {"error_type": kind, "error_message": text}


#: a failure of the reporting itself is logged at most once in this many seconds
FAILURE_LOG_INTERVAL_S = 60.0
_failure_logged = [-FAILURE_LOG_INTERVAL_S]


def reporting_failed(what: str) -> None:
    """(in an ``except`` block) Log that noting a task event failed, with
    its traceback, at most once per FAILURE_LOG_INTERVAL_S: the event is
    lost (or goes without its info), the task and its process go on. A
    TaskCancelledError (a cancel's SIGINT that landed in the reporting) is
    raised again: the task is cancelled as it would be anywhere else."""
    if isinstance(sys.exc_info()[1], exc.TaskCancelledError):
        raise               # (the exception being handled)
    now = time.monotonic()
    if now - _failure_logged[0] >= FAILURE_LOG_INTERVAL_S:
        _failure_logged[0] = now
        log.exception("task events: noting %s failed (the event is lost; the task goes on)",
                      what)


def _nothing_waits(since: float, limit: int) -> list:
    """``waiting_events`` of a process that owns no tasks."""
    return []


class TaskEventReporter:
    """The task events of one core worker, and the batches it sends.

    ``enabled`` says whether events are recorded at all; callers test it
    before building an event's info. ``sources`` are callables the flush
    also calls: each returns a message to send to the GCS, or None."""

    def __init__(self, gcs_endpoint: str, worker_id: bytes, node_id: bytes, pid: int):
        interval_ms = config.task_events_report_interval_ms
        self.enabled = interval_ms > 0
        self.interval = (interval_ms if interval_ms > 0 else 1000) / 1000
        self.max_buffered = max(config.task_events_max, 1000)
        self.worker_id = worker_id
        self.node_id = node_id
        self.pid = pid
        self.events: collections.deque = collections.deque()
        #: (executor) the tasks it runs: their starts, and their ends packed
        #: (p.TASK_EVENT_RECORD). Never replaced: the executor holds its
        #: ``start`` and ``finish``
        self.recorder = Recorder(p.TS_FINISHED)
        self._record_infos: list = []   # registered infos, by index: see info_index()
        self._record_keys: dict = {}    # their keys -> index
        #: (owner) ``waiting_events(since, limit)``: a TaskEvent for each
        #: task it submitted before ``since`` (monotonic) that still waits,
        #: once, at most ``limit``
        self.waiting_events = _nothing_waits
        self._reported: set = set()     # running tasks a flush reported as RUNNING
        self.dropped = 0            # not delivered since the last batch that went through
        self.sent = 0               # events handed to the GCS connection, in all
        self.sources: list = []
        self._sock = sockets.peer_dealer(gcs_endpoint, hwm=QUEUED_BATCHES)
        self._next = time.monotonic() + self.interval
        self._flushing = threading.Lock()
        self._registering = threading.Lock()

    def record(self, task_id: bytes, attempt: int, state: int, info=None) -> None:
        """Note a state change now (any thread)."""
        self.events.extend((task_id, attempt, state, _time(), info, None))   # a TaskEvent

    def info_index(self, key, info: dict) -> int:
        """(executor) The index under which events may name ``info`` (the
        first one registered with ``key``, which stands for its contents);
        -1 when too many are registered (then pass the dict itself)."""
        index = self._record_keys.get(key)
        if index is None:
            with self._registering:     # (executor threads of a threaded actor)
                index = self._record_keys.get(key)
                if index is None:
                    if len(self._record_infos) >= MAX_RECORD_INFOS:
                        return -1
                    self._record_infos.append(info)     # before its index is handed out
                    index = self._record_keys[key] = len(self._record_infos) - 1
        return index

    def started(self, task_id: bytes, attempt: int, info=None) -> int:
        """(executor) The task starts running now, as ``info`` says: a dict,
        or the index ``info_index`` gave for one; its slot in the recorder.
        It is reported with its end, in one event; or as RUNNING by a flush
        that finds it still running (so a long task shows as running while
        it runs). The same as ``recorder.start(task_id, attempt, info)``,
        which the executor's hot path calls itself; its end there is
        ``recorder.finish(slot)`` (and ``finished_unpacked`` of what that
        returns, if anything)."""
        return self.recorder.start(task_id, attempt, info)

    def finished_unpacked(self, begun) -> None:
        """(executor) A task finished now whose end the recorder could not
        pack: ``begun``, what ``recorder.finish`` returned (task id,
        attempt, start, info). Never raises (see ``reporting_failed``)."""
        try:
            task_id, attempt, start, info = begun
            self._end(task_id, attempt, p.TS_FINISHED, None, start, info)
        except Exception:       # noqa: BLE001 — logged: reporting never fails a task
            reporting_failed("a task's end")

    def ended(self, task_id: bytes, attempt: int, state: int, info=None) -> None:
        """(executor) The task finished or failed now (``info``: the error),
        whether or not it was ``started``."""
        begun = self.recorder.pop(task_id)
        if begun is None:
            self.events.extend((task_id, attempt, state, _time(), info, None))   # a TaskEvent
        else:
            attempt, start, known = begun
            self._end(task_id, attempt, state, info, start, known)

    def _end(self, task_id: bytes, attempt: int, state: int, info, start: float,
             known) -> None:
        """Queue the end of a task that started at ``start`` as ``known``
        says (its info, or the index of one), with ``info`` (the error's)."""
        if known.__class__ is int:
            known = self._record_infos[known]
        if info is None:
            info = known
        elif known:
            info = {**known, **info}
        self.events.extend((task_id, attempt, state, _time(), info, start))

    def maybe_flush(self, now: float) -> None:
        """(I/O thread) Send a batch when one is due: every interval, or
        sooner what piled up once EARLY_BATCH_RECORDS packed events did and
        the connection has room (a GCS slow to read gets the interval's)."""
        if now >= self._next:
            self._next = now + self.interval
            self.flush()
        elif len(self.recorder) >= EARLY_BATCH_RECORDS \
                and self._sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
            with self._flushing:
                self._send_batch()

    def flush(self) -> None:
        """(I/O thread, or at shutdown) Send what piled up, and the metrics."""
        with self._flushing:        # one flush at a time takes whole events
            self._flush()

    def _flush(self) -> None:
        if self.enabled:
            self._report_waiting(time.monotonic() - self.interval)
            self._report_running(_time())
        self._send_batch()
        for source in self.sources:
            try:
                message = source()
            except Exception:
                log.exception("collecting %r for the GCS failed", source)
                continue
            if message is not None:
                self._send(message)

    def _send_batch(self) -> None:
        """(flushing) Send the events that piled up as one batch (the newest
        ``max_buffered``; those before are dropped and counted)."""
        events = self.events
        count = len(events) // _FIELDS         # (extend() puts an event's fields at once)
        if count > self.max_buffered:       # the GCS was slow to take them: keep the newest
            for _ in range((count - self.max_buffered) * _FIELDS):
                events.popleft()
            self.dropped += count - self.max_buffered
            count = self.max_buffered
        records, record_infos = self._take_records(self.max_buffered - count)
        if count or records or self.dropped:
            # the oldest count * _FIELDS fields (a loop in C: a third cheaper)
            batch = list(itertools.starmap(events.popleft, itertools.repeat((), count * _FIELDS)))
            count += len(records) // _RECORD_SIZE
            message = p.AddTaskEvents(self.worker_id, self.node_id, self.pid,
                                      p.pack_task_events(batch, records, record_infos),
                                      count, self.dropped)
            if self._send(message):
                self.sent += count
                self.dropped = 0
            else:
                self.dropped += count

    def _take_records(self, limit: int) -> tuple:
        """The packed events recorded so far (the newest ``limit``; those
        before are dropped), taken and joined, and the registered infos they
        name, by index."""
        if not len(self.recorder):
            return b"", {}
        records, named = self.recorder.take()
        count = len(records) // _RECORD_SIZE
        if count > limit:           # the GCS was slow to take them: keep the newest
            records = records[(count - limit) * _RECORD_SIZE:]
            self.dropped += count - limit
            named = p.task_event_record_infos(records)
        infos = self._record_infos
        return records, {index: infos[index] for index in named}

    def _report_waiting(self, since: float) -> None:
        """Queue the events ``waiting_events`` gives: tasks waiting since
        before ``since`` (``time.monotonic()``), as many as a batch takes."""
        extend = self.events.extend
        for event in self.waiting_events(since, self.max_buffered):
            extend(event)

    def _report_running(self, since: float) -> None:
        """Queue a RUNNING event for each task running since before ``since``
        that no flush reported yet."""
        live = self.recorder.running()
        reported = self._reported
        if reported:
            reported.intersection_update(task_id for task_id, *_ in live)
        extend = self.events.extend
        for task_id, attempt, start, info in live:
            if task_id not in reported and start <= since:
                reported.add(task_id)
                if info.__class__ is int:
                    info = self._record_infos[info]
                extend(p.TaskEvent(task_id, attempt, p.TS_RUNNING, start, info))

    def _send(self, message) -> bool:
        try:
            self._sock.send_multipart([b"", p.encode(message)], _NOBLOCK)
            return True
        except zmq.Again:           # the GCS does not take more now
            return False
        except zmq.ZMQError as err:
            log.warning("cannot send %s to the GCS: %s", type(message).__name__, err)
            return False

    def close(self) -> None:
        """Send what is left (best effort) and close the connection."""
        try:
            self.flush()
        finally:
            self._sock.close(linger=sockets.LINGER_MS)
