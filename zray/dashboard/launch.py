"""Starting the dashboard daemon for ``zray start --head`` and a local
``zray.init()``, and finding a running one (for ``zray job``, the State API
client). Imports nothing heavy: the daemon imports Flask, not its starter.

A started dashboard is recorded in ``<session>/dashboard.json``
(``{"url", "host", "port", "token_file"}``, mode 0600); its token is in
``<session>/dashboard.token`` (0600) unless ``--dashboard-token-file``
names another file.
"""
from __future__ import annotations

import json
import os
import socket

from .token_file import ENV_TOKEN, TOKEN_FILE_NAME, read_token_file, write_token_file

DEFAULT_PORT = 8265
INFO_FILE = "dashboard.json"


class DashboardInfo(dict):
    """``url``, ``host``, ``port``, ``token_file`` of a dashboard."""

    @property
    def url(self) -> str:
        return self["url"]

    @property
    def token_file(self) -> str:
        return self["token_file"]


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str, port: int | None) -> int:
    """``port`` if given; else 8265 when free here, else a free port."""
    if port is not None:
        return int(port)
    if port_free(host, DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def token_file_for(session_dir: str, token_file: str | None = None) -> tuple[str, bool]:
    """The token file the dashboard uses: ``token_file`` (checked), else
    one made in the session from ``$ZRAY_DASHBOARD_TOKEN`` or a fresh
    secret. Returns (path, whether a new token was made)."""
    if token_file:
        read_token_file(token_file)
        return os.path.abspath(token_file), False
    path = os.path.join(session_dir, TOKEN_FILE_NAME)
    from_env = os.environ.get(ENV_TOKEN, "").strip() or None
    write_token_file(path, from_env)
    return path, from_env is None


def start(node, gcs_address: str, *, host: str = "127.0.0.1", port: int | None = None,
          token_file: str | None = None, allowed_hosts=(),
          start_delay: float = 0.0) -> DashboardInfo:
    """Start the dashboard daemon with ``node`` (a NodeProcesses) without
    waiting for it (its server starts ``start_delay`` seconds later);
    returns where it will serve, also recorded in the session."""
    port = pick_port(host, port)
    token_file, _ = token_file_for(node.session_dir, token_file)
    args = ["zray.dashboard", "--gcs-address", gcs_address, "--session-dir", node.session_dir,
            "--host", host, "--port", str(port), "--token-file", token_file]
    if start_delay:
        args += ["--start-delay", str(start_delay)]
    if allowed_hosts:
        args += ["--allowed-hosts", ",".join(allowed_hosts)]
    node.start_dashboard(args)
    shown = f"[{host}]" if ":" in host else host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else shown
    info = DashboardInfo(url=f"http://{shown}:{port}", host=host, port=port,
                         token_file=token_file)
    path = os.path.join(node.session_dir, INFO_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(info), f)
    return info


def find(session_dir: str | None = None) -> DashboardInfo | None:
    """The dashboard recorded in ``session_dir`` (default: this process's
    cluster, else the one ``zray start --head`` started here)."""
    if session_dir is None:
        from ..worker import global_state
        if global_state.worker is not None:
            session_dir = global_state.worker.session_dir
        else:
            from .._private.session import read_current_cluster
            current = read_current_cluster()
            session_dir = current.get("session_dir") if current else None
    if not session_dir:
        return None
    try:
        with open(os.path.join(session_dir, INFO_FILE)) as f:
            return DashboardInfo(json.load(f))
    except (OSError, ValueError):
        return None
