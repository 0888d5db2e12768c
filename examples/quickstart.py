"""zray quickstart: a local cluster starts by itself, runs tasks, moves arrays.

    python examples/quickstart.py
"""
import time

import numpy as np

import zray


@zray.remote
def square(x):
    return x * x


@zray.remote
def column_sums(matrix):
    return matrix.sum(axis=0)


@zray.remote
def countdown(n):
    for i in range(n, 0, -1):
        yield i


def main():
    start = time.perf_counter()
    zray.init()                     # no address: starts a GCS, a raylet and workers here
    print(f"local cluster up in {time.perf_counter() - start:.2f}s: "
          f"{zray.cluster_resources()['CPU']:.0f} CPUs")

    squares = zray.get([square.remote(i) for i in range(10)])
    print("squares:", squares)

    matrix = np.random.default_rng(0).random((2000, 1000))   # 16 MB: lives in shared memory
    ref = zray.put(matrix)
    sums = zray.get(column_sums.remote(ref))
    assert np.allclose(sums, matrix.sum(axis=0))
    print("column sums of a 16 MB matrix computed remotely, first three:", sums[:3].round(2))

    print("streamed:", [zray.get(r) for r in countdown.remote(3)])
    zray.shutdown()
    print("done")


if __name__ == "__main__":
    main()
