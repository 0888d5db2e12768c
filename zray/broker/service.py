"""Server side of the fabric: a daemon's loop over its sockets.

``Service`` polls its ROUTER and any other sockets or file descriptors,
decodes each message and calls the handler named after it
(``SubmitTask`` -> ``handle_submit_task(req, msg)``). Garbage of any kind —
wrong frame count, junk payload, unknown code, wrong arity, a handler that
raises — is logged with a reason and dropped; the loop keeps serving. The
log is rate-limited per peer, so no peer can flood it. Sending never blocks:
a reply to a peer that does not read, or that left, is dropped and logged.
"""
from __future__ import annotations

import logging
import os
import re
import time

import zmq

from . import protocol, sockets

log = logging.getLogger(__name__)

_NOBLOCK = int(zmq.NOBLOCK)

#: messages dropped from one peer are logged at most once in this many seconds
DROP_LOG_INTERVAL_S = 10.0


def _snake(name: str) -> str:
    """``SubmitTask`` -> ``submit_task``, ``KVPut`` -> ``kv_put``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class Request:
    """Who sent a message, on which socket, and how to answer it."""
    __slots__ = ("identity", "corr", "blobs", "sock")

    def __init__(self, identity: bytes, corr: bytes, blobs, sock=None):
        self.identity = identity
        self.corr = corr
        self.blobs = blobs
        self.sock = sock


class Service:
    """Base of a daemon: register sockets and timers, then ``run()``."""

    name = "service"

    def __init__(self):
        self._poller = zmq.Poller()
        self._handlers: dict = {}           # socket or fd -> callable
        self._timers: list = []             # [next_due, interval, fn]
        self._soon: list = []               # fns for the next pass of the loop (call_soon)
        self._dispatch: dict[int, object] = {}
        for code, cls in protocol.message_types().items():
            fn = getattr(self, "handle_" + _snake(cls.__name__), None)
            if fn is not None:
                self._dispatch[code] = fn
        self.router: zmq.Socket | None = None
        self.running = True
        self.dropped = 0
        self.send_failures = 0
        self.failed = 0                      # requests whose handler raised
        self._failing: set[bytes] = set()    # peers a send failed to, logged once
        self._drop_log: dict = {}            # peer -> [last logged, complaints not logged]
        # stop() (often from a signal handler) writes here to end a poll at once
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.watch(self._wake_r, lambda fd: self._drain_wakeups())

    # -- registration -----------------------------------------------------
    def serve(self, router: zmq.Socket) -> None:
        """Serve requests arriving on ``router`` (the first one served is the
        default for ``send_to``)."""
        if self.router is None:
            self.router = router
        self.watch(router, self._on_router)

    def watch(self, sock_or_fd, handler) -> None:
        self._handlers[sock_or_fd] = handler
        self._poller.register(sock_or_fd, zmq.POLLIN)

    def unwatch(self, sock_or_fd) -> None:
        self._handlers.pop(sock_or_fd, None)
        try:
            self._poller.unregister(sock_or_fd)
        except KeyError:
            pass

    def every(self, interval: float, fn) -> None:
        self._timers.append([time.monotonic() + interval, interval, fn])

    def call_soon(self, fn) -> None:
        """Call ``fn`` once, right after the loop served the sockets that are
        ready now (without waiting for more): a long job done in slices, each
        asking for the next, lets requests in between."""
        self._soon.append(fn)

    # -- answering --------------------------------------------------------
    def reply(self, req: Request, message, blobs=()) -> None:
        if not req.corr:
            return                          # one-way message: nobody waits
        self.send_to(req.identity, message, req.corr, blobs, req.sock)

    def send_to(self, identity: bytes, message, corr: bytes = b"", blobs=(),
                sock: zmq.Socket | None = None) -> bool:
        """Send on a ROUTER to a connected peer; False if it is gone or does
        not read (its queue is full): never blocks. A failure is logged once
        per peer until a send to it succeeds again."""
        try:
            sockets.send_frames(sock or self.router,
                                [identity, corr, protocol.encode(message), *blobs], _NOBLOCK)
        except zmq.ZMQError as exc:     # EHOSTUNREACH: disconnected; EAGAIN: does not read
            self.send_failures += 1
            if identity not in self._failing:
                if len(self._failing) > 10_000:
                    self._failing.clear()
                self._failing.add(identity)
                log.warning("%s: cannot send %s to %r: %s (%s); further failures to send "
                            "to it are not logged", self.name, type(message).__name__,
                            identity[:16], exc,
                            "it does not read its replies" if isinstance(exc, zmq.Again)
                            else "it went away")
            return False
        if self._failing:
            self._failing.discard(identity)
        return True

    # -- the loop ---------------------------------------------------------
    def _on_router(self, sock: zmq.Socket) -> None:
        for _ in range(1000):                # drain a burst, then let timers run
            try:
                frames = sockets.recv_frames(sock, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.dispatch_frames(frames[0].bytes, frames[1:], sock)

    def dispatch_frames(self, identity: bytes, frames, sock=None) -> None:
        """Decode ``[corr, payload, *blobs]`` and call its handler."""
        if len(frames) < 2:
            return self._drop(identity, f"{len(frames)} frame(s), expected at least 2")
        corr = frames[0].bytes
        if len(corr) not in (0, 8):
            return self._drop(identity, f"correlation id of {len(corr)} bytes")
        try:
            msg = protocol.decode(frames[1].buffer)
        except protocol.ProtocolError as exc:
            self._drop(identity, str(exc))
            if corr:        # a request: tell the sender instead of leaving it waiting
                self.send_to(identity, protocol.ErrorReply("ProtocolError", str(exc)), corr,
                             sock=sock)
            return
        handler = self._dispatch.get(msg.CODE)
        req = Request(identity, corr, frames[2:], sock)
        if handler is None:
            self._drop(identity, f"{type(msg).__name__} is not served here")
            self.reply(req, protocol.ErrorReply(
                "ProtocolError", f"{self.name} does not serve {type(msg).__name__}"))
            return
        try:
            handler(req, msg)
        except Exception as exc:
            self.failed += 1
            untold = self._loggable((b"failed", identity))
            if untold is not None:
                log.exception("%s: %s from peer %r failed%s", self.name, type(msg).__name__,
                              identity[:16], f" ({untold} more failures of its requests since "
                                             f"the last report)" if untold else "")
            self.reply(req, protocol.ErrorReply(type(exc).__name__, str(exc)))

    def _drop(self, identity: bytes, reason: str) -> None:
        """Count and log a dropped message (rate-limited per peer)."""
        self.dropped += 1
        untold = self._loggable(identity)
        if untold is not None:
            log.warning("%s: dropped a message from peer %r: %s%s", self.name, identity[:16],
                        reason, f" ({untold} more dropped from it since the last report)"
                        if untold else "")

    def _loggable(self, key) -> int | None:
        """Whether to log a complaint about a peer: None to stay silent, else
        how many complaints were left out before it. The first complaint is
        logged, then at most one per DROP_LOG_INTERVAL_S (a peer sending
        garbage in a loop cannot flood the log)."""
        now = time.monotonic()
        seen = self._drop_log.get(key)
        if seen is not None and now - seen[0] < DROP_LOG_INTERVAL_S:
            seen[1] += 1
            return None
        if len(self._drop_log) > 10_000:
            self._drop_log.clear()
        self._drop_log[key] = [now, 0]
        return seen[1] if seen is not None else 0

    def run(self) -> None:
        while self.running:
            self.run_once()

    def run_once(self, max_wait: float = 1.0) -> None:
        """Run the timers that are due, then wait at most ``max_wait``
        seconds (less if a timer falls due first, none if ``call_soon`` was
        asked) for the sockets, serve what arrived, then call what
        ``call_soon`` was given. ``stop()`` ends the wait at once. Only one
        thread at a time may run it (ZeroMQ sockets are not thread-safe)."""
        now = time.monotonic()
        wait = max_wait
        for timer in self._timers:
            if timer[0] <= now:
                timer[0] = now + timer[1]
                try:
                    timer[2]()
                except Exception:
                    log.exception("%s: timer %s failed", self.name, timer[2])
            wait = min(wait, timer[0] - now)
        if self._soon:
            wait = 0
        for sock, _ in self._poller.poll(max(0, int(wait * 1000))):
            handler = self._handlers.get(sock)
            if handler is not None:
                handler(sock)
        if self._soon:
            soon, self._soon = self._soon, []
            for fn in soon:
                try:
                    fn()
                except Exception:
                    log.exception("%s: %s failed", self.name, fn)

    def interrupt(self) -> None:
        """End the wait of ``run_once`` now, without stopping ``run``."""
        try:
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")
        except OSError:         # full: a wakeup is pending anyway
            pass

    def stop(self) -> None:
        """End ``run()`` now (safe to call from a signal handler)."""
        self.running = False
        try:
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")
        except OSError:         # full: a wakeup is pending anyway
            pass

    def _drain_wakeups(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except OSError:
            pass

    def close(self) -> None:
        """Release what ``Service`` holds (subclasses close their sockets first)."""
        self.unwatch(self._wake_r)
        fds, (self._wake_r, self._wake_w) = (self._wake_r, self._wake_w), (-1, -1)
        for fd in fds:
            if fd >= 0:
                os.close(fd)
