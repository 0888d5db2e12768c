"""The head's supervisor: ``python -m zray._private.supervisor --session-dir DIR``.

``zray start --head`` starts it; it runs the head's daemons that hold no
user state of their own — the GCS and the dashboard server — as its
children, and restarts one that dies (a kill -9, a crash) at once, with the
same command line (same port, same storage, same cluster id) and the same
environment (same cluster key), so a restarted GCS reloads its tables.

What to run is in ``<session>/supervisor.json`` (``{"children": {name:
["module", *args]}}``), written by ``NodeProcesses``; the supervisor reads it
again when it changes (the dashboard is added after the node is up).

A child is not restarted when it exits with 0 (it was stopped: SIGTERM) or
with 2 (its settings cannot work, e.g. a storage it must refuse). Otherwise
it is restarted at once, up to ``QUICK_RESTARTS`` times within
``RESTART_WINDOW_S``; past that (a crash loop) after a delay that doubles
from ``RESTART_DELAY_S`` up to ``RESTART_DELAY_MAX_S``, never giving up (a
cluster without its GCS is dead). The log says each restart and why. The supervisor stops its children on SIGTERM, and exits
when no child is left to run; children die with it (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time

from . import daemon
from .launcher import STDOUT, launch
from .session import log_path

log = logging.getLogger("zray.supervisor")

SPEC_FILE = "supervisor.json"
#: the name ``ps -e`` shows (15 bytes at most)
PROCESS_NAME = "zray.supervisor"
QUICK_RESTARTS = 10
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 0.5
RESTART_DELAY_MAX_S = 10.0
POLL_S = 0.05
#: exit codes of children that say "stopped" and "bad settings": no restart
EXIT_STOPPED, EXIT_BAD_SETTINGS = 0, 2


def spec_path(session_dir: str) -> str:
    return os.path.join(session_dir, SPEC_FILE)


def write_spec(session_dir: str, children: dict[str, list[str]]) -> None:
    """Tell the supervisor of ``session_dir`` what to run (atomically, 0600)."""
    path = spec_path(session_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"children": children}, f)
    os.replace(tmp, path)


def read_spec(session_dir: str) -> dict[str, list[str]]:
    with open(spec_path(session_dir)) as f:
        return json.load(f)["children"]


class Child:
    """One supervised daemon: its command, process and restart history."""

    def __init__(self, name: str, args: list[str]):
        self.name, self.args = name, args
        self.proc = None
        self.restarts: list[float] = []
        self.due = 0.0              # when to (re)start it; None: not now
        self.given_up = False
        self.code = None            # its last exit code


class Supervisor:
    def __init__(self, session_dir: str):
        self.session_dir = session_dir
        self.children: dict[str, Child] = {}
        self.stopping = False
        self._spec_mtime = None
        self.env = dict(os.environ)
        self.env["ZRAY_DIE_WITH_PARENT"] = "1"      # children die with the supervisor

    def stop(self) -> None:
        self.stopping = True

    def reload_spec(self) -> None:
        """Take children added to the spec file since it was last read."""
        try:
            mtime = os.stat(spec_path(self.session_dir)).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._spec_mtime:
            return
        self._spec_mtime = mtime
        try:
            spec = read_spec(self.session_dir)
        except (OSError, ValueError, KeyError) as err:
            log.error("cannot read %s: %s", spec_path(self.session_dir), err)
            return
        for name, args in spec.items():
            child = self.children.get(name)
            if child is None:
                self.children[name] = Child(name, list(args))
            elif child.args != list(args):
                log.info("%s: new command line, used from its next start", name)
                child.args = list(args)

    def start(self, child: Child) -> None:
        out = os.open(log_path(self.session_dir, f"{child.name}.out"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            child.proc = launch(child.args, env=self.env, stdout=out, stderr=STDOUT,
                                dies_with_parent=True)
        finally:
            os.close(out)
        child.due = None
        log.info("%s started (pid %d)", child.name, child.proc.pid)

    def exited(self, child: Child, now: float) -> None:
        """``child`` exited: decide whether and when it starts again."""
        code = child.code = child.proc.returncode
        child.proc = None
        if code in (EXIT_STOPPED, EXIT_BAD_SETTINGS):
            log.log(logging.INFO if code == EXIT_STOPPED else logging.ERROR,
                    "%s exited with code %d (%s); not restarting it", child.name, code,
                    "stopped" if code == EXIT_STOPPED else "its settings cannot work, see "
                    f"{child.name}.out and its log")
            child.given_up = True
            return
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S] + [now]
        over = len(child.restarts) - QUICK_RESTARTS
        delay = 0.0 if over <= 0 else min(RESTART_DELAY_S * 2 ** (over - 1),
                                          RESTART_DELAY_MAX_S)
        log.log(logging.WARNING if over <= 0 else logging.ERROR,
                "%s exited with code %s (%s), %d time(s) within %.0fs; restarting it%s",
                child.name, code, _describe(code), len(child.restarts), RESTART_WINDOW_S,
                f" in {delay}s (see {child.name}.out and its log)" if delay else "")
        child.due = now + delay

    def run(self) -> int:
        """Supervise until SIGTERM or until no child is left; the exit code
        is 2 when a child gave up for bad settings, else 0."""
        self.reload_spec()
        last_spec_check = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            if now - last_spec_check > 0.5:
                self.reload_spec()
                last_spec_check = now
            for child in self.children.values():
                if child.proc is not None and child.proc.poll() is not None:
                    self.exited(child, now)
                if child.proc is None and not child.given_up and child.due is not None \
                        and now >= child.due and not self.stopping:
                    try:
                        self.start(child)
                    except OSError as err:      # no process to be had now: try again
                        log.error("cannot start %s: %s; trying again in %.0fs", child.name,
                                  err, RESTART_DELAY_MAX_S)
                        child.due = now + RESTART_DELAY_MAX_S
            if self.children and all(c.given_up for c in self.children.values()):
                break
            time.sleep(POLL_S)
        self.stop_children()
        bad = any(c.code == EXIT_BAD_SETTINGS for c in self.children.values())
        return EXIT_BAD_SETTINGS if bad and not self.stopping else 0

    def stop_children(self, timeout: float = 3.0) -> None:
        running = [c for c in self.children.values() if c.proc is not None]
        for child in running:
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in running:
            try:
                child.proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs of SIGTERM: SIGKILL", child.name,
                            timeout)
                child.proc.kill()
                child.proc.wait(1.0)
            child.proc = None


def _describe(code: int) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _warm_up() -> None:
    """Import what the GCS runs, so its forks start in milliseconds."""
    from ..gcs import __main__ as _gcs_main  # noqa: F401
    from ..gcs import sqlite_storage as _sqlite  # noqa: F401


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m zray._private.supervisor",
                                 description=__doc__)
    ap.add_argument("--session-dir", required=True)
    args = ap.parse_args(argv)
    if daemon.parent_watch_requested():
        daemon.die_with_parent()
    daemon.set_process_name(PROCESS_NAME)
    daemon.setup_logging(log_path(args.session_dir, "supervisor.log"))
    supervisor = Supervisor(args.session_dir)
    daemon.on_terminate(supervisor.stop)
    _warm_up()
    code = supervisor.run()
    log.info("supervisor stopped")
    sys.exit(code)


if __name__ == "__main__":
    main()
