"""``python -m zray.dashboard.server ...`` (started by the dashboard's
supervisor, same options): the web server itself, on waitress.

Exit codes: 0 stopped, 1 failed (the supervisor restarts it), 2 bad
settings or the port is taken (the supervisor gives up).
"""
from __future__ import annotations

import logging
import os
import sys
import threading

from .._private import daemon
from ..broker import sockets
from ..broker.rpc import RpcClient
from ..config import config
from .._private.session import log_path
from .auth import Guard
from .token_file import ENV_TOKEN, TokenError, read_token_file
from .options import parse_args

log = logging.getLogger("zray.dashboard")


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

    import waitress.server

    from .app import create_app
    from .cluster_view import ClusterView
    from .jobs import MAX_PACKAGE_BYTES, JobSupervisor

    gcs = RpcClient(sockets.tcp_endpoint(args.gcs_address), config.rpc_timeout_s, "GCS")
    view = ClusterView(gcs)
    try:
        view.start()
    except TimeoutError as err:
        log.error("the GCS at %s does not answer: %s", args.gcs_address, err)
        sys.exit(1)
    supervisor = JobSupervisor(gcs, args.session_dir, args.gcs_address)
    supervisor.recover()
    app = create_app(gcs=gcs, view=view, supervisor=supervisor,
                     guard=Guard(token, args.host, args.allowed),
                     session_dir=args.session_dir)
    try:
        server = waitress.server.create_server(
            app, host=args.host, port=args.port, threads=args.threads,
            max_request_body_size=MAX_PACKAGE_BYTES + (1 << 20), channel_timeout=120,
            connection_limit=200, ident="zray-dashboard", expose_tracebacks=False,
            clear_untrusted_proxy_headers=True)
    except OSError as err:
        log.error("cannot serve at %s:%d: %s", args.host, args.port, err)
        print(f"zray dashboard: cannot serve at {args.host}:{args.port}: {err}",
              file=sys.stderr)
        sys.exit(2)
    log.info("dashboard serving at http://%s:%s (token %s)", args.host, server.effective_port,
             "required" if token else "NOT required: loopback only")

    stopping = threading.Event()

    def shut_down():
        stopping.wait()
        log.info("stopping: ending running jobs")
        supervisor.stop_grace_s = min(supervisor.stop_grace_s, 1.0)
        supervisor.close()
        log.info("dashboard stopped")
        logging.shutdown()
        os._exit(0)             # waitress has no clean stop with streams open

    threading.Thread(target=shut_down, name="zray-dashboard-stop", daemon=True).start()
    daemon.on_terminate(stopping.set)
    try:
        server.run()
    except Exception:
        log.exception("the web server failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
