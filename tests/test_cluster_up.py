"""``zray up/exec/submit/down`` over real SSH to three real hosts (issue 12).

Each host is a network namespace with its own PID and mount namespaces
(test_netns.Host), its own IP on a private bridge that this process also sits
on, a private /dev/shm and a private zray temp dir, and a real ``sshd``
(Debian's openssh-server) that accepts one key this test makes. The zray
checkout's interpreter is reachable from every host (the filesystem is
shared), so the config's ``python:`` points at it and "install zray" is the
no-op check that zray imports.

Needs root, iproute2, util-linux and openssh-server; skips saying why without.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

from conftest import process_gone, wait_for
from test_netns import Host, _check, _run, _skip_unless_possible

SSHD = "/usr/sbin/sshd"
UP_TIMEOUT = 120
MiB = 1024 * 1024

DRIVER = textwrap.dedent("""
    import sys
    import numpy as np
    import zray
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    zray.init(address="auto")
    alive = [n for n in zray.nodes() if n["Alive"]]
    ips = sorted(n["NodeManagerAddress"] for n in alive)
    assert ips == sorted(sys.argv[1:]), (ips, sys.argv[1:])
    on = {n["NodeManagerAddress"]: n["NodeID"] for n in alive}

    @zray.remote(num_cpus=1)
    def where():
        return zray.get_runtime_context().get_node_id()

    @zray.remote(num_cpus=1)
    def make(n):
        return np.arange(n, dtype=np.int64)

    @zray.remote(num_cpus=1)
    def total(arr):
        return int(arr.sum()), zray.get_runtime_context().get_node_id()

    def pin(ip):
        return NodeAffinitySchedulingStrategy(on[ip], soft=False)

    for ip in ips:      # a task lands on every node
        assert zray.get(where.options(scheduling_strategy=pin(ip)).remote(), timeout=60) == on[ip]
    n = 4 * 1024 * 1024 // 8
    big = make.options(scheduling_strategy=pin(ips[1])).remote(n)       # made on one worker
    s, node = zray.get(total.options(scheduling_strategy=pin(ips[2])).remote(big), timeout=60)
    assert node == on[ips[2]] and s == n * (n - 1) // 2, (node, s)      # summed on another
    arr = zray.get(big, timeout=60)                                    # and fetched here
    assert arr.shape == (n,) and int(arr[-1]) == n - 1
    del arr
    zray.shutdown()
    print("DRIVER-OK", len(ips))
""")


def _zray() -> list:
    script = shutil.which("zray")
    return [script] if script else [sys.executable, "-m", "zray._private.cli"]


class Cluster:
    """Three hosts with sshd, the keys, and helpers to write configs and run zray."""

    def __init__(self, hosts, keydir: str, private: str, control_dir: str, dead_ip: str):
        self.hosts = hosts
        self.keydir = keydir
        self.private = private              # each host's own tmpfs at this path
        self.control_dir = control_dir
        self.dead_ip = dead_ip
        self.sshd: list = []                # Popen of nsenter -> sshd, per host

    @property
    def ips(self) -> list:
        return [h.ip for h in self.hosts]

    def config(self, path: str, *, workers=None, key=None, extra: str = "") -> str:
        workers = self.ips[1:] if workers is None else workers
        text = textwrap.dedent(f"""\
            cluster_name: nstest
            provider:
              type: local
              head_ip: {self.ips[0]}
              worker_ips: [{", ".join(workers)}]
            auth:
              ssh_user: root
              ssh_private_key: {key or os.path.join(self.keydir, "id_ed25519")}
              known_hosts_file: {os.path.join(self.keydir, "known_hosts")}
            python: {sys.executable}
            temp_dir: {self.private}/zray
            systemd: false
            dashboard: {{enabled: false}}
            head_node: {{num_cpus: 1, object_store_memory: {128 * MiB}}}
            worker_nodes: {{num_cpus: 1, object_store_memory: {128 * MiB}}}
            """) + extra
        with open(path, "w") as f:
            f.write(text)
        return path

    def zray(self, *args: str, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZRAY_")}
        env["ZRAY_SSH_CONTROL_DIR"] = self.control_dir
        return subprocess.run(_zray() + list(args), capture_output=True, text=True,
                              timeout=timeout, env=env, stdin=subprocess.DEVNULL)

    def daemons(self) -> dict:
        """ip -> the zray daemons (gcs, raylet) running in that host."""
        return {h.ip: sorted(c for c in h.zray_left() if "zray.gcs" in c or "zray.raylet" in c)
                for h in self.hosts}

    def shm(self, host) -> list:
        return sorted(os.listdir(f"/proc/{host.init_pid}/root/dev/shm"))

    def logs(self) -> str:
        """The tail of every zray log in every host (for failure messages)."""
        out = []
        for host in self.hosts:
            root = f"/proc/{host.init_pid}/root{self.private}/zray"
            for dirpath, _, files in os.walk(root):
                for name in files:
                    if dirpath.endswith("logs"):
                        with open(os.path.join(dirpath, name), errors="replace") as f:
                            tail = f.read()[-1500:]
                        out.append(f"--- {host.ip} {name}\n{tail}")
        return "\n".join(out)

    def close_masters(self) -> None:
        """End the SSH ControlMaster processes zray started (by pid), remove their sockets."""
        killed = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if cmd[:1] == ["ssh"] and any(self.control_dir in c for c in cmd):
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    continue
                killed.append(proc.pid)
        wait_for(lambda: all(process_gone(pid) for pid in killed), timeout=10)
        for name in os.listdir(self.control_dir):
            os.unlink(os.path.join(self.control_dir, name))


def _bridge(tag: str, x: int, hosts) -> list:
    """A bridge in this namespace (198.18.x.254) with a veth to each host."""
    links = [f"{tag}br"]
    _check(_run(["ip", "link", "add", links[0], "type", "bridge"]), "adding a bridge")
    _check(_run(["ip", "addr", "add", f"198.18.{x}.254/24", "dev", links[0]]), "bridge address")
    _check(_run(["ip", "link", "set", links[0], "up"]), "bridge up")
    for i, host in enumerate(hosts):
        outer, inner = f"{tag}{i}o", f"{tag}{i}i"
        _check(_run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner]),
               "a veth pair")
        links.append(outer)
        _check(_run(["ip", "link", "set", inner, "netns", host.netns]), "moving a veth")
        _check(_run(["ip", "link", "set", outer, "master", links[0]]), "veth on the bridge")
        _check(_run(["ip", "link", "set", outer, "up"]), "veth up")
        _check(_run(["ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", inner]),
               "host address")
        for dev in ("lo", inner):
            _check(_run(["ip", "-n", host.netns, "link", "set", dev, "up"]), "host link up")
    return links


def _sshd_config(keydir: str, ip: str) -> str:
    path = os.path.join(keydir, f"sshd_{ip}.conf")
    with open(path, "w") as f:
        f.write(f"ListenAddress {ip}\nPort 22\n"
                f"HostKey {keydir}/host_ed25519\nPidFile none\n"
                f"AuthorizedKeysFile {keydir}/authorized_keys\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nPrintMotd no\n"
                "StrictModes no\nMaxStartups 100\nMaxSessions 100\n")
    return path


def _listening(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster():
    """Three booted hosts with sshd; everything torn down by pid/name at the end."""
    _skip_unless_possible()
    for tool in (SSHD, "ssh", "ssh-keygen", "rsync"):
        if shutil.which(tool) is None:
            message = f"`{tool}` is missing (apt-get install openssh-server rsync)"
            if os.environ.get("CI") == "true":      # CI installs it: missing is a failure
                pytest.fail(message)
            pytest.skip(message)
    tag = f"zu{os.getpid() % 100000}"
    x = 100 + os.getpid() % 100
    private = f"/var/tmp/{tag}-host"                 # a tmpfs of its own in each host
    hosts = [Host(f"{tag}h{i}", f"198.18.{x}.{i + 1}") for i in range(3)]
    for host in hosts:
        host.private_dir = private
    keydir = tempfile.mkdtemp(prefix=f"{tag}keys")
    control_dir = tempfile.mkdtemp(prefix=f"{tag}ctl")
    made = Cluster(hosts, keydir, private, control_dir, dead_ip=f"198.18.{x}.77")
    created, links = [], []
    try:
        for host in hosts:
            out = _run(["ip", "netns", "add", host.netns])
            if out.returncode != 0:
                pytest.skip(f"`ip netns add` failed: {out.stderr.strip()}")
            created.append(host.netns)
        links = _bridge(tag, x, hosts)
        for name in ("id_ed25519", "wrong_ed25519", "host_ed25519"):
            _check(_run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                         os.path.join(keydir, name)]), "ssh-keygen")
        shutil.copy(os.path.join(keydir, "id_ed25519.pub"),
                    os.path.join(keydir, "authorized_keys"))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for host in hosts:
            host.boot()
            made.sshd.append(subprocess.Popen(
                host.cmd(SSHD, "-D", "-e", "-f", _sshd_config(keydir, host.ip)),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(keydir, f"sshd_{host.ip}.log"), "w")))
        for host in hosts:
            wait_for(lambda: _listening(host.ip), timeout=10)
        yield made
    finally:
        made.close_masters()
        for proc in made.sshd:
            for child in psutil.Process(proc.pid).children(recursive=True) \
                    if proc.poll() is None else []:
                child.kill()
            proc.kill()
            proc.wait(10)
        for host in hosts:
            host.halt()
        for link in links[:1]:
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        shutil.rmtree(keydir, ignore_errors=True)
        shutil.rmtree(control_dir, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def _ok(out: subprocess.CompletedProcess, what: str) -> str:
    assert out.returncode == 0, (f"{what} failed (exit {out.returncode}):\n"
                                 f"stdout: {out.stdout}\nstderr: {out.stderr}")
    return out.stdout


def _assert_key_only_in_key_files(cluster) -> None:
    """Every host holds the head's key in 0600 files, and in no log or other file."""
    roots = [f"/proc/{h.init_pid}/root{cluster.private}/zray" for h in cluster.hosts]
    with open(f"{roots[0]}/cluster-nstest.key") as f:
        secret = re.search(r"secret:\s*(\S+)", f.read()).group(1)
    for root in roots:
        with open(f"{root}/cluster-nstest.key") as f:
            assert secret in f.read(), f"{root}: another key"
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                if name.endswith(".key"):
                    assert os.stat(path).st_mode & 0o077 == 0, path
                    continue
                try:
                    with open(path, "rb") as f:
                        assert secret.encode() not in f.read(), f"the key is in {path}"
                except OSError:         # sockets
                    continue


def _assert_down(cluster) -> None:
    """No zray process and no /dev/shm segment in any host."""
    wait_for(lambda: not any(h.zray_left() for h in cluster.hosts), timeout=15)
    for host in cluster.hosts:
        assert cluster.shm(host) == [], f"/dev/shm of {host.ip}: {cluster.shm(host)}"


@pytest.mark.timeout(300)
def test_up_exec_submit_rerun_and_down(cluster, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "data.txt").write_text("mounted-data\n")
    mounted = f"{cluster.private}/project"
    cfg = cluster.config(str(tmp_path / "cluster.yaml"),
                         extra=f"file_mounts:\n  {mounted}: {project}\n"
                               f"setup_commands:\n  - cp {mounted}/data.txt {mounted}/copy.txt\n")
    started = time.monotonic()
    out = cluster.zray("up", cfg, "-y")
    took = time.monotonic() - started
    _ok(out, "zray up")
    print(f"\nzray up, head + 2 workers, zray installed: {took:.1f}s\n{out.stdout}")
    assert "3 of 3 node(s) up" in out.stdout, out.stdout
    assert all(len(v) == (2 if ip == cluster.ips[0] else 1)
               for ip, v in cluster.daemons().items()), cluster.daemons()
    try:
        status = _ok(cluster.zray("exec", cfg, "zray status"), "zray exec zray status")
        assert "Nodes: 3 alive" in status, status
        for ip in cluster.ips:
            assert ip in status, status
        every = _ok(cluster.zray("exec", cfg, "hostname -I", "--node", "all"), "exec on all")
        for ip in cluster.ips:
            assert re.search(rf"^\[{re.escape(ip)}\] .*{re.escape(ip)}", every, re.M), every

        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER)
        ran = cluster.zray("submit", cfg, str(driver), "--", *cluster.ips)
        assert ran.returncode == 0 and "DRIVER-OK 3" in ran.stdout, \
            f"submit: exit {ran.returncode}\n{ran.stdout}\n{ran.stderr}\n{cluster.logs()}"
        failing = cluster.zray("exec", cfg, "exit 7")
        assert failing.returncode == 7
        copies = _ok(cluster.zray("exec", cfg, f"cat {mounted}/copy.txt", "--node", "all"),
                     "reading the file mount and the setup command's copy")
        assert copies.count("mounted-data") == 3, copies

        assert _ok(cluster.zray("get-head-ip", cfg), "get-head-ip").strip() == cluster.ips[0]
        (tmp_path / "up.txt").write_text("sent-up\n")
        _ok(cluster.zray("rsync-up", cfg, str(tmp_path / "up.txt"), f"{mounted}/up.txt",
                         "--node", cluster.ips[2]), "rsync-up")
        _ok(cluster.zray("rsync-down", cfg, f"{mounted}/up.txt", str(tmp_path / "down.txt"),
                         "--node", cluster.ips[2]), "rsync-down")
        assert (tmp_path / "down.txt").read_text() == "sent-up\n"
        assert not os.path.exists(f"{mounted}/up.txt")    # it went into host 3's own tmpfs
        _assert_key_only_in_key_files(cluster)

        before = {ip: [p for p in d] for ip, d in cluster.daemons().items()}
        pids_before = {h.ip: sorted(p.pid for p in psutil.Process(h.init_pid)
                                    .children(recursive=True)) for h in cluster.hosts}
        again = cluster.zray("up", cfg, "-y")
        _ok(again, "zray up again")
        for ip in cluster.ips:
            assert f"  {ip}: already running" in again.stdout, again.stdout
        assert cluster.daemons() == before
        for h in cluster.hosts:       # no daemon started or restarted
            daemons = [p.pid for p in psutil.Process(h.init_pid).children(recursive=True)
                       if any(d in " ".join(p.cmdline()) for d in ("zray.gcs", "zray.raylet"))]
            assert set(daemons) <= set(pids_before[h.ip]), (h.ip, daemons)

        restarted = cluster.zray("up", cfg, "--restart-only", "-y")
        _ok(restarted, "zray up --restart-only")
        assert "3 of 3 node(s) up" in restarted.stdout, restarted.stdout
        for h in cluster.hosts:       # every daemon is new, and only one of each runs
            daemons = [p.pid for p in psutil.Process(h.init_pid).children(recursive=True)
                       if any(d in " ".join(p.cmdline()) for d in ("zray.gcs", "zray.raylet"))]
            assert len(daemons) == (2 if h.ip == cluster.ips[0] else 1), (h.ip, daemons)
            assert not set(daemons) & set(pids_before[h.ip]), (h.ip, daemons)
    finally:
        down = cluster.zray("down", cfg, "-y")
    _ok(down, "zray down")
    assert "3 of 3 host(s) stopped" in down.stdout, down.stdout
    _assert_down(cluster)


def test_unreachable_worker_others_come_up(cluster, tmp_path):
    cfg = cluster.config(str(tmp_path / "c.yaml"), workers=[cluster.ips[1], cluster.dead_ip])
    try:
        out = cluster.zray("up", cfg, "-y")
        assert out.returncode == 1, out
        assert "2 of 3 node(s) up" in out.stdout, out.stdout
        assert cluster.dead_ip in out.stderr and "unreachable" in out.stderr, out.stderr
        daemons = cluster.daemons()
        assert daemons[cluster.ips[0]] and daemons[cluster.ips[1]], daemons
    finally:
        down = cluster.zray("down", cfg, "-y")
    assert down.returncode == 1 and cluster.dead_ip in down.stderr, down
    _assert_down(cluster)


def test_wrong_ssh_key_is_named(cluster, tmp_path):
    cluster.close_masters()         # a kept login must not hide the wrong key
    cfg = cluster.config(str(tmp_path / "c.yaml"),
                         key=os.path.join(cluster.keydir, "wrong_ed25519"))
    out = cluster.zray("up", cfg, "-y")
    assert out.returncode == 1, out
    assert "cannot log in as root" in out.stderr and "ssh_private_key" in out.stderr, \
        out.stderr
    assert not any(cluster.daemons().values())


def test_failing_setup_command_shows_its_output(cluster, tmp_path):
    cluster.close_masters()
    extra = ("head_setup_commands:\n"
             "  - echo preparing-$(hostname -I) && echo disk-full >&2 && exit 7\n")
    cfg = cluster.config(str(tmp_path / "c.yaml"), workers=[cluster.ips[1]], extra=extra)
    out = cluster.zray("up", cfg, "-y")
    assert out.returncode == 1, out
    head = cluster.ips[0]
    assert f"{head}: head_setup command" in out.stderr, out.stderr
    assert "exit 7" in out.stderr and "disk-full" in out.stderr and \
        f"preparing-{head}" in out.stderr, out.stderr
    assert f"{cluster.ips[1]}: not started: the head {head} did not come up" in out.stderr
    assert not any(cluster.daemons().values())


def test_config_failing_the_schema_touches_nothing(cluster, tmp_path):
    cluster.close_masters()
    cfg = cluster.config(str(tmp_path / "c.yaml"), extra="worker_nodes_count: 3\n")
    with open(cfg) as f:
        line = f.read().splitlines().index("worker_nodes_count: 3") + 1
    out = cluster.zray("up", cfg, "-y")
    assert out.returncode == 2, out
    assert f"line {line}: unknown key 'worker_nodes_count'" in out.stderr, out.stderr
    assert os.listdir(cluster.control_dir) == [], "an SSH connection was made"
    assert not any(cluster.daemons().values())
