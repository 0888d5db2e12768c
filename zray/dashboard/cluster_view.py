"""The dashboard's live picture of the cluster: a snapshot from the GCS at
start and after a silence (a GCS restart, a lost connection), then the
changes the GCS publishes (nodes, resources, jobs, actors, task events).

One thread reads the GCS event stream (SUB); request threads read this
object under its lock. Kept in memory, all bounded: the node table, a
10-minute history of cluster CPU / memory / store use (one sample per
``SAMPLE_S``), the last ``MAX_TASKS`` task rows for the live task stream,
and the task counts by state.

What it costs a busy cluster (it shares the cluster's cores): the event
thread wakes at most once per ``BATCH_S`` and takes what queued meanwhile in
one go (a node's resource reports in a batch: only its last one is
applied); work a page needs is done when a page reads, not per event. The
task-event topic is subscribed only while someone reads task rows (a live
page, the Tasks page: within ``READER_S``); the first read after a quiet
spell takes them from the GCS's table instead.

The counts are the GCS's own (``GetTaskSummary``, no rows travel), re-read
when a reader asks for them after tasks changed, spaced so the reads take at
most 1/``COUNT_SPACING`` of the GCS's time, and after ``RECOUNT_S`` whatever
came: events the GCS publishes are lossy (it publishes at most 1000 changed
rows a second, and its PUB socket drops what a slow subscriber cannot take),
the counts are not. No reader: no count. A snapshot reads only the newest
``SNAPSHOT_ROWS`` task rows.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

import zmq

from ..broker import protocol as p
from ..broker import sockets
from . import priority, rows

log = logging.getLogger(__name__)

SAMPLE_S = 5.0
HISTORY_S = 600.0
MAX_TASKS = 5_000
#: task rows a snapshot reads (the live pages show the last minute's)
SNAPSHOT_ROWS = 2_000
#: the counts are re-read at most this often while task events arrive ...
COUNT_MIN_S = 2.0
#: ... and no sooner than this many times the last read took (the GCS scans
#: its table: about 0.1 s at 100,000 rows, so then every 10 s; a scan stalls
#: the GCS's loop, so at most 1% of its time goes to the dashboard's counts)
COUNT_SPACING = 100
#: and at least this often whatever arrived (events lost on the way)
RECOUNT_S = 30.0
#: no event for this long (heartbeats come every 0.5 s): take a fresh snapshot
SILENCE_S = 5.0
#: the event thread handles what arrived at most this often (one wake-up)
BATCH_S = 0.25
#: events taken in one batch at most (the rest wait for the next)
BATCH_MAX = 5_000
#: task events are subscribed while task rows were read within this long
READER_S = 15.0
#: while they are not followed, a read takes the task rows from the GCS at
#: most this often
TASKS_RELOAD_S = 1.0
TOPIC_TASK_EVENTS = getattr(p, "TOPIC_TASK_EVENTS", b"task_events")


class ClusterView:
    def __init__(self, gcs):
        self.gcs = gcs
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.version = 0                        # bumped at every change
        self.jobs_version = 0                   # bumped at every job event
        self.nodes: dict[bytes, p.NodeRow] = {}
        self.history: collections.deque = collections.deque(maxlen=int(HISTORY_S / SAMPLE_S))
        self.tasks: collections.OrderedDict = collections.OrderedDict()
        self.state_counts: dict = {}            # the GCS's, see _recount
        self.tasks_total = 0
        self.tasks_dropped = 0
        self.gcs_requests_per_s = 0.0
        self._last_event = 0.0
        self._tasks_changed = False             # task events since the last count
        self._last_recount = 0.0
        self._next_count = 0.0
        self._count_lock = threading.Lock()     # one count at a time
        self._tasks_read_at = -1e9              # monotonic: last read of task rows
        self._tasks_live = False                # task events subscribed (event thread)
        self._tasks_loaded_at = -1e9            # monotonic: last _load_tasks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pub_address = ""

    # -- start, snapshot ----------------------------------------------------
    def start(self) -> None:
        self.snapshot()
        self._thread = threading.Thread(target=self._run, name="zray-dashboard-events",
                                        daemon=True)
        self._thread.start()

    def snapshot(self) -> None:
        """Read the tables afresh from the GCS: nodes, the newest
        ``SNAPSHOT_ROWS`` task rows, the task counts."""
        info = self.gcs.call(p.GetClusterInfo())
        with self.lock:
            self.pub_address = info.pub_address or self.pub_address
            self.nodes = {n.node_id: n for n in info.nodes}
            self._bump()
        self._load_tasks()
        self._recount()

    def _load_tasks(self) -> None:
        """Replace the task rows by the newest ``SNAPSHOT_ROWS`` of the GCS's table."""
        events, _ = rows.task_events(self.gcs, SNAPSHOT_ROWS)
        with self.lock:
            self._tasks_loaded_at = time.monotonic()
            self.tasks.clear()
            for e in sorted(events, key=lambda e: e.get("start_time_ms") or 0):
                self._task_event(e)
            self._bump()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    # -- the event stream ---------------------------------------------------
    def _run(self) -> None:
        priority.lower_this_thread()
        sub = None
        next_sample = 0.0
        try:
            while not self._stop.is_set():
                if sub is None and self.pub_address:
                    sub = sockets.subscriber(self.pub_address, [
                        p.TOPIC_NODE, p.TOPIC_RESOURCES, p.TOPIC_JOB, p.TOPIC_ACTOR])
                    priority.lower_zmq_io_threads()
                    self._tasks_live = False
                    self._last_event = time.monotonic()
                if sub is not None:
                    self._follow_tasks(sub)
                if sub is not None and sub.poll(500, zmq.POLLIN):
                    self._last_event = time.monotonic()
                    self._on_events(list(sockets.recv_events(sub, BATCH_MAX)))
                    self._stop.wait(BATCH_S)    # what comes meanwhile waits: one wake-up
                elif sub is None:
                    self._stop.wait(0.5)
                now = time.monotonic()
                if now - self._last_event > SILENCE_S:
                    old = self.pub_address
                    self._resync()
                    if sub is not None and self.pub_address != old:
                        sub.close(linger=0)     # the GCS restarted elsewhere
                        sub = None
                if now >= next_sample:
                    self._sample()
                    next_sample = now + SAMPLE_S
        finally:
            if sub is not None:
                sub.close(linger=0)

    def _follow_tasks(self, sub) -> None:
        """Subscribe to task events while someone reads task rows, and
        unsubscribe when no one has for ``READER_S`` (event thread only)."""
        wanted = time.monotonic() - self._tasks_read_at < READER_S
        if wanted and not self._tasks_live:
            sub.setsockopt(zmq.SUBSCRIBE, TOPIC_TASK_EVENTS)
            self._tasks_changed = True  # while unfollowed: the next read counts again
            self._tasks_live = True
            try:                        # rows changed before the subscription took
                self._load_tasks()
            except Exception as err:    # noqa: BLE001 — silence or a refusal: next snapshot
                log.warning("cannot read the task rows from the GCS: %s", err)
        elif not wanted and self._tasks_live:
            sub.setsockopt(zmq.UNSUBSCRIBE, TOPIC_TASK_EVENTS)
            self._tasks_live = False

    def _resync(self) -> None:
        try:
            self.snapshot()
            log.info("took a fresh snapshot of the GCS after %.0fs without events", SILENCE_S)
        except Exception as err:    # noqa: BLE001 — silence or a refusal: retried later
            log.warning("cannot read a snapshot from the GCS (%s); retrying", err)
        self._last_event = time.monotonic()

    def _count_if_stale(self) -> None:
        """Re-read the counts for a reader when tasks may have changed
        (events came, or none are followed) and the spacing allows, or
        after ``RECOUNT_S``; skipped while another thread counts."""
        now = time.monotonic()
        changed = self._tasks_changed or not self._tasks_live
        if not ((changed and now >= self._next_count) or now - self._last_recount >= RECOUNT_S):
            return
        if not self._count_lock.acquire(blocking=False):
            return
        try:
            self._recount()
        finally:
            self._count_lock.release()

    def _recount(self) -> None:
        """Re-read the task counts from the GCS's summary; the next read
        while events arrive waits ``COUNT_SPACING`` times this one's time."""
        started = self._last_recount = time.monotonic()
        self._tasks_changed = False         # events arriving from now on count again
        try:
            counts = rows.task_summary(self.gcs)
        except Exception as err:    # noqa: BLE001 — silence or a refusal: retried later
            log.warning("cannot read the task counts from the GCS: %s", err)
            self._tasks_changed = True
            self._next_count = time.monotonic() + RECOUNT_S / 3
            return
        took = time.monotonic() - started
        self._next_count = started + max(COUNT_MIN_S, COUNT_SPACING * took)
        with self.lock:
            self.state_counts = counts["by_state"]
            self.tasks_total = counts["total"]
            self.tasks_dropped = counts["dropped"]
            self._bump()

    def _on_events(self, batch: list) -> None:
        """Apply a batch of ``(topic, event)``: one lock, one version bump,
        and per node only its last resource report."""
        last_report = {}
        for i, (topic, event) in enumerate(batch):
            if topic == p.TOPIC_RESOURCES:
                last_report[getattr(event, "node_id", None)] = i
        changed = False
        with self.lock:
            for i, (topic, event) in enumerate(batch):
                if topic == p.TOPIC_RESOURCES and last_report.get(
                        getattr(event, "node_id", None)) != i:
                    continue                    # a later report of that node follows
                try:
                    changed |= self._on_event(topic, event)
                except (KeyError, TypeError, ValueError, AttributeError) as err:
                    log.warning("dropped a malformed %r event: %s", topic[:40], err)
            if changed:
                self._bump()

    def _on_event(self, topic: bytes, event) -> bool:
        """Apply one event (under the lock); True if the view changed."""
        if topic == p.TOPIC_RESOURCES:
            node = self.nodes.get(event.node_id)
            if node is None:
                return False
            node = node._replace(available=event.available, resources=event.total)
            if event.stats:
                node = node._replace(stats=event.stats, store_used=event.stats.get(
                    "store_used", node.store_used))
            self.nodes[event.node_id] = node
            return True
        if topic == p.TOPIC_NODE:
            node = event.node
            self.nodes[node.node_id] = node
            return True
        if topic == TOPIC_TASK_EVENTS:
            self._tasks_changed = True
            for e in event.rows:
                if isinstance(e, dict):
                    self._task_event(e)
            return True
        if topic == p.TOPIC_JOB:
            self.jobs_version += 1
        return True                             # a job or actor changed: pages re-read

    def _task_event(self, e: dict) -> None:
        """Keep the GCS's record as it came: made a State API row only when
        a page reads it (recent_tasks), so an idle dashboard costs the
        cluster next to nothing however many tasks run."""
        task_id = e.get("task_id")
        if not task_id:
            return
        self.tasks.pop(task_id, None)
        self.tasks[task_id] = [e, None, None]   # [record, its row, its stream row: once read]
        while len(self.tasks) > MAX_TASKS:
            self.tasks.popitem(last=False)

    def _bump(self) -> None:
        self.version += 1
        self.changed.notify_all()

    def _sample(self) -> None:
        with self.lock:
            alive = [n for n in self.nodes.values() if n.alive]
            cpu_total = sum(n.resources.get("CPU", 0.0) for n in alive)
            cpu_free = sum(n.available.get("CPU", 0.0) for n in alive)
            stats = [n.stats or {} for n in alive]
            sample = {
                "t": time.time(), "cpu_used": max(0.0, cpu_total - cpu_free),
                "cpu_total": cpu_total,
                "cpu_percent": (sum(s.get("cpu_percent", 0.0) for s in stats) / len(stats)
                                if stats else 0.0),
                "mem_used": sum(s.get("mem_used", 0) for s in stats),
                "mem_total": sum(s.get("mem_total", 0) for s in stats),
                "store_used": sum(n.store_used for n in alive),
                "store_total": sum(n.arena_size for n in alive),
                "store_spilled": sum(s.get("store_spilled", 0) for s in stats),
            }
            self.history.append(sample)

    # -- reads (for views) --------------------------------------------------
    def wait_change(self, version: int, timeout: float) -> int:
        """Block until the version moves past ``version`` (or ``timeout``)."""
        with self.changed:
            if self.version == version:
                self.changed.wait(timeout)
            return self.version

    def summary(self) -> dict:
        """The overview's figures; the task counts re-read from the GCS
        first when stale (see the module's docstring)."""
        self._count_if_stale()
        with self.lock:
            alive = [n for n in self.nodes.values() if n.alive]
            total: dict = {}
            avail: dict = {}
            for n in alive:
                for k, v in n.resources.items():
                    total[k] = total.get(k, 0.0) + v
                for k, v in n.available.items():
                    avail[k] = avail.get(k, 0.0) + v
            return {
                "nodes_alive": len(alive), "nodes_dead": len(self.nodes) - len(alive),
                "resources_total": {k: v for k, v in total.items() if not k.startswith("node:")},
                "resources_available": {k: v for k, v in avail.items()
                                        if not k.startswith("node:")},
                "store_used": sum(n.store_used for n in alive),
                "store_total": sum(n.arena_size for n in alive),
                "tasks_by_state": {s: n for s, n in self.state_counts.items() if n > 0},
                "tasks_total": self.tasks_total, "tasks_dropped": self.tasks_dropped,
                "history": list(self.history),
                "version": self.version,
            }

    def recent_tasks(self, since_ms: float = 0, limit: int = 2000,
                     stream: bool = False) -> list[dict]:
        """The task rows that ended after ``since_ms`` (or have not ended),
        oldest first, at most ``limit``. The first read after no one read
        for ``READER_S`` takes them from the GCS's table (the event stream's
        task topic is followed again from then on), at most every
        ``TASKS_RELOAD_S``.
        ``stream``: only the fields a live page draws (``rows.STREAM_TASK_FIELDS``)."""
        self._tasks_read_at = time.monotonic()
        if not self._tasks_live and \
                self._tasks_read_at - self._tasks_loaded_at >= TASKS_RELOAD_S:
            try:
                self._load_tasks()
            except Exception as err:    # noqa: BLE001 — silence or a refusal: the rows held
                log.warning("cannot read the task rows from the GCS: %s", err)
        now_ms = time.time() * 1000
        with self.lock:
            out = [entry for entry in self.tasks.values()
                   if (entry[0].get("end_time_ms") or now_ms) >= since_ms][-limit:]
        for entry in out:           # each record is made a row once, however many read it
            if entry[1] is None:
                entry[1] = rows.task_row(entry[0])
            if stream and entry[2] is None:
                entry[2] = rows.stream_task_row(entry[1])
        return [entry[2 if stream else 1] for entry in out]
