"""The dashboard against a GCS with a full task table: counts, metrics and
summaries come from the GCS's summary (no rows travel), pages read only the
rows they show, the counts re-sync after events were lost, and the GCS's
event stream drops for a stopped subscriber rather than buffering without
bound."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from zray.broker import protocol as p
from zray.broker import sockets
from zray.dashboard import app as dashboard_app
from zray.dashboard import cluster_view, metrics, rows
from zray.dashboard.auth import Guard
from zray.gcs.task_event_manager import TaskEventManager

from conftest import process_gone, task_batch, wait_for

TASKS = 20_000
NAMES = ("load", "store", "Actor.step")


def _expected() -> dict:
    """{name: {state: count}} of the table _fill makes."""
    out: dict = {}
    for i in range(TASKS):
        state = p.TASK_STATES[_state(i)]
        counts = out.setdefault(NAMES[i % 3], {})
        counts[state] = counts.get(state, 0) + 1
    return out


def _state(i: int) -> int:
    return p.TS_FAILED if i % 10 == 0 else p.TS_RUNNING if i % 10 == 1 else p.TS_FINISHED


def _fill(table: TaskEventManager, start: int, count: int) -> None:
    now = time.time()
    for first in range(start, start + count, 1000):
        events = []
        for i in range(first, min(first + 1000, start + count)):
            kind = p.TASK_ACTOR_METHOD if i % 3 == 2 else p.TASK_NORMAL
            events.append([i.to_bytes(16, "big"), 0, _state(i), now,
                           {"name": NAMES[i % 3], "type": kind, "job_id": b"job1"}, now])
        table.add(task_batch(b"w" * 16, b"n" * 16, 7, events, 0))


class TableGcs:
    """A GCS client answering from a real task event table (every reply
    round-trips through the wire encoding), recording each request."""

    def __init__(self):
        self.table = TaskEventManager(100_000)
        _fill(self.table, 0, TASKS)
        self.requests: list = []
        self.summary_delay = 0.0

    def call(self, msg, timeout=None):
        self.requests.append(msg)
        return p.decode(p.encode(self._answer(p.decode(p.encode(msg)))))

    def _answer(self, msg):
        if isinstance(msg, p.GetClusterInfo):
            return p.ClusterInfoReply([], [], "tcp://127.0.0.1:1", "c", "InMemoryStorage", 1)
        if isinstance(msg, p.GetTaskEvents):
            return p.TaskEventsReply(self.table.query(msg.limit, msg.filters),
                                     self.table.dropped)
        if isinstance(msg, p.GetTaskSummary):
            time.sleep(self.summary_delay)
            by_state, by_name, types = self.table.summary()
            return p.TaskSummaryReply(by_state, by_name, len(self.table.rows),
                                      self.table.dropped, types)
        if isinstance(msg, p.ListActors):
            return p.ActorsReply([])
        if isinstance(msg, p.KVKeys):
            return p.KVKeysReply([])
        if isinstance(msg, p.GetMetrics):
            return p.MetricsReply([])
        raise AssertionError(f"the dashboard asked the GCS for {type(msg).__name__}")

    def row_reads(self) -> list[int]:
        """The limit of every GetTaskEvents so far (0: the whole table)."""
        return [m.limit for m in self.requests if isinstance(m, p.GetTaskEvents)]


@pytest.fixture
def gcs():
    return TableGcs()


@pytest.fixture
def client(gcs, tmp_path):
    view = cluster_view.ClusterView(gcs)
    view.snapshot()
    app = dashboard_app.create_app(gcs=gcs, view=view, supervisor=None,
                                   guard=Guard(None, "127.0.0.1", []),
                                   session_dir=str(tmp_path))
    return app.test_client()


def _get(client, path: str):
    reply = client.get(path, headers={"Host": "127.0.0.1"})
    assert reply.status_code == 200, (path, reply.data[:300])
    return reply


def test_metrics_scrape_counts_every_task_without_reading_task_rows(gcs):
    text = metrics.render(metrics.make_registry(gcs)).decode()
    finished = sum(c.get("FINISHED", 0) for c in _expected().values())
    assert f'zray_tasks{{State="FINISHED"}} {float(finished)}' in text
    assert f'zray_tasks{{State="FAILED"}} {float(TASKS // 10)}' in text
    assert 'zray_tasks{State="PENDING_ARGS_AVAIL"} 0.0' in text
    assert gcs.row_reads() == []


def test_overview_counts_all_tasks_while_reading_only_the_rows_it_shows(gcs, client):
    page = _get(client, "/").data.decode()
    status = _get(client, "/api/cluster_status").get_json()["data"]
    assert status["tasks_by_state"] == {"FINISHED": TASKS * 8 // 10,
                                        "FAILED": TASKS // 10, "RUNNING": TASKS // 10}
    assert status["tasks_total"] == TASKS
    assert str(TASKS * 8 // 10) in page
    assert gcs.row_reads() and all(0 < n <= cluster_view.SNAPSHOT_ROWS
                                   for n in gcs.row_reads())


def test_task_list_reads_only_as_many_rows_as_it_returns(gcs, client):
    data = _get(client, "/api/v0/tasks?limit=5").get_json()["data"]["result"]
    assert len(data["result"]) == 5
    _get(client, "/api/v0/tasks?limit=5&filter_keys=state&filter_predicates=!%3D"
                 "&filter_values=FINISHED")
    _get(client, "/api/v0/workers")
    assert all(0 < n <= rows.MAX_LIMIT for n in gcs.row_reads())


def test_task_summary_counts_every_task_by_name_state_and_type(gcs, client):
    result = _get(client, "/api/v0/tasks/summarize").get_json()["data"]["result"]
    cluster = result["node_id_to_summary"]["cluster"]
    assert cluster["total_tasks"] == TASKS
    assert cluster["total_actor_tasks"] == sum(_expected()["Actor.step"].values())
    for name, counts in _expected().items():
        assert cluster["summary"][name]["state_counts"] == counts
    assert cluster["summary"]["Actor.step"]["type"] == "ACTOR_TASK"
    assert cluster["summary"]["load"]["type"] == "NORMAL_TASK"
    assert 0 not in gcs.row_reads()


def test_task_counts_resync_from_the_gcs_when_published_events_were_lost(gcs, monkeypatch):
    monkeypatch.setattr(cluster_view, "RECOUNT_S", 0.3)
    monkeypatch.setattr(cluster_view, "SILENCE_S", 1e9)     # no snapshot to hide behind
    view = cluster_view.ClusterView(gcs)
    view.start()
    try:
        assert view.summary()["tasks_total"] == TASKS
        _fill(gcs.table, TASKS, 1000)         # rows whose events never reached the view
        wait_for(lambda: view.summary()["tasks_total"] == TASKS + 1000, 10)
        assert view.summary()["tasks_by_state"]["FAILED"] == (TASKS + 1000) // 10
    finally:
        view.stop()


def test_a_slow_count_is_read_less_often(gcs):
    gcs.summary_delay = 0.05
    view = cluster_view.ClusterView(gcs)
    view._recount()
    wait_gap = view._next_count - view._last_recount
    assert wait_gap >= cluster_view.COUNT_SPACING * 0.05


# --------------------------------------------------------------------------
# the GCS's event stream: bounded for a subscriber that stopped taking it
# --------------------------------------------------------------------------

_SUBSCRIBER = """
import sys
from zray.broker import sockets
sub = sockets.subscriber(sys.argv[1], [b""])
ready, received = False, 0
while True:
    topic, _ = sub.recv_multipart()
    if topic == b"probe" and not ready:
        print("ready", flush=True)
        ready = True
    elif topic == b"data":
        received += 1
    elif topic == b"end":
        print(received, flush=True)
        break
"""


def test_event_stream_drops_for_a_stopped_subscriber_instead_of_buffering(tmp_path):
    pub, address = sockets.publisher(f"ipc://{tmp_path}/events")
    child = subprocess.Popen([sys.executable, "-c", _SUBSCRIBER, address],
                             stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.strip()) for x in child.stdout],
                     daemon=True).start()

    def publish_until_line(topic: bytes, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pub.send_multipart([topic, b""])
            try:
                return lines.get(timeout=0.05)
            except queue.Empty:
                continue
        raise AssertionError(f"the subscriber did not answer {topic!r} in {timeout}s")

    sent = 3 * sockets.PUB_HWM
    try:
        assert publish_until_line(b"probe", 20) == "ready"
        os.kill(child.pid, signal.SIGSTOP)
        wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_STOPPED, 5)
        payload = b"x" * 1024
        for _ in range(sent):                   # never blocks: PUB drops past its HWM
            pub.send_multipart([b"data", payload])
        os.kill(child.pid, signal.SIGCONT)
        received = int(publish_until_line(b"end", 20))   # the stream goes on afterwards
        # what waited for it: the publisher's bound plus the kernel's socket
        # buffers and the subscriber's own queue (slack for hosts with larger ones)
        assert 0 < received <= 2 * sockets.PUB_HWM < sent
    finally:
        if not process_gone(child.pid):
            child.kill()
        child.wait(5)
        pub.close(linger=0)
