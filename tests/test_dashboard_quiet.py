"""What the dashboard costs the cluster it watches: with no one reading,
its view of the cluster asks the GCS nothing and follows no task events;
its monitoring threads run at a lower priority, and a job it starts does
not inherit that."""
from __future__ import annotations

import os
import sys
import threading

import pytest

from zray.broker import protocol as p
from zray.dashboard import cluster_view, priority
from zray.dashboard.jobs import JobSupervisor

from conftest import wait_for

sys.path.insert(0, os.path.dirname(__file__))
from test_dashboard_counts import TASKS, TableGcs  # noqa: E402  (its fake GCS)


def _reads(gcs, kind) -> int:
    return sum(isinstance(m, kind) for m in gcs.requests)


@pytest.fixture
def quick_view(monkeypatch):
    monkeypatch.setattr(cluster_view, "SAMPLE_S", 0.05)       # a clock to wait on
    monkeypatch.setattr(cluster_view, "SILENCE_S", 1e9)
    monkeypatch.setattr(cluster_view, "TASKS_RELOAD_S", 0.0)
    gcs = TableGcs()
    view = cluster_view.ClusterView(gcs)
    view.start()
    yield gcs, view
    view.stop()


def test_an_unread_view_asks_the_gcs_nothing_and_follows_no_task_events(quick_view):
    gcs, view = quick_view
    counts, task_reads = _reads(gcs, p.GetTaskSummary), _reads(gcs, p.GetTaskEvents)
    wait_for(lambda: len(view.history) >= 10, 10)             # its thread went round
    assert _reads(gcs, p.GetTaskSummary) == counts
    assert _reads(gcs, p.GetTaskEvents) == task_reads
    assert not view._tasks_live


def test_a_reader_gets_the_tasks_and_counts_at_once_and_the_stream_is_followed(quick_view):
    gcs, view = quick_view
    cluster_view_reads = _reads(gcs, p.GetTaskEvents)
    from test_dashboard_counts import _fill
    _fill(gcs.table, TASKS, 10)                 # came while no one read
    tasks = view.recent_tasks(stream=True)
    assert _reads(gcs, p.GetTaskEvents) > cluster_view_reads
    assert {"task_id", "name", "state", "worker_id", "start_time_ms", "end_time_ms",
            "error_type"} <= set(tasks[-1])
    assert len(tasks) == min(cluster_view.SNAPSHOT_ROWS, TASKS + 10)
    wait_for(lambda: view._tasks_live, 10)      # task events followed from then on
    wait_for(lambda: view.summary()["tasks_total"] == TASKS + 10, 10)


def _nice_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux's /proc")
def test_monitoring_threads_yield_but_a_started_job_runs_at_normal_priority(tmp_path):
    class KvGcs:
        def call(self, msg, timeout=None):
            if isinstance(msg, p.KVGet):
                return p.KVValueReply(b"")
            return p.Ack(True)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    (tmp_path / "logs").mkdir()
    supervisor = JobSupervisor(KvGcs(), str(tmp_path), "127.0.0.1:1", stop_grace_s=0.5)
    seen = {}

    def a_lowered_request_thread():
        priority.lower_this_thread()
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        sid = supervisor.submit({"entrypoint": "sleep 30"})
        seen["job"] = _nice_of(supervisor._jobs[sid].proc.pid)
    try:
        worker = threading.Thread(target=a_lowered_request_thread)
        worker.start()
        worker.join(10)
        assert seen["thread"] == min(19, base + priority.NICE)
        assert seen["job"] == base
    finally:
        supervisor.close()
