"""Commands and file copies on a host, through the system ``ssh`` and ``rsync``.

As Ray does: ``BatchMode=yes`` (never a password prompt), a connect timeout,
and one ControlMaster connection per host (``ControlPersist``) so the many
short commands of ``zray up`` and a re-run share one login. Host keys go to
``auth.known_hosts_file``; a new host's key is accepted once, a changed one
refused. Every wait is bounded.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass

CONNECT_TIMEOUT_S = 5
CONTROL_PERSIST_S = 30
#: ZRAY_SSH_CONTROL_DIR overrides where the ControlMaster sockets live
CONTROL_DIR_ENV = "ZRAY_SSH_CONTROL_DIR"


class SshError(RuntimeError):
    """A host that cannot be reached or logged in to; the message says which and why."""


@dataclass
class Result:
    """What a command on a host did."""
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


def control_dir() -> str:
    path = os.environ.get(CONTROL_DIR_ENV) or f"/tmp/zray-ssh-{os.getuid()}"
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


class Remote:
    """One host, reached as ``user@host`` with the config's key and port."""

    def __init__(self, host: str, user: str, port: int = 22, key: str | None = None,
                 known_hosts: str | None = None):
        self.host, self.user, self.port, self.key = host, user, port, key
        self.known_hosts = known_hosts

    @classmethod
    def for_config(cls, host: str, cfg) -> "Remote":
        return cls(host, cfg.ssh_user, cfg.ssh_port, cfg.ssh_private_key, cfg.known_hosts_file)

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}"

    def options(self, master: str = "no") -> list:
        """The ``ssh`` options (also rsync's ``-e``)."""
        opts = ["-p", str(self.port), "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                "-o", "StrictHostKeyChecking=accept-new",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR",
                "-o", f"ControlPath={control_dir()}/%C", "-o", f"ControlMaster={master}"]
        if self.known_hosts:
            os.makedirs(os.path.dirname(self.known_hosts) or ".", mode=0o700, exist_ok=True)
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key:
            opts += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        return opts

    def connect(self) -> None:
        """Log in once and keep the connection (ControlMaster) for the
        commands that follow; raises :class:`SshError` saying why not."""
        check = subprocess.run(["ssh", *self.options(), "-O", "check", self.target],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        if check.returncode == 0:
            return
        # the master forks into the background and keeps its stderr: give it a file,
        # not a pipe, so this call returns when the login is done
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(
                    ["ssh", *self.options(master="yes"), "-o",
                     f"ControlPersist={CONTROL_PERSIST_S}s", "-N", "-f", self.target],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    timeout=CONNECT_TIMEOUT_S + 15)
            except subprocess.TimeoutExpired:
                raise SshError(f"{self.host}: no SSH answer within "
                               f"{CONNECT_TIMEOUT_S + 15}s; is the host up and sshd "
                               f"listening on port {self.port}?") from None
            err.seek(0)
            text = err.read().decode(errors="replace").strip()
        if proc.returncode != 0:
            raise SshError(self.explain(text))

    def explain(self, text: str) -> str:
        """A clear message for ssh's own error ``text``."""
        lower = text.lower()
        if "permission denied" in lower:
            return (f"{self.host}: cannot log in as {self.user} (ssh: {text}); check "
                    f"auth.ssh_user and auth.ssh_private_key "
                    f"({self.key or 'ssh default keys'}), and that its public key is in "
                    f"~{self.user}/.ssh/authorized_keys there")
        if "host key verification failed" in lower or "host identification has changed" \
                in lower:
            return (f"{self.host}: its SSH host key differs from the one remembered in "
                    f"{self.known_hosts}; if the host was reinstalled, remove its line "
                    f"there (ssh-keygen -R {self.host} -f {self.known_hosts})")
        return (f"{self.host}: unreachable over SSH on port {self.port} "
                f"(ssh: {text or 'no message'}); check provider addresses and that sshd "
                f"runs there")

    def run(self, command: str, *, input: str | bytes | None = None, timeout: float = 600,
            capture: bool = True, tty: bool = False) -> Result:
        """Run ``command`` (a shell command line) on the host. ``input`` goes to
        its stdin (how secrets travel: never on a command line). A failed
        login raises :class:`SshError`; the command's own failure is in the
        result's returncode."""
        argv = ["ssh", *self.options(), *(["-t"] if tty else []), self.target, command]
        data = input.encode() if isinstance(input, str) else input
        try:
            proc = subprocess.run(argv, input=data,
                                  stdin=None if data is not None or tty else subprocess.DEVNULL,
                                  capture_output=capture, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Result(124, "", f"timed out after {timeout:.0f}s: {command}")
        out = proc.stdout.decode(errors="replace") if capture else ""
        err = proc.stderr.decode(errors="replace") if capture else ""
        if proc.returncode == 255 and _ssh_failed(err):
            raise SshError(self.explain(err.strip()))
        return Result(proc.returncode, out, err)

    def rsync(self, source: str, dest: str, *, up: bool, exclude=(),
              timeout: float = 600) -> Result:
        """Copy ``source`` to ``dest`` (``up``: local -> host, else host -> local)."""
        ssh = "ssh " + " ".join(shlex.quote(o) for o in self.options())
        remote = f"{self.target}:"
        src, dst = (source, remote + dest) if up else (remote + source, dest)
        argv = ["rsync", "-az", "-e", ssh, *[f"--exclude={e}" for e in exclude], src, dst]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return Result(124, "", f"rsync timed out after {timeout:.0f}s")
        return Result(proc.returncode, proc.stdout.decode(errors="replace"),
                      proc.stderr.decode(errors="replace"))

    def close(self) -> None:
        """End this host's ControlMaster connection, if any."""
        subprocess.run(["ssh", *self.options(), "-O", "exit", self.target],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=10)


def _ssh_failed(stderr: str) -> bool:
    """Whether exit 255 came from ssh itself (not from the remote command)."""
    lower = stderr.lower()
    return any(s in lower for s in ("permission denied", "connection timed out",
                                    "no route to host", "connection refused",
                                    "could not resolve", "host key verification",
                                    "connection closed", "kex_exchange"))
