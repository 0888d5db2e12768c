"""Watching the local raylet (the Paranoid Pirate's heartbeat, client side).

A core worker does all its work through the raylet of its node, which runs
on the same host; when that raylet dies, every caller waiting on it must be
told at once instead of waiting for ever. ``RayletWatch.check()``, called
often from the core worker's I/O thread, tells whether it died:

* by its pid (the raylet gives it at registration): a process that is gone,
  a zombie, or another process under the same pid means the raylet died;
  noticed within ``CHECK_INTERVAL_S``;
* when the pid is unknown, by pings on a DEALER of its own: no answer for
  ``config.node_timeout_s`` means the raylet died or hangs.

The watch only observes; what to do about a death is the core worker's.
"""
from __future__ import annotations

import logging
import os
import time

import psutil
import zmq

from ..broker import protocol as p
from ..broker import sockets
from ..config import config
from ..exceptions import NodeDiedError

log = logging.getLogger(__name__)

#: how often the raylet's pid is looked at
CHECK_INTERVAL_S = 0.2
#: how often a ping goes out when the pid is unknown
PING_INTERVAL_S = 1.0


class RayletWatch:
    """Tells whether the raylet at ``endpoint`` (pid ``pid``, 0 if unknown)
    serving node ``node_id`` still lives. Only one thread may call it."""

    def __init__(self, endpoint: str, node_id: bytes, pid: int):
        self.endpoint = endpoint
        self.node_id = node_id
        self.pid = pid
        self._proc = _process(pid)
        self._next_check = 0.0
        self._ping = None if self._proc is not None else sockets.dealer(endpoint)
        self._last_answer = time.monotonic()
        self._next_ping = 0.0
        self._dead: NodeDiedError | None = None

    def describe(self) -> str:
        who = f"pid {self.pid}, " if self.pid else ""
        return f"the raylet of node {self.node_id.hex()[:12]} ({who}at {self.endpoint})"

    def check(self) -> NodeDiedError | None:
        """The error to fail callers with once the raylet is dead, else None.
        Cheap: does real work at most every CHECK_INTERVAL_S."""
        if self._dead is not None:
            return self._dead
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + CHECK_INTERVAL_S
        why = self._pid_gone() if self._proc is not None else self._silent_for(now)
        if why:
            self._dead = NodeDiedError(
                f"{self.describe()} {why}: this process can no longer run tasks, call "
                f"actors or get objects through it. Call zray.shutdown() (and zray.init() "
                f"to start again).",
                self.node_id.hex(), self.pid)
        return self._dead

    def gone(self) -> bool:
        """Whether the raylet process is certainly gone (so its files may go)."""
        return self._proc is not None and bool(self._pid_gone())

    def _pid_gone(self) -> str:
        try:
            if not self._proc.is_running():         # pid reused by another process
                return "died"
            if self._proc.status() == psutil.STATUS_ZOMBIE:
                return "died"
        except psutil.NoSuchProcess:
            return "died"
        except psutil.Error as err:     # e.g. access denied: watch by ping from now on
            log.warning("cannot look at the raylet's pid %d: %s; watching it by ping",
                        self.pid, err)
            self._proc = None
            self._last_answer = time.monotonic()
            self._ping = sockets.dealer(self.endpoint)
        return ""

    def _silent_for(self, now: float) -> str:
        """Ping the raylet; how long it has been silent, if too long."""
        try:
            while True:
                frames = self._ping.recv_multipart(zmq.NOBLOCK)
                if len(frames) >= 2 and frames[0] == _PING_CORR:
                    self._last_answer = now
        except zmq.Again:
            pass
        if now >= self._next_ping:
            self._next_ping = now + PING_INTERVAL_S
            try:
                self._ping.send_multipart([_PING_CORR, p.encode(p.Ping())], zmq.NOBLOCK)
            except zmq.Again:
                pass                # queue full: the raylet is not reading anyway
        silent = now - self._last_answer
        if silent > config.node_timeout_s:
            return f"did not answer pings for {silent:.0f}s"
        return ""

    def close(self) -> None:
        if self._ping is not None:
            self._ping.close(linger=0)
            self._ping = None


#: correlation id of pings (a reply to any of them shows the raylet serves)
_PING_CORR = b"rayletok"


def _process(pid: int) -> psutil.Process | None:
    """The live process ``pid`` on this host, or None when it cannot be watched."""
    if pid <= 0:
        return None
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        # already gone at registration; a Process that raises on every look
        # would hide that, so watch by ping (it will not answer)
        return None
    except psutil.Error as err:
        log.warning("cannot watch the raylet's pid %d: %s; watching by ping", pid, err)
        return None


def remove_leftovers(arena_path: str, endpoint: str) -> None:
    """Remove the shared-memory arena and socket file of a raylet that died
    without removing them itself (killed). Missing files are fine."""
    paths = [arena_path]
    if endpoint.startswith("ipc://"):
        paths.append(endpoint[len("ipc://"):])
    for path in paths:
        try:
            os.unlink(path)
            log.info("removed %s left by a dead raylet", path)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("cannot remove %s left by a dead raylet: %s", path, err)
