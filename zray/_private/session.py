"""The session directory: where a cluster's logs, sockets and spill files live.

Layout: ``<temp_dir>/session_<time>_<pid>/{logs,sockets,spill}``, private to
the user (0700). ``<temp_dir>/current_cluster`` names the address of the
cluster last started with ``zray start --head`` (used by ``address="auto"``).

The default temp dir is per user (``/tmp/zray-<uid>``), so users of one host
never share it. zray never uses a directory, nor follows a pointer file, that
another user could have planted: each must belong to this user (or root) and
be writable by no one else, else ``UnsafePathError`` says which and why.
"""
from __future__ import annotations

import json
import os
import time

from ..broker.protocol import Address
from ..config import config


class UnsafePathError(PermissionError):
    """A session path belongs to another user or is open to others."""


def untrusted_reason(path: str, st: os.stat_result | None = None) -> str | None:
    """Why ``path`` must not be trusted by this user's processes (owned by
    someone other than this user or root, or writable by group or others);
    None when it may be trusted."""
    st = st or os.lstat(path)
    if st.st_uid not in (os.getuid(), 0):
        return f"it belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"it is writable by other users (mode {st.st_mode & 0o777:o})"
    return None


def check_trusted(path: str, what: str) -> None:
    """Raise UnsafePathError unless ``path`` may be trusted (see untrusted_reason)."""
    reason = untrusted_reason(path)
    if reason:
        raise UnsafePathError(f"refusing to use {what} {path}: {reason}; another user may "
                              f"have made it. Remove it, or set ZRAY_TEMP_DIR to a "
                              f"directory of your own")


def _private_dir(path: str) -> str:
    """Make ``path`` (mode 0700) or check that the existing one is a real
    directory of this user, and make it private."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as err:
        raise UnsafePathError(f"cannot create the zray directory {path}: "
                              f"{err.strerror or err}; set ZRAY_TEMP_DIR to a directory "
                              f"you may write") from None
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path):
        raise UnsafePathError(f"refusing to use {path}: it is not a plain directory "
                              f"(a symlink?); remove it or set ZRAY_TEMP_DIR")
    if st.st_uid != os.getuid():
        raise UnsafePathError(f"refusing to use {path}: it belongs to uid {st.st_uid}, "
                              f"not to you (uid {os.getuid()}); set ZRAY_TEMP_DIR to a "
                              f"directory of your own")
    if st.st_mode & 0o077:
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
    address = Address._make(address)        # a list, off the wire: read it by name
    if address.node_id == node_id:
        return local(session_dir, address.worker_id)
    return address.endpoint


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
    """The cluster ``zray start --head`` recorded here, or None. Raises
    UnsafePathError when the record, or its directory, could have been
    written by another user."""
    path = _current_file()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        check_trusted(config.temp_dir, "the zray temp directory")
        reason = untrusted_reason(path, os.fstat(f.fileno()))
        if reason:
            raise UnsafePathError(f"refusing to follow {path}: {reason}; another user may "
                                  f"have made it. Remove it, or give the cluster's "
                                  f"address explicitly")
        try:
            current = json.load(f)
        except ValueError:
            return None
    if not isinstance(current, dict) or not isinstance(current.get("gcs_address"), str):
        return None
    return current


def clear_current_cluster() -> None:
    try:
        os.unlink(_current_file())
    except FileNotFoundError:
        pass
