"""Microbenchmarks for zray, runnable unchanged against Ray for comparison.

This module is self-contained on purpose (stdlib + numpy at import time): it
must also run as a plain script under an interpreter where zray is not
installed, e.g.::

    /tmp/rayvenv/bin/python zray/_private/microbenchmark.py --backend ray --json

The backend is imported by name (``importlib.import_module(backend)``) and
only the public API shared by zray and Ray is used (init, remote, get, put,
kill, shutdown), so the same code measures both.

Usage::

    python -m zray._private.microbenchmark [--backend zray|ray] [--rows a,b,...]
                                  [--duration SECONDS] [--json]
                                  [--compare-ray [--ray-python PATH]]
                                  [--with-dashboard]

Row names follow ``ray microbenchmark``.  Throughput rows warm up, then run
timed batches until ``--duration`` seconds of timed work have accumulated and
report operations per second over the whole timed portion. Both backends
run without their dashboard, as ``ray microbenchmark`` does;
``--with-dashboard`` runs zray's rows with its dashboard and task events on.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import deque

import numpy as np

DEFAULT_DURATION = 2.0
DEFAULT_ROW_TIMEOUT = 60.0
NUM_CPUS = 2
OBJECT_STORE_MEMORY = 2 * 1024**3
INIT_RUNS = 3
BATCH = 1000
PROGRESS_PREFIX = "[microbenchmark] "
_PROBE_MARKER = "ZRAY_INIT_TO_FIRST_TASK"
_DEFAULT_RAY_VENV_PYTHON = "/tmp/rayvenv/bin/python"
_SETTLE_SECONDS = 1.0

# Units where a smaller number is better; for these the comparison ratio is
# ray/zray instead of zray/ray so that >1x always means "zray is better".
LOWER_IS_BETTER_UNITS = frozenset({"s", "ms", "us", "MB", "B"})


# --------------------------------------------------------------------------
# Backend helpers
# --------------------------------------------------------------------------

def init_kwargs(backend: str, dashboard: bool = False) -> dict:
    """Keyword arguments for ``backend.init()``, the same for zray and Ray:
    the dashboard off, as Ray's own microbenchmark runs, unless
    ``dashboard`` (``--with-dashboard``)."""
    return {"num_cpus": NUM_CPUS, "object_store_memory": OBJECT_STORE_MEMORY,
            "include_dashboard": bool(dashboard)}


def _is_ray(backend: str) -> bool:
    return backend == "ray" or backend.startswith("ray.")


def _import_backend(backend: str):
    if _is_ray(backend):
        # No phoning home from a benchmark (and no network in sandboxes).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return importlib.import_module(backend)


def _fmt_exc(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    first = msg[0] if msg else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class _RowTimeout(Exception):
    pass


class _Alarm:
    """Raise TimeoutError in the main thread if a row hangs (Unix only)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.active = (
            seconds
            and seconds > 0
            and hasattr(signal, "SIGALRM")
            and threading.current_thread() is threading.main_thread()
        )

    def _handler(self, signum, frame):
        raise TimeoutError(f"row did not finish within {self.seconds:g}s")

    def __enter__(self):
        if self.active:
            self._old = signal.signal(signal.SIGALRM, self._handler)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)
        return False


# --------------------------------------------------------------------------
# Remote definitions (built inside a factory so they pickle by value and the
# workers never need to import this module)
# --------------------------------------------------------------------------

def _make_remote(b, what):
    """Build one remote function/actor class; each row builds only what it
    uses, so e.g. missing actor support fails the actor rows only."""
    if what == "small":
        def small():
            return b"ok"
        return b.remote(small)
    if what == "echo":
        def echo(x):
            return x
        return b.remote(echo)
    if what in ("Actor", "ConcurrentActor"):
        class Actor:
            def f(self):
                return b"ok"
        if what == "ConcurrentActor":
            return b.remote(max_concurrency=16)(Actor)
        return b.remote(Actor)
    if what == "AsyncActor":
        class AsyncActor:
            async def f(self):
                return b"ok"
        return b.remote(AsyncActor)
    raise KeyError(what)


class _LazyRemotes:
    def __init__(self, b):
        self._b = b
        self._cache = {}

    def __getitem__(self, what):
        if what not in self._cache:
            self._cache[what] = _make_remote(self._b, what)
        return self._cache[what]


# --------------------------------------------------------------------------
# The benchmark rows
# --------------------------------------------------------------------------

class _Bench:
    def __init__(self, b, duration):
        self.b = b
        self.duration = float(duration)
        self.warmup = max(0.1, min(1.0, 0.25 * self.duration))
        self.r = _LazyRemotes(b)

    # -- timing helpers ---------------------------------------------------
    def throughput(self, batch, n, setup=None):
        """Ops/s of ``batch`` (which performs ``n`` ops).

        ``setup`` (optional) is called untimed before every batch and its
        result passed to ``batch``.
        """
        def once():
            arg = setup() if setup is not None else None
            t0 = time.perf_counter()
            if setup is not None:
                batch(arg)
            else:
                batch()
            return time.perf_counter() - t0

        warm_end = time.perf_counter() + self.warmup
        once()
        while time.perf_counter() < warm_end:
            once()
        total, ops = 0.0, 0
        while total < self.duration:
            total += once()
            ops += n
        return ops / total

    def median_latency_ms(self, fn, max_iters=20000):
        for _ in range(3):
            fn()
        samples = []
        end = time.perf_counter() + self.duration
        while len(samples) < 5 or (time.perf_counter() < end and len(samples) < max_iters):
            t0 = time.perf_counter()
            v = fn()
            samples.append(time.perf_counter() - t0)
            del v
        return statistics.median(samples) * 1000.0

    def _kill(self, *actors):
        for a in actors:
            try:
                self.b.kill(a)
            except Exception as err:    # noqa: BLE001 — already gone: nothing to end
                print(f"# kill after a row: {err}", file=sys.stderr)

    # -- tasks / objects ----------------------------------------------------
    def single_client_tasks_sync(self):
        b, small = self.b, self.r["small"]
        return self.throughput(lambda: b.get(small.remote()), 1)

    def single_client_tasks_async(self):
        b, small = self.b, self.r["small"]
        return self.throughput(lambda: b.get([small.remote() for _ in range(BATCH)]), BATCH)

    def single_client_wait_1k_refs(self):
        """``wait`` calls/s: 1,000 small tasks submitted, then waited for one
        ``wait`` at a time until none is left (as Ray's row does)."""
        b, small = self.b, self.r["small"]

        def batch():
            not_ready = [small.remote() for _ in range(BATCH)]
            while not_ready:
                _, not_ready = b.wait(not_ready)

        return self.throughput(batch, BATCH)

    def single_client_put_calls(self):
        b = self.b
        return self.throughput(lambda: b.put(0), 1)

    def single_client_get_calls(self):
        b = self.b
        ref = b.put(0)
        return self.throughput(lambda: b.get(ref), 1)

    def single_client_put_gigabytes(self):
        b = self.b
        arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)
        arr.fill(0)  # fault the pages in: reading untouched zero pages is unrealistically fast

        def put_once():
            ref = b.put(arr)
            del ref

        return self.throughput(put_once, 1) * arr.nbytes / 1e9

    def tasks_1mb_arg_echo(self):
        b, echo = self.b, self.r["echo"]
        n = 100
        counter = [0]

        def setup():
            counter[0] += 1
            return [np.full(1024 * 1024 // 8, counter[0] * n + i, dtype=np.int64) for i in range(n)]

        def batch(arrs):
            b.get([echo.remote(a) for a in arrs])

        return self.throughput(batch, n, setup=setup)

    def _get_large_array(self, nbytes):
        b = self.b
        arr = np.ones(nbytes // 8, dtype=np.int64)
        ref = b.put(arr)
        del arr
        return self.median_latency_ms(lambda: b.get(ref))

    def get_large_array_1mb(self):
        return self._get_large_array(1024 * 1024)

    def get_large_array_100mb(self):
        return self._get_large_array(100 * 1024 * 1024)

    # -- actors ---------------------------------------------------------------
    def _actor_sync(self, cls_name):
        b = self.b
        a = self.r[cls_name].remote()
        try:
            return self.throughput(lambda: b.get(a.f.remote()), 1)
        finally:
            self._kill(a)

    def _actor_async(self, cls_name):
        b = self.b
        a = self.r[cls_name].remote()
        try:
            return self.throughput(lambda: b.get([a.f.remote() for _ in range(BATCH)]), BATCH)
        finally:
            self._kill(a)

    def actor_calls_sync(self):
        return self._actor_sync("Actor")

    def actor_calls_async(self):
        return self._actor_async("Actor")

    def actor_calls_concurrent(self):
        return self._actor_async("ConcurrentActor")

    def async_actor_calls_sync(self):
        return self._actor_sync("AsyncActor")

    def async_actor_calls_async(self):
        return self._actor_async("AsyncActor")

    def n_actor_calls_async(self):
        b = self.b
        actors = [self.r["Actor"].remote() for _ in range(4)]
        try:
            return self.throughput(
                lambda: b.get([actors[i % 4].f.remote() for i in range(BATCH)]), BATCH
            )
        finally:
            self._kill(*actors)

    def actor_create_call_kill(self):
        b, Actor = self.b, self.r["Actor"]

        def once():
            a = Actor.remote()
            b.get(a.f.remote())
            b.kill(a)

        return self.throughput(once, 1)

    def actor_create_drop(self):
        """Create an actor, call it once and drop its handle: the actor ends by
        itself when its last handle goes (Ray's lifetimes)."""
        b, Actor = self.b, self.r["Actor"]

        def once():
            a = Actor.remote()
            b.get(a.f.remote())
            del a

        return self.throughput(once, 1)

    def placement_group_create_removal(self):
        """Create a one-bundle placement group, wait until it is placed, remove it."""
        b = self.b
        util = importlib.import_module(f"{b.__name__}.util")

        def once():
            pg = util.placement_group([{"CPU": 1}])
            b.get(pg.ready())
            util.remove_placement_group(pg)

        return self.throughput(once, 1)

    # -- task events (zray only) ------------------------------------------------
    ABSORB_TASKS = 100_000       # fill the table (100,000 rows by default), then as many again

    def task_events_absorbed(self):
        """Tasks/s of task events (an owner's and an executor's each) the GCS takes in."""
        return self._absorb()[0]

    def task_events_gcs_growth(self):
        """MB the GCS grew by while the last 50,000 of 100,000 more tasks'
        events came in after its table (100,000 rows by default) was full
        (the first 50,000 warm its allocator up): ~0 when bounded."""
        return self._absorb()[1]

    def _absorb(self):
        if getattr(self.b, "__name__", "") != "zray":
            raise NotImplementedError("a zray-only row")
        cached = getattr(self, "_absorb_result", None)
        if cached is None:
            cached = self._absorb_result = _absorb_task_events(self.ABSORB_TASKS)
        return cached


def _absorb_task_events(tasks: int):
    """Send synthetic task events to this driver's GCS as fast as it takes
    them: ``tasks`` to fill its table, then half as many twice; returns
    (tasks/s absorbed, GCS growth in MB during the last phase)."""
    import psutil
    from zray.broker import protocol as p
    from zray.broker import sockets
    from zray.worker import global_state
    worker = global_state.worker
    gcs_proc = next(c for c in psutil.Process().children(recursive=True)
                    if c.name().startswith("zray.gcs"))
    prefix = os.urandom(8)
    owner_info = {"name": "synthetic_task", "type": 0, "job_id": worker.job_id,
                  "required_resources": {"CPU": 1.0}}
    executor_info = {"name": "synthetic_task", "type": 0, "job_id": worker.job_id}
    per_batch = 1000

    def batches(first, count):
        """Per task what a core worker sends for a task that waited for a
        worker (the owner's PENDING_NODE_ASSIGNMENT) and ran (its executor's
        FINISHED with its start): the most a task costs, short of failing."""
        out = []
        for start in range(first, first + count, per_batch):
            now = time.time()
            owner, executor = [], []
            for i in range(start, start + per_batch):
                task_id = prefix + i.to_bytes(8, "big")
                owner.extend(p.TaskEvent(task_id, 0, p.TS_PENDING_NODE_ASSIGNMENT, now,
                                         owner_info))
                executor.extend(p.TaskEvent(task_id, 0, p.TS_FINISHED, now + 0.002,
                                            executor_info, now + 0.001))
            out.append(p.encode(p.AddTaskEvents(worker.worker_id, worker.node_id, 1,
                                                p.pack_task_events(owner), per_batch, 0)))
            out.append(p.encode(p.AddTaskEvents(os.urandom(16), worker.node_id, 2,
                                                p.pack_task_events(executor), per_batch,
                                                0)))
        return out

    def last_absorbed(last_id):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = worker.gcs.call(p.GetTaskEvents(1, {})).events
            if rows and rows[-1]["task_id"] == last_id.hex() \
                    and rows[-1]["state"] == "FINISHED":
                return
            time.sleep(0.005)
        raise TimeoutError("the GCS did not take the task events in 120 s")

    sock = sockets.dealer(sockets.tcp_endpoint(worker.gcs_address))
    try:
        elapsed, rss, first = 0.0, [], 0
        for count in (tasks, tasks // 2, tasks // 2):
            payloads = batches(first, count)
            first += count
            last_id = prefix + (first - 1).to_bytes(8, "big")
            t0 = time.perf_counter()
            for payload in payloads:
                sock.send_multipart([b"", payload])
            last_absorbed(last_id)
            elapsed += time.perf_counter() - t0
            rss.append(gcs_proc.memory_info().rss)
            del payloads
    finally:
        sock.close(linger=0)
    return first / elapsed, (rss[2] - rss[1]) / 1e6


# (name, unit, _Bench method name or None for the subprocess row)
ROWS = [
    ("init_to_first_task", "s", None),
    ("single_client_tasks_sync", "tasks/s", "single_client_tasks_sync"),
    ("single_client_tasks_async", "tasks/s", "single_client_tasks_async"),
    ("single_client_wait_1k_refs", "waits/s", "single_client_wait_1k_refs"),
    ("single_client_put_calls", "calls/s", "single_client_put_calls"),
    ("single_client_get_calls", "calls/s", "single_client_get_calls"),
    ("single_client_put_gigabytes", "GB/s", "single_client_put_gigabytes"),
    ("tasks_1mb_arg_echo", "tasks/s", "tasks_1mb_arg_echo"),
    ("get_large_array_1mb", "ms", "get_large_array_1mb"),
    ("get_large_array_100mb", "ms", "get_large_array_100mb"),
    ("1_1_actor_calls_sync", "calls/s", "actor_calls_sync"),
    ("1_1_actor_calls_async", "calls/s", "actor_calls_async"),
    ("1_1_actor_calls_concurrent", "calls/s", "actor_calls_concurrent"),
    ("1_1_async_actor_calls_sync", "calls/s", "async_actor_calls_sync"),
    ("1_1_async_actor_calls_async", "calls/s", "async_actor_calls_async"),
    ("1_n_actor_calls_async", "calls/s", "n_actor_calls_async"),
    ("actor_create_call_kill", "actors/s", "actor_create_call_kill"),
    ("actor_create_drop_per_s", "actors/s", "actor_create_drop"),
    ("placement_group_create_removal", "groups/s", "placement_group_create_removal"),
    ("gcs_restart_to_first_task_s", "s", None),
    ("task_events_absorbed", "tasks/s", "task_events_absorbed"),
    ("task_events_gcs_growth_past_bound", "MB", "task_events_gcs_growth"),
    ("transfer_500mb_between_nodes", "GB/s", None),
]
ROW_NAMES = [name for name, _, _ in ROWS]
_UNITS = {name: unit for name, unit, _ in ROWS}


def _scale_rows():
    """The module of the ``--scale`` rows (a sibling of this file)."""
    return importlib.import_module("zray._private.scale_rows")


def scale_row_names() -> list:
    return list(_scale_rows().SCALE_ROW_NAMES)


def _unit(name: str) -> str:
    if name in _UNITS:
        return _UNITS[name]
    return next((unit for row, unit, _ in _scale_rows().SCALE_ROWS if row == name), "")


def select_rows(spec=None):
    """Resolve a row selection (comma string or list; prefix match) to names.

    ``None``/empty selects every row.  Raises ValueError on a token that
    matches no row.  The result keeps the canonical row order.
    """
    if spec is None:
        return list(ROW_NAMES)
    if isinstance(spec, str):
        tokens = spec.split(",")
    else:
        tokens = list(spec)
    tokens = [t.strip() for t in tokens if t and t.strip()]
    if not tokens:
        return list(ROW_NAMES)
    chosen = set()
    unknown = []
    every = ROW_NAMES + scale_row_names()
    for tok in tokens:
        matches = [n for n in every if n.startswith(tok)]
        if not matches:
            unknown.append(tok)
        chosen.update(matches)
    if unknown:
        raise ValueError(
            f"unknown row(s): {', '.join(unknown)}; available: {', '.join(every)}"
        )
    return [n for n in every if n in chosen]


# --------------------------------------------------------------------------
# init_to_first_task (fresh subprocess of the same interpreter)
# --------------------------------------------------------------------------

def _init_probe(backend: str, dashboard: bool = False) -> float:
    """Run inside the fresh subprocess: time init -> first task result."""
    b = _import_backend(backend)

    def f():
        return 1

    rf = b.remote(f)
    kwargs = init_kwargs(backend, dashboard)
    t0 = time.perf_counter()
    b.init(**kwargs)
    b.get(rf.remote())
    elapsed = time.perf_counter() - t0
    print(f"{_PROBE_MARKER} {elapsed!r}", flush=True)
    b.shutdown()
    return elapsed


TRANSFER_BYTES = 500 * 1024 * 1024


def _transfer_probe(backend: str) -> float:
    """Run inside a fresh subprocess: a two-node Cluster; a task pinned to
    the second node makes a 500 MB array; time the driver's get of it (the
    array moves to the head node). Median GB/s of three transfers."""
    import importlib
    import numpy as np
    b = _import_backend(backend)
    cluster_utils = importlib.import_module(f"{backend}.cluster_utils")
    strategies = importlib.import_module(f"{backend}.util.scheduling_strategies")
    store = 1300 * 1024 * 1024
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
    try:
        node = cluster.add_node(num_cpus=1, object_store_memory=store)
        cluster.wait_for_nodes()
        b.init(address=cluster.address)

        def make():
            return np.ones(TRANSFER_BYTES // 8)

        make_there = b.remote(make).options(
            scheduling_strategy=strategies.NodeAffinitySchedulingStrategy(node.node_id,
                                                                          soft=False))
        rates = []
        for _ in range(3):
            ref = make_there.remote()
            b.wait([ref], fetch_local=False)    # made, but not moved yet
            t0 = time.perf_counter()
            arr = b.get(ref)
            rates.append(TRANSFER_BYTES / (time.perf_counter() - t0) / 1e9)
            assert arr[-1] == 1.0
            del arr, ref
        value = statistics.median(rates)
        print(f"{_PROBE_MARKER} {value!r}", flush=True)
        return value
    finally:
        try:
            b.shutdown()
        finally:
            cluster.shutdown()


def _gcs_restart_probe(backend: str) -> float:
    """Run inside a fresh subprocess (zray only): a head started with `zray
    start --head` (tables in sqlite, its GCS supervised) under a private temp
    dir; kill -9 its GCS and time until a new task's result arrives. Stops
    what it started by pid."""
    if _is_ray(backend):
        raise NotImplementedError("a zray-only row (Ray's GCS restart needs an external Redis)")
    import shutil
    import socket
    import tempfile
    import psutil
    root = tempfile.mkdtemp(prefix="zbench_")
    env = dict(os.environ, ZRAY_TEMP_DIR=root)
    for name in ("ZRAY_ADDRESS", "RAY_ADDRESS", "ZRAY_GCS_STORAGE"):
        env.pop(name, None)
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    cli = [sys.executable, "-m", "zray._private.cli"]

    def ours():
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(root in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
        return found
    try:
        subprocess.run(cli + ["start", "--head", "--port", str(port), "--num-cpus", "2",
                              "--include-dashboard", "false"],
                       env=env, check=True, capture_output=True, timeout=60)
        os.environ["ZRAY_TEMP_DIR"] = root      # this driver finds that head's key there
        importlib.import_module("zray.config").config.reload()
        b = _import_backend(backend)
        b.init(address=f"127.0.0.1:{port}")

        def one():
            return 1
        one = b.remote(one)
        assert b.get(one.remote(), timeout=30) == 1
        gcs = next(proc for proc in ours() if proc.info["cmdline"][2:3] == ["zray.gcs"])
        t0 = time.perf_counter()
        gcs.kill()

        def fresh():        # a function the GCS has not seen: its export needs the GCS
            return 2
        assert b.get(b.remote(fresh).remote(), timeout=60) == 2
        value = time.perf_counter() - t0
        b.shutdown()
        print(f"{_PROBE_MARKER} {value!r}", flush=True)
        return value
    finally:
        procs = ours()
        for proc in procs:
            if proc.info["cmdline"][2:3] in (["zray._private.supervisor"], ["zray.raylet"]):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _init_to_first_task(backend: str, runs=INIT_RUNS, timeout=DEFAULT_ROW_TIMEOUT,
                        dashboard: bool = False) -> float:
    return _probe(backend, "--_init-probe", runs, timeout, dashboard)


def _probe(backend: str, flag: str, runs: int, timeout: float,
           dashboard: bool = False) -> float:
    """Median of ``runs`` fresh subprocesses of this file run with ``flag``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend, flag]
    if dashboard:
        cmd.append("--with-dashboard")
    times = []
    for i in range(runs):
        if i:
            time.sleep(_SETTLE_SECONDS)  # let the previous runtime's processes exit
        # Own session, so a hung probe can be killed together with any
        # runtime processes it spawned.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            proc.communicate()
            raise TimeoutError(f"{flag} probe did not finish within {timeout:g}s") from None
        value = None
        for line in stdout.splitlines():
            if line.startswith(_PROBE_MARKER):
                value = float(line.split()[1])
        if value is None:
            tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{flag} probe exited {proc.returncode}: {tail[0]}")
        times.append(value)
    return statistics.median(times)


def _run_scale_rows(backend: str, names: list, row_timeout: float, emit) -> None:
    """Each probe the ``names`` need, in a fresh process; a row per name."""
    rows = _scale_rows().SCALE_ROWS
    for probe in _scale_rows().PROBES:
        wanted = [row for row, _, by in rows if by == probe and row in names]
        if not wanted:
            continue
        try:
            values = _scale_probe(backend, probe, max(row_timeout, 600.0))
            for row in wanted:
                emit(_row(row, values.get(row)) if row in values
                     else _row(row, error="the probe did not measure it"))
        except Exception as e:
            for row in wanted:
                emit(_row(row, error=_fmt_exc(e)))


def _scale_probe(backend: str, probe: str, timeout: float) -> dict:
    """The values one scale probe printed, run in its own process group."""
    marker = _scale_rows().SCALE_MARKER
    cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend,
           "--_scale-probe", probe]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TimeoutError(f"scale probe {probe} did not finish within {timeout:g}s") from None
    for line in stdout.splitlines():
        if line.startswith(marker + " "):
            return json.loads(line[len(marker) + 1:])
    tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
    raise RuntimeError(f"scale probe {probe} exited {proc.returncode}: {tail[0]}")


# --------------------------------------------------------------------------
# run()
# --------------------------------------------------------------------------

def _row(name, value=None, error=None):
    d = {"name": name, "value": value, "unit": _unit(name)}
    if error is not None:
        d["error"] = error
    return d


def run(backend: str = "zray", rows=None, duration: float = DEFAULT_DURATION,
        progress=None, row_timeout: float = DEFAULT_ROW_TIMEOUT,
        dashboard: bool = False) -> list:
    """Run the selected rows on ``backend`` ("zray" or "ray"), its dashboard
    running if ``dashboard``.

    Returns a list of dicts ``{"name", "value", "unit"}``; a failed row has
    ``value=None`` and an ``"error"`` string ("ExceptionType: message").
    ``progress``, if given, is called with each result dict as it completes.
    """
    names = select_rows(rows)
    results = []

    def emit(d):
        results.append(d)
        if progress is not None:
            progress(d)

    # Measured first, before this process starts its own runtime.
    if "init_to_first_task" in names:
        try:
            emit(_row("init_to_first_task",
                      _init_to_first_task(backend, timeout=max(row_timeout, 1.0),
                                          dashboard=dashboard)))
        except Exception as e:
            emit(_row("init_to_first_task", error=_fmt_exc(e)))

    scale = [n for n in names if n not in ROW_NAMES]
    if scale:
        _run_scale_rows(backend, scale, row_timeout, emit)
    if "gcs_restart_to_first_task_s" in names:
        if _is_ray(backend):
            emit(_row("gcs_restart_to_first_task_s", error="NotImplementedError: a zray-only "
                      "row (Ray's GCS restart needs an external Redis)"))
        else:
            try:
                emit(_row("gcs_restart_to_first_task_s",
                          _probe(backend, "--_gcs-restart-probe", 3, max(row_timeout, 120.0))))
            except Exception as e:
                emit(_row("gcs_restart_to_first_task_s", error=_fmt_exc(e)))
    rest = [n for n in names if n in ROW_NAMES and n not in (
        "init_to_first_task", "transfer_500mb_between_nodes", "gcs_restart_to_first_task_s")]
    if "transfer_500mb_between_nodes" in names:
        try:
            emit(_row("transfer_500mb_between_nodes",
                      _probe(backend, "--_transfer-probe", 1, max(row_timeout, 120.0))))
        except Exception as e:
            emit(_row("transfer_500mb_between_nodes", error=_fmt_exc(e)))
    if not rest:
        return results

    methods = {name: meth for name, _, meth in ROWS}
    if "init_to_first_task" in names:
        time.sleep(_SETTLE_SECONDS)
    try:
        b = _import_backend(backend)
        b.init(**init_kwargs(backend, dashboard))
    except Exception as e:
        err = f"init failed: {_fmt_exc(e)}"
        for n in rest:
            emit(_row(n, error=err))
        return results

    try:
        bench = _Bench(b, duration)
        for n in rest:
            try:
                with _Alarm(row_timeout):
                    value = getattr(bench, methods[n])()
                emit(_row(n, float(value)))
            except Exception as e:
                emit(_row(n, error=_fmt_exc(e)))
    finally:
        try:
            b.shutdown()
        except Exception as err:    # noqa: BLE001 — the results are out already
            print(f"# shutdown after the benchmark: {err}", file=sys.stderr)
    return results


# --------------------------------------------------------------------------
# Task-event reporting: its cost on the core rows (zray only)
# --------------------------------------------------------------------------

#: rows the overhead comparison runs by default (the core operations)
OVERHEAD_ROWS = [n for n in ROW_NAMES if n not in (
    "transfer_500mb_between_nodes", "gcs_restart_to_first_task_s", "task_events_absorbed",
    "task_events_gcs_growth_past_bound")]


def _use_task_events(on: bool) -> None:
    """Turn zray's task-event reporting on or off for the next init (and its
    subprocesses)."""
    os.environ["ZRAY_TASK_EVENTS_REPORT_INTERVAL_MS"] = "1000" if on else "0"
    importlib.import_module("zray.config").config.reload()


def cost_pct(off: float, on: float, lower_is_better: bool) -> float:
    """How much worse ``on`` is than ``off``, in percent (< 0: better)."""
    return ((on / off - 1.0) if lower_is_better else (1.0 - on / off)) * 100.0


def task_events_overhead(rows=None, duration: float = DEFAULT_DURATION, repeats: int = 2,
                         progress=None, row_timeout: float = DEFAULT_ROW_TIMEOUT) -> list:
    """Run ``rows`` on zray with task-event reporting off and on, ``repeats``
    rounds of both (a fresh cluster each; which goes first alternates, so a
    drift of the machine's speed falls on both). Returns dicts {"name",
    "unit", "off", "on" (medians), "cost_pct" (the median of the rounds'
    costs; > 0: reporting made the row worse), "spread" ([lowest, highest]
    round cost)}."""
    names = select_rows(rows) if rows else list(OVERHEAD_ROWS)
    runs: dict = {name: {"off": [], "on": []} for name in names}
    previous = os.environ.get("ZRAY_TASK_EVENTS_REPORT_INTERVAL_MS")
    try:
        for round_ in range(repeats):
            for mode in (("off", "on") if round_ % 2 == 0 else ("on", "off")):
                _use_task_events(mode == "on")
                values = {row["name"]: row.get("value")
                          for row in run("zray", rows=names, duration=duration,
                                         row_timeout=row_timeout, progress=progress)}
                for name in names:
                    runs[name][mode].append(values.get(name))
    finally:
        if previous is None:
            os.environ.pop("ZRAY_TASK_EVENTS_REPORT_INTERVAL_MS", None)
        else:
            os.environ["ZRAY_TASK_EVENTS_REPORT_INTERVAL_MS"] = previous
        importlib.import_module("zray.config").config.reload()
    out = []
    for name in names:
        lower = _UNITS[name] in LOWER_IS_BETTER_UNITS
        pairs = [(off, on) for off, on in zip(runs[name]["off"], runs[name]["on"])
                 if off and on]
        costs = sorted(cost_pct(off, on, lower) for off, on in pairs)
        out.append({"name": name, "unit": _UNITS[name],
                    "off": statistics.median(p[0] for p in pairs) if pairs else None,
                    "on": statistics.median(p[1] for p in pairs) if pairs else None,
                    "cost_pct": statistics.median(costs) if costs else None,
                    "spread": [costs[0], costs[-1]] if costs else None})
    return out


def format_overhead(rows) -> str:
    table = [["row", "events off", "events on", "cost", "rounds' costs"]]
    for r in rows:
        cost, spread = r["cost_pct"], r["spread"]
        table.append([r["name"], _cell({"value": r["off"], "unit": r["unit"]}),
                      _cell({"value": r["on"], "unit": r["unit"]}),
                      "n/a" if cost is None else f"{cost:+.1f}%",
                      "" if spread is None else f"{spread[0]:+.1f}% .. {spread[1]:+.1f}%"])
    return ("# task-event reporting on vs off (medians over the rounds; cost: the median "
            "of each round's cost, > 0: slower with reporting)\n" + _align(table))


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------

def format_value(value) -> str:
    if value is None:
        return "n/a"
    v = float(value)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 0.01:
        return f"{v:.3f}"
    return f"{v:.3g}"


def _cell(row) -> str:
    if row is None:
        return "-"
    if row.get("error") is not None or row.get("value") is None:
        return f"n/a ({row['error']})" if row.get("error") else "n/a"
    unit = row.get("unit") or ""
    return f"{format_value(row['value'])} {unit}".rstrip()


def ratio(zray_row, ray_row):
    """zray/ray for throughput rows, ray/zray for lower-is-better rows.

    Returns None if either side is missing, failed or zero.
    """
    if not zray_row or not ray_row:
        return None
    z, r = zray_row.get("value"), ray_row.get("value")
    if z is None or r is None or zray_row.get("error") or ray_row.get("error"):
        return None
    z, r = float(z), float(r)
    if z <= 0 or r <= 0:
        return None
    unit = zray_row.get("unit") or ray_row.get("unit") or ""
    return r / z if unit in LOWER_IS_BETTER_UNITS else z / r


def _align(table) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for r in table:
        cells = [c.ljust(w) for c, w in zip(r, widths)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_table(zray_rows, ray_rows=None) -> str:
    """Render results.

    With only ``zray_rows``: one ``name  value unit`` line per row.
    With ``ray_rows`` too: columns row, zray, ray, ratio.
    """
    if ray_rows is None:
        if not zray_rows:
            return ""
        return _align([[r["name"], _cell(r)] for r in zray_rows])

    ray_by_name = {r["name"]: r for r in ray_rows}
    zray_by_name = {r["name"]: r for r in zray_rows}
    order = [r["name"] for r in zray_rows]
    order += [r["name"] for r in ray_rows if r["name"] not in zray_by_name]
    table = [["row", "zray", "ray", "ratio"]]
    for name in order:
        z, r = zray_by_name.get(name), ray_by_name.get(name)
        q = ratio(z, r)
        table.append([name, _cell(z), _cell(r), "n/a" if q is None else f"{q:.2f}x"])
    header = ("# ratio = zray/ray for throughput rows, ray/zray for time rows "
              "(s, ms): >1x means zray is better")
    return header + "\n" + _align(table)


# --------------------------------------------------------------------------
# Ray comparison subprocess
# --------------------------------------------------------------------------

def find_ray_python(explicit=None):
    """Interpreter to run the Ray side with, or None if none has Ray."""
    if explicit:
        return explicit
    env = os.environ.get("ZRAY_RAY_PYTHON")
    if env:
        return env
    if os.path.exists(_DEFAULT_RAY_VENV_PYTHON):
        return _DEFAULT_RAY_VENV_PYTHON
    try:
        if importlib.util.find_spec("ray") is not None:
            return sys.executable
    except (ImportError, ValueError):
        pass
    return None


def _parse_json_rows(stdout: str):
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("["):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, list):
                return data
    return None


def run_ray_subprocess(python, rows=None, duration=DEFAULT_DURATION,
                       row_timeout=DEFAULT_ROW_TIMEOUT, forward_progress=True):
    """Run this file with ``--backend ray --json`` under ``python``."""
    cmd = [python, os.path.abspath(__file__), "--backend", "ray", "--json",
           "--duration", repr(float(duration)), "--timeout", repr(float(row_timeout))]
    if rows:
        cmd += ["--rows", ",".join(select_rows(rows))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail = deque(maxlen=20)

    def pump():
        for line in proc.stderr:
            if line.startswith(PROGRESS_PREFIX):
                if forward_progress:
                    sys.stderr.write(line)
                    sys.stderr.flush()
            else:
                tail.append(line.rstrip("\n"))

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    stdout = proc.stdout.read()
    proc.wait()
    t.join(timeout=5)
    data = _parse_json_rows(stdout)
    if data is None:
        last = tail[-1] if tail else "no output"
        raise RuntimeError(f"ray run exited {proc.returncode} without results: {last}")
    return data


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zray microbenchmark",
        description="Microbenchmarks (row names as in `ray microbenchmark`).",
    )
    p.add_argument("--backend", default="zray",
                   help="module to benchmark: zray (default) or ray")
    p.add_argument("--rows", default=None,
                   help="comma-separated rows to run (prefix match); default all. "
                        "Rows: " + ", ".join(ROW_NAMES))
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION,
                   help="timed seconds per throughput row (default %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print the results as one JSON list")
    p.add_argument("--compare-ray", action="store_true",
                   help="also run the same rows on Ray in a subprocess and compare")
    p.add_argument("--ray-python", default=None,
                   help="interpreter with Ray installed (default: $ZRAY_RAY_PYTHON, "
                        f"else {_DEFAULT_RAY_VENV_PYTHON} if present, else this one "
                        "if it can import ray)")
    p.add_argument("--timeout", type=float, default=DEFAULT_ROW_TIMEOUT,
                   help="per-row hang timeout in seconds (default %(default)s)")
    p.add_argument("--task-events-overhead", action="store_true",
                   help="run the core rows (or --rows) with task-event reporting off and "
                        "on, alternating, and show what reporting costs (zray only)")
    p.add_argument("--repeats", type=int, default=2,
                   help="rounds of --task-events-overhead, each running the rows with "
                        "reporting off and on (default %(default)s)")
    p.add_argument("--with-dashboard", action="store_true",
                   help="run zray's rows with its dashboard and task events on (by default "
                        "both backends run without their dashboard, as `ray "
                        "microbenchmark` does); compare with a run without it to see "
                        "what the dashboard costs")
    p.add_argument("--_init-probe", dest="init_probe", action="store_true",
                   help=argparse.SUPPRESS)
    p.add_argument("--_transfer-probe", dest="transfer_probe", action="store_true",
                   help=argparse.SUPPRESS)
    p.add_argument("--gcs-storage", choices=["memory", "sqlite"], default="memory",
                   help="where zray's local GCS keeps its tables during the run: in "
                        "memory (the default of zray.init()) or in a fresh sqlite file "
                        "(the default of `zray start --head`), to see what persistence costs")
    p.add_argument("--_gcs-restart-probe", dest="gcs_restart_probe", action="store_true",
                   help=argparse.SUPPRESS)
    p.add_argument("--scale", action="store_true",
                   help="run the scale rows instead (each in a fresh process, minutes "
                        "each): 10k vs 100k queued tasks, 1M held objects, 100 idle actors, "
                        "a 100 MB broadcast to 4 nodes, 100 MB Arrow tables and pandas "
                        "frames")
    p.add_argument("--_scale-probe", dest="scale_probe", default=None,
                   help=argparse.SUPPRESS)
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be > 0")
    try:
        args.rows = select_rows(args.rows) if args.rows else None
    except ValueError as e:
        parser.error(str(e))
    if args.scale:
        args.rows = [n for n in (args.rows or scale_row_names()) if n not in ROW_NAMES] \
            or scale_row_names()
    return args


def _progress_printer(label):
    def show(d):
        sys.stderr.write(f"{PROGRESS_PREFIX}{label}: {d['name']}  {_cell(d)}\n")
        sys.stderr.flush()
    return show


def main(argv=None) -> int:
    args = parse_args(argv)

    if args.init_probe:
        _init_probe(args.backend, args.with_dashboard)
        return 0
    if args.transfer_probe:
        _transfer_probe(args.backend)
        return 0
    if args.gcs_restart_probe:
        _gcs_restart_probe(args.backend)
        return 0
    if args.scale_probe:
        _scale_rows().run_probe(args.backend, args.scale_probe)
        return 0

    dashboard = args.with_dashboard and not _is_ray(args.backend)
    if args.gcs_storage == "sqlite" and not _is_ray(args.backend):
        import tempfile
        db_dir = tempfile.mkdtemp(prefix="zray-bench-gcs-")
        os.environ["ZRAY_GCS_STORAGE"] = f"sqlite:///{db_dir}/gcs.db"
        importlib.import_module("zray.config").config.reload()
    if dashboard:
        _use_task_events(True)

    if args.task_events_overhead:
        rows = task_events_overhead(args.rows, args.duration, max(1, args.repeats),
                                    _progress_printer("zray"), args.timeout)
        print(json.dumps(rows) if args.json else format_overhead(rows), flush=True)
        return 0

    results = run(args.backend, rows=args.rows, duration=args.duration,
                  progress=_progress_printer(args.backend), row_timeout=args.timeout,
                  dashboard=dashboard)
    with_dashboard = ", zray with its dashboard" if dashboard else ""

    if not args.compare_ray:
        if args.json:
            print(json.dumps(results), flush=True)
        else:
            print(f"# {args.backend} microbenchmark (duration {args.duration:g}s per row"
                  f"{with_dashboard})")
            print(format_table(results), flush=True)
        return 0

    ray_python = find_ray_python(args.ray_python)
    ray_results = None
    if ray_python is None:
        print("Ray not found (no --ray-python, $ZRAY_RAY_PYTHON, "
              f"{_DEFAULT_RAY_VENV_PYTHON}, or importable ray); showing {args.backend} only.")
    else:
        try:
            ray_results = run_ray_subprocess(ray_python, rows=args.rows,
                                             duration=args.duration,
                                             row_timeout=args.timeout)
        except Exception as e:
            print(f"Ray run with {ray_python} failed ({_fmt_exc(e)}); "
                  f"showing {args.backend} only.")

    if args.json:
        print(json.dumps({"zray": results, "ray": ray_results}), flush=True)
    elif ray_results is None:
        print(f"# {args.backend} microbenchmark (duration {args.duration:g}s per row"
              f"{with_dashboard})")
        print(format_table(results), flush=True)
    else:
        print(f"# {args.backend} vs ray microbenchmark (duration {args.duration:g}s per row"
              f"{with_dashboard})")
        print(format_table(results, ray_results), flush=True)
    return 0


def _fix_script_path():
    """When run as a script, don't let this package's directory shadow
    top-level modules, and make the zray package importable if needed."""
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.getcwd()) == here:
        sys.path.pop(0)
    parent = os.path.dirname(os.path.dirname(here))     # the checkout holding zray/
    if parent not in sys.path:
        sys.path.append(parent)  # last, so an installed zray still wins


if __name__ == "__main__":
    _fix_script_path()
    sys.exit(main())
