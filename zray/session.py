"""The session directory: where a cluster's logs, sockets and spill files live.

Layout: ``<temp_dir>/session_<time>_<pid>/{logs,sockets,spill}``, private to
the user (0700). ``<temp_dir>/current_cluster`` names the address of the
cluster last started with ``zray start --head`` (used by ``address="auto"``).
"""
from __future__ import annotations

import json
import os
import time

from .config import config


def _private_dir(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def new_session_dir() -> str:
    """Make a fresh session directory (never one that exists: a process may
    start several sessions within a second) and return its path."""
    root = _private_dir(config.temp_dir)
    base = os.path.join(root, f"session_{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}")
    path, n = base, 1
    while True:
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"      # not "_": arena names are <session>_<node>
    _private_dir(path)
    for sub in ("logs", "sockets", "spill"):
        _private_dir(os.path.join(path, sub))
    return path


def session_name(session_dir: str) -> str:
    return os.path.basename(session_dir.rstrip("/"))


def socket_path(session_dir: str, name: str) -> str:
    return "ipc://" + os.path.join(session_dir, "sockets", name)


def raylet_ipc(session_dir: str, node_id: bytes) -> str:
    """The local endpoint of a node's raylet."""
    return socket_path(session_dir, f"raylet_{node_id.hex()[:12]}")


def inbox_ipc(session_dir: str, worker_id: bytes) -> str:
    """The local endpoint of a core worker's inbox."""
    return socket_path(session_dir, f"w_{worker_id.hex()[:16]}")


def actor_ipc(session_dir: str, worker_id: bytes) -> str:
    """The local endpoint where an actor's worker takes calls."""
    return socket_path(session_dir, f"a_{worker_id.hex()[:16]}")


def route(address, node_id: bytes, session_dir: str, local=inbox_ipc) -> str:
    """How to reach ``address`` (endpoint, worker id, pid, node id) from
    ``node_id``: its local IPC endpoint on the same node, else its TCP one."""
    if address[3] == node_id:
        return local(session_dir, address[1])
    return address[0]


def log_path(session_dir: str, name: str) -> str:
    return os.path.join(session_dir, "logs", name)


def spill_dir(session_dir: str, node_id_hex: str) -> str:
    return _private_dir(os.path.join(session_dir, "spill", node_id_hex[:12]))


def _current_file() -> str:
    return os.path.join(config.temp_dir, "current_cluster")


def write_current_cluster(gcs_address: str, session_dir: str) -> None:
    _private_dir(config.temp_dir)
    tmp = _current_file() + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"gcs_address": gcs_address, "session_dir": session_dir}, f)
    os.replace(tmp, _current_file())


def read_current_cluster() -> dict | None:
    try:
        with open(_current_file()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def clear_current_cluster() -> None:
    try:
        os.unlink(_current_file())
    except FileNotFoundError:
        pass
