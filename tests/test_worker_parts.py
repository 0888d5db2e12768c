"""The core worker's parts, each on its own with fakes for the sockets: the
reference counter, the task manager (retries, lineage), generator streams,
the object getter, and the inbox dispatcher. No cluster: these run in
milliseconds. One test at the end checks, on a real cluster, what an actor
learns of its own restart."""
from __future__ import annotations

import os
import threading

import pytest
import zmq

import zray
from zray import exceptions as exc
from zray.broker import protocol as p
from zray.object_ref import ObjectRef
from zray.worker import serialization
from zray.worker.inbox import InboxDispatcher
from zray.worker.object_getter import ObjectGetter, error_return
from zray.worker.pending_task import PendingTask, return_id
from zray.worker.reference_counter import ReferenceCounter
from zray.worker.reference_table import PENDING
from zray.worker.streams import Streams
from zray.worker.task_manager import TaskManager

from conftest import call_bounded, wait_for

ME = p.Address("tcp://127.0.0.1:1", b"w" * 16, os.getpid(), b"n" * 16)
OTHER = p.Address("tcp://127.0.0.1:2", b"o" * 16, 1, b"m" * 16)


class FakeWorker:
    """What the parts ask of the core worker."""

    def __init__(self):
        self.address = ME
        self.worker_id = ME.worker_id
        self.node_id = ME.node_id
        self.pid = ME.pid
        self.job_id = b"j" * 4
        self.mode = "driver"

    def current_task_id(self):
        return None

    def drain_releases(self):
        pass


class FakeRaylet:
    def __init__(self):
        self.sent = []

    def send(self, msg):
        self.sent.append(p.decode(p.encode(msg)))      # as the raylet would read it

    def of(self, cls):
        return [m for m in self.sent if isinstance(m, cls)]


class FakeEvents:
    enabled = False

    def done(self, task_id):
        pass


class Parts:
    """A reference counter, getter, streams and task manager wired as the
    core worker wires them, with the messages they send recorded."""

    def __init__(self, raylet=None, arena=None):
        self.cond = threading.Condition(threading.Lock())
        self.worker = FakeWorker()
        self.raylet = raylet or FakeRaylet()
        self.messages = []          # (address, message) sent to core workers
        self.freed = []
        self.refs = ReferenceCounter(self.cond, self.worker, self.send_to, self.raylet,
                                     self.on_freed)
        self.getter = ObjectGetter(self.cond, self.worker, self.refs, self.raylet, arena,
                                   self.send_to, lambda: None)
        self.streams = Streams(self.cond, self.worker, self.refs)
        self.pumped = []
        self.tasks = TaskManager(self.cond, self.worker, self.refs, self.getter, self.streams,
                                 self.raylet, FakeEvents(), self.pumped.append,
                                 lambda task, failed: None)
        self.tasks.wake_locked = self.cond.notify_all
        self.tasks.leases.enabled = False   # leases: see test_worker_leases.py

    def send_to(self, address, msg):
        self.messages.append((p.Address(*address), msg))

    def on_freed(self, object_id, entry):
        self.freed.append(object_id)
        return None

    def sent(self, cls):
        return [(a, m) for a, m in self.messages if isinstance(m, cls)]

    def submit(self, name="f", max_retries=3, retry_exceptions=False, args=(),
               num_returns=1):
        tasks = self.tasks
        task_id = tasks.new_task_id()
        entries, held, deps = tasks.prepare_args(list(args), {})
        spec = p.TaskSpec(task_id, b"j" * 4, p.TASK_NORMAL, b"h", name, entries, [], num_returns,
                          {}, max_retries, bool(retry_exceptions), list(ME))
        task, refs = tasks.new_task(spec, retry_exceptions, held, deps)
        if not task.deps:
            tasks.dispatch(task, first=True)
        return task, refs[0]


def _inline(object_id, value):
    return p.Return(object_id, p.RET_INLINE, serialization.serialize(value).to_bytes())


def _error(object_id, error):
    return error_return(object_id, error)


# -- the reference counter -------------------------------------------------

def test_owned_stored_object_is_freed_when_its_last_ref_goes():
    parts = Parts()
    oid = b"x" * 20
    ref = parts.refs.new_owned_ref(oid, p.Return(oid, p.RET_STORED, p.StoredAt(ME.node_id, 9)))
    assert isinstance(ref, ObjectRef)
    parts.refs.released.append(oid)         # what ObjectRef.__del__ does
    parts.refs.drain()
    assert parts.raylet.of(p.FreeObjects) == [p.FreeObjects([oid])]
    assert parts.refs.refs.get(oid) is None and parts.freed == [oid]


def test_borrower_keeps_an_owned_object_until_it_gives_it_back():
    parts = Parts()
    oid = b"y" * 20
    parts.refs.new_owned_ref(oid, p.Return(oid, p.RET_STORED, p.StoredAt(ME.node_id, 9)))
    parts.refs.add_borrower([oid], OTHER.worker_id)
    parts.refs.released.append(oid)
    parts.refs.drain()
    assert parts.raylet.of(p.FreeObjects) == [], "a borrower still holds it"
    parts.refs.remove_borrower([oid], OTHER.worker_id)
    assert parts.raylet.of(p.FreeObjects) == [p.FreeObjects([oid])]


def test_dead_borrower_no_longer_holds_an_object():
    parts = Parts()
    oid = b"z" * 20
    parts.refs.new_owned_ref(oid, p.Return(oid, p.RET_STORED, p.StoredAt(ME.node_id, 9)))
    parts.refs.add_borrower([oid], OTHER.worker_id)
    parts.refs.released.append(oid)
    parts.refs.drain()
    after = []
    with parts.cond:
        parts.refs.drop_dead_borrower_locked(OTHER.worker_id, after)
    parts.refs.run_after(after)
    assert parts.raylet.of(p.FreeObjects) == [p.FreeObjects([oid])]


def test_borrowed_ref_registers_with_its_owner_and_is_given_back():
    parts = Parts()
    oid = b"b" * 20
    ref = parts.refs.deserialized_ref(oid, list(OTHER))
    assert ref._owner == OTHER
    assert parts.sent(p.AddBorrower) == [(OTHER, p.AddBorrower([oid], ME.worker_id))]
    parts.refs.released.append(oid)
    parts.refs.drain()
    assert parts.sent(p.RemoveBorrower) == [(OTHER, p.RemoveBorrower([oid], ME.worker_id))]


def test_lending_an_owned_ref_counts_the_borrower():
    parts = Parts()
    oid = b"l" * 20
    ref = parts.refs.new_owned_ref(oid, _inline(oid, 1))
    parts.refs.lend([ref], OTHER.worker_id)
    assert parts.refs.refs.get(oid).borrowers == {OTHER.worker_id}


# -- the task manager -------------------------------------------------------

def test_take_retry_counts_down_and_bumps_the_attempt():
    spec = p.TaskSpec(b"t" * 16, b"j" * 4, p.TASK_NORMAL, b"h", "f", [], [], 1, {}, 2, False,
                      list(ME))
    task = PendingTask(spec, [], [], False)
    assert task.take_retry() and task.spec.attempt == 1
    assert task.take_retry(new_attempt=False) and task.spec.attempt == 1
    assert not task.take_retry() and task.retries_left == 0
    unlimited = PendingTask(spec._replace(max_retries=-1), [], [], False)
    assert all(unlimited.take_retry() for _ in range(10))


def test_task_result_makes_its_ref_ready():
    parts = Parts()
    task, ref = parts.submit()
    (submitted,) = parts.raylet.of(p.SubmitTask)
    assert p.task_spec(submitted.spec).task_id == task.spec.task_id
    parts.tasks.handle_task_returned(p.TaskReturned(task.spec.task_id, [
        list(_inline(ref._id, 42))]))
    assert parts.getter.get(ref, timeout=1) == 42
    assert len(parts.tasks) == 0


def test_task_that_raises_is_retried_with_retry_exceptions_then_fails():
    parts = Parts()
    task, ref = parts.submit(max_retries=1, retry_exceptions=True)
    failure = p.TaskReturned(task.spec.task_id, [_error(ref._id, ValueError("boom"))])
    parts.tasks.handle_task_returned(failure)
    resent = parts.raylet.of(p.SubmitTask)
    assert len(resent) == 2 and p.task_spec(resent[1].spec).attempt == 1
    parts.tasks.handle_task_returned(failure)
    assert len(parts.raylet.of(p.SubmitTask)) == 2, "no retries left"
    with pytest.raises(ValueError, match="boom"):
        parts.getter.get(ref, timeout=1)


def test_crashed_worker_is_retried_then_reported():
    parts = Parts()
    task, ref = parts.submit(max_retries=1)
    crash = p.TaskFailed(task.spec.task_id, "WorkerCrashedError", "worker died")
    parts.tasks.handle_task_failed(crash)
    assert len(parts.raylet.of(p.SubmitTask)) == 2
    parts.tasks.handle_task_failed(crash)
    with pytest.raises(exc.WorkerCrashedError, match="worker died"):
        parts.getter.get(ref, timeout=1)


def test_task_waits_for_an_owned_argument_and_gets_its_value_inline():
    parts = Parts()
    first, dep = parts.submit("first")
    second, _ = parts.submit("second", args=[dep])
    assert [p.task_spec(m.spec).function_name for m in parts.raylet.of(p.SubmitTask)] == \
        ["first"], "the second task waits for its argument"
    parts.tasks.handle_task_returned(p.TaskReturned(first.spec.task_id, [_inline(dep._id, 7)]))
    parts.tasks.run_deferred()
    sent = p.task_spec(parts.raylet.of(p.SubmitTask)[-1].spec)
    assert sent.function_name == "second"
    arg = p.task_arg(sent.args[0])
    assert arg.kind == p.ARG_VALUE and serialization.deserialize(arg.blob)[1] == 7


def test_failed_dependency_fails_the_task_that_waits_for_it():
    parts = Parts()
    first, dep = parts.submit("first", max_retries=0)
    _, result = parts.submit("second", args=[dep])
    parts.tasks.handle_task_failed(p.TaskFailed(first.spec.task_id, "WorkerCrashedError", "x"))
    parts.tasks.run_deferred()
    with pytest.raises(exc.WorkerCrashedError):
        parts.getter.get(result, timeout=1)


def _made_on_a_node_that_dies(max_retries: int):
    """A task whose result is stored on another node, which then dies."""
    parts = Parts()
    task, ref = parts.submit(max_retries=max_retries)
    elsewhere = b"e" * 16
    parts.tasks.handle_task_returned(p.TaskReturned(task.spec.task_id, [
        p.Return(ref._id, p.RET_STORED, p.StoredAt(elsewhere, 100))]))
    parts.tasks.node_died(elsewhere)
    return parts, task, ref


def test_result_lost_with_its_node_is_rebuilt_from_lineage():
    parts, task, ref = _made_on_a_node_that_dies(max_retries=1)
    resent = parts.raylet.of(p.SubmitTask)
    assert len(resent) == 2 and p.task_spec(resent[1].spec).attempt == 1
    assert parts.refs.refs.get(ref._id).state == PENDING
    parts.tasks.handle_task_returned(p.TaskReturned(task.spec.task_id, [_inline(ref._id, 5)]))
    assert parts.getter.get(ref, timeout=1) == 5


def test_result_lost_without_retries_raises_object_lost():
    parts, _, ref = _made_on_a_node_that_dies(max_retries=0)
    with pytest.raises(exc.ObjectLostError, match="lost with node"):
        parts.getter.get(ref, timeout=1)


def test_cancel_before_dispatch_fails_at_once():
    parts = Parts()
    first, dep = parts.submit("first")
    second, result = parts.submit("second", args=[dep])
    parts.tasks.cancel(result)
    with pytest.raises(exc.TaskCancelledError):
        parts.getter.get(result, timeout=1)


# -- streams ----------------------------------------------------------------

def test_stream_items_come_in_order_and_end_with_the_count():
    parts = Parts()
    task, done = parts.submit("gen", num_returns=p.STREAMING)
    task_id = task.spec.task_id
    for index in (1, 0):            # out of order on the wire
        item = _inline(return_id(task_id, index + 1), index * 10)
        assert parts.streams.item_arrived(p.GeneratorItem(task_id, index, item),
                                          parts.tasks.is_pending)
    parts.tasks.handle_task_returned(p.TaskReturned(task_id, [_inline(done._id, 2)]))
    values = []
    while (ref := parts.streams.next_item(task_id, len(values))) is not None:
        values.append(parts.getter.get(ref, timeout=1))
    assert values == [0, 10]


def test_stream_of_a_failed_task_ends_with_its_error():
    parts = Parts()
    task, done = parts.submit("gen", num_returns=p.STREAMING, max_retries=0)
    parts.tasks.fail_task(task.spec.task_id, ValueError("gen broke"))
    ref = parts.streams.next_item(task.spec.task_id, 0)
    with pytest.raises(ValueError, match="gen broke"):
        parts.getter.get(ref, timeout=1)
    assert parts.streams.next_item(task.spec.task_id, 1) is None


# -- the object getter ------------------------------------------------------

def test_get_of_a_pending_object_times_out_within_its_bound():
    parts = Parts()
    _, ref = parts.submit()
    how, err = call_bounded(lambda: parts.getter.get(ref, timeout=0.2), timeout=5)
    assert how == "raised" and isinstance(err, exc.GetTimeoutError)


def test_wait_reports_the_ready_ones():
    parts = Parts()
    t1, r1 = parts.submit()
    _, r2 = parts.submit()
    parts.tasks.handle_task_returned(p.TaskReturned(t1.spec.task_id, [_inline(r1._id, 1)]))
    assert parts.getter.wait([r1, r2], 1, timeout=0.1) == ([r1], [r2])


class PullingRaylet(FakeRaylet):
    """Answers PinObjects: pulls an object here (``pulls``), or cannot."""

    def __init__(self, can_pull: bool):
        super().__init__()
        self.can_pull = can_pull
        self.pins = []

    def call(self, msg):
        self.pins.append(msg)
        location = [0, 8] if self.can_pull else None
        return p.PinObjectsReply([location], [None], [""])


class FakeArena:
    def read_view(self, offset, size):
        import numpy as np
        return np.zeros(size, dtype=np.uint8)


@pytest.mark.parametrize("can_pull", [True, False])
def test_wait_fetch_local_counts_a_remote_object_ready_once_it_is_pulled_here(can_pull):
    raylet = PullingRaylet(can_pull)
    parts = Parts(raylet, FakeArena())
    task, ref = parts.submit()
    parts.tasks.handle_task_returned(p.TaskReturned(task.spec.task_id, [
        p.Return(ref._id, p.RET_STORED, p.StoredAt(OTHER.node_id, 8))]))
    assert parts.getter.wait([ref], 1, timeout=0.1, fetch_local=False) == ([ref], [])
    assert raylet.pins == [], "fetch_local=False: ready where it is, nothing pulled"
    ready = parts.getter.wait([ref], 1, timeout=0.1, fetch_local=True)
    assert ready == (([ref], []) if can_pull else ([], [ref]))
    assert [m.sources for m in raylet.pins] == [[OTHER.node_id]]


def test_borrowed_object_of_a_dead_owner_raises_owner_died():
    parts = Parts()
    ref = parts.refs.deserialized_ref(b"d" * 20, OTHER)
    with parts.cond:
        parts.getter.owner_died_locked(OTHER.worker_id, OTHER.node_id, "it was killed")
    with pytest.raises(exc.OwnerDiedError, match="it was killed"):
        parts.getter.get(ref, timeout=1)


def test_owner_answers_a_borrower_once_the_value_is_in():
    parts = Parts()
    task, ref = parts.submit()
    parts.getter.handle_get_object(p.GetObject(ref._id, list(OTHER)))
    assert parts.sent(p.ObjectValue) == []
    parts.tasks.handle_task_returned(p.TaskReturned(task.spec.task_id, [_inline(ref._id, 3)]))
    ((to, value),) = parts.sent(p.ObjectValue)
    assert to == OTHER and parts.getter.value_of(p.Return(*value.ret)) == 3


# -- the inbox dispatcher ---------------------------------------------------

class _Recorder:
    """Stands in for the core worker's parts: records what is dispatched."""

    def __init__(self):
        self.seen = []
        self.task_manager = self
        self.references = self

    def handle_task_returned(self, msg):
        self.seen.append(msg)

    def add_borrower(self, object_ids, borrower):
        self.seen.append((object_ids, borrower))


def test_inbox_dispatches_by_message_name_and_drops_garbage():
    ctx = zmq.Context.instance()
    endpoint = f"inproc://inbox-{os.getpid()}-{id(ctx)}"
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    recorder, bursts = _Recorder(), []
    inbox = InboxDispatcher(recorder, (router,), None, lambda: bursts.append(1),
                            lambda topic, event: None, lambda: None)
    inbox.start()
    try:
        dealer.send_multipart([b"", b"not msgpack at all \xc1"])
        dealer.send_multipart([b"", p.encode(p.TaskReturned(b"t" * 16, []))])
        dealer.send_multipart([b"", p.encode(p.AddBorrower([b"o" * 20], b"w" * 16))])
        assert wait_for(lambda: len(recorder.seen) == 2, timeout=5)
        assert recorder.seen[0] == p.TaskReturned(b"t" * 16, [])
        assert recorder.seen[1] == ([b"o" * 20], b"w" * 16)
        assert inbox.dropped == 1 and bursts
    finally:
        inbox.stop()
        inbox.join(timeout=5)
        dealer.close(linger=0)
        router.close(linger=0)
        inbox.close()


# -- on a cluster -------------------------------------------------------------

@zray.remote
class Phoenix:
    def pid(self):
        return os.getpid()

    def reconstructed(self):
        return zray.get_runtime_context().was_current_actor_reconstructed


def test_actor_knows_it_was_reconstructed_after_a_restart(start_cluster):
    import psutil
    start_cluster()
    actor = Phoenix.options(max_restarts=1).remote()
    assert zray.get(actor.reconstructed.remote(), timeout=30) is False
    first = zray.get(actor.pid.remote(), timeout=30)
    psutil.Process(first).kill()

    def restarted():
        try:
            return zray.get(actor.pid.remote(), timeout=5) != first
        except exc.RayActorError:
            return False
    assert wait_for(restarted, timeout=30)
    assert zray.get(actor.reconstructed.remote(), timeout=30) is True
    assert zray.get_runtime_context().was_current_actor_reconstructed is False
