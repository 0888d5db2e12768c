"""Remote functions as a Ray user writes them: arguments, options, multiple
returns, nesting, generators, get/wait/cancel, errors and retries, the
runtime context, cluster queries and worker output on the driver."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import zray
from zray import exceptions as zexc
from zray.object_ref import ObjectRef

from conftest import wait_for

GET_TIMEOUT = 30
CANCEL_TIMEOUT = 5    # a cancelled task must settle well within this


class MyError(Exception):
    """A user's own exception class, raised inside tasks."""


class OtherError(Exception):
    pass


# Remote functions live at module level, as in a user's program.

@zray.remote
def add(a, b=0, *, c=0):
    return a + b + c


@zray.remote
def echo(value):
    return value


@zray.remote
def describe(value):
    """What the task received: its type name, and the values of refs in a list."""
    if isinstance(value, list):
        return ["ObjectRef" if isinstance(v, ObjectRef) else type(v).__name__ for v in value]
    return type(value).__name__


@zray.remote
def get_nested(refs):
    return [zray.get(r, timeout=GET_TIMEOUT) for r in refs]


@zray.remote
def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


@zray.remote
def wait_for_file(path, timeout=30.0):
    """Hold a CPU until ``path`` exists (bounded)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.path.exists(path)


@zray.remote(num_returns=2)
def two_values(x):
    return x, x * 10


@zray.remote
def three_values(x):
    return x, x + 1, x + 2


@zray.remote
def chain(depth):
    """Each level submits the next and blocks in get: depth+1 tasks alive at once."""
    if depth == 0:
        return 0
    return 1 + zray.get(chain.remote(depth - 1), timeout=GET_TIMEOUT)


@zray.remote
def fan_out(n):
    return sum(zray.get([add.remote(i, 1) for i in range(n)], timeout=GET_TIMEOUT))


@zray.remote
def count_up(n):
    for i in range(n):
        yield i * i


@zray.remote
def fail_after(n):
    for i in range(n):
        yield i
    raise MyError(f"stream broke after {n} items")


@zray.remote
def raise_my_error(message):
    raise MyError(message)


@zray.remote
def plus_one(x):
    return x + 1


@zray.remote
def fail_first_attempts(counter_path, failures, exc_name="MyError"):
    """Raise on the first ``failures`` runs; return how many runs there were."""
    with open(counter_path, "a") as f:
        f.write("x")
    with open(counter_path) as f:
        runs = len(f.read())
    if runs <= failures:
        raise {"MyError": MyError, "OtherError": OtherError}[exc_name](f"run {runs}")
    return runs


@zray.remote
def crash_first_attempt(counter_path):
    with open(counter_path, "a") as f:
        f.write("x")
    with open(counter_path) as f:
        runs = len(f.read())
    if runs == 1:
        os._exit(1)
    return runs


@zray.remote
def count_and_sleep(counter_path, seconds):
    with open(counter_path, "a") as f:
        f.write("x")
    time.sleep(seconds)
    return "finished"


@zray.remote
def context():
    ctx = zray.get_runtime_context()
    return ctx.get_job_id(), ctx.get_task_id(), ctx.get_node_id()


@zray.remote
def nested_context():
    inner = zray.get(context.remote(), timeout=GET_TIMEOUT)
    return zray.get_runtime_context().get_task_id(), inner[1]


def runs_in(path) -> int:
    try:
        with open(path) as f:
            return len(f.read())
    except FileNotFoundError:
        return 0


def cpus_free() -> float:
    return zray.available_resources().get("CPU", 0.0)


# ----------------------------------------------------------------- arguments

def test_remote_function_takes_positional_and_keyword_arguments(cluster):
    assert zray.get(add.remote(1, 2), timeout=GET_TIMEOUT) == 3
    assert zray.get(add.remote(1, b=2, c=3), timeout=GET_TIMEOUT) == 6
    assert zray.get(add.remote(1, c=5), timeout=GET_TIMEOUT) == 6
    assert zray.get(add.remote(a=2.5, b=0.5), timeout=GET_TIMEOUT) == 3.0


def test_many_tasks_return_their_own_results_in_order(cluster):
    refs = [add.remote(i, i) for i in range(50)]
    assert zray.get(refs, timeout=GET_TIMEOUT) == [2 * i for i in range(50)]


def test_calling_a_remote_function_directly_raises_type_error(cluster):
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        add(1, 2)


def test_top_level_ref_arguments_are_resolved_to_values(cluster):
    ref = zray.put(41)
    assert zray.get(plus_one.remote(ref), timeout=GET_TIMEOUT) == 42
    assert zray.get(describe.remote(ref), timeout=GET_TIMEOUT) == "int"
    # A task result passed straight into another task.
    assert zray.get(plus_one.remote(plus_one.remote(0)), timeout=GET_TIMEOUT) == 2
    assert zray.get(add.remote(zray.put(1), b=zray.put(2)), timeout=GET_TIMEOUT) == 3


def test_refs_nested_in_a_list_stay_refs_the_task_can_get(cluster):
    refs = [zray.put("x"), echo.remote("y")]
    assert zray.get(describe.remote(refs), timeout=GET_TIMEOUT) == ["ObjectRef", "ObjectRef"]
    assert zray.get(get_nested.remote(refs), timeout=GET_TIMEOUT) == ["x", "y"]


def test_unserializable_argument_raises_type_error_at_remote_naming_it(cluster):
    with pytest.raises(TypeError, match="argument"):
        echo.remote(threading.Lock())


# ------------------------------------------------------------------- options

def test_num_returns_two_from_decorator_gives_two_refs(cluster):
    refs = two_values.remote(4)
    assert isinstance(refs, list) and len(refs) == 2
    assert all(isinstance(r, ObjectRef) for r in refs)
    assert zray.get(refs, timeout=GET_TIMEOUT) == [4, 40]


def test_num_returns_three_from_options_gives_three_refs(cluster):
    a, b, c = three_values.options(num_returns=3).remote(7)
    assert zray.get(c, timeout=GET_TIMEOUT) == 9
    assert zray.get([a, b], timeout=GET_TIMEOUT) == [7, 8]


def test_options_do_not_change_the_original_function(cluster):
    single = two_values.options(num_returns=1).remote(2)
    assert isinstance(single, ObjectRef)
    assert zray.get(single, timeout=GET_TIMEOUT) == (2, 20)
    assert len(two_values.remote(3)) == 2


def test_task_with_num_cpus_two_holds_every_cpu_while_it_runs(cluster, tmp_path):
    release = str(tmp_path / "release")
    ref = wait_for_file.options(num_cpus=2).remote(release)
    try:
        wait_for(lambda: cpus_free() == 0)
    finally:
        open(release, "w").close()
    assert zray.get(ref, timeout=GET_TIMEOUT) is True
    wait_for(lambda: cpus_free() == 2)


def test_task_needing_more_cpus_than_the_cluster_has_waits_and_does_not_run(cluster):
    ref = echo.options(num_cpus=3).remote("never")
    ready, not_ready = zray.wait([ref], timeout=0.5)
    assert ready == [] and not_ready == [ref]
    zray.cancel(ref)
    with pytest.raises(zexc.TaskCancelledError):
        zray.get(ref, timeout=CANCEL_TIMEOUT)


def test_task_needing_an_unknown_custom_resource_waits_and_does_not_run(cluster):
    ref = echo.options(resources={"no_such_thing": 1}).remote("never")
    ready, not_ready = zray.wait([ref], timeout=0.5)
    assert ready == [] and not_ready == [ref]
    zray.cancel(ref)
    with pytest.raises(zexc.TaskCancelledError):
        zray.get(ref, timeout=CANCEL_TIMEOUT)


def test_fractional_and_zero_cpu_options_run(cluster):
    refs = [add.options(num_cpus=0.5).remote(1, 1), add.options(num_cpus=0).remote(2, 2)]
    assert zray.get(refs, timeout=GET_TIMEOUT) == [2, 4]


@pytest.mark.parametrize("bad", [
    {"num_cpus": -1},
    {"num_gpus": -0.5},
    {"num_cpus": "two"},
    {"no_such_option": 1},
    {"max_retries": -2},
    {"max_retries": 1.5},
    {"resources": {"CPU": 1}},
    {"resources": {"custom": -1}},
    {"num_returns": -1},
    {"num_returns": "lots"},
])
def test_invalid_options_raise_value_error(cluster, bad):
    with pytest.raises(ValueError):
        add.options(**bad).remote(1, 2)


def test_invalid_decorator_options_raise_value_error(cluster):
    with pytest.raises(ValueError):
        zray.remote(num_cpus=-1)(lambda: None)
    with pytest.raises(ValueError):
        zray.remote(not_an_option=True)(lambda: None)


def test_max_retries_zero_surfaces_a_worker_crash_without_rerunning(cluster, tmp_path):
    counter = str(tmp_path / "runs")
    ref = crash_first_attempt.options(max_retries=0).remote(counter)
    with pytest.raises(zexc.WorkerCrashedError):
        zray.get(ref, timeout=GET_TIMEOUT)
    assert runs_in(counter) == 1


def test_max_retries_reruns_a_task_whose_worker_crashed(cluster, tmp_path):
    counter = str(tmp_path / "runs")
    ref = crash_first_attempt.options(max_retries=1).remote(counter)
    assert zray.get(ref, timeout=GET_TIMEOUT) == 2


# ----------------------------------------------------------- nested tasks

def test_task_can_submit_tasks_and_get_their_results(cluster):
    # The driver calls ``add`` too: a remote function already in use must
    # still travel inside another one.
    assert zray.get(add.remote(1, 1), timeout=GET_TIMEOUT) == 2
    assert zray.get(fan_out.remote(5), timeout=GET_TIMEOUT) == sum(range(1, 6))


def test_chain_of_nested_tasks_deeper_than_cpu_count_does_not_deadlock(cluster):
    # 5 tasks alive at once on 2 CPUs: the blocked ones must lend their CPU.
    assert zray.get(chain.remote(4), timeout=GET_TIMEOUT) == 4
    wait_for(lambda: cpus_free() == 2)


def test_many_parallel_nested_chains_finish(cluster):
    refs = [chain.remote(3) for _ in range(4)]
    assert zray.get(refs, timeout=GET_TIMEOUT) == [3, 3, 3, 3]


# ---------------------------------------------------------------- generators

def test_generator_task_streams_one_ref_per_yield(cluster):
    values = []
    for ref in count_up.remote(5):
        assert isinstance(ref, ObjectRef)
        values.append(zray.get(ref, timeout=GET_TIMEOUT))
    assert values == [0, 1, 4, 9, 16]


def test_generator_of_zero_items_stops_at_once(cluster):
    assert list(count_up.remote(0)) == []


def test_generator_error_mid_stream_surfaces_after_the_last_good_item(cluster):
    refs = list(fail_after.remote(2))
    assert len(refs) == 3
    assert zray.get(refs[:2], timeout=GET_TIMEOUT) == [0, 1]
    with pytest.raises(MyError, match="stream broke after 2 items"):
        zray.get(refs[2], timeout=GET_TIMEOUT)


def test_dynamic_num_returns_get_gives_a_generator_of_every_yielded_ref(cluster):
    ref = count_up.options(num_returns="dynamic").remote(4)
    refs = zray.get(ref, timeout=GET_TIMEOUT)
    assert isinstance(refs, zray.DynamicObjectRefGenerator)
    assert len(refs) == 4
    assert [zray.get(r, timeout=GET_TIMEOUT) for r in refs] == [0, 1, 4, 9]
    mixed = zray.get([count_up.options(num_returns="dynamic").remote(2), zray.put("x")],
                     timeout=GET_TIMEOUT)
    assert [zray.get(r, timeout=GET_TIMEOUT) for r in mixed[0]] == [0, 1] and mixed[1] == "x"


def test_dynamic_num_returns_error_is_in_the_ref_after_the_good_items(cluster):
    refs = list(zray.get(fail_after.options(num_returns="dynamic").remote(1),
                         timeout=GET_TIMEOUT))
    assert zray.get(refs[0], timeout=GET_TIMEOUT) == 0
    with pytest.raises(MyError, match="stream broke after 1 items"):
        zray.get(refs[1], timeout=GET_TIMEOUT)


# ------------------------------------------------------------- get and wait

def test_wait_on_no_refs_returns_two_empty_lists(cluster):
    assert zray.wait([]) == ([], [])
    assert zray.wait([], num_returns=0, timeout=0) == ([], [])

def test_get_with_timeout_raises_get_timeout_error_which_is_a_timeout_error(cluster):
    ref = sleep_then.remote(30)
    start = time.monotonic()
    with pytest.raises(zexc.GetTimeoutError) as info:
        zray.get(ref, timeout=0.3)
    assert time.monotonic() - start < 5
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, zexc.RayError)
    zray.cancel(ref, force=True)
    wait_for(lambda: cpus_free() == 2)


def test_get_of_a_list_returns_values_in_list_order(cluster):
    slow, fast = sleep_then.remote(0.5, "slow"), echo.remote("fast")
    assert zray.get([slow, fast], timeout=GET_TIMEOUT) == ["slow", "fast"]


def test_get_rejects_non_refs_with_type_error(cluster):
    with pytest.raises(TypeError):
        zray.get(42)
    with pytest.raises(TypeError):
        zray.get([zray.put(1), "not a ref"])


def test_wait_returns_the_fast_task_ready_and_the_sleeping_one_not_ready(cluster):
    slow = sleep_then.remote(30, "slow")
    fast = echo.remote("fast")
    try:
        ready, not_ready = zray.wait([slow, fast], num_returns=1, timeout=20)
        assert ready == [fast] and not_ready == [slow]
        # Asking for both with a short timeout gives what is ready by then.
        start = time.monotonic()
        ready, not_ready = zray.wait([slow, fast], num_returns=2, timeout=0.5)
        assert 0.4 < time.monotonic() - start < 5
        assert ready == [fast] and not_ready == [slow]
    finally:
        zray.cancel(slow, force=True)
    wait_for(lambda: cpus_free() == 2)


def test_wait_for_all_returns_every_ref_ready_in_input_order(cluster):
    refs = [sleep_then.remote(0.3, i) for i in range(3)] + [zray.put("now")]
    ready, not_ready = zray.wait(refs, num_returns=len(refs), timeout=GET_TIMEOUT)
    assert ready == refs and not_ready == []


def test_wait_with_zero_timeout_returns_nothing_ready_for_pending_work(cluster, tmp_path):
    release = str(tmp_path / "release")
    ref = wait_for_file.remote(release)
    try:
        ready, not_ready = zray.wait([ref], timeout=0)
        assert ready == [] and not_ready == [ref]
    finally:
        open(release, "w").close()
    assert zray.get(ref, timeout=GET_TIMEOUT) is True


# ------------------------------------------------------------------- cancel

def test_cancel_of_a_queued_task_raises_task_cancelled_error_and_it_never_runs(
        cluster, tmp_path):
    release = str(tmp_path / "release")
    counter = str(tmp_path / "runs")
    blocker = wait_for_file.options(num_cpus=2).remote(release)
    try:
        wait_for(lambda: cpus_free() == 0)
        queued = count_and_sleep.remote(counter, 0)
        zray.cancel(queued)
        with pytest.raises(zexc.TaskCancelledError):
            zray.get(queued, timeout=CANCEL_TIMEOUT)
    finally:
        open(release, "w").close()
    assert zray.get(blocker, timeout=GET_TIMEOUT) is True
    # Let the queue drain: the cancelled task must not have run.
    assert zray.get(echo.remote("after"), timeout=GET_TIMEOUT) == "after"
    assert runs_in(counter) == 0


def test_cancel_of_a_task_waiting_on_a_dependency(cluster, tmp_path):
    release = str(tmp_path / "release")
    dep = wait_for_file.remote(release)
    try:
        dependent = echo.remote(dep)
        zray.cancel(dependent)
        with pytest.raises(zexc.TaskCancelledError):
            zray.get(dependent, timeout=CANCEL_TIMEOUT)
    finally:
        open(release, "w").close()
    assert zray.get(dep, timeout=GET_TIMEOUT) is True


def test_cancel_of_a_running_sleeping_task_raises_task_cancelled_error(cluster, tmp_path):
    counter = str(tmp_path / "runs")
    ref = count_and_sleep.remote(counter, 20)
    wait_for(lambda: runs_in(counter) == 1)
    zray.cancel(ref)
    try:
        # The sleep is interrupted: the error comes long before the 20 s are up.
        with pytest.raises(zexc.TaskCancelledError):
            zray.get(ref, timeout=CANCEL_TIMEOUT)
    finally:
        zray.cancel(ref, force=True)        # free the CPU for later tests either way
    wait_for(lambda: cpus_free() == 2)
    assert runs_in(counter) == 1            # cancelled, not retried
    assert zray.get(echo.remote("alive"), timeout=GET_TIMEOUT) == "alive"


def test_force_cancel_of_a_running_task_kills_it_and_does_not_retry(cluster, tmp_path):
    counter = str(tmp_path / "runs")
    ref = count_and_sleep.options(max_retries=3).remote(counter, 20)
    wait_for(lambda: runs_in(counter) == 1)
    zray.cancel(ref, force=True)
    with pytest.raises(zexc.TaskCancelledError):
        zray.get(ref, timeout=CANCEL_TIMEOUT)
    wait_for(lambda: cpus_free() == 2)
    assert zray.get(echo.remote("alive"), timeout=GET_TIMEOUT) == "alive"
    time.sleep(0.3)
    assert runs_in(counter) == 1


def test_cancel_of_a_finished_task_keeps_its_value(cluster):
    ref = echo.remote("done")
    assert zray.get(ref, timeout=GET_TIMEOUT) == "done"
    zray.cancel(ref)
    assert zray.get(ref, timeout=GET_TIMEOUT) == "done"


# ------------------------------------------------------------------- errors

def test_raising_task_gives_error_that_is_ray_task_error_and_the_users_class(cluster):
    ref = raise_my_error.remote("boom 123")
    with pytest.raises(MyError) as info:
        zray.get(ref, timeout=GET_TIMEOUT)
    err = info.value
    assert isinstance(err, zexc.RayTaskError)
    assert isinstance(err, zexc.RayError)
    text = str(err)
    assert "boom 123" in text
    assert "raise_my_error" in text          # the remote traceback names the function
    assert "MyError" in text


def test_raising_task_error_is_raised_again_on_every_get(cluster):
    ref = raise_my_error.remote("again")
    for _ in range(2):
        with pytest.raises(MyError):
            zray.get(ref, timeout=GET_TIMEOUT)


def test_get_of_task_depending_on_a_failed_task_raises_the_original_error(cluster):
    failed = raise_my_error.remote("root cause")
    dependent = plus_one.remote(failed)
    second = plus_one.remote(dependent)
    for ref in (dependent, second):
        with pytest.raises(MyError, match="root cause") as info:
            zray.get(ref, timeout=GET_TIMEOUT)
        assert isinstance(info.value, zexc.RayTaskError)


def test_get_of_a_list_with_a_failed_ref_raises_its_error(cluster):
    with pytest.raises(MyError):
        zray.get([echo.remote(1), raise_my_error.remote("in a list")], timeout=GET_TIMEOUT)


def test_exceptions_are_not_retried_by_default(cluster, tmp_path):
    counter = str(tmp_path / "runs")
    with pytest.raises(MyError):
        zray.get(fail_first_attempts.remote(counter, 1), timeout=GET_TIMEOUT)
    assert runs_in(counter) == 1


def test_retry_exceptions_reruns_a_task_that_failed_the_first_time(cluster, tmp_path):
    counter = str(tmp_path / "runs")
    ref = fail_first_attempts.options(retry_exceptions=True, max_retries=2).remote(counter, 1)
    assert zray.get(ref, timeout=GET_TIMEOUT) == 2


def test_retry_exceptions_stops_after_max_retries_with_the_last_error(cluster, tmp_path):
    counter = str(tmp_path / "runs")
    ref = fail_first_attempts.options(retry_exceptions=True, max_retries=2).remote(counter, 10)
    with pytest.raises(MyError, match="run 3"):
        zray.get(ref, timeout=GET_TIMEOUT)
    assert runs_in(counter) == 3


def test_retry_exceptions_list_retries_only_the_listed_classes(cluster, tmp_path):
    listed, unlisted = str(tmp_path / "listed"), str(tmp_path / "unlisted")
    ok = fail_first_attempts.options(retry_exceptions=[MyError], max_retries=2).remote(
        listed, 1, "MyError")
    assert zray.get(ok, timeout=GET_TIMEOUT) == 2
    bad = fail_first_attempts.options(retry_exceptions=[MyError], max_retries=2).remote(
        unlisted, 1, "OtherError")
    with pytest.raises(OtherError):
        zray.get(bad, timeout=GET_TIMEOUT)
    assert runs_in(unlisted) == 1


# ---------------------------------------------------------- context & cluster

def test_runtime_context_on_the_driver_has_job_and_node_but_no_task(cluster):
    ctx = zray.get_runtime_context()
    assert ctx.get_task_id() is None
    assert ctx.get_job_id()
    assert ctx.get_node_id()
    assert ctx.gcs_address


def test_runtime_context_in_tasks_has_the_drivers_job_and_a_task_id_per_task(cluster):
    ctx = zray.get_runtime_context()
    (job1, task1, node1), (job2, task2, node2) = zray.get(
        [context.remote(), context.remote()], timeout=GET_TIMEOUT)
    assert job1 == job2 == ctx.get_job_id()
    assert node1 == node2 == ctx.get_node_id()
    assert task1 and task2 and task1 != task2
    outer, inner = zray.get(nested_context.remote(), timeout=GET_TIMEOUT)
    assert outer and inner and outer != inner


def test_node_id_matches_the_one_alive_node(cluster):
    nodes = zray.nodes()
    assert len(nodes) == 1
    assert nodes[0]["Alive"] is True
    assert nodes[0]["NodeID"] == zray.get_runtime_context().get_node_id()
    assert nodes[0]["Resources"]["CPU"] == 2


def test_cluster_resources_reports_two_cpus(cluster):
    assert zray.cluster_resources()["CPU"] == 2


def test_available_cpus_drop_while_a_task_runs_and_come_back(cluster, tmp_path):
    wait_for(lambda: cpus_free() == 2)
    release = str(tmp_path / "release")
    ref = wait_for_file.remote(release)
    try:
        wait_for(lambda: cpus_free() == 1)
        assert zray.cluster_resources()["CPU"] == 2
    finally:
        open(release, "w").close()
    assert zray.get(ref, timeout=GET_TIMEOUT) is True
    wait_for(lambda: cpus_free() == 2)


# -------------------------------------------------------- driver programs

def run_driver(tmp_path, source: str, timeout: float = 60) -> subprocess.CompletedProcess:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items()
           if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS")}
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_print_in_a_task_appears_on_the_drivers_stdout_prefixed_with_pid(tmp_path):
    result = run_driver(tmp_path, """
        import sys
        import time
        import zray

        class Seen:             # stdout, remembering what went through
            def __init__(self, stream):
                self.stream, self.text = stream, []

            def write(self, text):
                self.text.append(text)
                return self.stream.write(text)

            def __getattr__(self, name):
                return getattr(self.stream, name)

        sys.stdout = seen = Seen(sys.stdout)

        @zray.remote
        def speak(i):
            print("hello from task", i, flush=True)
            return i

        zray.init(num_cpus=1)
        assert zray.get([speak.remote(i) for i in range(2)], timeout=30) == [0, 1]
        deadline = time.monotonic() + 20      # log lines travel on their own path
        while "".join(seen.text).count("hello from task") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        zray.shutdown()
        print("driver done")
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for i in range(2):
        matching = [line for line in lines if f"hello from task {i}" in line]
        assert matching, result.stdout
        assert "pid=" in matching[0]
        assert matching[0].index("pid=") < matching[0].index("hello from task")
    assert lines[-1] == "driver done"


def test_ray_style_program_runs_unchanged_with_import_zray_as_ray(tmp_path):
    result = run_driver(tmp_path, """
        import time
        import numpy as np
        import zray as ray

        ray.init(num_cpus=2)

        @ray.remote
        def square(x):
            return x * x

        @ray.remote
        def slow(x):
            time.sleep(1.0)
            return x

        @ray.remote(num_returns=2)
        def split(xs):
            return xs[: len(xs) // 2], xs[len(xs) // 2:]

        futures = [square.remote(i) for i in range(4)]
        print("squares", ray.get(futures))

        data = ray.put(np.arange(1_000_000))
        print("sum", ray.get(square.remote(data)).sum() == (np.arange(1_000_000) ** 2).sum())

        left, right = split.remote([1, 2, 3, 4])
        print("halves", ray.get(left), ray.get(right))

        ready, not_ready = ray.wait([slow.remote(1), square.remote(5)], num_returns=1,
                                    timeout=10)
        print("wait", ray.get(ready), len(not_ready))

        try:
            ray.get(slow.remote(2), timeout=0.1)
        except ray.exceptions.GetTimeoutError:
            print("timeout ok")

        print("resources", ray.cluster_resources()["CPU"], ray.is_initialized())
        ray.shutdown()
        print("initialized", ray.is_initialized())
    """)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "squares [0, 1, 4, 9]" in out
    assert "sum True" in out
    assert "halves [1, 2] [3, 4]" in out
    assert "wait [25] 1" in out
    assert "timeout ok" in out
    assert "resources 2.0 True" in out
    assert "initialized False" in out


# ------------------------------------------- own-cluster tests (kept last:
# start_cluster ends the module's shared cluster)

def test_custom_resource_limits_how_many_tasks_run_at_once(start_cluster, tmp_path):
    start_cluster(num_cpus=2, resources={"slot": 1})
    assert zray.cluster_resources()["slot"] == 1
    release = str(tmp_path / "release")
    counter = str(tmp_path / "runs")
    first = wait_for_file.options(resources={"slot": 1}).remote(release)
    wait_for(lambda: zray.available_resources().get("slot", 0) == 0)
    second = count_and_sleep.options(resources={"slot": 1}).remote(counter, 0)
    ready, _ = zray.wait([second], timeout=0.5)
    assert ready == [] and runs_in(counter) == 0     # the slot is taken
    open(release, "w").close()
    assert zray.get([first, second], timeout=GET_TIMEOUT) == [True, "finished"]
    assert runs_in(counter) == 1
