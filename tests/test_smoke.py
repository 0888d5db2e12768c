import numpy as np


def test_task_returns_value(cluster):
    @cluster.remote
    def add(a, b):
        return a + b
    assert cluster.get(add.remote(1, 2)) == 3


def test_large_put_is_zero_copy_and_read_only(cluster):
    arr = np.arange(1_000_000)
    out = cluster.get(cluster.put(arr))
    assert np.array_equal(out, arr)
    assert not out.flags.writeable
