"""Shared-memory arenas left by raylets that died without removing them.

A raylet removes its arena (``/dev/shm/zray_<session>_<node12>``) when it
stops; one killed with SIGKILL cannot. Whoever notices first removes it: the
driver that used it (at shutdown), ``zray stop``, or — here — the next raylet
started on the host, which calls ``remove_stale_arenas`` before making its own.

An arena is stale when all of these hold: it belongs to this user, a raylet
was started for it (its log file is in ``<temp_root>/<session>/logs``), and no
live raylet process was started for that session and node.
"""
from __future__ import annotations

import glob
import logging
import os

from .._private.node import command_line, zray_processes

log = logging.getLogger(__name__)


def _live_raylets() -> set[tuple[str, str]]:
    """(session name, node id hex[:12]) of every live raylet of this user here."""
    live = set()
    for proc in zray_processes():
        cmd = command_line(proc)
        if "zray.raylet" not in cmd[:3] or "--session-dir" not in cmd[:-1] \
                or "--node-id" not in cmd[:-1]:
            continue
        session = os.path.basename(cmd[cmd.index("--session-dir") + 1].rstrip("/"))
        live.add((session, cmd[cmd.index("--node-id") + 1][:12]))
    return live


def remove_stale_arenas(temp_root: str) -> list[str]:
    """Remove the arenas of dead raylets of sessions under ``temp_root``;
    returns the paths removed. Never raises for a file it cannot look at."""
    uid = os.getuid()
    candidates = []
    for path in glob.glob("/dev/shm/zray_*"):
        session, _, node12 = os.path.basename(path)[len("zray_"):].rpartition("_")
        if not session or len(node12) != 12:
            continue
        try:
            if os.stat(path).st_uid != uid:
                continue
        except OSError:
            continue
        logs = os.path.join(temp_root, session, "logs")
        if any(os.path.exists(os.path.join(logs, f"raylet_{node12}{ext}"))
               for ext in (".log", ".out")):
            candidates.append((path, session, node12))
    if not candidates:
        return []
    live = _live_raylets()
    removed = []
    for path, session, node12 in candidates:
        if (session, node12) in live:
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("cannot remove %s left by a dead raylet: %s", path, err)
            continue
        log.warning("removed %s: its raylet (session %s, node %s) died without removing it",
                    path, session, node12)
        removed.append(path)
    return removed
