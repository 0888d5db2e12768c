"""The dashboard daemon's command line, shared by its supervisor and server."""
from __future__ import annotations

import argparse

from .auth import is_loopback
from .token_file import ENV_TOKEN


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m zray.dashboard",
                                 description="zray's dashboard: pages, Jobs and State APIs")
    ap.add_argument("--gcs-address", required=True, help="HOST:PORT of the GCS")
    ap.add_argument("--session-dir", required=True)
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default loopback; another needs a token)")
    ap.add_argument("--port", type=int, default=8265)
    ap.add_argument("--token-file", default="",
                    help=f"file holding the token (mode 0600); else ${ENV_TOKEN}")
    ap.add_argument("--allowed-hosts", default="",
                    help="comma-separated extra host names requests may name in Host")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--nice", type=int, default=10,
                    help="how much lower the threads following the cluster's events and "
                         "feeding live pages run, so they yield the CPU to the cluster "
                         "(0: not lowered; default 10)")
    ap.add_argument("--start-delay", type=float, default=0.0,
                    help="seconds the supervisor waits before starting the server")
    return ap


def parse_args(argv):
    """Parsed options; exits with code 2 and a message for bad ones (a
    non-loopback bind without a token among them)."""
    ap = parser()
    args = ap.parse_args(argv)
    if not 0 <= args.port < 65536:
        ap.error(f"--port must be 0-65535, got {args.port}")
    if not args.token_file:
        import os
        if not os.environ.get(ENV_TOKEN):
            where = "" if is_loopback(args.host) else (
                f" (refusing to serve on {args.host} without one: anyone who reaches that "
                f"address could run commands on this host)")
            ap.error(f"no dashboard token{where}: pass --token-file or set {ENV_TOKEN}")
    if not 0 <= args.nice <= 19:
        ap.error(f"--nice must be 0-19, got {args.nice}")
    args.allowed = [h for h in args.allowed_hosts.split(",") if h.strip()]
    return args
