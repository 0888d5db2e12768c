"""The worker pool: prestarted workers serve bursts without growing past what
the node's resources allow; extra workers (started while others were blocked
in get) are stopped once they idle longer than idle_worker_timeout_s."""
import time

import psutil
import pytest

import zray

from conftest import cmdline, wait_for


def _workers() -> int:
    """Live worker processes of this test's cluster (children of its zygote,
    which this driver started for its raylet; workers are forks of it that
    renamed themselves)."""
    count = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name() == "zray.zygote":
                count += sum(1 for c in proc.children() if cmdline(c))
        except psutil.NoSuchProcess:        # a worker that just ended
            continue
    return count


@pytest.fixture
def cluster(monkeypatch, start_cluster):
    monkeypatch.setenv("ZRAY_IDLE_WORKER_TIMEOUT_S", "1")
    start_cluster(num_cpus=2)
    wait_for(lambda: _workers() == 2)
    yield zray


def test_a_burst_of_tasks_runs_on_the_prestarted_workers(cluster):
    @zray.remote
    def f(i):
        return i

    assert zray.get([f.remote(i) for i in range(300)]) == list(range(300))
    assert _workers() == 2


def test_workers_started_for_blocked_tasks_are_stopped_when_idle(cluster):
    @zray.remote
    def leaf():
        time.sleep(0.2)
        return 1

    @zray.remote
    def parent():
        return sum(zray.get([leaf.remote() for _ in range(2)]))

    # parents block in get(): their CPUs go to the leaves, on new workers
    assert zray.get([parent.remote() for _ in range(2)], timeout=60) == [2, 2]
    assert _workers() > 2
    wait_for(lambda: _workers() == 2, timeout=15)
