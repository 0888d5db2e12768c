"""Task events, the reporting side.

A core worker notes each state change of the tasks it owns or runs — its
fields into a deque, or a tuple into a dict, the only cost on the task
path — and its I/O
thread sends what piled up to the GCS about once a second
(``config.task_events_report_interval_ms``; 0 turns task events off), in one
``AddTaskEvents`` message, together with the process's user metrics.

Events wait in one deque as their fields, one after another
(``p.TASK_EVENT_FIELDS`` each), not as a tuple each: a million waiting tuples
would keep the garbage collector busy in the task's own process.

A short task costs one event: its executor reports it once it ended (what
it is, when it started and ended, where). The owner reports a task it
submitted only when the task waited for a whole interval at a flush
(``submitted``), or when it sees it fail; the executor reports RUNNING only
for a task still running at a flush (``started``). So a long wait or a long run shows up live, and
the GCS shows the states a short task went through at the times it has.

The send never blocks: when the GCS does not take the batch (unreachable, or
a few batches already wait for it), the batch is dropped and counted, and the
count travels with the next batch that goes through.
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time

import zmq

from .. import exceptions as exc
from ..broker import protocol as p
from ..broker import sockets
from ..config import config

log = logging.getLogger(__name__)

_NOBLOCK = int(zmq.NOBLOCK)
_FIELDS = p.TASK_EVENT_FIELDS
_time = time.time

#: batches queued for a GCS that does not read before further ones are dropped
QUEUED_BATCHES = 4
#: an error message longer than this is cut (a traceback's end is kept)
MAX_ERROR_CHARS = 4096

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
        self.running: dict = {}     # task id -> (attempt, start time, info): see started()
        self.pending: dict = {}     # task id -> (attempt, state, time, info): see submitted()
        self._reported: set = set()     # running tasks a flush reported as RUNNING
        self._reported_pending: set = set()
        self.dropped = 0            # not delivered since the last batch that went through
        self.sent = 0               # events handed to the GCS connection, in all
        self.sources: list = []
        self._sock = sockets.peer_dealer(gcs_endpoint, hwm=QUEUED_BATCHES)
        self._next = time.monotonic() + self.interval
        self._flushing = threading.Lock()

    def record(self, task_id: bytes, attempt: int, state: int, info=None) -> None:
        """Note a state change now (any thread)."""
        self.events.extend((task_id, attempt, state, _time(), info, None))   # a TaskEvent

    def submitted(self, task_id: bytes, attempt: int, state: int, info) -> None:
        """(owner) A task waits now in ``state``; reported by a flush that
        finds it waiting for a whole interval already (see ``done``)."""
        self.pending[task_id] = (attempt, state, _time(), info)

    def done(self, task_id: bytes) -> None:
        """(owner) The task no longer waits: it ended, or is retried."""
        self.pending.pop(task_id, None)

    def started(self, task_id: bytes, attempt: int, info=None) -> None:
        """(executor) The task starts running now. It is reported with its
        end, in one event; or as RUNNING by a flush that finds it still
        running (so a long task shows as running while it runs)."""
        self.running[task_id] = (attempt, _time(), info)

    def ended(self, task_id: bytes, attempt: int, state: int, info=None) -> None:
        """(executor) The task finished or failed (``info``: the error)."""
        begun = self.running.pop(task_id, None)
        if begun is None:
            self.events.extend((task_id, attempt, state, _time(), info, None))   # a TaskEvent
            return
        if info is None:
            info = begun[2]
        elif begun[2]:
            info = {**begun[2], **info}
        self.events.extend((task_id, begun[0], state, _time(), info, begun[1]))

    def maybe_flush(self, now: float) -> None:
        """(I/O thread) Send a batch when one is due."""
        if now >= self._next:
            self._next = now + self.interval
            self.flush()

    def flush(self) -> None:
        """(I/O thread, or at shutdown) Send what piled up, and the metrics."""
        with self._flushing:        # one flush at a time takes whole events
            self._flush()

    def _flush(self) -> None:
        events = self.events
        now = _time()
        # a task waiting since before the last flush; one running since now
        self._report_live(self.pending, self._reported_pending, now - self.interval)
        self._report_live(self.running, self._reported, now)
        count = len(events) // _FIELDS         # (extend() puts an event's fields at once)
        if count > self.max_buffered:       # the GCS was slow to take them: keep the newest
            for _ in range((count - self.max_buffered) * _FIELDS):
                events.popleft()
            self.dropped += count - self.max_buffered
            count = self.max_buffered
        if count or self.dropped:
            # the oldest count * _FIELDS fields (a loop in C: a third cheaper)
            batch = list(itertools.starmap(events.popleft, itertools.repeat((), count * _FIELDS)))
            message = p.AddTaskEvents(self.worker_id, self.node_id, self.pid,
                                      p.pack_task_events(batch), count, self.dropped)
            if self._send(message):
                self.sent += count
                self.dropped = 0
            else:
                self.dropped += count
        for source in self.sources:
            try:
                message = source()
            except Exception:
                log.exception("collecting %r for the GCS failed", source)
                continue
            if message is not None:
                self._send(message)

    def _report_live(self, live: dict, reported: set, since: float) -> None:
        """Queue an event for each task of ``live`` (waiting or running since
        before ``since``) not reported yet."""
        live = live.copy()          # other threads change it
        if reported:
            reported.intersection_update(live)
        extend = self.events.extend
        for task_id, entry in live.items():
            if task_id not in reported and entry[-2] <= since:    # [-2]: since when
                reported.add(task_id)
                if len(entry) == 3:         # running: (attempt, start, info)
                    extend(p.TaskEvent(task_id, entry[0], p.TS_RUNNING, entry[1], entry[2]))
                else:                       # waiting: (attempt, state, time, info)
                    extend(p.TaskEvent(task_id, *entry))

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
