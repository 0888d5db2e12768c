"""How fast the dashboard answers with a big cluster history.

    python benchmarks/dashboard_latency.py [--tasks 100000] [--actors 1000] [--requests 30]

Starts a small local cluster (1 CPU, its dashboard on a free port), fills
the GCS tables directly: ``--tasks`` task-event rows sent as ``AddTaskEvents``
batches (as core workers report them: submitted, running, finished) and
``--actors`` actor rows registered through ``RegisterActor`` with a resource
no node has, so they stay PENDING_CREATION and no actor process starts. Then
times ``--requests`` GETs of each endpoint below and prints the median and
p95 (goal: 200 ms or less). Exit code 1 when a median misses the goal.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import statistics
import sys
import time

GOAL_MS = 200.0
ENDPOINTS = (
    ("GET /api/v0/tasks?limit=100", "/api/v0/tasks?limit=100"),
    ("GET /api/v0/actors?limit=100", "/api/v0/actors?limit=100"),
    ("Tasks page", "/tasks"),
    ("Overview page", "/"),
    ("GET /api/v0/objects?limit=100", "/api/v0/objects?limit=100"),
    ("Memory page", "/memory"),
)
BATCH = 2000                 # task events per AddTaskEvents message


def fill_task_events(gcs, p, n: int, node_id: bytes, job_id: bytes) -> None:
    """``n`` finished tasks in the GCS task table (20 function names)."""
    now = time.time()
    worker_id = os.urandom(16)
    for start in range(0, n, BATCH):
        events = []
        for i in range(start, min(n, start + BATCH)):
            task_id = i.to_bytes(8, "big") + b"\xbe" * 8
            t = now - (n - i) * 1e-3
            info = {"name": f"bench_fn_{i % 20}", "job_id": job_id, "type": p.TASK_NORMAL,
                    "required_resources": {"CPU": 1.0}}
            events.extend(p.TaskEvent(task_id, 0, p.TS_PENDING_NODE_ASSIGNMENT, t, info))
            events.extend(p.TaskEvent(task_id, 0, p.TS_FINISHED, t + 5e-4, None, t))
        gcs.send(p.AddTaskEvents(worker_id, node_id, os.getpid(), p.pack_task_events(events),
                                 len(events) // p.TASK_EVENT_FIELDS, 0))
    deadline = time.monotonic() + 120
    while gcs.call(p.GetTaskSummary()).total < n:
        if time.monotonic() > deadline:
            raise SystemExit("the GCS did not take the task events within 120 s")
        time.sleep(0.2)


def fill_actors(zray, n: int) -> list:
    """``n`` actor rows that never get a node (no actor process starts)."""
    @zray.remote(resources={"bench_no_such_resource": 1})
    class Pending:
        pass
    return [Pending.remote() for _ in range(n)]


def time_get(conn_args, token: str, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        conn = http.client.HTTPConnection(*conn_args, timeout=30)
        start = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        resp.read()
        out.append((time.perf_counter() - start) * 1000)
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"GET {path}: HTTP {resp.status}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--actors", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args(argv)

    import zray
    from zray.broker import protocol as p
    from zray.dashboard import launch
    from zray._private.node import free_port
    from zray.worker import global_state

    zray.init(num_cpus=1, object_store_memory=64 << 20, dashboard_port=free_port())
    try:
        worker = global_state.worker
        started = time.monotonic()
        fill_task_events(worker.gcs, p, args.tasks, worker.node_id, worker.job_id)
        handles = fill_actors(zray, args.actors)
        print(f"filled {args.tasks} task rows and {len(handles)} actor rows in "
              f"{time.monotonic() - started:.1f}s")
        info = launch.find()
        with open(info["token_file"]) as f:
            token = f.read().strip()
        host, port = info["url"].split("//")[1].rsplit(":", 1)
        deadline = time.monotonic() + 60
        while True:
            try:
                time_get((host, int(port)), token, "/api/version", 1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not answer within 60 s") from None
                time.sleep(0.2)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/api/v0/actors?limit=1",
                     headers={"Authorization": f"Bearer {token}"})
        actors = json.loads(conn.getresponse().read())["data"]["result"]["total"]
        conn.close()
        print(f"the GCS holds {worker.gcs.call(p.GetTaskSummary()).total} task rows; "
              f"the dashboard lists {actors} actors")
        print(f"{'request':34} {'median ms':>10} {'p95 ms':>8}  goal {GOAL_MS:.0f} ms")
        missed = False
        for name, path in ENDPOINTS:
            time_get((host, int(port)), token, path, 2)             # warm up
            ms = sorted(time_get((host, int(port)), token, path, args.requests))
            median = statistics.median(ms)
            p95 = ms[math.ceil(0.95 * len(ms)) - 1]
            ok = median <= GOAL_MS
            missed |= not ok
            print(f"{name:34} {median:10.1f} {p95:8.1f}  {'ok' if ok else 'MISSED'}")
        return 1 if missed else 0
    finally:
        zray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
