"""``python -m zray.dashboard.server ...`` (started by the dashboard's
supervisor, same options): the web server itself, on gunicorn.

Gunicorn's master runs in this process and forks one ``gthread`` worker,
which builds the Flask app (GCS client, ClusterView, JobSupervisor) after
the fork and serves ``--threads`` requests at once; websockets (job log
tailing, ``/api/jobs/<id>/logs/tail``) hold one of those threads each. The
worker dies with the master (PR_SET_PDEATHSIG, and gunicorn's own parent
check), so a SIGKILLed master leaves no worker behind; the master restarts
a worker that dies.

Exit codes: 0 stopped, 1 failed (the supervisor restarts it), 2 bad
settings or the port still taken after ``PORT_WAIT_S`` (the supervisor gives
up at the first start; after a restart it tries again, within its restart
limit); 3 the worker could not boot (the GCS does not answer: restarted too).
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
import time

from .._private import daemon
from .._private.session import log_path
from .token_file import ENV_TOKEN, TokenError, read_token_file
from .options import parse_args

log = logging.getLogger("zray.dashboard")

#: seconds the worker gets to end its streams and jobs on SIGTERM
GRACEFUL_S = 2
#: a taken port is retried this long before it counts as bad settings: the
#: worker of a server that was killed lets go of it within GRACEFUL_S
PORT_WAIT_S = 3 * GRACEFUL_S + 2
#: connections the worker keeps at once (idle keep-alive ones included)
MAX_CONNECTIONS = 200


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if daemon.parent_watch_requested():
        daemon.die_with_parent()
    daemon.set_process_name("zray.dashboard")
    daemon.setup_logging(log_path(args.session_dir, "dashboard.log"))
    try:
        token = read_token_file(args.token_file) if args.token_file \
            else os.environ[ENV_TOKEN].strip()
    except TokenError as err:
        log.error("%s", err)
        print(f"zray dashboard: {err}", file=sys.stderr)
        sys.exit(2)
    if len(token) < 16:
        log.error("%s is shorter than 16 characters", ENV_TOKEN)
        sys.exit(2)
    err = _bind_error(args.host, args.port)
    deadline = time.monotonic() + PORT_WAIT_S
    while err is not None and err.errno == errno.EADDRINUSE and time.monotonic() < deadline:
        time.sleep(0.2)         # a killed predecessor's worker may still be letting go
        err = _bind_error(args.host, args.port)
    if err is not None:
        log.error("cannot serve at %s:%d: %s", args.host, args.port, err)
        print(f"zray dashboard: cannot serve at {args.host}:{args.port}: {err}",
              file=sys.stderr)
        sys.exit(2)
    log.info("dashboard serving at http://%s:%s (token required)", args.host, args.port)
    _application(args, token).run()


def _bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be served (taken, no such address), or None.
    Gunicorn would retry a taken port for 5 s and exit 1 (restarted for
    ever); this says it at once, with the exit code for bad settings."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            return err
    return None


def _settings(args) -> dict:
    """Gunicorn's settings for the dashboard (see gunicorn's docs)."""
    host = f"[{args.host}]" if ":" in args.host else args.host
    return {
        "bind": [f"{host}:{args.port}"],
        "workers": 1,                   # the app holds state: job processes, a live view
        "worker_class": "gthread",
        "threads": args.threads,
        "worker_connections": MAX_CONNECTIONS,
        "timeout": 30,                  # the worker's heartbeat; streams run in threads
        "graceful_timeout": GRACEFUL_S,
        "keepalive": 5,
        "preload_app": False,           # the app (zmq sockets, threads) is made after the fork
        "control_socket_disable": True,
        "forwarded_allow_ips": "",      # trust no X-Forwarded-* header
        "proxy_allow_ips": "",
        "proc_name": "zray.dashboard",
        "errorlog": "-",                # dashboard.out
        "accesslog": None,
        "loglevel": "warning",
        "post_fork": _post_fork,
        "post_worker_init": _post_worker_init,
        "worker_exit": _worker_exit,
    }


def _application(args, token):
    from gunicorn.app.base import BaseApplication

    class DashboardServer(BaseApplication):
        def load_config(self):
            for key, value in _settings(args).items():
                if key in self.cfg.settings:    # control_socket_*: gunicorn >= 24 only
                    self.cfg.set(key, value)

        def load(self):
            return _make_app(args, token)

    return DashboardServer()


# -- in the worker ---------------------------------------------------------------

#: what the worker made: the job supervisor (closed on exit) and the Event
#: set on SIGTERM (ends live streams and websockets)
_worker = {"supervisor": None, "stopping": threading.Event()}


def _make_app(args, token):
    """The Flask app, made in the worker. A GCS that does not answer ends
    the worker; gunicorn's master then exits with code 3 (restarted)."""
    from ..broker import sockets
    from ..broker.rpc import RpcClient
    from ..config import config
    from .app import create_app
    from .auth import Guard
    from .cluster_view import ClusterView
    from .jobs import JobSupervisor
    from . import priority

    priority.NICE = args.nice
    gcs = RpcClient(sockets.tcp_endpoint(args.gcs_address), config.rpc_timeout_s, "GCS")
    view = ClusterView(gcs)
    try:
        view.start()
    except TimeoutError as err:
        log.error("the GCS at %s does not answer: %s", args.gcs_address, err)
        raise RuntimeError(f"the GCS at {args.gcs_address} does not answer") from err
    supervisor = JobSupervisor(gcs, args.session_dir, args.gcs_address)
    supervisor.recover()
    _worker["supervisor"] = supervisor
    return create_app(gcs=gcs, view=view, supervisor=supervisor,
                      guard=Guard(token, args.host, args.allowed),
                      session_dir=args.session_dir, stopping=_worker["stopping"])


def _post_fork(server, worker) -> None:
    daemon.die_with_parent()            # SIGTERM when the master dies, even by SIGKILL
    daemon.set_process_name("zray.dashboard")
    if os.getppid() != server.pid:     # it died before that took effect
        os._exit(1)


def _post_worker_init(worker) -> None:
    """On SIGTERM, end the streams first, then let gunicorn stop."""
    gunicorn_exit = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        _worker["stopping"].set()
        if callable(gunicorn_exit):
            gunicorn_exit(signum, frame)
    signal.signal(signal.SIGTERM, on_term)


def _worker_exit(server, worker) -> None:
    """Stop the jobs this worker runs, then exit at once: threads still in
    a stream must not hold the process (gunicorn's thread pool is joined
    at interpreter exit)."""
    supervisor = _worker["supervisor"]
    if supervisor is None:              # never booted: keep gunicorn's exit code
        return
    _worker["stopping"].set()
    log.info("stopping: ending running jobs")
    supervisor.stop_grace_s = min(supervisor.stop_grace_s, 1.0)
    supervisor.close()
    log.info("dashboard stopped")
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
