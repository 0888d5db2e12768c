"""Arrow tables and pandas frames travel through the store without a copy:
what ``get`` returns reads the shared-memory arena itself."""
import numpy as np
import pandas as pd
import pyarrow as pa

ROWS = 2_000_000          # 32 MB: far above the inline threshold


def _arena_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of zray store arenas."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "/dev/shm/zray" in line:
                start, end = line.split()[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def _in_arena(address: int) -> bool:
    return any(start <= address < end for start, end in _arena_ranges())


def _table():
    return pa.table({"id": np.arange(ROWS, dtype=np.int64), "x": np.linspace(0, 1, ROWS)})


def test_get_of_an_arrow_table_reads_the_store_in_place(cluster):
    table = _table()
    out = cluster.get(cluster.put(table))
    assert out.equals(table)
    for column in out.columns:
        data = column.chunk(0).buffers()[1]
        assert _in_arena(data.address), "the column was copied out of the store"


def test_an_arrow_table_as_a_task_argument_is_read_in_place(cluster):
    @cluster.remote
    def summary(table):
        data = table.column("id").chunk(0).buffers()[1]
        with open("/proc/self/maps") as maps:
            in_store = any("/dev/shm/zray" in line
                           and int(line.split("-")[0], 16) <= data.address
                           < int(line.split()[0].split("-")[1], 16) for line in maps)
        return table.num_rows, pa.compute.sum(table.column("id")).as_py(), in_store

    rows, total, in_store = cluster.get(summary.remote(cluster.put(_table())), timeout=60)
    assert (rows, total) == (ROWS, ROWS * (ROWS - 1) // 2)
    assert in_store, "the worker got a copy of the table"


def test_get_of_a_pandas_frame_reads_the_store_in_place(cluster):
    frame = pd.DataFrame({"id": np.arange(ROWS, dtype=np.int64),
                          "x": np.linspace(0, 1, ROWS)})
    out = cluster.get(cluster.put(frame))
    pd.testing.assert_frame_equal(out, frame)
    column = out["id"].to_numpy()
    assert _in_arena(column.__array_interface__["data"][0]), "the frame was copied"
