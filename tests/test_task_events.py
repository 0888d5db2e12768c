"""Task events, node stats, user metrics and the timeline: what the dashboard
reads from the GCS (GetTaskEvents, GetNodes' stats, GetMetrics, the
task_events topic) and what `zray timeline` writes."""
from __future__ import annotations

import json
import os
import sys
import time

import msgpack
import pytest

import zray
from zray.broker import protocol as p
from zray.broker import sockets
from zray.config import config
from zray.gcs.task_event_manager import TaskEventManager
from zray.util.metrics import Counter, Gauge, Histogram
from zray.worker import global_state
from zray.worker.task_events import TaskEventReporter

from conftest import call_bounded, task_batch, wait_for

ROW_FIELDS = {"task_id", "name", "state", "job_id", "actor_id", "node_id", "worker_id",
              "func_or_class_name", "type", "start_time_ms", "end_time_ms", "error_type",
              "error_message", "events"}


def _gcs():
    return global_state.worker.gcs


def _rows(**filters) -> list[dict]:
    return _gcs().call(p.GetTaskEvents(0, filters)).events


def _row_when(predicate, timeout: float = 10.0, **filters) -> dict:
    """The first row matching ``filters`` for which ``predicate`` holds,
    waiting for the batches (sent about once a second) to arrive."""
    def find():
        return next((r for r in _rows(**filters) if predicate(r)), None)
    return wait_for(find, timeout)


def _ended(row) -> bool:
    return row["state"] in ("FINISHED", "FAILED") and row["end_time_ms"] is not None \
        and row["worker_id"] is not None


# ----------------------------------------------------------------- task events

def test_finished_task_has_its_states_times_node_and_worker(cluster):
    @zray.remote
    def square(x):
        return x * x

    ref = square.remote(7)
    assert zray.get(ref) == 49
    task_id = ref.hex()[:32]
    row = _row_when(_ended, task_id=task_id)
    assert ROW_FIELDS <= set(row)
    assert row["state"] == "FINISHED"
    assert row["name"].endswith("square") and row["type"] == "NORMAL_TASK"
    assert row["job_id"] == global_state.worker.job_id.hex()
    assert row["node_id"] == global_state.worker.node_id.hex()
    assert row["worker_id"] and row["worker_id"] != global_state.worker.worker_id.hex()
    assert row["start_time_ms"] <= row["end_time_ms"]
    states = [e["state"] for e in row["events"]]
    assert states == ["PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER",
                      "RUNNING", "FINISHED"]
    times = [e["created_ms"] for e in row["events"]]
    assert times == sorted(times)


def test_a_long_task_shows_as_running_while_it_runs(cluster, tmp_path):
    release = tmp_path / "release"

    @zray.remote
    def long_one(path):
        deadline = time.monotonic() + 60       # bounded even if the test dies
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        return 1

    ref = long_one.remote(str(release))
    try:
        row = _row_when(lambda r: r["state"] == "RUNNING", timeout=30,
                        task_id=ref.hex()[:32])
    finally:
        release.touch()
    assert row["start_time_ms"] and row["end_time_ms"] is None
    assert row["worker_id"] and row["node_id"]
    assert zray.get(ref, timeout=30) == 1
    row = _row_when(lambda r: r["state"] == "FINISHED", task_id=ref.hex()[:32])
    assert [e["state"] for e in row["events"]].count("RUNNING") == 1


def test_failed_task_reports_error_type_and_the_users_traceback(cluster):
    @zray.remote(max_retries=0)
    def explode():
        raise KeyError("no such thing")

    ref = explode.remote()
    with pytest.raises(KeyError):
        zray.get(ref)
    row = _row_when(lambda r: _ended(r) and r["error_message"], task_id=ref.hex()[:32])
    assert row["state"] == "FAILED"
    assert row["error_type"] == "TASK_EXECUTION_EXCEPTION"
    assert "KeyError" in row["error_message"] and "no such thing" in row["error_message"]
    assert "in explode" in row["error_message"]
    assert row["events"][-1]["state"] == "FAILED"


def test_every_way_a_call_ends_frees_its_place_in_the_recorder(cluster):
    """A call that returns, raises, yields, or whose result cannot be
    serialized leaves no task running in its actor's recorder (a leaked one
    would show as RUNNING for ever)."""
    import threading

    @zray.remote
    class Ends:
        def returns(self):
            return 1

        def raises(self):
            raise ValueError("no")

        def unserializable(self):
            return threading.Lock()

        @zray.method(num_returns="streaming")
        def yields(self):
            yield 1
            yield 2

        def still_running(self):
            worker = global_state.worker
            me = worker.current_task_id()
            return [task_id for task_id, *_ in worker.task_events.recorder.running()
                    if task_id != me]

    actor = Ends.remote()
    assert zray.get(actor.returns.remote(), timeout=60) == 1
    with pytest.raises(ValueError):
        zray.get(actor.raises.remote(), timeout=60)
    with pytest.raises(Exception, match="(?i)pickle|serializ"):
        zray.get(actor.unserializable.remote(), timeout=60)
    assert [zray.get(ref, timeout=60) for ref in actor.yields.remote()] == [1, 2]
    assert zray.get(actor.still_running.remote(), timeout=60) == []
    zray.kill(actor)


def test_a_failure_of_the_reporting_itself_never_fails_a_call_or_ends_the_actor(cluster):
    """With its reporter broken (registering an info and noting an end
    raise), an actor's calls still return, a user error still reaches the
    caller as the user's, and the actor lives on in the same process; a
    cancel that lands in the reporting is raised again (the task is
    cancelled, not reported as a reporting failure)."""
    @zray.remote
    class Fragile:
        def break_reporting(self):
            from zray.worker.executor import Executor
            reporter = global_state.worker.task_events
            frame = sys._getframe()         # the executor running this call
            while not isinstance(frame.f_locals.get("self"), Executor):
                frame = frame.f_back

            def broken(*args, **kwargs):
                raise RuntimeError("a broken reporter")
            reporter.info_index = broken    # a method not called yet cannot start,
            frame.f_locals["self"]._finish_task = broken   # no end can be packed by the
            reporter.finished_unpacked = broken     # recorder or noted otherwise,
            reporter.ended = broken         # nor a failure noted
            return os.getpid()

        def add_one(self, x):
            return x + 1

        def fails(self):
            raise ValueError("the user's own error")

        def pid(self):
            return os.getpid()

    actor = Fragile.remote()
    pid = zray.get(actor.break_reporting.remote(), timeout=60)
    assert zray.get(actor.add_one.remote(1), timeout=60) == 2
    with pytest.raises(zray.exceptions.RayTaskError, match="the user's own error"):
        zray.get(actor.fails.remote(), timeout=60)
    assert zray.get(actor.add_one.remote(2), timeout=60) == 3
    assert zray.get(actor.pid.remote(), timeout=60) == pid
    zray.kill(actor)
    from zray.worker.task_events import reporting_failed
    with pytest.raises(zray.exceptions.TaskCancelledError):
        try:
            raise zray.exceptions.TaskCancelledError("cancelled")
        except Exception:
            reporting_failed("a task's start")


def test_cancelled_task_is_failed_with_task_cancelled(cluster):
    @zray.remote
    def slow():
        time.sleep(30)

    @zray.remote
    def blocker():
        time.sleep(0.5)

    blockers = [blocker.remote() for _ in range(2)]     # keep both CPUs busy
    ref = slow.remote()
    zray.cancel(ref)
    with pytest.raises(zray.exceptions.TaskCancelledError):
        zray.get(ref, timeout=20)
    row = _row_when(lambda r: r["state"] == "FAILED", task_id=ref.hex()[:32])
    assert row["error_type"] == "TASK_CANCELLED"
    zray.get(blockers)


def test_task_whose_worker_died_is_failed_with_worker_died(cluster):
    @zray.remote(max_retries=0)
    def die():
        os._exit(1)

    ref = die.remote()
    with pytest.raises(zray.exceptions.WorkerCrashedError):
        zray.get(ref, timeout=30)
    row = _row_when(lambda r: r["state"] == "FAILED", task_id=ref.hex()[:32])
    assert row["error_type"] == "WORKER_DIED"
    assert row["error_message"]


def test_actor_creation_and_actor_task_are_reported_with_class_names(cluster):
    @zray.remote
    class Greeter:
        def greet(self, name):
            return f"hello {name}"

    g = Greeter.remote()
    ref = g.greet.remote("x")
    assert zray.get(ref) == "hello x"
    call = _row_when(_ended, task_id=ref.hex()[:32])
    assert call["type"] == "ACTOR_TASK"
    assert call["name"].endswith("Greeter.greet")
    assert call["actor_id"] == g._actor_id.hex()
    created = _row_when(_ended, type="ACTOR_CREATION_TASK", actor_id=g._actor_id.hex())
    assert created["name"].endswith("Greeter.__init__")
    assert created["state"] == "FINISHED"
    assert created["worker_id"] == call["worker_id"]
    zray.kill(g)


def test_calls_waiting_behind_a_long_one_show_as_waiting_with_what_they_are(cluster, tmp_path):
    """The owner reports a call still waiting a flush or two after it was
    submitted, with its name, actor and type."""
    release = tmp_path / "release"

    @zray.remote
    class Gate:
        def hold(self, path):
            deadline = time.monotonic() + 60       # bounded even if the test dies
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.02)
            return 1

        def after(self):
            return 2

    gate = Gate.remote()
    quick = gate.after.remote()
    assert zray.get(quick, timeout=30) == 2
    held = gate.hold.remote(str(release))
    waiting = gate.after.remote()
    try:
        row = _row_when(lambda r: r["state"] == "PENDING_ARGS_AVAIL", timeout=30,
                        task_id=waiting.hex()[:32])
    finally:
        release.touch()
    assert row["name"] == "after" and row["type"] == "ACTOR_TASK"
    assert row["actor_id"] == gate._actor_id.hex()
    assert zray.get([held, waiting], timeout=30) == [1, 2]
    done = _row_when(_ended, task_id=waiting.hex()[:32])
    assert [e["state"] for e in done["events"]][0] == "PENDING_ARGS_AVAIL"
    zray.kill(gate)


def test_filters_and_limit_select_rows(cluster):
    @zray.remote
    def tagged_for_filter(i):
        return i

    zray.get([tagged_for_filter.remote(i) for i in range(5)])
    wait_for(lambda: len([r for r in _rows(state="FINISHED")
                          if r["name"].endswith("tagged_for_filter") and _ended(r)]) == 5)
    mine = [r for r in _rows() if r["name"].endswith("tagged_for_filter")]
    full = mine[0]["name"]
    assert len(_rows(name=full, state="FINISHED")) == 5
    limited = _gcs().call(p.GetTaskEvents(2, {"name": full})).events
    assert [r["task_id"] for r in limited] == [r["task_id"] for r in mine[-2:]]
    with pytest.raises(Exception, match="cannot filter task events by"):
        _gcs().call(p.GetTaskEvents(10, {"colour": "red"}))


def test_task_summary_counts_rows_by_state_and_name(cluster):
    @zray.remote
    def summed(fail):
        if fail:
            raise ValueError("x")

    refs = [summed.remote(i == 0) for i in range(4)]
    for ref in refs:
        try:
            zray.get(ref)
        except ValueError:
            pass
    ids = {r.hex()[:32] for r in refs}
    wait_for(lambda: len([r for r in _rows() if r["task_id"] in ids and _ended(r)]) == 4)
    rows_before = len(_rows())      # (an earlier test's late batch may add rows meanwhile)
    reply = _gcs().call(p.GetTaskSummary())
    name = next(r["name"] for r in _rows() if r["task_id"] in ids)
    assert reply.by_name[name] == {"FINISHED": 3, "FAILED": 1}
    assert rows_before <= reply.total <= len(_rows())
    assert sum(reply.by_state.values()) == reply.total


def test_updated_rows_are_published_on_the_task_events_topic(cluster):
    sub = sockets.subscriber(global_state.worker.pub_address, [p.TOPIC_TASK_EVENTS])
    try:
        _wait_published(sub)
    finally:
        sub.close(linger=0)


def test_junk_sent_up_the_event_stream_is_skipped_and_events_still_flow(cluster):
    """The GCS reads subscriptions off its event stream (it builds task rows
    only for a follower); whatever else a peer sends there is skipped."""
    import zmq
    xsub = sockets._connect(zmq.Context.instance().socket(zmq.XSUB),
                            global_state.worker.pub_address)
    sub = None
    try:
        for junk in (b"", b"\x02abc", os.urandom(300), b"\x00" + b"never subscribed",
                     b"\x01" + os.urandom(5000)):
            xsub.send(junk)
        assert call_bounded(lambda: _gcs().call(p.Ping()), 10) == ("ok", p.Ack())
        sub = sockets.subscriber(global_state.worker.pub_address, [p.TOPIC_TASK_EVENTS])
        _wait_published(sub)
    finally:
        xsub.close(linger=0)
        if sub is not None:
            sub.close(linger=0)


def _wait_published(sub) -> None:
    """Run tasks until ``sub`` receives a FINISHED row of one of them."""
    @zray.remote
    def published():
        return 1

    task_ids, seen = set(), []

    def got_finished():
        # a new task each round: the subscription may reach the GCS only
        # after the first batches were published
        ref = published.remote()
        zray.get(ref, timeout=30)
        task_ids.add(ref.hex()[:32])
        if sub.poll(1500):
            for topic, event in sockets.recv_events(sub, 100):
                assert topic == p.TOPIC_TASK_EVENTS
                seen.extend(r for r in event.rows if r["task_id"] in task_ids)
        return any(r["state"] == "FINISHED" for r in seen)
    wait_for(got_finished, 30)
    assert ROW_FIELDS <= set(seen[-1])


def test_malformed_task_events_are_dropped_and_the_gcs_keeps_serving(cluster):
    before = _gcs().call(p.GetTaskEvents(1, {})).dropped
    fields = ["not an id", "x", 99, None, None, None, b"t" * 16, 0, 42, 1.0, None, None,
              b"t" * 16, 0.5, 1, 1.0, None, 2.0]       # three events, each with a wrong field
    junk = p.AddTaskEvents(os.urandom(16), os.urandom(16), 1, p.pack_task_events(fields), 3, 0)
    _gcs().send(junk)
    # a blob that is not msgpack, not an array, or not whole events: its
    # events are counted as dropped
    _gcs().send(junk._replace(events=b"\xc1" + os.urandom(64), count=10))
    _gcs().send(junk._replace(events=b"\x07", count=4))         # (counts as 1: one byte)
    _gcs().send(junk._replace(events=p.pack_task_events([b"t" * 16, 0, 1]), count=2))
    wait_for(lambda: _gcs().call(p.GetTaskEvents(1, {})).dropped >= before + 16)
    assert _gcs().call(p.Ping()) == p.Ack()


def test_packed_records_make_the_rows_their_fields_would():
    """A batch's packed records (an executor's ends) make the same rows as
    the same events sent as fields; a record with a state that is none is
    dropped and counted, the others are applied."""
    info = {"name": "A.f", "type": p.TASK_ACTOR_METHOD, "job_id": b"\0\0\0\1",
            "actor_id": b"a" * 16}
    ends = [(i.to_bytes(16, "big"), i % 2, p.TS_FINISHED if i % 3 else p.TS_FAILED,
             2.0 + i, info if i % 4 else None, 1.0 + i) for i in range(12)]
    ends.append((b"r" * 16, 0, p.TS_RUNNING, 5.0, info, None))
    # one of them ended before: the record finishes a row RUNNING made
    running = (ends[5][0], ends[5][1], p.TS_RUNNING, 1.5, info, None)

    def rows(table):
        return sorted(table.query(0, {}), key=lambda r: r["task_id"])

    as_fields = TaskEventManager(max_rows=100)
    as_fields.add(task_batch(b"w" * 16, b"n" * 16, 7, [list(running)], 0))
    as_fields.add(task_batch(b"w" * 16, b"n" * 16, 7, [list(e) for e in ends], 0))
    as_records = TaskEventManager(max_rows=100)
    as_records.add(task_batch(b"w" * 16, b"n" * 16, 7, [list(running)], 0))
    records = b"".join(p.TASK_EVENT_RECORD.pack(
        task_id, attempt, state, time_s, float("nan") if start is None else start,
        -1 if event_info is None else 3)
        for task_id, attempt, state, time_s, event_info, start in ends)
    junk = p.TASK_EVENT_RECORD.pack(b"j" * 16, 0, 9, 2.0, 1.0, 3)     # no state 9
    as_records.add(p.AddTaskEvents(b"w" * 16, b"n" * 16, 7, p.pack_task_events(
        [], records + junk, {3: info}), len(ends) + 1, 0))
    assert rows(as_records) == rows(as_fields) and len(rows(as_fields)) == 13
    assert as_records.dropped_events == 1 and as_fields.dropped_events == 0


def test_times_that_are_not_finite_are_dropped_and_the_table_stays_readable():
    """An end time that is NaN or infinite drops its event (counted), as
    fields or packed; a start that is not finite is taken as none; the
    table answers queries and summaries after."""
    table = TaskEventManager(max_rows=100)
    nan, inf = float("nan"), float("inf")
    fields = [(b"a" * 16, 0, p.TS_FINISHED, inf, None, 1.0),
              (b"b" * 16, 0, p.TS_FINISHED, 2.0, None, nan),
              (b"c" * 16, 0, p.TS_FINISHED, 2.0, None, -inf)]
    table.add(task_batch(b"w" * 16, b"n" * 16, 7, [list(e) for e in fields], 0))
    records = b"".join(p.TASK_EVENT_RECORD.pack(task_id, 0, p.TS_FINISHED, end, start, -1)
                       for task_id, end, start in ((b"d" * 16, nan, 1.0),
                                                   (b"e" * 16, 2.0, inf),
                                                   (b"f" * 16, 3.0, 1.0)))
    table.add(p.AddTaskEvents(b"w" * 16, b"n" * 16, 7, p.pack_task_events([], records, {}),
                              3, 0))
    rows = {bytes.fromhex(r["task_id"]): r for r in table.query(0, {})}
    assert set(rows) == {b"b" * 16, b"c" * 16, b"e" * 16, b"f" * 16}
    assert table.dropped_events == 2
    assert [rows[t]["end_time_ms"] for t in (b"b" * 16, b"e" * 16, b"f" * 16)] \
        == [2000, 2000, 3000]
    assert rows[b"f" * 16]["start_time_ms"] == 1000
    assert table.summary()[0] == {"FINISHED": 4}


# ------------------------------------------------------------ the table bound

def test_table_bound_drops_the_oldest_rows_and_counts_them():
    table = TaskEventManager(max_rows=10)
    msg = task_batch(b"w" * 16, b"n" * 16, 1,
                          [(i.to_bytes(16, "big"), 0, p.TS_PENDING_ARGS_AVAIL, 1.0 + i,
                            {"name": f"t{i}"}) for i in range(25)], 0)
    table.add(msg)
    rows = table.query(0, {})
    assert len(rows) == 10
    assert [r["name"] for r in rows] == [f"t{i}" for i in range(15, 25)]
    assert table.dropped == 15


def _ends(first: int, count: int) -> list:
    return [(i.to_bytes(16, "big"), 0, p.TS_FINISHED, 2.0 + i, {"name": f"t{i}"}, 1.0 + i)
            for i in range(first, first + count)]


def test_a_batch_carries_each_info_once_and_its_events_get_them_back():
    shared = {"name": "A.f", "type": p.TASK_ACTOR_METHOD, "actor_id": b"a" * 16}
    error = {"name": "A.f", "error_type": "TASK_EXECUTION_EXCEPTION", "error_message": "no"}
    events = [p.TaskEvent(bytes([i]) * 16, 0, p.TS_FINISHED, 2.0, shared, 1.0)
              for i in range(50)] + [p.TaskEvent(b"e" * 16, 0, p.TS_FAILED, 3.0, error),
                                     p.TaskEvent(b"n" * 16, 0, p.TS_RUNNING, 4.0)]
    blob = p.pack_task_events([f for event in events for f in event])
    assert p.unpack_task_events(blob) == events
    assert blob.count(b"A.f") == 2                  # each distinct info once
    # an executor's ends of tasks it saw start travel packed, naming infos by index
    packed = [p.TaskEvent(bytes([i]) * 16, i % 2, p.TS_FINISHED, 2.0 + i, shared, 1.0 + i)
              for i in range(60, 70)] + [p.TaskEvent(b"x" * 16, 0, p.TS_FINISHED, 5.0, None)]
    records = b"".join(p.TASK_EVENT_RECORD.pack(e.task_id, e.attempt, e.state, e.time_s,
                                                 float("nan") if e.start_s is None else e.start_s,
                                                 -1 if e.info is None else 7) for e in packed)
    blob = p.pack_task_events([f for event in events for f in event], records, {7: shared})
    assert p.unpack_task_events(blob) == events + packed
    record = p.TASK_EVENT_RECORD.pack(b"t" * 16, 0, 4, 2.0, 1.0, 3)
    for junk, why in ((msgpack.packb([[shared], [b"t" * 16, 0, 4, 2.0, 1, None]]), "index"),
                      (msgpack.packb([[shared], [b"t" * 16, 0, 4, 2.0, "0", None]]), "index"),
                      (msgpack.packb([[], [b"t" * 16, 0, 4]]), "6 fields per event"),
                      (msgpack.packb([b"t" * 16, 0, 4, 2.0, None, None]), "msgpack"),
                      (msgpack.packb([[], [], record[:-1], {}]), "whole 41-byte records"),
                      (msgpack.packb([[], [], record, {2: shared}]), "record infos"),
                      (msgpack.packb([[], [], p.TASK_EVENT_RECORD.pack(
                          b"t" * 16, 0, 4, 2.0, 1.0, 1 << 16 | 3), {3: shared}]), "record infos"),
                      (msgpack.packb([[], [], p.TASK_EVENT_RECORD.pack(
                          b"t" * 16, 0, 4, 2.0, 1.0, -2), {}]), "record infos"),
                      (msgpack.packb([[], [], record, []]), "msgpack"),
                      (b"\xc1", "msgpack")):
        with pytest.raises(p.ProtocolError, match=why):
            p.unpack_task_events(junk)


def test_batches_wait_unread_until_the_table_is_read_and_nothing_is_lost():
    """A batch waits as it came; every reading method applies what waits
    first; past max_waiting events the oldest batches are applied as new ones
    arrive; slices apply whole batches, oldest first; a batch that is not a
    msgpack array is counted as dropped and the others are applied."""
    table = TaskEventManager(max_rows=100, max_waiting=10)
    for first in (0, 4, 8):
        table.add(task_batch(b"w" * 16, b"n" * 16, 7, _ends(first, 4)))
    assert table.waiting == 8 and len(table.rows) == 4      # 12 > 10: the oldest applied
    assert table.apply_waiting(3) == 4                            # one batch of 4
    assert [r["name"] for r in table.query(0, {})] == [f"t{i}" for i in range(12)]
    assert table.waiting == 0
    junk = task_batch(b"w" * 16, b"n" * 16, 7, [])
    table.add(junk._replace(events=b"\xc1not msgpack" + b"." * 30, count=5))
    table.add(junk._replace(events=b"\x07", count=0))
    table.add(task_batch(b"w" * 16, b"n" * 16, 7, _ends(12, 2)))
    by_state, _, _ = table.summary()
    assert by_state == {"FINISHED": 14} and table.dropped_events == 5 + 1   # at least 1
    # a batch counts for no more events than its bytes can hold, and at least
    # one: empty batches cannot pile up unseen
    liar = TaskEventManager(max_rows=100, max_waiting=50)
    for _ in range(60):
        liar.add(junk._replace(events=b"", count=0))
    assert liar.waiting <= 50 and liar.dropped_events == 10
    liar.add(junk._replace(events=b"\x07", count=2 ** 40))
    assert liar.waiting <= 50 and liar.dropped_events < 20
    changed = TaskEventManager(max_rows=100)
    changed.add(task_batch(b"w" * 16, b"n" * 16, 7, _ends(0, 3)))
    assert not changed.changed
    assert [r["name"] for r in changed.take_changed(10)] == ["t0", "t1", "t2"]


def _records_batch(first: int, count: int, pending: bool = False):
    """A batch of an executor's packed ends of tasks ``first``.. (and, if
    ``pending``, their owner's PENDING events too)."""
    info = {"name": "A.f", "type": p.TASK_ACTOR_METHOD, "actor_id": b"a" * 16}
    ids = [i.to_bytes(16, "big") for i in range(first, first + count)]
    records = b"".join(p.TASK_EVENT_RECORD.pack(task_id, 0, p.TS_FINISHED, 2.0 + i, 1.0 + i, 0)
                       for i, task_id in enumerate(ids, first))
    fields = [f for i, task_id in enumerate(ids, first) if pending
              for f in (task_id, 0, p.TS_PENDING_ARGS_AVAIL, 0.5 + i, None, None)]
    return p.AddTaskEvents(b"w" * 16, b"n" * 16, 7, p.pack_task_events(fields, records, {0: info}),
                           count * (2 if pending else 1), 0)


@pytest.mark.parametrize("pending", [False, True])
def test_a_long_unread_burst_makes_the_table_applying_every_batch_makes(pending):
    """A long burst of short tasks nobody reads (one event a task, or two in
    one batch): past twice the table's rows of events waiting, the GCS sheds
    the oldest batches' new rows unread, and the table, once read, is the one
    applying every batch as it comes makes, the newest rows."""
    def run(table, read_each):
        for first in range(0, 1000, 20):
            table.add(_records_batch(first, 20, pending))
            if read_each:
                table.apply_waiting()
        return table.query(0, {})

    unread = TaskEventManager(max_rows=100)
    rows = run(unread, read_each=False)
    assert unread.waiting == 0
    read = TaskEventManager(max_rows=100)
    assert rows == run(read, read_each=True)
    assert [r["task_id"] for r in rows] == [i.to_bytes(16, "big").hex() for i in range(900, 1000)]
    assert {r["state"] for r in rows} == {"FINISHED"}
    if not pending:             # one event a task: as many dropped, unread or evicted
        assert unread.dropped == read.dropped == 900
        assert unread.dropped_events > 0 and read.dropped_events == 0


def test_past_twice_the_rows_waiting_the_oldest_batch_updates_held_rows_only():
    """Load shedding: a batch that waits behind twice the table's rows of
    events still updates the rows the table holds (a long task's end
    lands); its event of a task the table does not hold is dropped unread
    and counted, though the table has room (Ray drops task events under
    load too)."""
    table = TaskEventManager(max_rows=100)
    held = [i.to_bytes(16, "big") for i in range(50)]
    long_task = b"L" * 16
    table.add(task_batch(b"o" * 16, b"n" * 16, 5, [
        (task_id, 0, p.TS_RUNNING, 1.0, {"name": "f"}, None) for task_id in [long_task, *held]]))
    table.apply_waiting()
    table.add(task_batch(b"o" * 16, b"n" * 16, 5, [
        (long_task, 0, p.TS_FINISHED, 3.0, None, None), (b"N" * 16, 0, p.TS_RUNNING, 3.0, None, None)]))
    for step in range(6):           # 300 more events: RUNNING again, of the held rows
        table.add(task_batch(b"o" * 16, b"n" * 16, 5, [
            (task_id, 0, p.TS_RUNNING, 4.0 + step, None, None) for task_id in held]))
    states = {r["task_id"]: r["state"] for r in table.query(0, {})}
    assert states[long_task.hex()] == "FINISHED"
    assert len(states) == 51 and b"N".hex() * 16 not in states
    assert table.dropped_events == 1 and table.dropped_rows == 0


def test_a_short_tasks_one_event_makes_the_row_its_running_and_end_events_make():
    """An executor reports a short task once (its end, with when it started):
    the row is the one RUNNING and then the end would make, and rows of
    different functions, jobs or errors keep their own fields; a retry's
    error stays on its row."""
    infos = [{"name": "f", "job_id": b"j1", "type": p.TASK_NORMAL,
              "required_resources": {"CPU": 1.0}},
             {"name": "A.g", "job_id": b"j2", "actor_id": b"a" * 16,
              "type": p.TASK_ACTOR_METHOD},
             {"name": "f", "job_id": b"j1", "error_type": "TASK_EXECUTION_EXCEPTION",
              "error_message": "ValueError: no"}]
    # bursts of two equal infos (the second row takes the first's fields)
    ends = [(i.to_bytes(16, "big"), i % 2, p.TS_FAILED if i // 2 % 3 == 2 else p.TS_FINISHED,
             10.0 + i, dict(infos[i // 2 % 3]), 9.5 + i) for i in range(12)]
    one = TaskEventManager(max_rows=100)
    one.add(task_batch(b"w" * 16, b"n" * 16, 7, [list(e) for e in ends], 0))
    two = TaskEventManager(max_rows=100)
    for task_id, attempt, state, end, info, start in ends:
        two.add(task_batch(b"w" * 16, b"n" * 16, 7,
                                [(task_id, attempt, p.TS_RUNNING, start, None)], 0))
        two.add(task_batch(b"w" * 16, b"n" * 16, 7,
                                [(task_id, attempt, state, end, dict(info))], 0))
    assert one.query(0, {}) == two.query(0, {})
    rows = one.query(0, {})
    assert [r["name"] for r in rows] == ["f", "f", "A.g", "A.g", "f", "f"] * 2
    assert [r["error_type"] for r in rows] == \
        [None, None, None, None, "TASK_EXECUTION_EXCEPTION", "TASK_EXECUTION_EXCEPTION"] * 2
    assert [r["actor_id"] for r in rows[:4]] == [None, None] + [(b"a" * 16).hex()] * 2
    assert [r["required_resources"] for r in rows[:4]] == [{"CPU": 1.0}] * 2 + [{}] * 2
    assert rows[1]["job_id"] == b"j1".hex() and rows[3]["job_id"] == b"j2".hex()
    assert rows[3]["events"][-1]["state"] == "FINISHED" and rows[3]["start_time_ms"] == 12500
    assert rows[5]["attempt_number"] == 1 and rows[5]["error_message"] == "ValueError: no"
    # a row that exists already (its owner reported it waiting) takes the same path's result
    three = TaskEventManager(max_rows=100)
    three.add(task_batch(b"o" * 16, b"n" * 16, 3, [(e[0], 0, p.TS_PENDING_ARGS_AVAIL,
                                                         9.0 + i, None)
                                                        for i, e in enumerate(ends)], 0))
    three.add(task_batch(b"w" * 16, b"n" * 16, 7, [list(e) for e in ends], 0))
    assert [(r["state"], r["error_type"], r["name"], r["attempt_number"])
            for r in three.query(0, {})] == \
        [(r["state"], r["error_type"], r["name"], r["attempt_number"]) for r in rows]
    # the bound holds on this path too, and junk in an info drops that event alone
    small = TaskEventManager(max_rows=3)
    small.add(task_batch(b"w" * 16, b"n" * 16, 7, [list(e) for e in ends]
                              + [[b"z" * 16, 0, p.TS_FINISHED, 30.0, {"name": []}, 29.0],
                                 [b"y" * 16, -1, p.TS_FINISHED, 30.0, None, 29.0]], 0))
    assert [r["task_id"] for r in small.query(0, {})] == \
        [e[0].hex() for e in ends[-2:]] + [(b"z" * 16).hex()]
    assert small.dropped_rows == 10 and small.dropped_events == 1


def test_an_earlier_attempts_error_arriving_late_stays_off_the_retrys_row():
    table = TaskEventManager(max_rows=10)
    task = b"t" * 16
    retry_ok = (task, 1, p.TS_FINISHED, 5.0, {"name": "f"}, 4.0)
    first_failed = (task, 0, p.TS_FAILED, 3.0, {"name": "f", "error_type": "WORKER_DIED",
                                                "error_message": "it died"})
    table.add(task_batch(b"w" * 16, b"n" * 16, 7, [list(retry_ok)], 0))
    table.add(task_batch(b"o" * 16, b"n" * 16, 3, [list(first_failed)], 0))
    [row] = table.query(0, {})
    assert (row["attempt_number"], row["state"], row["error_type"], row["error_message"]) \
        == (1, "FINISHED", None, None)


def test_an_executors_events_name_registered_infos_and_arrive_whole(tmp_path):
    """An executor registers an info once and its tasks' ends travel packed
    under its index: a finished task comes back with the info, a failed one
    with the info and its error, a long one as RUNNING with the info; past
    ``max_buffered`` the oldest are dropped and counted."""
    reporter = TaskEventReporter(f"ipc://{tmp_path}/nobody", b"w" * 16, b"n" * 16, 1)
    sent = []
    reporter._send = lambda message: sent.append(message) or True
    info = {"name": "A.f", "type": p.TASK_ACTOR_METHOD, "job_id": b"\0\0\0\1"}
    try:
        index = reporter.info_index(("f", b"\0\0\0\1", b""), dict(info))
        assert reporter.info_index(("f", b"\0\0\0\1", b""), {"other": 1}) == index
        ids = [i.to_bytes(16, "big") for i in range(5)]
        slots = [reporter.started(task_id, 0, index) for task_id in ids]
        assert reporter.recorder.finish(slots[0]) is None       # packed
        reporter.ended(ids[1], 0, p.TS_FAILED, {"error_type": "TASK_EXECUTION_EXCEPTION",
                                                "error_message": "boom"})
        reporter.flush()            # ids[2:] still run
        [message] = sent
        events = {e.task_id: e for e in p.unpack_task_events(message.events)}
        assert message.count == 5 and set(events) == set(ids)
        assert events[ids[0]].state == p.TS_FINISHED and events[ids[0]].info == info
        assert events[ids[0]].start_s <= events[ids[0]].time_s
        assert events[ids[1]].info == {**info, "error_type": "TASK_EXECUTION_EXCEPTION",
                                       "error_message": "boom"}
        assert {events[i].state for i in ids[2:]} == {p.TS_RUNNING}
        assert all(events[i].info == info for i in ids[2:])
        slot = reporter.started(b"b" * 16, 1 << 33, index)      # an attempt a record cannot hold
        reporter.finished_unpacked(reporter.recorder.finish(slot))
        reporter.flush()
        [big] = p.unpack_task_events(sent[-1].events)
        assert (big.attempt, big.state, big.info) == (1 << 33, p.TS_FINISHED, info)
        reporter.max_buffered = 3
        for i in range(10, 20):
            reporter.recorder.finish(reporter.started(i.to_bytes(16, "big"), 0, index))
        reporter.flush()
        kept = p.unpack_task_events(sent[-1].events)
        assert [e.task_id for e in kept] == [i.to_bytes(16, "big") for i in range(17, 20)]
        assert sent[-1].dropped == 7 and not len(reporter.recorder)
    finally:
        reporter._sock.close(linger=0)


def test_a_busy_executors_packed_events_go_before_the_interval_in_small_batches(tmp_path):
    """Between flushes, a tick of the I/O thread sends the packed events once
    EARLY_BATCH_RECORDS piled up (only them: the metrics and the RUNNING and
    waiting reports keep to the interval); fewer wait for the interval."""
    from zray.worker import task_events
    reporter = TaskEventReporter(f"ipc://{tmp_path}/nobody", b"w" * 16, b"n" * 16, 1)
    sent = []
    reporter._send = lambda message: sent.append(message) or True
    reporter.sources.append(lambda: pytest.fail("metrics collected before the interval"))
    index = reporter.info_index(("f", b"\0\0\0\1", b""), {"name": "f"})
    now = time.monotonic()
    try:
        def run(first, count):
            for i in range(first, first + count):
                reporter.recorder.finish(reporter.started(i.to_bytes(16, "big"), 0, index))
        reporter.started(b"long" * 4, 0, index)        # runs on: reported at the interval
        run(0, task_events.EARLY_BATCH_RECORDS - 1)
        reporter.maybe_flush(now)
        assert not sent                                 # too few: they wait
        run(10_000, 1)
        reporter.maybe_flush(now)
        [early] = sent
        assert early.count == task_events.EARLY_BATCH_RECORDS and not len(reporter.recorder)
        assert {e.state for e in p.unpack_task_events(early.events)} == {p.TS_FINISHED}
    finally:
        reporter._sock.close(linger=0)


def test_a_gcs_that_does_not_read_never_blocks_the_reporter_and_drops_are_counted(tmp_path):
    # an endpoint where nobody listens: batches queue up to a few, then drop
    reporter = TaskEventReporter(f"ipc://{tmp_path}/nobody", b"w" * 16, b"n" * 16, 1)
    try:
        def flood():
            for batch in range(40):
                for i in range(100):
                    reporter.record((batch * 100 + i).to_bytes(16, "big"), 0,
                                    p.TS_PENDING_ARGS_AVAIL)
                reporter.flush()
        outcome, _ = call_bounded(flood, timeout=10)
        assert outcome == "ok"
        assert reporter.dropped > 0
        assert reporter.sent + reporter.dropped == 4000
        assert not reporter.events
    finally:
        reporter._sock.close(linger=0)


# ----------------------------------------------------------------- node stats

def test_nodes_report_cpu_memory_disk_store_and_worker_stats(cluster):
    def stats():
        nodes = [n for n in _gcs().call(p.GetNodes()).nodes if n.alive]
        return nodes[0].stats if nodes and nodes[0].stats else None
    # (a report may come before the node's first worker started)
    s = wait_for(lambda: (x := stats()) and x["num_workers"] >= 1 and x, 10)
    assert set(s) == {"cpu_percent", "mem_used", "mem_total", "disk_used", "disk_total",
                      "store_used", "store_spilled", "store_capacity", "num_workers", "time"}
    assert 0 <= s["cpu_percent"] <= 100 * os.cpu_count()
    assert 0 < s["mem_used"] < s["mem_total"]
    assert 0 < s["disk_used"] < s["disk_total"]
    assert s["store_capacity"] > 0 and s["num_workers"] >= 1
    assert abs(s["time"] - time.time()) < 60


# --------------------------------------------------------------- user metrics

def _metric(name):
    metrics = _gcs().call(p.GetMetrics()).metrics
    return next((m for m in metrics if m["name"] == name), None)


def test_user_metrics_from_tasks_actors_and_driver_show_in_get_metrics(cluster):
    @zray.remote
    def count(route):
        Counter("te_requests", description="requests served",
                tag_keys=("route",)).inc(2, tags={"route": route})

    @zray.remote
    class Temperature:
        def __init__(self):
            self.gauge = Gauge("te_temperature", tag_keys=("room",))
            self.gauge.set_default_tags({"room": "lab"})

        def set(self, value):
            self.gauge.set(value)

    zray.get([count.remote("/a") for _ in range(3)] + [count.remote("/b")])
    t = Temperature.remote()
    zray.get(t.set.remote(21.5))
    latency = Histogram("te_latency", boundaries=[0.1, 1.0])
    for value in (0.05, 0.5, 5.0, 0.7):
        latency.observe(value)

    def counted():
        m = _metric("te_requests")
        return m and {s["tags"]["route"]: s["value"] for s in m["samples"]} == \
            {"/a": 6.0, "/b": 2.0} and m
    counter = wait_for(counted, 10)
    assert counter["type"] == "counter" and counter["description"] == "requests served"
    assert counter["tag_keys"] == ["route"]
    # (a report may come between the gauge's creation and its set, or
    # between two observations: wait for the last values)
    gauge = wait_for(lambda: (m := _metric("te_temperature")) and m["samples"] and m, 10)
    assert gauge["type"] == "gauge"
    assert gauge["samples"] == [{"tags": {"room": "lab"}, "value": 21.5}]
    hist = wait_for(lambda: (m := _metric("te_latency")) and m["samples"]
                    and m["samples"][0]["value"]["count"] == 4 and m, 10)
    assert hist["type"] == "histogram" and hist["boundaries"] == [0.1, 1.0]
    value = hist["samples"][0]["value"]
    assert value["buckets"] == [1, 2, 1] and value["count"] == 4
    assert value["sum"] == pytest.approx(6.25)
    zray.kill(t)


def test_metric_misuse_raises_clear_errors():
    c = Counter("te_checked", tag_keys=("a",))
    with pytest.raises(ValueError, match="Missing value for tag key"):
        c.inc()
    with pytest.raises(ValueError, match="unknown tag key"):
        c.inc(tags={"a": "1", "b": "2"})
    with pytest.raises(ValueError, match="must be > 0"):
        c.inc(-1, tags={"a": "1"})
    with pytest.raises(ValueError, match="not valid"):
        Gauge("has space")
    with pytest.raises(ValueError, match="boundaries"):
        Histogram("te_no_bounds")
    with pytest.raises(ValueError, match="must increase"):
        Histogram("te_bad_bounds", boundaries=[2, 1])
    with pytest.raises(ValueError, match="already exists"):
        Gauge("te_checked")


# ------------------------------------------------------------------- timeline

def test_zray_timeline_writes_a_chrome_trace_of_the_tasks(cluster, tmp_path, capsys):
    from zray._private.cli import main

    @zray.remote
    def traced(i):
        time.sleep(0.01)
        return i

    refs = [traced.remote(i) for i in range(4)]
    zray.get(refs)
    ids = {r.hex()[:32] for r in refs}
    wait_for(lambda: len([r for r in _rows() if r["task_id"] in ids and _ended(r)]) == 4)
    out = tmp_path / "trace.json"
    assert main(["timeline", "--address", global_state.worker.gcs_address,
                 "--output", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    trace = json.loads(out.read_text())
    assert isinstance(trace, list)
    bars = [e for e in trace if e["ph"] == "X" and e["args"]["task_id"] in ids]
    assert len(bars) == 4
    for bar in bars:
        assert bar["name"].endswith("traced")
        assert isinstance(bar["pid"], int) and isinstance(bar["tid"], int)
        assert bar["ts"] > 0 and bar["dur"] >= 10_000 * 0.9      # microseconds
    names = {e["name"] for e in trace if e["ph"] == "M"}
    assert {"process_name", "thread_name"} <= names



def test_zray_timeline_returns_the_trace_or_writes_it(cluster, tmp_path):
    @zray.remote
    def api_traced():
        return 1

    ref = api_traced.remote()
    zray.get(ref)
    task_id = ref.hex()[:32]
    _row_when(_ended, task_id=task_id)
    trace = zray.timeline()
    assert any(e["ph"] == "X" and e["args"]["task_id"] == task_id for e in trace)
    path = tmp_path / "t.json"
    assert zray.timeline(str(path)) is None
    assert any(e.get("args", {}).get("task_id") == task_id
               for e in json.loads(path.read_text()))

# fresh clusters last: they end the module's shared one

def test_bound_is_configurable_and_reported_by_the_gcs(start_cluster, monkeypatch):
    monkeypatch.setenv("ZRAY_TASK_EVENTS_MAX", "20")
    config.reload()
    try:
        start_cluster()
    finally:
        monkeypatch.delenv("ZRAY_TASK_EVENTS_MAX")
        config.reload()

    @zray.remote
    def tiny(i):
        return i

    def ended_ids(refs):
        ids = {r.hex()[:32] for r in refs}
        return lambda: {r["task_id"] for r in _rows() if _ended(r)} >= ids

    first = [tiny.remote(i) for i in range(20)]
    zray.get(first)
    wait_for(ended_ids(first), 10)
    later = [tiny.remote(i) for i in range(20)]
    zray.get(later)
    wait_for(ended_ids(later), 10)
    reply = _gcs().call(p.GetTaskEvents(0, {}))
    assert len(reply.events) == 20
    assert reply.dropped >= 20
    assert not {r.hex()[:32] for r in first} & {e["task_id"] for e in reply.events}
