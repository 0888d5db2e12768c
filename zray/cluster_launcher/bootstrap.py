"""The steps of ``zray up``/``zray down`` on one host, through
``scripts/zray-bootstrap.sh`` (uploaded to the host's zray temp dir).

Every step raises :class:`StepError` (what failed on which host, with the
command's output) or :class:`~.ssh.SshError`; the cluster key only ever
travels on an SSH connection's stdin/stdout, never on a command line.
"""
from __future__ import annotations

import json
import os
import shlex

from .config import ClusterConfig
from .ssh import Remote, Result

#: the bootstrap script shipped with zray (also usable by hand, scripts/README.md)
SCRIPT = os.path.join(os.path.dirname(__file__), "zray-bootstrap.sh")
OUTPUT_LINES = 30          # of a failed command, shown to the user
STEP_TIMEOUT_S = 600       # a setup command or pip install


class StepError(RuntimeError):
    """A step that failed on a host; the message holds the command's output."""


def script_text() -> str:
    with open(SCRIPT) as f:
        return f.read()


def _tail(result: Result) -> str:
    lines = result.output.splitlines()
    cut = lines[-OUTPUT_LINES:]
    more = f"    ... ({len(lines) - len(cut)} earlier lines)\n" if len(lines) > len(cut) else ""
    return more + "\n".join("    | " + line for line in cut)


class HostSession:
    """A host of the cluster: runs the config's commands and the bootstrap
    script's steps there."""

    def __init__(self, cfg: ClusterConfig, host: str):
        self.cfg = cfg
        self.host = host
        self.remote = Remote.for_config(host, cfg)
        self.script = f"{cfg.temp_dir_word()}/zray-bootstrap.sh"

    def env(self) -> str:
        """``export ...;`` of the variables every command here sees."""
        cfg = self.cfg
        pairs = {"ZRAY_PYTHON": shlex.quote(cfg.python),
                 "ZRAY_TEMP_DIR": cfg.temp_dir_word(),
                 "ZRAY_CLUSTER_KEY_FILE": cfg.key_file(),
                 "ZRAY_HEAD_IP": shlex.quote(cfg.head_ip),
                 "RAY_HEAD_IP": shlex.quote(cfg.head_ip),
                 "ZRAY_PIP_INSTALL": shlex.quote(cfg.pip_install)}
        if cfg.venv:
            pairs["ZRAY_VENV"] = shlex.quote(cfg.venv)
        if cfg.gcs_storage and self.host == cfg.head_ip:
            pairs["ZRAY_GCS_STORAGE"] = shlex.quote(cfg.gcs_storage)
        path = (f'PATH={shlex.quote(os.path.dirname(cfg.python))}:"$PATH"; '
                if cfg.python.startswith("/") else "")
        return path + "export " + " ".join(f"{k}={v}" for k, v in pairs.items()) + \
            " PATH; "

    def shell(self, command: str, *, input=None, timeout: float = STEP_TIMEOUT_S,
              capture: bool = True, tty: bool = False) -> Result:
        """Run a shell command line here, in the cluster's environment."""
        return self.remote.run(self.env() + command, input=input, timeout=timeout,
                               capture=capture, tty=tty)

    def step(self, what: str, command: str, *, input=None,
             timeout: float = STEP_TIMEOUT_S) -> Result:
        """Run ``command``; raise :class:`StepError` with its output if it fails."""
        result = self.shell(command, input=input, timeout=timeout)
        if result.returncode != 0:
            raise StepError(f"{self.host}: {what} failed (exit {result.returncode}):\n"
                            f"{_tail(result)}")
        return result

    def bootstrap(self, what: str, *args: str, input=None,
                  timeout: float = STEP_TIMEOUT_S) -> Result:
        """Run a bootstrap script command here."""
        command = "sh " + self.script + "".join(" " + shlex.quote(a) for a in args)
        return self.step(what, command, input=input, timeout=timeout)

    # --- the steps -------------------------------------------------------

    def upload_script(self) -> None:
        """Put the bootstrap script in the host's zray temp dir (0700)."""
        temp = self.cfg.temp_dir_word()
        self.step("uploading the bootstrap script",
                  f"umask 077 && mkdir -p {temp} && cat > {self.script}.$$ && "
                  f"mv -f {self.script}.$$ {self.script}", input=script_text(), timeout=60)

    def file_mounts(self) -> None:
        """Copy the config's ``file_mounts`` (remote path: local path) here."""
        for remote_path, local_path in self.cfg.file_mounts.items():
            local = os.path.expanduser(local_path)
            if not os.path.exists(local):
                raise StepError(f"{self.host}: file_mounts: the local path {local_path} "
                                f"does not exist")
            is_dir = os.path.isdir(local)
            parent = remote_path.rstrip("/") if is_dir else os.path.dirname(remote_path)
            if parent:
                self.step(f"making {parent}", f"mkdir -p {_remote_word(parent)}", timeout=60)
            result = self.remote.rsync(local.rstrip("/") + "/" if is_dir else local,
                                       remote_path.rstrip("/") + "/" if is_dir else remote_path,
                                       up=True, exclude=self.cfg.rsync_exclude)
            if result.returncode != 0:
                raise StepError(f"{self.host}: copying {local_path} to {remote_path} "
                                f"failed (rsync exit {result.returncode}):\n{_tail(result)}")

    def run_commands(self, kind: str, commands: list) -> None:
        """Run the config's ``kind`` commands in order; the first failure stops."""
        for command in commands:
            self.step(f"{kind} command {command!r}", f"bash -c {shlex.quote(command)}")

    def read_key(self) -> bytes | None:
        """The cluster key stored here, or None."""
        result = self.shell("sh " + self.script + " read-key", timeout=60)
        if result.returncode == 3:
            return None
        if result.returncode != 0:
            raise StepError(f"{self.host}: reading the cluster key failed:\n{_tail(result)}")
        return result.stdout.encode()

    def nodes(self) -> list | None:
        """The cluster's nodes as the head's GCS reports them; None when no
        GCS answers with this cluster's key."""
        result = self.shell("sh " + self.script + " nodes " + shlex.quote(self.cfg.gcs_address),
                            timeout=60)
        if result.returncode != 0:
            return None
        try:
            return json.loads(result.stdout)
        except ValueError:
            return None


def _remote_word(path: str) -> str:
    """``path`` for the remote shell: ``~/x`` stays relative to the home directory."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def alive_ips(nodes: list | None) -> set:
    """The IPs of the alive nodes in a ``zray list nodes`` answer."""
    return {n.get("node_ip") for n in nodes or [] if n.get("state") == "ALIVE"}
