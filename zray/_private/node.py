"""Starting and stopping a node's daemons (the GCS on the head, a raylet on
every node), for ``zray.init()`` and ``zray start``.

Daemons started for a driver die with it (PR_SET_PDEATHSIG); daemons started
by ``zray start`` run in their own session until ``zray stop``.

Every daemon gets the cluster key through its environment
(``ZRAY_CLUSTER_KEY_FILE`` or ``ZRAY_CLUSTER_KEY``, see broker/security.py);
workers inherit it from their raylet. No daemon starts without one.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import time

import psutil

from ..broker import security
from ..config import config
from .launcher import PIPE, STDOUT, launch
from .session import (check_trusted, log_path, raylet_ipc, read_current_cluster,
                      session_name)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class NodeProcesses:
    """The daemons this process started, and how to stop them."""

    def __init__(self, session_dir: str, detached: bool, cluster_key_file: str | None = None):
        """``cluster_key_file``: the key the daemons use; None means the one
        this process's environment names (ZRAY_CLUSTER_KEY / _FILE)."""
        self.session_dir = session_dir
        self.detached = detached
        self.cluster_key_file = os.path.abspath(cluster_key_file) if cluster_key_file else None
        self.procs: list = []      # subprocess.Popen or launcher.ForkedProcess
        self.node_ids: list[bytes] = []
        self.supervisor = None     # the head's supervisor, once started
        self.supervised: dict[str, list[str]] = {}     # what it runs: name -> args
        self.gcs_storage: str | None = None     # ZRAY_GCS_STORAGE of the daemons started
        self._zygotes: dict = {}    # node id -> zygote started ahead of its raylet

    def new_cluster_key(self) -> str:
        """Create a fresh cluster key in the session directory (mode 0600)
        for the daemons started from now on; returns its path."""
        self.cluster_key_file = security.create_key_file(security.key_file_in(self.session_dir))
        return self.cluster_key_file

    def _env(self, name: str) -> dict:
        """The environment of a daemon started from here."""
        env = {**config.to_env(), **os.environ}     # what the environment says wins
        if self.gcs_storage is not None:
            env["ZRAY_GCS_STORAGE"] = self.gcs_storage
        if self.cluster_key_file:
            env.pop(security.ENV_KEY, None)
            env[security.ENV_KEY_FILE] = self.cluster_key_file
        elif not (env.get(security.ENV_KEY) or env.get(security.ENV_KEY_FILE)):
            raise RuntimeError(f"no cluster key for the {name} daemon: create one with "
                               f"NodeProcesses.new_cluster_key() or set "
                               f"{security.ENV_KEY_FILE} / {security.ENV_KEY}")
        if self.detached:
            env.pop("ZRAY_DIE_WITH_PARENT", None)
        else:
            env["ZRAY_DIE_WITH_PARENT"] = "1"
        return env

    def _spawn(self, name: str, args: list[str], pass_fds: tuple = ()):
        env = self._env(name)
        out = os.open(log_path(self.session_dir, f"{name}.out"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = launch(args, env=env, stdout=out, stderr=STDOUT,
                          dies_with_parent=not self.detached, new_session=self.detached,
                          pass_fds=pass_fds)
        finally:
            os.close(out)
        self.procs.append(proc)
        return proc

    def prestart_zygote(self, node_id: bytes) -> None:
        """Start now the worker fork server (zygote) of the raylet that
        ``start_raylet(..., node_id)`` starts later, and hand it over then:
        a fresh interpreter takes a few hundred milliseconds to import what
        workers need, and the first task waits for it, so it starts first,
        before the GCS and the raylet. Only for daemons that die with this
        process (it is this process's child; the raylet talks to it through
        the pipes it inherits)."""
        if self.detached:
            raise ValueError("a detached node's raylet starts its own zygote")
        hex_id = node_id.hex()
        env = self._env("zygote")
        err = os.open(log_path(self.session_dir, f"zygote_{hex_id[:12]}.err"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = launch(["zray.worker.zygote", "--raylet", raylet_ipc(self.session_dir, node_id),
                           "--session-dir", self.session_dir, "--node-id", hex_id],
                          env=env, stdin=PIPE, stdout=PIPE, stderr=err,
                          dies_with_parent=True, fresh=True)
        finally:
            os.close(err)
        self.procs.append(proc)         # stopped after the raylet (see stop())
        self._zygotes[node_id] = proc

    def start_gcs(self, address: str, *, storage: str | None = None,
                  cluster_id: str | None = None, supervised: bool = False):
        """Start the GCS at ``address`` keeping its tables in ``storage``
        (default: ``config.gcs_storage``) for cluster ``cluster_id``.
        ``supervised`` (the head of ``zray start``): run it under the head's
        supervisor, which restarts it when it dies (see supervisor.py); the
        dashboard then runs under it too."""
        args = ["zray.gcs", "--address", address, "--session-dir", self.session_dir]
        if storage is not None:     # through the environment: a URL may hold a password
            self.gcs_storage = storage
        if cluster_id is not None:
            args += ["--cluster-id", cluster_id]
        if not supervised:
            return self._spawn("gcs", args)
        return self._supervise("gcs", args)

    # -- storage: the head's supervisor (see supervisor.py) ----------------------
    def _supervise(self, name: str, args: list[str]):
        """Run ``args`` under this node's supervisor, started with the first."""
        from . import supervisor
        self.supervised[name] = args
        supervisor.write_spec(self.session_dir, self.supervised)
        if self.supervisor is None:
            self.supervisor = self._spawn("supervisor", [
                "zray._private.supervisor", "--session-dir", self.session_dir])
        return self.supervisor

    def start_raylet(self, gcs_address: str, node_id: bytes, *, node_ip="127.0.0.1",
                     num_cpus=None, num_gpus=None, memory=None, resources=None,
                     object_store_memory=None) -> str:
        """Start a raylet; returns the endpoint it will serve on."""
        args = ["zray.raylet", "--gcs-address", gcs_address, "--session-dir", self.session_dir,
                "--node-id", node_id.hex(), "--node-ip", node_ip]
        if num_cpus is not None:
            args += ["--num-cpus", str(num_cpus)]
        if num_gpus:
            args += ["--num-gpus", str(num_gpus)]
        if memory is not None:
            args += ["--memory", str(int(memory))]
        if resources:
            args += ["--resources", json.dumps(resources)]
        if object_store_memory:
            args += ["--object-store-memory", str(int(object_store_memory))]
        zygote = self._zygotes.pop(node_id, None)
        if zygote is not None and min(zygote.stdin.fileno(), zygote.stdout.fileno()) <= 2:
            zygote.stdin.close()    # pipes on 0..2 (this process's were closed): the
            zygote.stdout.close()   # raylet could not keep them; it starts its own
            zygote = None
        if zygote is None:
            self._spawn(f"raylet_{node_id.hex()[:12]}", args)
        else:       # the raylet takes over the zygote's pipes (see prestart_zygote)
            fds = (zygote.stdin.fileno(), zygote.stdout.fileno())
            args += ["--zygote-pid", str(zygote.pid), "--zygote-fds", "%d,%d" % fds]
            try:
                self._spawn(f"raylet_{node_id.hex()[:12]}", args, pass_fds=fds)
            finally:    # only the raylet holds them now: it gone, the zygote sees EOF
                zygote.stdin.close()
                zygote.stdout.close()
        self.node_ids.append(node_id)
        return raylet_ipc(self.session_dir, node_id)

    def start_dashboard(self, args: list[str]):
        """Start the dashboard daemon (``args``: ``["zray.dashboard", ...]``, see
        zray/dashboard/launch.py); stopped first by ``stop()``. Under the
        head's supervisor, the supervisor runs the dashboard server itself."""
        if self.supervisor is not None:
            return self._supervise("dashboard", ["zray.dashboard.server", *args[1:]])
        return self._spawn("dashboard", args)

    def check_alive(self) -> None:
        """Raise with the log's tail if a daemon already exited."""
        for proc in self.procs:
            if proc.poll() is not None:
                name = proc.args[2]
                why = _last_line(log_path(self.session_dir, "gcs.out")) \
                    if proc is self.supervisor else ""
                raise RuntimeError(f"{name} exited with code {proc.returncode} at start-up"
                                   f"{': ' + why if why else ''}; see the logs in "
                                   f"{self.session_dir}/logs")

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the daemons (raylets before the GCS), then remove their leftovers."""
        deadline = time.monotonic() + timeout
        for zygote in self._zygotes.values():     # started, never handed over
            zygote.stdin.close()
            zygote.stdout.close()
        self._zygotes.clear()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)
                proc.wait(1)
        _end_session_processes(self.session_dir, max(0.5, deadline - time.monotonic()))
        sweep_session(self.session_dir)


def _end_session_processes(session_dir: str, timeout: float) -> None:
    """Wait up to ``timeout`` for every process of the session still alive
    (workers orphaned by a raylet that died first, one still starting) to
    exit, then SIGKILL the rest: a process gone cannot bind a socket file
    after the session was swept."""
    mine = []
    for proc in zray_processes():
        if any(session_dir in arg for arg in command_line(proc)):
            mine.append(proc)
    if mine:
        _wait_then_kill(mine, timeout)


def _wait_then_kill(procs: list, timeout: float) -> None:
    """Wait up to ``timeout`` for ``procs`` to exit; SIGKILL those left."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=2)


def _last_line(path: str) -> str:
    """The last line of a log file ("" when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def find_cluster_key(gcs_address: str) -> str | None:
    """The key file this host holds for the cluster whose GCS is at
    ``gcs_address``: that of the cluster ``zray start --head`` recorded here,
    else the one in the session directory of a GCS of this user running here
    at that address. None when there is none."""
    candidates = []
    current = read_current_cluster()
    if current and _same_address(current.get("gcs_address", ""), gcs_address):
        candidates.append(current.get("session_dir", ""))
    for proc in zray_processes():
        cmd = command_line(proc)
        if len(cmd) >= 3 and cmd[2] == "zray.gcs" and "--address" in cmd[:-1] \
                and "--session-dir" in cmd[:-1] \
                and _same_address(cmd[cmd.index("--address") + 1], gcs_address):
            candidates.append(cmd[cmd.index("--session-dir") + 1])
    for session_dir in candidates:
        path = security.key_file_in(session_dir) if session_dir else ""
        if path and os.path.isfile(path):
            check_trusted(session_dir, "the session directory")
            return path
    return None


def is_listening(address: str, timeout: float = 1.0) -> bool:
    """Whether anything accepts TCP connections at ``host:port``."""
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _same_address(a: str, b: str) -> bool:
    """Whether two ``host:port`` GCS addresses name the same server (equal,
    or the same port on addresses of this host)."""
    def split(address: str):
        host, _, port = address.split("://")[-1].rpartition(":")
        return host.strip("[]"), port
    (host_a, port_a), (host_b, port_b) = split(a), split(b)
    if port_a != port_b or not port_a:
        return False
    return host_a == host_b or (_is_local(host_a) and _is_local(host_b))


def _is_local(host: str) -> bool:
    if host in ("localhost", "0.0.0.0", "::", "::1") or host.startswith("127."):
        return True
    return any(addr.address == host
               for addrs in psutil.net_if_addrs().values() for addr in addrs)


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        for child in parent.children(recursive=True):
            child.kill()
        parent.kill()
    except psutil.NoSuchProcess:
        pass


def sweep_session(session_dir: str) -> None:
    """Remove a session's socket files and shared-memory arenas."""
    for path in glob.glob(os.path.join(session_dir, "sockets", "*")):
        try:
            os.unlink(path)
        except OSError:
            pass
    for path in glob.glob(f"/dev/shm/zray_{session_name(session_dir)}_*"):
        try:
            os.unlink(path)
        except OSError:
            pass


ZRAY_MODULES = ("zray.gcs", "zray.raylet", "zray.worker", "zray.dashboard",
                "zray._private.supervisor")
#: the names (``ps -e``, ``top``) zray's processes give themselves
PROCESS_NAMES = ("zray.gcs", "zray.raylet", "zray.zygote", "zray.worker", "zray.dashboard",
                 "zray.supervisor")


def command_line(proc: psutil.Process) -> list[str]:
    """``proc``'s arguments (empty once it is gone), as it was started: a
    forked zray process (see launcher.py) shows the ``python -m`` command
    line it stands for, padded with empty strings that this drops."""
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    while cmd and not cmd[-1]:
        cmd.pop()
    return cmd


def zray_processes() -> list[psutil.Process]:
    """Every zray daemon and worker of this user on this host, known by the
    name it gave itself or by its ``python -m zray.*`` command line."""
    me = os.getpid()
    uid = os.getuid()
    found = []
    for proc in psutil.process_iter(["pid", "uids"]):
        try:
            if proc.info["pid"] == me or proc.info["uids"].real != uid:
                continue
            if proc.name().startswith(PROCESS_NAMES):
                found.append(proc)
                continue
            cmd = command_line(proc)
            if len(cmd) >= 3 and cmd[1] == "-m" and cmd[2].startswith(ZRAY_MODULES):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            continue
    return found


def stop_all(timeout: float = 5.0) -> int:
    """``zray stop``: end every zray process of this user here, remove their
    sockets and shared memory. Returns how many processes were stopped."""
    procs = zray_processes()
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _wait_then_kill(procs, timeout)
    # workers are the zygote's children: they die with it, but make sure
    for proc in zray_processes():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    for session in glob.glob(os.path.join(config.temp_dir, "session_*")):
        sweep_session(session)
    uid = os.getuid()
    for path in glob.glob("/dev/shm/zray_*"):
        try:
            if os.stat(path).st_uid == uid:
                os.unlink(path)
        except OSError:
            pass
    from .session import clear_current_cluster
    clear_current_cluster()
    return len(procs)
