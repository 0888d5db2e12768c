"""Worker leases (issue 13): a driver's plain tasks go straight to a worker
it leased from its raylet, and every behaviour of the raylet's way stays:
the CPU goes back when the lease is idle, a burst still uses every CPU, a
leased worker that dies has its task retried (or failed), cancel works,
and garbage sent to a leased worker leaves it serving. Also the async
actor whose event loop reads its own socket (the same issue's actor path)."""
from __future__ import annotations

import glob
import os
import threading
import time

import pytest
import zmq

import zray
from zray import exceptions as zexc
from zray.broker import protocol as p
from zray.broker import sockets
from zray._private.session import actor_ipc
from zray.config import config
from zray.worker import global_state

from conftest import process_gone, wait_for

GET_TIMEOUT = 30
CANCEL_TIMEOUT = 5


@zray.remote
def pid_of():
    return os.getpid()


@zray.remote
def sleep_and_count(path, seconds):
    with open(path, "a") as f:
        f.write("x")
    time.sleep(seconds)
    return "slept"


@zray.remote
def die_once(path):
    """Kills its worker on the first run, returns on the next."""
    if not os.path.exists(path):
        open(path, "w").close()
        os._exit(1)
    return "second run"


@zray.remote
def meet(mine, other):
    """Returns once the other task of the pair runs at the same time."""
    open(mine, "w").close()
    deadline = time.monotonic() + 20
    while not os.path.exists(other):
        if time.monotonic() > deadline:
            return "alone"
        time.sleep(0.01)
    return "met"


def cpus_free() -> float:
    return zray.available_resources().get("CPU", 0.0)


def leases():
    return global_state.worker.task_manager.leases


def granted_lease():
    """Sync tasks until the driver holds a granted lease; its worker's Address."""
    def granted():
        zray.get(pid_of.remote(), timeout=GET_TIMEOUT)
        held = [lease for lease in leases().by_id.values() if lease.address is not None]
        return held[0].address if held else None
    return wait_for(granted, timeout=20, interval=0)


def runs_in(path) -> int:
    try:
        with open(path) as f:
            return len(f.read())
    except FileNotFoundError:
        return 0


def test_sync_tasks_run_on_one_leased_worker_and_its_cpu_goes_back_when_idle(cluster):
    address = granted_lease()
    pids = {zray.get(pid_of.remote(), timeout=GET_TIMEOUT) for _ in range(30)}
    assert pids == {address.pid}            # every one ran on the leased worker
    # idle, the lease goes back: the raylet has both CPUs again
    wait_for(lambda: not leases().by_id and cpus_free() == 2, timeout=10)


def test_a_burst_uses_every_cpu_while_a_lease_is_held(cluster, tmp_path):
    granted_lease()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    pair = [meet.remote(a, b), meet.remote(b, a)]
    assert zray.get(pair, timeout=GET_TIMEOUT) == ["met", "met"]
    wait_for(lambda: cpus_free() == 2, timeout=10)


def test_a_burst_runs_on_leased_workers_only_and_a_queued_task_can_be_cancelled(
        cluster, tmp_path, monkeypatch):
    """A burst larger than the node queues in the driver and runs on two
    leased workers (the raylet only grants leases); a task still queued in
    the driver when cancelled fails with TaskCancelledError and never runs."""
    raylet = global_state.worker.raylet
    to_raylet = []
    real_send = raylet.send
    monkeypatch.setattr(raylet, "send", lambda message, *a, **k: (
        to_raylet.append(message), real_send(message, *a, **k))[1])
    manager = leases()
    answers = []
    real_failed = manager.lease_failed_locked
    monkeypatch.setattr(manager, "lease_failed_locked", lambda msg: (
        answers.append(msg.error_type), real_failed(msg))[1])
    pids = set(zray.get([pid_of.remote() for _ in range(300)], timeout=GET_TIMEOUT))
    assert len(pids) == 2                       # both CPUs
    submitted = [p.task_spec(m.spec) for m in to_raylet if isinstance(m, p.SubmitTask)]
    assert submitted and {spec.kind for spec in submitted} == {p.TASK_LEASE}
    assert len(submitted) < 30                  # a lease per CPU, and a few asked again
    assert set(answers) == {p.LEASE_FULL}       # a third lease: the node is full
    monkeypatch.undo()
    counter = str(tmp_path / "runs")
    busy = [sleep_and_count.remote(counter, 3) for _ in range(2)]      # both CPUs
    wait_for(lambda: runs_in(counter) == 2)
    queued = sleep_and_count.remote(counter, 0)
    task = global_state.worker.task_manager.tasks[queued._id[:16]]
    assert task.lease is None and any(task in shape.queue for shape in leases().shapes.values())
    zray.cancel(queued)
    with pytest.raises(zexc.TaskCancelledError, match="before it ran"):
        zray.get(queued, timeout=CANCEL_TIMEOUT)
    assert zray.get(busy, timeout=GET_TIMEOUT) == ["slept", "slept"]
    assert runs_in(counter) == 2                # the cancelled one never ran
    wait_for(lambda: cpus_free() == 2, timeout=10)


@zray.remote
class Sleeper:
    def nap(self, seconds):
        time.sleep(seconds)
        return seconds


def test_sync_tasks_keep_their_lease_while_an_actor_call_is_pending(cluster, monkeypatch):
    """Only tasks sent the raylet's way make an idle lease go back: a
    pending actor call does not (else every task would lease and return a
    worker of its own)."""
    sleeper = Sleeper.remote()
    zray.get(sleeper.nap.remote(0), timeout=GET_TIMEOUT)
    address = granted_lease()
    raylet = global_state.worker.raylet
    to_raylet = []
    real_send = raylet.send
    monkeypatch.setattr(raylet, "send", lambda message, *a, **k: (
        to_raylet.append(message), real_send(message, *a, **k))[1])
    pending_call = sleeper.nap.remote(3)
    pids = {zray.get(pid_of.remote(), timeout=GET_TIMEOUT) for _ in range(20)}
    assert pids == {address.pid}
    assert not [m for m in to_raylet if isinstance(m, p.SubmitTask)]   # no new lease asked
    monkeypatch.undo()
    assert zray.get(pending_call, timeout=GET_TIMEOUT) == 3
    zray.kill(sleeper)


def test_a_leased_worker_that_dies_has_its_task_retried(cluster, tmp_path):
    address = granted_lease()
    marker = str(tmp_path / "died")
    assert zray.get(die_once.options(max_retries=1).remote(marker),
                    timeout=GET_TIMEOUT) == "second run"
    assert process_gone(address.pid)
    wait_for(lambda: cpus_free() == 2, timeout=10)


def test_a_leased_worker_that_dies_without_retries_left_fails_the_task(cluster, tmp_path):
    granted_lease()
    with pytest.raises(zexc.WorkerCrashedError):
        zray.get(die_once.options(max_retries=0).remote(str(tmp_path / "died")),
                 timeout=GET_TIMEOUT)
    wait_for(lambda: cpus_free() == 2, timeout=10)
    assert zray.get(pid_of.remote(), timeout=GET_TIMEOUT) > 0


@pytest.mark.parametrize("force", [False, True])
def test_cancel_of_a_task_running_on_a_lease(cluster, tmp_path, force):
    address = granted_lease()
    counter = str(tmp_path / "runs")
    ref = sleep_and_count.options(max_retries=3).remote(counter, 20)
    wait_for(lambda: runs_in(counter) == 1)
    task = global_state.worker.task_manager.tasks[ref._id[:16]]
    assert task.lease is not None and task.lease.address.pid == address.pid
    zray.cancel(ref, force=force)
    with pytest.raises(zexc.TaskCancelledError):
        zray.get(ref, timeout=CANCEL_TIMEOUT)
    wait_for(lambda: cpus_free() == 2, timeout=10)
    assert runs_in(counter) == 1            # cancelled, not retried
    assert process_gone(address.pid) == force
    assert zray.get(pid_of.remote(), timeout=GET_TIMEOUT) > 0


def test_garbage_sent_to_a_leased_worker_leaves_it_serving(cluster, monkeypatch):
    # a loaded machine must not make the lease idle long enough to go back mid-test
    monkeypatch.setattr(leases(), "_idle_s", 60.0)
    address = granted_lease()
    sock = sockets.dealer(actor_ipc(global_state.worker.session_dir, address.worker_id))
    try:
        junk = [[b"", b"\x93garbage"], [b""], [b"", p.encode(p.ReturnLease(b"\0" * 16))],
                [b"", p.encode(p.Ping())], [b"", p.encode(p.ExecuteTask([1, 2, 3]))],
                [b"", p.encode(p.LeaseGranted(b"\1" * 16, list(global_state.worker.address)))]]
        for frames in junk:
            sock.send_multipart(frames, zmq.NOBLOCK)
        pids = {zray.get(pid_of.remote(), timeout=GET_TIMEOUT) for _ in range(20)}
        assert pids == {address.pid}        # still leased, still serving
    finally:
        sock.close(linger=0)
    # a LeaseGranted for a lease the driver never asked for is given back (to
    # a worker that ignores a ReturnLease not of its lease): the lease stays
    lease_id = b"\2" * 16
    global_state.worker.send_to(global_state.worker.address,
                                p.LeaseGranted(lease_id, list(address)))
    assert zray.get(pid_of.remote(), timeout=GET_TIMEOUT) == address.pid
    monkeypatch.undo()
    wait_for(lambda: not leases().by_id and cpus_free() == 2, timeout=10)


def test_a_lease_asked_for_by_a_peer_that_is_not_a_local_driver_is_dropped(cluster):
    cw = global_state.worker
    lease = p.TaskSpec(os.urandom(16), cw.job_id, p.TASK_LEASE, b"", "<worker lease>", [],
                       [], 0, {"CPU": 2.0}, 0, False, list(cw.address))
    sock = sockets.dealer(cw.raylet.endpoint)       # not the driver's registered socket
    try:
        sock.send_multipart([b"", p.encode(p.SubmitTask(list(lease)))], zmq.NOBLOCK)
        wait_for(lambda: "a lease asked for by" in _raylet_log(cw), timeout=10)
        # the raylet keeps serving, and the driver never heard of that lease
        assert zray.get(pid_of.remote(), timeout=GET_TIMEOUT) > 0
        wait_for(lambda: not leases().by_id and cpus_free() == 2, timeout=10)
    finally:
        sock.close(linger=0)


def test_a_refused_lease_is_told_to_the_client_that_asked(cluster, tmp_path):
    """A registered client asking for a lease the raylet will not grant (it
    names another owner) reads a LeaseRefused at its own inbox, instead of
    waiting for a grant forever."""
    cw = global_state.worker
    inbox_endpoint = f"ipc://{tmp_path}/inbox"
    inbox, _ = sockets.inbox_router(inbox_endpoint)
    sock = sockets.dealer(cw.raylet.endpoint)
    fake_worker_id = os.urandom(16)
    try:
        sock.send_multipart([b"\1" * 8, p.encode(p.RegisterClient(
            "worker", fake_worker_id, os.getpid(), cw.job_id, inbox_endpoint))])
        assert sock.poll(10_000), "the raylet did not answer RegisterClient"
        sock.recv_multipart()
        lease_id = os.urandom(16)
        lease = p.TaskSpec(lease_id, cw.job_id, p.TASK_LEASE, b"", "<worker lease>", [],
                           [], 0, {"CPU": 1.0}, 0, False, list(cw.address))
        sock.send_multipart([b"", p.encode(p.SubmitTask(list(lease)))])
        assert inbox.poll(10_000), "the asker was never told its lease was refused"
        refusal = p.decode(inbox.recv_multipart()[2])
        assert isinstance(refusal, p.TaskFailed) and refusal.task_id == lease_id
        assert refusal.error_type == p.LEASE_REFUSED and "driver" in refusal.message
        assert cpus_free() == 2
    finally:
        sock.send_multipart([b"", p.encode(p.DisconnectClient(fake_worker_id))])
        sock.close(linger=1000)
        inbox.close(linger=0)


def test_a_lease_whose_grant_is_lost_goes_back_with_its_cpu(cluster, monkeypatch):
    """The LeaseGranted never reaches the driver (a full send queue drops
    it): the driver gives the lease up after GRANT_WAIT_S, the raylet ends
    it on the worker, and its CPU is free again; the next lease works."""
    from zray.worker import lease_manager
    monkeypatch.setattr(lease_manager, "GRANT_WAIT_S", 2.0)
    manager = leases()
    lost = []
    monkeypatch.setattr(manager, "granted", lost.append)      # the grant is lost
    assert zray.get(pid_of.remote(), timeout=GET_TIMEOUT) > 0
    wait_for(lambda: lost, timeout=10)
    wait_for(lambda: cpus_free() <= 1, timeout=2)   # the worker holds the lease's CPU
    wait_for(lambda: not manager.by_id and cpus_free() == 2, timeout=15)
    monkeypatch.setattr(manager, "granted", type(manager).granted.__get__(manager))
    address = granted_lease()
    assert zray.get(pid_of.remote(), timeout=GET_TIMEOUT) == address.pid


def test_a_dropped_return_lease_is_sent_again(cluster, monkeypatch):
    """The first ReturnLease of an idle lease is dropped by the send queue:
    the driver sends it again, and the worker's CPU comes back."""
    cw = global_state.worker
    granted_lease()
    real_send = cw.sender.send
    dropped = []

    def send(endpoint, message, blobs=()):
        if isinstance(message, p.ReturnLease) and not dropped:
            dropped.append(message)
            return False
        return real_send(endpoint, message, blobs)

    monkeypatch.setattr(cw.sender, "send", send)
    wait_for(lambda: dropped, timeout=15)           # the idle lease went back: dropped once
    wait_for(lambda: not leases().by_id and cpus_free() == 2, timeout=15)
    assert zray.get(pid_of.remote(), timeout=GET_TIMEOUT) > 0


def _raylet_log(cw) -> str:
    text = ""
    for path in glob.glob(os.path.join(cw.session_dir, "logs", "raylet_*.log")):
        with open(path, errors="replace") as f:
            text += f.read()
    return text


@zray.remote
class AsyncCounter:
    def __init__(self):
        self.n = 0

    async def add(self):
        self.n += 1
        return self.n

    def pid(self):
        return os.getpid()


def test_an_async_actor_reads_its_calls_in_order_and_survives_garbage(cluster):
    """The async actor's event loop reads its socket itself: calls still run
    in the order sent, and junk on that socket is dropped."""
    actor = AsyncCounter.remote()
    assert zray.get([actor.add.remote() for _ in range(200)], timeout=GET_TIMEOUT) \
        == list(range(1, 201))
    pid = zray.get(actor.pid.remote(), timeout=GET_TIMEOUT)
    worker_id = p.Address(*global_state.worker.actors[actor._actor_id].address).worker_id
    sock = sockets.dealer(actor_ipc(global_state.worker.session_dir, worker_id))
    try:
        for frames in ([b"", b"\x93garbage"], [b""], [b"", p.encode(p.Ping())],
                       [b"", p.encode(p.ExecuteTask([1, 2, 3]))]):
            sock.send_multipart(frames, zmq.NOBLOCK)
        assert zray.get(actor.add.remote(), timeout=GET_TIMEOUT) == 201
        assert zray.get(actor.pid.remote(), timeout=GET_TIMEOUT) == pid
    finally:
        sock.close(linger=0)
        zray.kill(actor)


# -- the lease manager alone (no cluster) -------------------------------------

class _Sender:
    def __init__(self):
        self.sent = []

    def send(self, endpoint, message):
        self.sent.append((endpoint, message))
        return True


class _Owner:
    """What the lease manager asks of the core worker."""
    mode = "driver"
    address = p.Address("tcp://127.0.0.1:1", b"o" * 16, 1, b"n" * 16)

    def __init__(self):
        self.sender = _Sender()
        self.told = []
        self.cond = threading.Condition(threading.Lock())

    def actor_endpoint(self, address):
        return f"ipc:///direct/{p.Address(*address).pid}"

    def send_to(self, address, message):
        self.told.append(message)


class _Raylet:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


def _manager(pending):
    from zray.worker.lease_manager import LeaseManager
    ids = iter(range(1, 1000))
    owner, raylet = _Owner(), _Raylet()
    manager = LeaseManager(owner, lambda: next(ids).to_bytes(16, "big"), raylet,
                           lambda: len(pending))
    manager.enabled = True
    return manager, owner, raylet


def _task(pending, resources=None, args=(), options=None):
    from zray.worker.pending_task import PendingTask
    spec = p.TaskSpec(os.urandom(16), b"j" * 4, p.TASK_NORMAL, b"h", "f", list(args), [], 1,
                      {"CPU": 1.0} if resources is None else resources, 3, False,
                      list(_Owner.address), 0, b"", "", options or {})
    task = PendingTask(spec, [], [], False)
    pending.append(task)
    return task


def _grant(manager, lease_spec_msg, pid=77):
    lease_id = p.task_spec(lease_spec_msg.spec).task_id
    worker = p.Address("tcp://127.0.0.1:2", b"w" * 16, pid, b"n" * 16)
    manager.granted(p.LeaseGranted(lease_id, list(worker)))
    return lease_id


def _idle_lease(manager, owner, pending, pid=77) -> bytes:
    """Ask for a lease, have it granted and its first task end: its id."""
    task = _task(pending)
    _, ask = manager.send_locked(task)
    lease_id = _grant(manager, ask, pid)
    pending.remove(task)
    with owner.cond:
        manager.task_ended_locked(task)
    return lease_id


def _sent_tasks(owner) -> list:
    """The task ids sent to leased workers, in order."""
    return [p.task_spec(message.spec).task_id for _, message in owner.sender.sent
            if isinstance(message, p.ExecuteTask)]


def test_a_lone_task_waits_for_its_lease_and_the_next_one_goes_on_it():
    pending = []
    manager, owner, _ = _manager(pending)
    first = _task(pending)
    taken, ask = manager.send_locked(first)
    assert taken and p.task_spec(ask.spec).kind == p.TASK_LEASE       # queued for it
    assert p.task_spec(ask.spec).resources == {"CPU": 1.0}
    assert _grant(manager, ask) and _sent_tasks(owner) == [first.spec.task_id]
    pending.remove(first)
    with owner.cond:
        manager.task_ended_locked(first)
    task = _task(pending)
    assert manager.send_locked(task) == (True, None)
    endpoint, message = owner.sender.sent[-1]
    assert endpoint == "ipc:///direct/77" and isinstance(message, p.ExecuteTask)
    assert p.task_spec(message.spec).task_id == task.spec.task_id


def test_a_burst_queues_for_leases_asked_one_at_a_time_and_runs_in_order():
    """Tasks that find no idle lease queue in the driver; each grant takes
    the next one and asks for one more lease while tasks wait; a full node
    (LEASE_FULL) keeps the queue on the leases held, asked again later."""
    from zray.worker import lease_manager
    pending = []
    manager, owner, _ = _manager(pending)
    burst = [_task(pending) for _ in range(5)]
    asks = [manager.send_locked(task)[1] for task in burst]
    assert asks[0] is not None and asks[1:] == [None] * 4       # one ask at a time
    again = manager.granted(p.LeaseGranted(p.task_spec(asks[0].spec).task_id,
                                           list(p.Address("tcp://h:1", b"a" * 16, 71, b"n" * 16))))
    assert again is not None and _sent_tasks(owner) == [burst[0].spec.task_id]
    third = manager.granted(p.LeaseGranted(p.task_spec(again.spec).task_id,
                                           list(p.Address("tcp://h:2", b"b" * 16, 72, b"n" * 16))))
    assert _sent_tasks(owner) == [t.spec.task_id for t in burst[:2]]
    # the node is full: no lease for now, the queue waits for the two held
    failed, flushed = manager.lease_failed_locked(
        p.TaskFailed(p.task_spec(third.spec).task_id, p.LEASE_FULL, "full"))
    assert failed is None and flushed == []
    assert manager.return_idle_locked(time.monotonic())[0] == []      # not asked again yet
    for task in burst[:3]:
        pending.remove(task)
        with owner.cond:
            manager.task_ended_locked(task)
    assert _sent_tasks(owner) == [t.spec.task_id for t in burst]      # in order, none lost
    time.sleep(lease_manager.FULL_RETRY_S)
    asked, _ = manager.return_idle_locked(time.monotonic())
    assert [p.task_spec(m.spec).kind for m in asked] == []            # nothing queued: no ask


def test_a_full_node_and_no_lease_held_sends_the_queue_the_raylets_way():
    """Another job holds the node: the raylet's queue (which warns of work
    starved by actors) takes the tasks, as it did before leases."""
    pending = []
    manager, _, _ = _manager(pending)
    first, second = _task(pending), _task(pending)
    _, ask = manager.send_locked(first)
    assert manager.send_locked(second) == (True, None)
    failed, flushed = manager.lease_failed_locked(
        p.TaskFailed(p.task_spec(ask.spec).task_id, p.LEASE_FULL, "full"))
    assert failed is None and flushed == [first, second]
    assert manager.send_locked(_task(pending)) == (False, None)   # the raylet's way for now


def test_a_busy_node_sends_the_queue_the_raylets_way_and_a_cancelled_queued_task_never_runs():
    pending = []
    manager, owner, _ = _manager(pending)
    first, second, third = (_task(pending) for _ in range(3))
    _, ask = manager.send_locked(first)
    manager.send_locked(second)
    manager.send_locked(third)
    assert first.queued and second.queued
    second.cancelled = True                     # stays queued, skipped in its turn
    failed, flushed = manager.lease_failed_locked(
        p.TaskFailed(p.task_spec(ask.spec).task_id, p.LEASE_BUSY, "another node has room"))
    assert failed is None and flushed == [first, third] and not first.queued
    assert manager.send_locked(_task(pending)) == (False, None)   # the raylet's way for now


def test_a_task_that_holds_no_resources_goes_the_raylets_way_and_asks_no_lease():
    pending = []
    manager, _, _ = _manager(pending)
    assert manager.send_locked(_task(pending, resources={})) == (False, None)
    assert not manager.by_id


def test_only_plain_tasks_with_inline_arguments_go_on_a_lease():
    from zray.worker.lease_manager import leasable
    pending = []
    assert leasable(_task(pending).spec)
    assert not leasable(_task(pending, options={"strategy": "SPREAD"}).spec)
    assert not leasable(_task(pending, resources={"CPU_group_ab": 1.0}).spec)
    assert not leasable(_task(pending, args=[p.RefArg(p.ARG_REF, b"x" * 20, [])]).spec)
    assert not leasable(_task(pending, args=[[p.ARG_STORED, b"x" * 20, 5, b"n" * 16]]).spec)
    assert leasable(_task(pending, args=[p.ValueArg(p.ARG_VALUE, b"v")]).spec)


def test_a_refused_shape_is_not_asked_again_and_a_dead_lease_fails_its_task():
    pending = []
    manager, _, _ = _manager(pending)
    task = _task(pending)
    _, ask = manager.send_locked(task)
    lease_id = p.task_spec(ask.spec).task_id
    assert manager.lease_failed_locked(p.TaskFailed(lease_id, "LeaseRefused", "no")) \
        == (None, [task])                                   # the raylet's way
    assert manager.send_locked(task) == (False, None)       # refused: no new ask
    # a granted lease whose worker died: its task fails as a crash (and is retried)
    manager2, _, _ = _manager(pending := [])
    task = _task(pending)
    _, ask = manager2.send_locked(task)
    lease_id = _grant(manager2, ask)                        # the queued task goes on it
    failed = manager2.lease_failed_locked(p.TaskFailed(
        lease_id, "WorkerCrashedError", "the worker running <worker lease> died"))
    assert failed == (p.TaskFailed(task.spec.task_id, "WorkerCrashedError",
                                   "the worker running f died"), [])
    assert task.lease is None and not manager2.by_id


def test_an_idle_lease_goes_back_after_the_idle_time_and_unknown_grants_go_back_at_once():
    pending = []
    manager, owner, _ = _manager(pending)
    lease_id = _idle_lease(manager, owner, pending)
    manager.return_idle_locked(time.monotonic())
    assert manager.by_id                                    # not idle long enough yet
    manager.return_idle_locked(time.monotonic() + 10)
    assert not manager.by_id and owner.sender.sent[-1][1] == p.ReturnLease(lease_id)
    stray = b"s" * 16
    manager.granted(p.LeaseGranted(stray, list(_Owner.address)))
    assert owner.sender.sent[-1][1] == p.ReturnLease(stray)


def test_a_lease_not_granted_in_time_is_given_up_and_the_raylet_told(monkeypatch):
    from zray.worker import lease_manager
    monkeypatch.setattr(lease_manager, "BUSY_S", 0.0)
    pending = []
    manager, owner, raylet = _manager(pending)
    task = _task(pending)
    _, ask = manager.send_locked(task)
    lease_id = p.task_spec(ask.spec).task_id
    assert manager.return_idle_locked(time.monotonic()) == ([], [])  # not waited long enough
    assert manager.is_lease(lease_id)
    to_raylet, flushed = manager.return_idle_locked(time.monotonic() + lease_manager.GRANT_WAIT_S)
    assert not manager.by_id and to_raylet == [p.CancelTask(lease_id, False)]
    assert flushed == [task]                                # it goes the raylet's way
    # a new task asks again; the late grant of the old lease goes back at once
    pending.clear()
    _, again = manager.send_locked(_task(pending))
    assert again is not None and p.task_spec(again.spec).task_id != lease_id
    manager.granted(p.LeaseGranted(lease_id, list(_Owner.address)))
    assert owner.sender.sent[-1][1] == p.ReturnLease(lease_id)


def test_a_return_lease_the_queue_drops_is_sent_until_it_goes():
    pending = []
    manager, owner, _ = _manager(pending)
    lease_id = _idle_lease(manager, owner, pending, pid=os.getpid())
    owner.sender.send = lambda endpoint, message: False     # the queue is full
    manager.return_idle_locked(time.monotonic() + 10)
    assert manager.is_lease(lease_id)                       # kept, to send again
    sent = []
    owner.sender.send = lambda endpoint, message: sent.append(message) or True
    manager.return_idle_locked(time.monotonic())
    assert sent == [p.ReturnLease(lease_id)] and not manager.by_id
    # a returning lease whose worker is gone is forgotten (nothing to return to)
    manager2, owner2, _ = _manager(pending := [])
    gone = _idle_lease(manager2, owner2, pending, pid=2 ** 31 - 2)
    owner2.sender.send = lambda endpoint, message: False
    manager2.return_idle_locked(time.monotonic() + 10)
    assert manager2.is_lease(gone)
    manager2.return_idle_locked(time.monotonic())
    assert not manager2.by_id


# last: it stops the module's cluster
def test_leases_off_sends_every_task_the_raylets_way(start_cluster, monkeypatch):
    monkeypatch.setattr(config, "worker_lease_idle_ms", 0)
    start_cluster(num_cpus=1)
    assert [zray.get(pid_of.remote(), timeout=GET_TIMEOUT) for _ in range(10)]
    assert not leases().enabled and not leases().by_id


def test_no_task_follows_a_force_cancelled_one_onto_its_lease():
    """The raylet kills whatever the leased worker runs when a force-cancel
    lands: a task sent after the cancelled one ended must not be that."""
    pending = []
    manager, owner, raylet = _manager(pending)
    lease_id = _idle_lease(manager, owner, pending)
    cancelled = _task(pending)
    assert manager.send_locked(cancelled) == (True, None)
    manager.cancel(cancelled, force=True)
    assert raylet.sent[-1] == p.CancelTask(lease_id, True)
    pending.remove(cancelled)
    with owner.cond:
        manager.task_ended_locked(cancelled)        # it finished before the kill landed
        after = _task(pending)
        taken, ask = manager.send_locked(after)     # queued for a new lease, not this one
    assert taken and ask is not None and _sent_tasks(owner)[-1] == cancelled.spec.task_id
    # the kill's report ends the lease without failing any task of ours
    assert manager.lease_failed_locked(
        p.TaskFailed(lease_id, "TaskCancelledError", "x")) == (None, [])
    assert not manager.is_lease(lease_id)
