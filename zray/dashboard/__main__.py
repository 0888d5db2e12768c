"""``python -m zray.dashboard --gcs-address HOST:PORT --session-dir DIR
[--host 127.0.0.1] [--port 8265] [--token-file F] [--allowed-hosts a,b]``

The dashboard daemon. This process is its supervisor: it starts the web
server (``python -m zray.dashboard.server``, same arguments), restarts it if
it dies (after 1 s, at most ``MAX_RESTARTS`` times in ``RESTART_WINDOW_S``),
and stops it on SIGTERM. ``--start-delay`` (a local ``zray.init()`` gives
1 s) lets a driver's first tasks have the CPU before the server imports
Flask, so the dashboard never delays them.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from .._private import daemon
from .._private.launcher import STDOUT, launch
from .._private.session import log_path
from .options import parse_args

log = logging.getLogger("zray.dashboard")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)            # refuses bad options before anything starts
    if daemon.parent_watch_requested():
        daemon.die_with_parent()
    daemon.set_process_name("zray.dashboard")
    daemon.setup_logging(log_path(args.session_dir, "dashboard_supervisor.log"))
    stopping = threading.Event()
    daemon.on_terminate(stopping.set)
    # a driver's local cluster: let its first tasks have the CPU first
    stopping.wait(args.start_delay)
    restarts: list[float] = []
    env = dict(os.environ)
    env["ZRAY_DIE_WITH_PARENT"] = "1"   # the server dies with this supervisor
    first = True                        # the server's first start (not a restart)
    while not stopping.is_set():
        out = os.open(log_path(args.session_dir, "dashboard.out"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = launch(["zray.dashboard.server", *argv], env=env, stdout=out,
                          stderr=STDOUT, dies_with_parent=True)
        finally:
            os.close(out)
        log.info("dashboard server started (pid %d) at http://%s:%d", proc.pid,
                 args.host, args.port)
        while not stopping.is_set() and proc.poll() is None:
            stopping.wait(0.5)
        if stopping.is_set():
            _stop(proc)
            break
        code = proc.returncode
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
        # exit code 2 is bad settings, or the port still taken: after a
        # restart that is the killed server's worker letting go slowly (a
        # busy machine), so only the first start gives up on it at once
        if (code == 2 and first) or len(restarts) > MAX_RESTARTS:
            log.error("dashboard server exited with code %s%s; not restarting it (see "
                      "dashboard.log)", code, " (bad settings)" if code == 2 else
                      f", {len(restarts)} times within {RESTART_WINDOW_S:.0f}s")
            sys.exit(1)
        log.warning("dashboard server exited with code %s; restarting it", code)
        first = False
        stopping.wait(1.0)
    log.info("dashboard supervisor stopped")


def _stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(2.5)
    except subprocess.TimeoutExpired:
        log.warning("dashboard server did not stop within 2.5s of SIGTERM: SIGKILL")
        proc.kill()
        proc.wait(1.0)


if __name__ == "__main__":
    main()
