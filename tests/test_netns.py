"""Two real hosts with their own addresses (issue 4): a head and a worker
node, each in its own network namespace joined by a veth pair, with
addresses from the benchmarking range 198.18.0.0/15 only.

Each "host" is a network namespace plus its own PID and mount namespaces,
with a private /dev/shm and session directory: the two nodes share no zray
files and no shared memory, so an object that reaches the driver on host A from a task on host B
crossed the wire. Because each host has its own PID namespace, ``zray stop``
run on a host ends only that host's zray processes, never those of zray runs
elsewhere on this machine.

Needs root, the ``ip`` command (iproute2) and ``nsenter``/``unshare``
(util-linux); the module skips, saying why, without them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from zray._private.node import command_line, zray_processes

PORT = 6381
CMD_TIMEOUT = 90

# PID 1 of a host: a private /dev/shm and a private directory for zray's
# session files (argv[1]), then reap orphans until killed. /tmp itself stays
# shared: the checkout or virtualenv zray runs from may live there.
HOST_INIT = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    for target in ("/dev/shm", sys.argv[1]):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", target],
                       check=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.2)
""")

DRIVER = textwrap.dedent("""
    import sys
    import numpy as np
    import zray
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ip_a, ip_b, port = sys.argv[1], sys.argv[2], sys.argv[3]
    zray.init(address=f"{ip_a}:{port}")
    nodes = zray.nodes()
    alive = [n for n in nodes if n["Alive"]]
    assert len(alive) == 2, nodes
    assert sorted(n["NodeManagerAddress"] for n in alive) == sorted([ip_a, ip_b]), alive
    node_a = next(n["NodeID"] for n in alive if n["NodeManagerAddress"] == ip_a)
    node_b = next(n["NodeID"] for n in alive if n["NodeManagerAddress"] == ip_b)
    assert zray.get_runtime_context().get_node_id() == node_a

    @zray.remote(num_cpus=1)
    def where():
        return zray.get_runtime_context().get_node_id()

    @zray.remote(num_cpus=1)
    def make(n):
        return np.arange(n, dtype=np.int64)

    on_b = NodeAffinitySchedulingStrategy(node_b, soft=False)
    assert zray.get(where.options(scheduling_strategy=on_b).remote(), timeout=60) == node_b
    n = 5 * 1024 * 1024 // 8
    arr = zray.get(make.options(scheduling_strategy=on_b).remote(n), timeout=60)
    assert arr.shape == (n,) and arr.dtype == np.int64, (arr.shape, arr.dtype)
    assert np.array_equal(arr, np.arange(n, dtype=np.int64))
    del arr
    zray.shutdown()
    print("OK")
""")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", CMD_TIMEOUT)
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _check(out: subprocess.CompletedProcess, what: str) -> str:
    assert out.returncode == 0, (f"{what} failed (exit {out.returncode}):\n"
                                 f"stdout: {out.stdout}\nstderr: {out.stderr}")
    return out.stdout


class Host:
    """A network namespace with its own PID and mount namespaces."""

    def __init__(self, netns: str, ip: str):
        self.netns = netns
        self.ip = ip
        self.private_dir = f"/var/tmp/{netns}"          # a tmpfs of its own, inside
        self.holder: subprocess.Popen | None = None    # `unshare`, parent of init
        self.init_pid: int | None = None                # PID 1 of the host (host's pid)

    def boot(self) -> None:
        os.makedirs(self.private_dir, exist_ok=True)
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--pid", "--fork",
             "--kill-child", "--mount-proc", "--propagation", "private",
             sys.executable, "-c", HOST_INIT, self.private_dir],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            err = self.holder.stderr.read() if self.holder.poll() is not None else ""
            raise RuntimeError(f"host {self.netns} did not boot: {line!r} {err}")
        children = psutil.Process(self.holder.pid).children()
        assert len(children) == 1, children
        self.init_pid = children[0].pid

    def cmd(self, *args: str) -> list[str]:
        return ["nsenter", f"--target={self.init_pid}", "--net", "--pid", "--mount",
                "--", *args]

    def run(self, *args: str, env=None, input=None, timeout=CMD_TIMEOUT):
        return _run(self.cmd(*args), env=env, input=input, timeout=timeout)

    def zray_left(self) -> list[str]:
        """zray processes in this host (seen from outside its namespaces)."""
        if self.init_pid is None:
            return []
        try:
            inside = {p.pid for p in psutil.Process(self.init_pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return []
        return [" ".join(command_line(p)[:3]) for p in zray_processes() if p.pid in inside]

    def halt(self) -> None:
        """Kill the host's PID 1, which takes every process of the host with it."""
        if self.holder is None:
            return
        if self.holder.poll() is None:
            self.holder.kill()          # --kill-child: init gets SIGKILL
        self.holder.wait(10)
        for stream in (self.holder.stdout, self.holder.stderr):
            stream.close()
        if self.init_pid is not None:
            try:
                psutil.Process(self.init_pid).wait(10)
            except psutil.NoSuchProcess:
                pass


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux"),
                          ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            pytest.skip(f"the `{tool}` command ({package}) is missing")


@pytest.fixture
def two_hosts():
    """Host A (198.18.x.1) and host B (198.18.x.2) on one veth link. Torn
    down whatever happens: hosts halted, namespaces deleted."""
    _skip_unless_possible()
    tag = f"zr{os.getpid()}"
    x = os.getpid() % 256
    a = Host(f"{tag}a", f"198.18.{x}.1")
    b = Host(f"{tag}b", f"198.18.{x}.2")
    created: list[str] = []
    try:
        for host in (a, b):
            out = _run(["ip", "netns", "add", host.netns])
            if out.returncode != 0:
                pytest.skip(f"`ip netns add` failed: {out.stderr.strip()}")
            created.append(host.netns)
        veth_a, veth_b = f"{tag}va", f"{tag}vb"
        _check(_run(["ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b]),
               "creating the veth pair")
        for host, dev in ((a, veth_a), (b, veth_b)):
            _check(_run(["ip", "link", "set", dev, "netns", host.netns]), "moving a veth")
            _check(_run(["ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", dev]),
                   "adding an address")
            for link in ("lo", dev):
                _check(_run(["ip", "-n", host.netns, "link", "set", link, "up"]),
                       f"bringing {link} up")
        for host in (a, b):
            try:
                host.boot()
            except RuntimeError as err:
                pytest.skip(f"cannot make a host with its own PID/mount namespaces: {err}")
        yield a, b
    finally:
        for host in (a, b):
            host.halt()
            shutil.rmtree(host.private_dir, ignore_errors=True)
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _host_env(host) -> dict:
    """The environment for commands on a host: its own session root, no
    cluster address or key inherited from this process."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ZRAY_") and k not in ("RAY_ADDRESS",)}
    env["ZRAY_TEMP_DIR"] = f"{host.private_dir}/zray"     # private to the host
    return env


def _zray() -> list[str]:
    script = shutil.which("zray")
    return [script] if script else [sys.executable, "-m", "zray._private.cli"]


def test_two_hosts_run_a_task_and_move_an_object(two_hosts):
    a, b = two_hosts
    env, env_b = _host_env(a), _host_env(b)
    key_b = f"{b.private_dir}/keys/cluster.key"
    if shutil.which("ping"):            # the link works
        _check(a.run("ping", "-c", "1", "-W", "2", b.ip, env=env), "ping from A to B")
    stopped = False
    try:
        out = _check(a.run(*_zray(), "start", "--head", "--port", str(PORT),
                           "--node-ip-address", a.ip, "--num-cpus", "1",
                           "--object-store-memory", str(128 * 1024 * 1024), env=env),
                     "zray start --head on host A")
        key = re.search(r"cluster key \(secret\):\s+(\S+)", out)
        assert key, f"`zray start --head` did not print where the cluster key is:\n{out}"
        # copy the head's key to host B, as an operator would (mode 0600)
        secret = _check(a.run("cat", key.group(1), env=env), "reading the key on A")
        _check(b.run("sh", "-c", f"umask 077 && mkdir -p {os.path.dirname(key_b)} && "
                                 f"cat > {key_b}",
                     env=env_b, input=secret), "writing the key on B")
        _check(b.run(*_zray(), "start", f"--address={a.ip}:{PORT}", "--node-ip-address",
                     b.ip, "--num-cpus", "1", "--object-store-memory",
                     str(128 * 1024 * 1024), "--cluster-key-file", key_b,
                     env=env_b), "zray start --address on host B")

        out = a.run(sys.executable, "-", a.ip, b.ip, str(PORT), env=env, input=DRIVER)
        assert out.returncode == 0 and out.stdout.strip().endswith("OK"), \
            f"driver on host A failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}"
    finally:
        results = [a.run(*_zray(), "stop", env=env), b.run(*_zray(), "stop", env=env_b)]
        stopped = True
    for host, res in zip((a, b), results):
        _check(res, f"zray stop on host {host.netns}")
    assert stopped
    deadline = time.monotonic() + 10
    while (a.zray_left() or b.zray_left()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not a.zray_left(), f"zray processes left on host A: {a.zray_left()}"
    assert not b.zray_left(), f"zray processes left on host B: {b.zray_left()}"
    for host in (a, b):
        inside = host.run(sys.executable, "-c", "from zray._private.node import command_line, zray_processes; "
                                                "print(len(zray_processes()))", env=env)
        assert _check(inside, "listing zray processes").strip() == "0"
