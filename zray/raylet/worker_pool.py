"""The node's workers: started in milliseconds by forking a pre-warmed zygote,
handed out by job, and accounted for until they exit.

The zygote (``python -m zray.worker.zygote``: forked from a raylet that
``zray start`` spawned, else a fresh interpreter; for ``zray.init()``'s local
cluster, one the driver started first and handed to the raylet, see
``NodeProcesses.prestart_zygote``) imports zray and its heavy dependencies
once, then forks a worker per request. It reports each child's
start and exit on its stdout, so the raylet learns of a dead worker at once.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

from .._private.launcher import PIPE, launch
from ..broker.protocol import TASK_ACTOR_CREATION as ACTOR_CREATION

log = logging.getLogger(__name__)

STARTING, IDLE, BUSY, DEAD = "starting", "idle", "busy", "dead"


class WorkerInfo:
    __slots__ = ("worker_id", "pid", "state", "job_id", "task", "held", "task_identity",
                 "rpc_identity", "inbox", "blocked", "idle_since", "cancelled", "started",
                 "lent", "owns")

    def __init__(self, worker_id: bytes):
        self.worker_id = worker_id
        self.pid = 0
        self.state = STARTING
        self.job_id = None          # bound on first task
        self.task = None            # the spec (a list) it runs
        self.held = {}              # resources it holds now
        self.task_identity = None
        self.rpc_identity = None
        self.inbox = None
        self.blocked = False
        self.idle_since = time.monotonic()
        self.cancelled = False
        self.started = time.monotonic()
        self.lent = {}              # CPU given back while blocked in get()
        self.owns = False           # owns actors that would die with it (WorkerOwns)

    def hosts_actor(self) -> bool:
        """Whether this worker became an actor (it never takes tasks again)."""
        task = self.task
        return task is not None and task.kind == ACTOR_CREATION


class WorkerPool:
    def __init__(self, zygote):
        """``zygote``: the fork server's process handle, from start_zygote()."""
        self.workers: dict[bytes, WorkerInfo] = {}
        self.by_pid: dict[int, WorkerInfo] = {}
        self.idle: dict = {}                 # job id (or None) -> [WorkerInfo]
        self._buffer = b""
        self.zygote = zygote
        self.fd = self.zygote.stdout.fileno()
        os.set_blocking(self.fd, False)

    # -- starting -----------------------------------------------------------
    def start_worker(self) -> WorkerInfo:
        worker = WorkerInfo(os.urandom(16))
        self.workers[worker.worker_id] = worker
        self.zygote.stdin.write(f"fork {worker.worker_id.hex()}\n".encode())
        self.zygote.stdin.flush()
        return worker

    def starting(self) -> int:
        return sum(1 for w in self.workers.values() if w.state == STARTING)

    def read_events(self) -> list[tuple]:
        """Lines the zygote wrote: ("started", worker_id, pid) / ("exited", pid, code)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        if not data:
            return [("zygote-exited",)]
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        events = []
        for line in lines:
            parts = line.decode().split()
            if len(parts) == 3 and parts[0] == "started":
                worker = self.workers.get(bytes.fromhex(parts[1]))
                if worker is not None:
                    worker.pid = int(parts[2])
                    self.by_pid[worker.pid] = worker
                events.append(("started", parts[1], int(parts[2])))
            elif len(parts) == 3 and parts[0] == "exited":
                events.append(("exited", int(parts[1]), int(parts[2])))
        return events

    # -- handing out ------------------------------------------------------
    def mark_idle(self, worker: WorkerInfo) -> None:
        worker.state = IDLE
        worker.task = None
        worker.idle_since = time.monotonic()
        self.idle.setdefault(worker.job_id, []).append(worker)

    def pop_idle(self, job_id: bytes):
        """An idle worker for this job: one bound to it, else a fresh one."""
        for key in (job_id, None):
            lst = self.idle.get(key)
            while lst:
                worker = lst.pop()
                if worker.state == IDLE:
                    worker.job_id = job_id
                    return worker
        return None

    def idle_of_other_jobs(self, job_id: bytes) -> WorkerInfo | None:
        for key, lst in self.idle.items():
            if key is not None and key != job_id:
                for worker in lst:
                    if worker.state == IDLE and not worker.owns:
                        return worker
        return None

    def live(self) -> int:
        return sum(1 for w in self.workers.values() if w.state != DEAD)

    def live_task_workers(self) -> int:
        """Live workers that run tasks: what the worker cap counts. Actor
        workers are outside it, as in Ray, and so are idle workers kept only
        because they own actors (they are not stopped: see WorkerOwns)."""
        return sum(1 for w in self.workers.values() if w.state != DEAD and not w.hosts_actor()
                   and not (w.owns and w.state == IDLE))

    # -- ending -----------------------------------------------------------
    def remove(self, worker: WorkerInfo) -> None:
        worker.state = DEAD
        self.workers.pop(worker.worker_id, None)
        self.by_pid.pop(worker.pid, None)
        lst = self.idle.get(worker.job_id)
        if lst and worker in lst:
            lst.remove(worker)

    def kill(self, worker: WorkerInfo, sig=signal.SIGKILL) -> None:
        if worker.pid:
            try:
                os.kill(worker.pid, sig)
            except ProcessLookupError:
                pass

    def shutdown(self) -> None:
        """Stop every worker: the zygote kills and reaps them when its stdin closes."""
        try:
            self.zygote.stdin.close()
        except OSError:
            pass
        try:
            self.zygote.wait(timeout=3)
        except subprocess.TimeoutExpired:
            for worker in list(self.workers.values()):
                self.kill(worker)
            self.zygote.kill()
            self.zygote.wait(timeout=2)


def start_zygote(raylet_endpoint: str, session_dir: str, node_id_hex: str, log_file: str):
    """Start the fork server (first thing a raylet does: it warms up meanwhile)."""
    env = dict(os.environ, ZRAY_DIE_WITH_PARENT="1")
    err = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return launch(["zray.worker.zygote", "--raylet", raylet_endpoint,
                       "--session-dir", session_dir, "--node-id", node_id_hex],
                      env=env, stdin=PIPE, stdout=PIPE, stderr=err, dies_with_parent=True)
    finally:
        os.close(err)
