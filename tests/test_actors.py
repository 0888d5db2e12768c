"""Actors as a Ray user knows them: stateful workers created with
``Cls.remote()``, called with ``handle.method.remote()``, named, shared,
concurrent, killed, and what a user sees when they use them wrongly.

Most tests share the module's cluster; the one that shuts zray down starts
its own.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

import zray
from zray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError

from conftest import wait_for, call_bounded as _call_bounded


# --------------------------------------------------------------------------
# helpers and actor classes
# --------------------------------------------------------------------------

class MyError(Exception):
    pass


@zray.remote
class Counter:
    def __init__(self, start=0, *, step=1):
        self.value = start
        self.step = step

    def incr(self, by=None):
        self.value += self.step if by is None else by
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()


@zray.remote
class Recorder:
    def __init__(self):
        self.items = []

    def append(self, item):
        self.items.append(item)

    def items_(self):
        return list(self.items)


@zray.remote
class Pair:
    @zray.method(num_returns=2)
    def split(self, a, b):
        return a * 10, b + "!"

    def one(self):
        return "one"


@zray.remote
class Faulty:
    def __init__(self):
        self.calls = 0

    def boom(self, message):
        self.calls += 1
        raise MyError(message)

    def ok(self):
        self.calls += 1
        return self.calls


@zray.remote
class BrokenInit:
    def __init__(self, message):
        raise MyError(message)

    def ping(self):
        return "pong"


@zray.remote
class Exiter:
    def ping(self):
        return os.getpid()

    def leave(self):
        zray.actor.exit_actor()
        return "still here"          # never reached


@zray.remote
class Gate:
    """Each call waits on a barrier of ``parties``: it only passes when that
    many calls run at the same time (on threads)."""

    def __init__(self, parties, timeout=5.0):
        self.barrier = threading.Barrier(parties, timeout=timeout)

    def meet(self, i):
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            return ("alone", i)
        return ("met", i)


@zray.remote
class AsyncGate:
    """``async def`` methods: ``meet`` only returns "met" when ``parties``
    calls are awaiting at the same time on the actor's event loop."""

    def __init__(self, parties):
        self.parties = parties
        self.arrived = 0
        self.event = None

    async def meet(self, i):
        if self.event is None:
            self.event = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.parties:
            self.event.set()
        try:
            await asyncio.wait_for(self.event.wait(), 5)
        except asyncio.TimeoutError:
            return ("alone", i)
        return ("met", i)

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)
        return seconds


@zray.remote
def call_counter_in_task(counter, times):
    """A task that uses an actor handle it was given."""
    return [zray.get(counter.incr.remote(), timeout=20) for _ in range(times)]


@zray.remote
class Caller:
    """An actor that uses an actor handle it was given."""

    def __init__(self, counter):
        self.counter = counter

    def bump(self, by):
        return zray.get(self.counter.incr.remote(by), timeout=20)

    def bump_other(self, other, by):
        return zray.get(other.incr.remote(by), timeout=20)


def _gcs_address() -> str:
    return zray.get_runtime_context().gcs_address


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --------------------------------------------------------------------------
# creating and calling
# --------------------------------------------------------------------------

def test_create_with_args_and_kwargs_and_state_persists(cluster):
    counter = Counter.remote(10, step=5)
    assert zray.get(counter.get.remote(), timeout=20) == 10
    assert zray.get(counter.incr.remote(), timeout=20) == 15
    assert zray.get(counter.incr.remote(by=100), timeout=20) == 115
    assert zray.get(counter.incr.remote(1), timeout=20) == 116
    assert zray.get(counter.get.remote(), timeout=20) == 116

    other = Counter.remote()                      # a second actor has its own state
    assert zray.get(other.incr.remote(), timeout=20) == 1
    assert zray.get(counter.get.remote(), timeout=20) == 116
    zray.kill(counter)
    zray.kill(other)


def test_method_with_num_returns_2_gives_two_refs(cluster):
    pair = Pair.remote()
    refs = pair.split.remote(4, "hi")
    assert isinstance(refs, list) and len(refs) == 2
    assert all(isinstance(r, zray.ObjectRef) for r in refs)
    assert zray.get(refs, timeout=20) == [40, "hi!"]
    a, b = pair.split.remote(1, "x")
    assert zray.get(b, timeout=20) == "x!"
    assert zray.get(a, timeout=20) == 10
    assert isinstance(pair.one.remote(), zray.ObjectRef)
    zray.kill(pair)


def test_calls_from_one_caller_run_in_submission_order_under_load(cluster):
    recorder = Recorder.remote()
    refs = [recorder.append.remote(i) for i in range(500)]
    zray.get(refs, timeout=60)
    assert zray.get(recorder.items_.remote(), timeout=20) == list(range(500))

    # with large and ref arguments mixed in, order is still submission order
    big = zray.put(b"x" * (512 * 1024))
    recorder2 = Recorder.remote()
    for i in range(50):
        recorder2.append.remote(i if i % 5 else (i, big))
    items = zray.get(recorder2.items_.remote(), timeout=60)
    assert [it if isinstance(it, int) else it[0] for it in items] == list(range(50))
    zray.kill(recorder)
    zray.kill(recorder2)


def test_max_concurrency_runs_calls_at_the_same_time(cluster):
    gate = Gate.options(max_concurrency=4).remote(4)
    started = time.monotonic()
    results = zray.get([gate.meet.remote(i) for i in range(4)], timeout=30)
    elapsed = time.monotonic() - started
    assert results == [("met", i) for i in range(4)], \
        f"4 calls with max_concurrency=4 did not run at the same time: {results}"
    assert elapsed < 4, f"took {elapsed:.1f}s"
    zray.kill(gate)


def test_max_concurrency_below_one_is_refused_before_the_actor_starts(cluster):
    for bad in (-1, 2.5, "4"):
        with pytest.raises(ValueError, match="max_concurrency must be a positive integer"):
            AsyncGate.options(max_concurrency=bad).remote(1)


def test_default_actor_runs_one_call_at_a_time(cluster):
    """Without max_concurrency calls do not overlap (the barrier breaks)."""
    gate = Gate.remote(2, timeout=0.5)
    results = zray.get([gate.meet.remote(i) for i in range(2)], timeout=30)
    assert results == [("alone", 0), ("alone", 1)]
    zray.kill(gate)


def test_async_actor_overlaps_awaiting_calls(cluster):
    gate = AsyncGate.remote(4)
    results = zray.get([gate.meet.remote(i) for i in range(4)], timeout=30)
    assert results == [("met", i) for i in range(4)], \
        f"awaiting calls of an async actor did not overlap: {results}"

    started = time.monotonic()
    assert zray.get([gate.sleep.remote(0.5) for _ in range(4)], timeout=30) == [0.5] * 4
    elapsed = time.monotonic() - started
    assert elapsed < 1.6, f"4 x asyncio.sleep(0.5) took {elapsed:.2f}s: they ran one by one"
    zray.kill(gate)


def test_calls_made_while_the_constructor_runs_wait_for_it(cluster):
    @zray.remote
    class SlowInit:
        def __init__(self):
            time.sleep(0.5)
            self.items = ["init"]

        def add(self, x):
            self.items.append(x)
            return list(self.items)

    actor = SlowInit.remote()
    refs = [actor.add.remote(i) for i in range(3)]
    assert zray.get(refs, timeout=30) == [["init", 0], ["init", 0, 1], ["init", 0, 1, 2]]
    zray.kill(actor)


def test_calls_wait_for_ref_arguments_without_losing_order(cluster):
    """A call whose argument is still being computed holds back the calls
    submitted after it: order is submission order, not readiness order."""
    @zray.remote
    def slow_value(seconds, value):
        time.sleep(seconds)
        return value

    recorder = Recorder.remote()
    pending = slow_value.remote(0.5, "computed")
    recorder.append.remote(pending)
    recorder.append.remote("after")
    assert zray.get(recorder.items_.remote(), timeout=30) == ["computed", "after"]
    zray.kill(recorder)


def test_large_arguments_and_results(cluster):
    recorder = Recorder.remote()
    blob = os.urandom(2 * 1024 * 1024)
    recorder.append.remote(blob)
    recorder.append.remote(zray.put(blob[:1024 * 1024]))
    items = zray.get(recorder.items_.remote(), timeout=30)
    assert items[0] == blob and items[1] == blob[:1024 * 1024]
    zray.kill(recorder)


def test_method_num_returns_option_at_call_time(cluster):
    pair = Pair.remote()
    a, b = pair.split.options(num_returns=2).remote(2, "y")
    assert zray.get([a, b], timeout=20) == [20, "y!"]
    zray.kill(pair)


def test_async_method_that_raises_leaves_the_actor_alive(cluster):
    @zray.remote
    class AsyncFaulty:
        def __init__(self):
            self.n = 0

        async def boom(self):
            self.n += 1
            raise MyError("async failure")

        async def count(self):
            self.n += 1
            return self.n

    actor = AsyncFaulty.remote()
    with pytest.raises(MyError) as info:
        zray.get(actor.boom.remote(), timeout=20)
    assert "async failure" in str(info.value)
    assert zray.get(actor.count.remote(), timeout=20) == 2
    zray.kill(actor)


def test_actor_resources_are_held_while_alive_and_given_back_on_kill(cluster):
    """num_cpus=1 actors hold a CPU each: with 2 CPUs a third waits until one
    of the first two is killed."""
    first = Counter.options(num_cpus=1).remote()
    second = Counter.options(num_cpus=1).remote()
    assert zray.get([first.incr.remote(), second.incr.remote()], timeout=30) == [1, 1]
    third = Counter.options(num_cpus=1).remote()
    ref = third.incr.remote()
    ready, _ = zray.wait([ref], timeout=1.0)
    assert not ready, "a third num_cpus=1 actor must not start on a 2-CPU cluster"
    zray.kill(first)
    assert zray.get(ref, timeout=30) == 1, "the killed actor's CPU was not given back"
    zray.kill(second)
    zray.kill(third)


# --------------------------------------------------------------------------
# handles travel
# --------------------------------------------------------------------------

def test_handle_passed_to_a_task_works_there(cluster):
    counter = Counter.remote()
    assert zray.get(call_counter_in_task.remote(counter, 3), timeout=30) == [1, 2, 3]
    assert zray.get(counter.get.remote(), timeout=20) == 3

    # a handle inside a container too
    @zray.remote
    def via_list(handles):
        return zray.get(handles[0].incr.remote(10), timeout=20)

    assert zray.get(via_list.remote([counter]), timeout=30) == 13
    zray.kill(counter)


def test_handle_passed_to_another_actor_works_there(cluster):
    counter = Counter.remote()
    other = Counter.remote(1000)
    caller = Caller.remote(counter)                 # in the constructor
    assert zray.get(caller.bump.remote(5), timeout=30) == 5
    assert zray.get(caller.bump.remote(5), timeout=30) == 10
    assert zray.get(caller.bump_other.remote(other, 1), timeout=30) == 1001   # in a call
    assert zray.get(counter.get.remote(), timeout=20) == 10
    for handle in (counter, other, caller):
        zray.kill(handle)


# --------------------------------------------------------------------------
# names and namespaces
# --------------------------------------------------------------------------

def test_get_actor_by_name_returns_the_same_actor(cluster):
    counter = Counter.options(name="test-actors-named").remote()
    assert zray.get(counter.incr.remote(7), timeout=20) == 7
    found = zray.get_actor("test-actors-named")
    assert zray.get(found.incr.remote(1), timeout=20) == 8
    assert zray.get(counter.get.remote(), timeout=20) == 8
    with pytest.raises(ValueError):
        zray.get_actor("test-actors-no-such-actor")
    zray.kill(counter)
    wait_for(lambda: _lookup_fails("test-actors-named"), timeout=10)


def _lookup_fails(name, namespace=None) -> bool:
    try:
        zray.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


def test_get_actor_from_inside_a_task_uses_the_job_namespace(cluster):
    counter = Counter.options(name="test-actors-from-task").remote(40)

    @zray.remote
    def bump_by_name(name):
        return zray.get(zray.get_actor(name).incr.remote(2), timeout=20)

    assert zray.get(bump_by_name.remote("test-actors-from-task"), timeout=30) == 42
    zray.kill(counter)


def test_name_is_free_again_after_the_actor_is_killed(cluster):
    first = Counter.options(name="test-actors-reuse").remote(1)
    assert zray.get(first.get.remote(), timeout=20) == 1
    zray.kill(first)
    wait_for(lambda: _lookup_fails("test-actors-reuse"), timeout=10)
    second = Counter.options(name="test-actors-reuse").remote(2)
    assert zray.get(zray.get_actor("test-actors-reuse").get.remote(), timeout=20) == 2
    again = Counter.options(name="test-actors-reuse", get_if_exists=True).remote(3)
    assert zray.get(again.get.remote(), timeout=20) == 2
    zray.kill(second)


def test_namespaces_separate_names(cluster):
    a = Counter.options(name="shared-name", namespace="ns-a").remote(1)
    b = Counter.options(name="shared-name", namespace="ns-b").remote(2)   # same name, ok
    assert zray.get(zray.get_actor("shared-name", namespace="ns-a").get.remote(),
                    timeout=20) == 1
    assert zray.get(zray.get_actor("shared-name", namespace="ns-b").get.remote(),
                    timeout=20) == 2
    with pytest.raises(ValueError):
        zray.get_actor("shared-name")                  # not in this job's namespace
    with pytest.raises(ValueError):
        zray.get_actor("shared-name", namespace="ns-c")
    zray.kill(a)
    zray.kill(b)


def test_taken_name_raises_value_error(cluster):
    first = Counter.options(name="test-actors-taken").remote(5)
    assert zray.get(first.get.remote(), timeout=20) == 5
    with pytest.raises(ValueError) as info:
        Counter.options(name="test-actors-taken").remote()
    assert "test-actors-taken" in str(info.value)
    # the first one is untouched and still owns the name
    assert zray.get(zray.get_actor("test-actors-taken").get.remote(), timeout=20) == 5
    zray.kill(first)


def test_get_if_exists_returns_the_existing_actor(cluster):
    first = Counter.options(name="test-actors-gie", get_if_exists=True).remote(0)
    assert zray.get(first.incr.remote(3), timeout=20) == 3
    again = Counter.options(name="test-actors-gie", get_if_exists=True).remote(100)
    assert zray.get(again.get.remote(), timeout=20) == 3, \
        "get_if_exists=True must return the existing actor, not build a new one"
    assert zray.get(again.incr.remote(1), timeout=20) == 4
    assert zray.get(first.get.remote(), timeout=20) == 4
    assert zray.get(first.pid.remote(), timeout=20) == zray.get(again.pid.remote(), timeout=20)
    zray.kill(first)


# --------------------------------------------------------------------------
# using actors wrongly
# --------------------------------------------------------------------------

def test_calling_a_missing_method_raises_attribute_error_at_the_call_site(cluster):
    counter = Counter.remote()
    with pytest.raises(AttributeError) as info:
        counter.no_such_method.remote()
    assert "no_such_method" in str(info.value)
    assert zray.get(counter.incr.remote(), timeout=20) == 1
    zray.kill(counter)


def test_calling_class_or_method_directly_raises_type_error(cluster):
    with pytest.raises(TypeError) as info:
        Counter()
    assert ".remote()" in str(info.value)
    counter = Counter.remote()
    with pytest.raises(TypeError) as info:
        counter.incr()
    assert ".remote()" in str(info.value)
    assert zray.get(counter.incr.remote(), timeout=20) == 1   # no call was made
    zray.kill(counter)


def test_constructor_that_raises_makes_every_call_raise_actor_died_error(cluster):
    broken = BrokenInit.remote("bad config 42")
    for _ in range(2):                               # every call, not just the first
        with pytest.raises(ActorDiedError) as info:
            zray.get(broken.ping.remote(), timeout=20)
        assert isinstance(info.value, RayActorError)
        assert "bad config 42" in str(info.value), \
            f"the error should carry the constructor's exception: {info.value}"
        assert "MyError" in str(info.value)
    refs = [broken.ping.remote() for _ in range(3)]
    for ref in refs:
        with pytest.raises(RayActorError):
            zray.get(ref, timeout=20)


def test_method_that_raises_leaves_the_actor_alive(cluster):
    faulty = Faulty.remote()
    with pytest.raises(MyError) as info:
        zray.get(faulty.boom.remote("user failure"), timeout=20)
    assert "user failure" in str(info.value)
    assert not isinstance(info.value, RayActorError)
    assert zray.get(faulty.ok.remote(), timeout=20) == 2      # state kept, actor alive
    with pytest.raises(MyError):
        zray.get(faulty.boom.remote("again"), timeout=20)
    assert zray.get(faulty.ok.remote(), timeout=20) == 4
    zray.kill(faulty)


def test_kill_then_calls_raise_actor_died_and_killing_twice_is_harmless(cluster):
    counter = Counter.remote()
    pid = zray.get(counter.pid.remote(), timeout=20)
    zray.kill(counter)
    with pytest.raises(ActorDiedError):
        zray.get(counter.incr.remote(), timeout=20)
    wait_for(lambda: _gone(pid), timeout=10)
    zray.kill(counter)                              # harmless
    with pytest.raises(ActorDiedError):
        zray.get(counter.incr.remote(), timeout=20)
    with pytest.raises(TypeError):
        zray.kill("not an actor")


def test_kill_fails_the_running_and_queued_calls(cluster):
    gate = AsyncGate.options(max_concurrency=1).remote(1)
    running = gate.sleep.remote(30)
    queued = [gate.sleep.remote(0) for _ in range(3)]
    time.sleep(0.3)
    zray.kill(gate)
    for ref in [running] + queued:
        with pytest.raises(ActorDiedError):
            zray.get(ref, timeout=20)


def test_exit_actor_ends_the_actor(cluster):
    actor = Exiter.remote()
    pid = zray.get(actor.ping.remote(), timeout=20)
    with pytest.raises(RayActorError):
        zray.get(actor.leave.remote(), timeout=20)
    with pytest.raises(RayActorError):
        zray.get(actor.ping.remote(), timeout=20)
    wait_for(lambda: _gone(pid), timeout=10)


def test_exit_actor_outside_an_actor_raises_type_error(cluster):
    with pytest.raises(TypeError):
        zray.actor.exit_actor()


def test_unserializable_argument_raises_type_error_naming_it_and_actor_lives(cluster):
    recorder = Recorder.remote()
    recorder.append.remote("before")
    with pytest.raises(TypeError) as info:
        recorder.append.remote(item=threading.Lock())
    message = str(info.value)
    assert "item" in message and "lock" in message.lower(), message

    def gen():
        yield 1

    with pytest.raises(TypeError) as info:
        recorder.append.remote(gen())
    assert "generator" in str(info.value), str(info.value)
    recorder.append.remote("after")
    assert zray.get(recorder.items_.remote(), timeout=20) == ["before", "after"], \
        "a call that could not be sent must not reach the actor; the actor lives on"
    zray.kill(recorder)


def test_get_with_timeout_on_a_busy_actor_raises_get_timeout(cluster):
    gate = AsyncGate.remote(1)
    ref = gate.sleep.remote(1.5)
    with pytest.raises(GetTimeoutError):
        zray.get(ref, timeout=0.2)
    assert zray.get(ref, timeout=20) == 1.5
    zray.kill(gate)


# --------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------

def test_zray_list_actors_shows_id_class_state_pid_and_name(cluster):
    counter = Counter.options(name="listed-actor").remote()
    pid = zray.get(counter.pid.remote(), timeout=20)
    out = subprocess.run(
        [sys.executable, "-m", "zray._private.cli", "list", "actors", "--address", _gcs_address()],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "listed-actor" in line]
    assert len(lines) == 1, out.stdout
    line = lines[0]
    assert counter._actor_id.hex() in line
    assert "Counter" in line
    assert "ALIVE" in line
    assert str(pid) in line.split()
    zray.kill(counter)
    wait_for(lambda: "DEAD" in _listed_line("listed-actor"), timeout=10)


def _listed_line(name: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "zray._private.cli", "list", "actors", "--address", _gcs_address()],
        capture_output=True, text=True, timeout=30)
    return "\n".join(line for line in out.stdout.splitlines() if name in line)


# --------------------------------------------------------------------------
# speed (a sanity bound; the benchmark measures it)
# --------------------------------------------------------------------------

def test_create_call_kill_of_10_actors_is_fast(cluster):
    started = time.monotonic()
    for i in range(10):
        counter = Counter.remote(i)
        assert zray.get(counter.incr.remote(), timeout=20) == i + 1
        zray.kill(counter)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"10 x (create, call, kill) took {elapsed:.1f}s"


# --------------------------------------------------------------------------
# after shutdown
# --------------------------------------------------------------------------

def test_handle_after_shutdown_raises_a_clear_error(start_cluster):
    start_cluster()
    counter = Counter.remote()
    assert zray.get(counter.incr.remote(), timeout=20) == 1
    zray.shutdown()

    outcome, error = _call_bounded(lambda: counter.incr.remote(), timeout=10)
    assert outcome == "raised", f"a call after shutdown returned {error!r}"
    assert isinstance(error, RayError), repr(error)
    assert "init" in str(error), f"the error should say to call zray.init(): {error}"
    outcome, error = _call_bounded(lambda: zray.kill(counter), timeout=10)
    assert outcome == "raised" and isinstance(error, RayError), repr(error)
    outcome, error = _call_bounded(lambda: zray.get_actor("x"), timeout=10)
    assert outcome == "raised" and isinstance(error, RayError), repr(error)


def test_handle_from_another_cluster_raises_a_clear_error(start_cluster):
    start_cluster()
    counter = Counter.remote()
    assert zray.get(counter.incr.remote(), timeout=20) == 1
    zray.shutdown()
    start_cluster()
    outcome, error = _call_bounded(lambda: zray.get(counter.incr.remote(), timeout=10),
                                   timeout=15)
    assert outcome == "raised", f"a stale handle answered {error!r}"
    assert isinstance(error, RayError) and not isinstance(error, GetTimeoutError), repr(error)
