"""``zray up/down/exec/submit/attach/get-head-ip/rsync-up/rsync-down/monitor``.

Each returns the command's exit code: 0 when everything asked for is done,
1 when a host failed (the summary names it and why), 2 for a bad config
(nothing touched), otherwise the exit code of the user's command.
"""
from __future__ import annotations

import os
import shlex
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import units
from .bootstrap import HostSession, StepError, alive_ips
from .config import ClusterConfig
from .progress import Progress
from .ssh import SshError
from .start_args import head_args, worker_args

JOIN_POLL_S = 0.5


def _confirm(question: str, yes: bool) -> bool:
    """Whether to go on: ``-y``, else an answer on a terminal."""
    if yes:
        return True
    if not sys.stdin.isatty():
        print(f"{question} -- not confirmed: stdin is not a terminal; pass -y",
              file=sys.stderr)
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


class _Up:
    """One run of ``zray up``: a thread per host, the head first to start."""

    def __init__(self, cfg: ClusterConfig, restart_only: bool, no_restart: bool):
        self.cfg = cfg
        self.restart_only = restart_only
        self.no_restart = no_restart
        self.head_done = threading.Event()     # set when the head's part has ended
        self.key: bytes | None = None          # the cluster key, in memory only
        self.nodes_before: list | None = None  # the cluster as found by the head step
        self.failures: dict = {}               # host -> message
        self.outcome: dict = {}                # host -> what happened
        roles = {h: "head" if h == cfg.head_ip else "worker" for h in cfg.hosts}
        self.progress = Progress(cfg.hosts, roles)

    def run(self) -> int:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(self.cfg.hosts)) as pool:
            list(pool.map(self._host, self.cfg.hosts))
        joined = self._wait_joined() if self.cfg.head_ip not in self.failures else set()
        self.progress.close()
        return self._summary(joined, time.monotonic() - started)

    def _host(self, host: str) -> None:
        is_head = host == self.cfg.head_ip
        try:
            self._bring_up(host, is_head)
        except (SshError, StepError) as err:
            self.failures[host] = str(err)
            self.progress.done(host, "FAILED: " + str(err).splitlines()[0])
        finally:
            if is_head:
                self.head_done.set()

    def _bring_up(self, host: str, is_head: bool) -> None:
        cfg, show = self.cfg, lambda text: self.progress.step(host, text)
        node = HostSession(cfg, host)
        show("connecting")
        node.remote.connect()
        node.upload_script()
        if not self.restart_only:
            if cfg.file_mounts:
                show("copying file mounts")
                node.file_mounts()
            for kind, commands in (("initialization", cfg.initialization_commands),
                                   ("setup", cfg.setup_commands),
                                   ("head_setup" if is_head else "worker_setup",
                                    cfg.head_setup_commands if is_head
                                    else cfg.worker_setup_commands)):
                if commands:
                    show(f"running {kind} commands")
                    node.run_commands(kind, commands)
            show("installing zray")
            node.bootstrap("installing zray", "install")
        if is_head:
            self._start_head(node, show)
        else:
            self._start_worker(node, show)

    def _start_head(self, node: HostSession, show) -> None:
        show("checking the cluster key")
        self.key = node.read_key()
        if self.key is None:            # made here, sent on the SSH connection's stdin
            self.key = _new_key()
            node.bootstrap("writing the cluster key", "write-key", input=self.key, timeout=60)
        nodes = node.nodes()
        running = self.cfg.head_ip in alive_ips(nodes)
        if running and self.restart_only:
            show("stopping (restart)")
            node.bootstrap("stopping zray", "stop", timeout=120)
            running = False
        if running or self.no_restart:
            self.nodes_before = nodes
            self.outcome[node.host] = "already running" if running else "not started (--no-restart)"
            self.progress.done(node.host, self.outcome[node.host])
            return
        show("starting the head")
        self._start(node, is_head=True)
        self.nodes_before = []          # a new GCS: no worker runs in it yet
        self.outcome[node.host] = "started"
        self.progress.done(node.host, "started")

    def _start_worker(self, node: HostSession, show) -> None:
        show("waiting for the head")
        self.head_done.wait()
        if self.cfg.head_ip in self.failures or self.key is None:
            raise StepError(f"{node.host}: not started: the head "
                            f"{self.cfg.head_ip} did not come up")
        running = node.host in alive_ips(self.nodes_before)
        if self.restart_only:       # its raylet may still try the old head: stop it
            show("stopping (restart)")
            node.bootstrap("stopping zray", "stop", timeout=120)
            running = False
        if running or self.no_restart:
            self.outcome[node.host] = "already running" if running else "not started (--no-restart)"
            self.progress.done(node.host, self.outcome[node.host])
            return
        show("writing the cluster key")
        node.bootstrap("writing the cluster key", "write-key", input=self.key, timeout=60)
        show("starting the worker")
        self._start(node, is_head=False)
        self.outcome[node.host] = "started"
        self.progress.done(node.host, "started")

    def _start(self, node: HostSession, is_head: bool) -> None:
        cfg = self.cfg
        custom = cfg.head_start_commands if is_head else cfg.worker_start_commands
        timeout = cfg.start_timeout_s + 30
        if cfg.systemd:
            name, text = ((units.HEAD_UNIT, units.head_unit(cfg)) if is_head else
                          (units.WORKER_UNIT, units.worker_unit(cfg, node.host)))
            node.bootstrap(f"installing {name}", "install-unit", name, input=text,
                           timeout=timeout)
        elif custom:
            node.run_commands("head_start_ray" if is_head else "worker_start_ray", custom)
        elif is_head:
            node.bootstrap("zray start --head", "start-head", *head_args(cfg)[1:],
                           timeout=timeout)
        else:
            node.bootstrap("zray start --address", "start-worker", cfg.gcs_address,
                           *worker_args(cfg, node.host)[1:], timeout=timeout)
        if is_head and (cfg.systemd or custom):
            self._wait_for(node, {cfg.head_ip}, "the head's GCS to answer")

    def _wait_for(self, head: HostSession, ips: set, what: str) -> set:
        """Poll the head until ``ips`` are alive nodes (bounded); the alive ones."""
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while True:
            alive = alive_ips(head.nodes())
            if ips <= alive or time.monotonic() > deadline:
                if not ips <= alive and what.startswith("the head"):
                    raise StepError(f"{head.host}: timed out after "
                                    f"{self.cfg.start_timeout_s:.0f}s waiting for {what}; "
                                    f"see the logs in the zray temp dir there")
                return alive & ips
            time.sleep(JOIN_POLL_S)

    def _wait_joined(self) -> set:
        """Wait until every worker that came up is an alive node; the joined IPs."""
        head = HostSession(self.cfg, self.cfg.head_ip)
        expected = {h for h in self.cfg.hosts if h not in self.failures}
        try:
            return self._wait_for(head, expected, "the nodes to join")
        except SshError as err:
            self.failures[self.cfg.head_ip] = str(err)
            return set()

    def _summary(self, joined: set, took: float) -> int:
        cfg = self.cfg
        for host in cfg.hosts:
            if host not in self.failures and host not in joined and not self.no_restart:
                self.failures[host] = (f"{host}: started, but it is not an alive node of the "
                                       f"cluster after {cfg.start_timeout_s:.0f}s; see its "
                                       f"zray logs (`zray exec {cfg.path} 'ls $ZRAY_TEMP_DIR' "
                                       f"--node {host}`)")
        ok = [h for h in cfg.hosts if h not in self.failures]
        print(f"zray up {cfg.cluster_name}: {len(ok)} of {len(cfg.hosts)} node(s) up in "
              f"{took:.1f}s; head {cfg.gcs_address}")
        for host in cfg.hosts:
            if host in self.failures:
                print(f"  {host}: FAILED", flush=True)
            else:
                print(f"  {host}: {self.outcome.get(host, 'up')}")
        for host in cfg.hosts:
            if host in self.failures:
                print(self.failures[host], file=sys.stderr)
        if not self.failures:
            print(f"  run a driver on the head:  zray submit {cfg.path} script.py\n"
                  f"  a shell there:             zray attach {cfg.path}\n"
                  f"  stop the cluster:          zray down {cfg.path} -y")
            return 0
        print(f"zray up: {len(self.failures)} host(s) failed: "
              f"{', '.join(h for h in cfg.hosts if h in self.failures)}", file=sys.stderr)
        return 1


def _new_key() -> bytes:
    """A fresh cluster key file's text (both halves)."""
    from ..broker import security
    key = security.generate()
    return b"public: " + key.public + b"\nsecret: " + key.secret + b"\n"


def up(cfg: ClusterConfig, *, yes: bool, restart_only: bool = False,
       no_restart: bool = False) -> int:
    """Bring the cluster up (idempotent: what runs already is left alone)."""
    for key in cfg.ignored_keys:
        print(f"zray up: note: {key} is a Ray autoscaler key; zray ignores it "
              f"(the cluster is the hosts listed in provider)", file=sys.stderr)
    what = "restart zray on" if restart_only else "bring up"
    if not _confirm(f"zray up: {what} cluster {cfg.cluster_name!r} on "
                    f"{len(cfg.hosts)} host(s)?", yes):
        return 1
    return _Up(cfg, restart_only, no_restart).run()


def down(cfg: ClusterConfig, *, yes: bool) -> int:
    """Stop zray on every host, remove the units ``zray up`` installed; logs stay."""
    if not _confirm(f"zray down: stop cluster {cfg.cluster_name!r} on "
                    f"{len(cfg.hosts)} host(s)?", yes):
        return 1
    roles = {h: "head" if h == cfg.head_ip else "worker" for h in cfg.hosts}
    progress = Progress(cfg.hosts, roles)
    failures = {}

    def stop(host: str) -> None:
        node = HostSession(cfg, host)
        try:
            progress.step(host, "connecting")
            node.remote.connect()
            node.upload_script()
            progress.step(host, "stopping zray")
            node.bootstrap("stopping zray", "stop", timeout=120)
            progress.done(host, "stopped")
        except (SshError, StepError) as err:
            failures[host] = str(err)
            progress.done(host, "FAILED: " + str(err).splitlines()[0])

    # workers first, then the head, so no raylet is left reconnecting to a dead GCS
    workers = [h for h in cfg.hosts if h != cfg.head_ip]
    if workers:
        with ThreadPoolExecutor(max_workers=len(workers)) as pool:
            list(pool.map(stop, workers))
    stop(cfg.head_ip)
    progress.close()
    for host, message in failures.items():
        print(message, file=sys.stderr)
    print(f"zray down {cfg.cluster_name}: {len(cfg.hosts) - len(failures)} of "
          f"{len(cfg.hosts)} host(s) stopped")
    return 1 if failures else 0


def _targets(cfg: ClusterConfig, node: str) -> list:
    if node == "all":
        return cfg.hosts
    if node == "head":
        return [cfg.head_ip]
    if node not in cfg.hosts:
        raise StepError(f"--node {node}: not a host of cluster {cfg.cluster_name} "
                        f"(hosts: {', '.join(cfg.hosts)}); give all, head or one of them")
    return [node]


def exec_(cfg: ClusterConfig, command: str, node: str = "head", tty: bool = False) -> int:
    """Run ``command`` on the chosen host(s); the worst exit code."""
    hosts = _targets(cfg, node)
    if len(hosts) == 1:
        result = HostSession(cfg, hosts[0]).shell(command, capture=False, tty=tty)
        return result.returncode
    lock = threading.Lock()

    def one(host: str) -> int:
        result = HostSession(cfg, host).shell(command)
        with lock:
            for line in result.output.splitlines():
                print(f"[{host}] {line}")
        return result.returncode

    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        codes = list(pool.map(one, hosts))
    return max(codes, key=lambda c: c != 0)


def submit(cfg: ClusterConfig, script: str, args: list) -> int:
    """Copy ``script`` to the head and run it there with the cluster's python;
    its output streams here; its exit code is returned."""
    if not os.path.isfile(script):
        raise StepError(f"zray submit: {script} is not a file")
    head = HostSession(cfg, cfg.head_ip)
    target = f"{cfg.temp_dir_word()}/submit"
    head.step("making the submit directory", f"umask 077 && mkdir -p {target}", timeout=60)
    remote_dir = head.step("locating the submit directory", f"cd {target} && pwd",
                           timeout=60).stdout.strip()
    result = head.remote.rsync(script, f"{remote_dir}/", up=True)
    if result.returncode != 0:
        raise StepError(f"{cfg.head_ip}: copying {script} failed:\n{result.output}")
    command = (f"cd {shlex.quote(remote_dir)} && exec \"$ZRAY_PYTHON\" "
               f"{shlex.quote(os.path.basename(script))}"
               + "".join(" " + shlex.quote(a) for a in args))
    return head.shell(command, capture=False).returncode


def attach(cfg: ClusterConfig) -> int:
    """An interactive login shell on the head (in the cluster's environment)."""
    return HostSession(cfg, cfg.head_ip).shell('exec "${SHELL:-/bin/sh}" -l',
                                               capture=False, tty=True).returncode


def rsync(cfg: ClusterConfig, source: str, target: str, *, up: bool, node: str) -> int:
    """Copy files to (``up``) or from the chosen host(s)."""
    code = 0
    for host in _targets(cfg, node):
        session = HostSession(cfg, host)
        result = session.remote.rsync(source, target, up=up, exclude=cfg.rsync_exclude)
        if result.returncode != 0:
            print(f"{host}: rsync failed (exit {result.returncode}): {result.output}",
                  file=sys.stderr)
            code = 1
    return code


def monitor(cfg: ClusterConfig, lines: int) -> int:
    """Follow the head's newest session logs until interrupted."""
    command = (f'd=$(ls -td {cfg.temp_dir_word()}/session_*/ 2>/dev/null | head -n 1); '
               f'[ -n "$d" ] || {{ echo "no zray session on the head" >&2; exit 1; }}; '
               f'exec tail -n {int(lines)} -F "$d"logs/*')
    return HostSession(cfg, cfg.head_ip).shell(command, capture=False).returncode
