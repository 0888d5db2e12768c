"""The scale rows of ``zray microbenchmark --scale``: how cost grows with the
size of the work, measured the same way on zray and on Ray.

Like ``microbenchmark.py`` this module needs only the stdlib and numpy at
import time (pyarrow and pandas load inside the row that uses them) and
uses only the public API zray and Ray share, so it runs unchanged in Ray's
interpreter. Each probe runs in a fresh process (``microbenchmark.py
--_scale-probe NAME``) and prints one line ``ZRAY_SCALE {"row": value, ...}``.
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import time

import numpy as np

SCALE_MARKER = "ZRAY_SCALE"
NUM_CPUS = 2
STORE_BYTES = 2 * 1024 ** 3

#: (row, unit, the probe that measures it)
SCALE_ROWS = [
    ("tasks_queued_10k", "tasks/s", "tasks_queued"),
    ("tasks_queued_100k", "tasks/s", "tasks_queued"),
    ("tasks_queued_100k_driver_peak_rss", "MB", "tasks_queued"),
    ("objects_held_1m_put", "us", "objects_held"),
    ("objects_held_1m_driver_bytes_per_ref", "B", "objects_held"),
    ("objects_held_1m_memory_returned", "%", "objects_held"),
    ("actors_idle_100_uss_per_actor", "MB", "actors_idle"),
    ("actors_idle_100_create", "s", "actors_idle"),
    ("broadcast_100mb_4_nodes", "s", "broadcast"),
    ("arrow_table_100mb_get", "ms", "arrow"),
    ("arrow_table_100mb_task_arg", "ms", "arrow"),
    ("pandas_frame_100mb_get", "ms", "arrow"),
]
SCALE_ROW_NAMES = [name for name, _, _ in SCALE_ROWS]
PROBES = sorted({probe for _, _, probe in SCALE_ROWS})


def _backend(name: str):
    if name == "ray" or name.startswith("ray."):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return importlib.import_module(name)


def _rss_mb() -> float:
    """This process's resident set now, from /proc (no psutil in Ray's venv)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3
    return float("nan")


def _uss_mb(pid: int) -> float:
    """Pages only ``pid`` maps (private, clean or dirty): what its exit frees."""
    total_kb = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total_kb += int(line.split()[1])
    except OSError:
        return 0.0
    return total_kb / 1e3


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/*/stat)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        here = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == here]
        found += kids
        frontier += kids
    return found


# -- the probes ------------------------------------------------------------
def probe_tasks_queued(b) -> dict:
    """Submit N no-op tasks at once, then get them all: tasks/s for 10k and
    100k, and the driver's peak RSS over the 100k run."""
    b.init(num_cpus=NUM_CPUS, object_store_memory=STORE_BYTES, include_dashboard=False)

    def noop():
        return None
    noop = b.remote(noop)
    b.get([noop.remote() for _ in range(1000)])           # warm the workers
    out = {}
    for n, row in ((10_000, "tasks_queued_10k"), (100_000, "tasks_queued_100k")):
        gc.collect()
        t0 = time.perf_counter()
        refs = [noop.remote() for _ in range(n)]
        b.get(refs)
        out[row] = n / (time.perf_counter() - t0)
        del refs
    out["tasks_queued_100k_driver_peak_rss"] = _peak_rss_mb()
    b.shutdown()
    return out


def probe_objects_held(b) -> dict:
    """``put`` 1,000,000 small objects, holding every ref: time per put and
    driver bytes per ref; then drop them: the share of that growth returned."""
    b.init(num_cpus=NUM_CPUS, object_store_memory=STORE_BYTES, include_dashboard=False)
    n = 1_000_000
    for _ in range(1000):
        b.put(0)                                      # warm-up, dropped at once
    gc.collect()
    before = _rss_mb()
    t0 = time.perf_counter()
    refs = [b.put(i) for i in range(n)]
    elapsed = time.perf_counter() - t0
    held = _rss_mb()
    del refs
    gc.collect()
    deadline = time.monotonic() + 30                  # frees travel asynchronously
    after = _rss_mb()
    while time.monotonic() < deadline and after > before + 0.2 * (held - before):
        time.sleep(0.5)
        after = _rss_mb()
    b.shutdown()
    grown = max(held - before, 1e-9)
    return {"objects_held_1m_put": elapsed / n * 1e6,
            "objects_held_1m_driver_bytes_per_ref": grown * 1e6 / n,
            "objects_held_1m_memory_returned": 100.0 * (held - after) / grown}


def probe_actors_idle(b) -> dict:
    """Create 100 actors on one node and call each once: seconds to have them
    all, and the unique memory (USS) of their processes per actor."""
    b.init(num_cpus=NUM_CPUS, object_store_memory=STORE_BYTES, include_dashboard=False)

    class Idle:
        def pid(self):
            return os.getpid()
    Idle = b.remote(num_cpus=0)(Idle)
    t0 = time.perf_counter()
    actors = [Idle.remote() for _ in range(100)]
    pids = b.get([a.pid.remote() for a in actors])
    created = time.perf_counter() - t0
    uss = sum(_uss_mb(pid) for pid in set(pids))
    out = {"actors_idle_100_create": created,
           "actors_idle_100_uss_per_actor": uss / len(set(pids))}
    del actors
    b.shutdown()
    return out


def probe_broadcast(backend: str, b) -> dict:
    """One 100 MB object read by a task on each of 4 nodes: seconds until all
    four have read it (the driver's node holds it)."""
    cluster_utils = importlib.import_module(f"{backend}.cluster_utils")
    strategies = importlib.import_module(f"{backend}.util.scheduling_strategies")
    store = 600 * 1024 ** 2
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
    try:
        nodes = [cluster.add_node(num_cpus=1, object_store_memory=store) for _ in range(4)]
        cluster.wait_for_nodes()
        b.init(address=cluster.address)

        def total(arr):
            return float(arr[-1])
        total = b.remote(num_cpus=1)(total)
        on = [total.options(scheduling_strategy=strategies.NodeAffinitySchedulingStrategy(
            node.node_id, soft=False)) for node in nodes]
        b.get([f.remote(np.zeros(1)) for f in on])    # every node has a warm worker
        ref = b.put(np.ones(100 * 1024 ** 2 // 8))
        t0 = time.perf_counter()
        assert b.get([f.remote(ref) for f in on]) == [1.0] * 4
        return {"broadcast_100mb_4_nodes": time.perf_counter() - t0}
    finally:
        try:
            b.shutdown()
        finally:
            cluster.shutdown()


def probe_arrow(b) -> dict:
    """A 100 MB pyarrow Table through put/get, and as a task's argument; a
    100 MB pandas DataFrame through put/get: milliseconds per get (medians
    of 5, the object put once)."""
    import pandas as pd
    import pyarrow as pa
    b.init(num_cpus=NUM_CPUS, object_store_memory=STORE_BYTES, include_dashboard=False)
    rows = 100 * 1024 ** 2 // 16
    table = pa.table({"a": np.arange(rows, dtype=np.int64), "b": np.ones(rows)})
    frame = pd.DataFrame({"a": np.arange(rows, dtype=np.int64), "b": np.ones(rows)})

    def num_rows(t):
        return t.num_rows
    num_rows = b.remote(num_rows)
    out = {}
    for row, value, read in (
            ("arrow_table_100mb_get", table, lambda ref: b.get(ref).num_rows),
            ("arrow_table_100mb_task_arg", table, lambda ref: b.get(num_rows.remote(ref))),
            ("pandas_frame_100mb_get", frame, lambda ref: len(b.get(ref)))):
        ref = b.put(value)
        assert read(ref) == rows
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert read(ref) == rows
            times.append((time.perf_counter() - t0) * 1e3)
        out[row] = sorted(times)[len(times) // 2]
        del ref
    b.shutdown()
    return out


def run_probe(backend: str, probe: str) -> dict:
    """Run one probe here (a fresh process) and print its marker line."""
    b = _backend(backend)
    if probe == "broadcast":
        values = probe_broadcast(backend, b)
    else:
        values = globals()[f"probe_{probe}"](b)
    print(f"{SCALE_MARKER} {json.dumps(values)}", flush=True)
    return values
