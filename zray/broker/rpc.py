"""Client side of the fabric: synchronous requests and one-way sends.

``RpcClient`` is the lazy-pirate request/reply client: one DEALER, a lock so
any thread may call, a correlation id so a late reply to a timed-out request
is never taken for the answer to the next one, and a bounded wait.
``Sender`` keeps one DEALER per peer endpoint for one-way messages.
"""
from __future__ import annotations

import itertools
import os
import threading

import zmq

from . import protocol, sockets

_MORE = int(zmq.SNDMORE)


class RemoteError(RuntimeError):
    """The server answered a request with an error."""

    def __init__(self, error_type: str, message: str):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class RpcClient:
    """Requests to one server; safe to share between threads."""

    def __init__(self, endpoint: str, timeout: float = 30.0, name: str = "server"):
        self.endpoint = endpoint
        self.timeout = timeout
        self.name = name
        self._lock = threading.Lock()
        self._sock = sockets.dealer(endpoint)
        self._ids = itertools.count(1)
        self._pid = os.getpid()

    def call(self, message, blobs=(), timeout: float | None = None):
        """Send ``message`` and return the decoded reply (and its blobs when
        the server sent any, as ``(reply, blobs)``).

        Raises ``TimeoutError`` when no answer comes in time and
        ``RemoteError`` when the server answers with an error."""
        wait_ms = int(1000 * (self.timeout if timeout is None else timeout))
        with self._lock:
            corr = next(self._ids).to_bytes(8, "little")
            sockets.send_frames(self._sock, [corr, protocol.encode(message), *blobs])
            while True:
                if not self._sock.poll(wait_ms):
                    raise TimeoutError(
                        f"no answer from the {self.name} at {self.endpoint} within "
                        f"{wait_ms / 1000:.1f}s to {type(message).__name__}")
                frames = sockets.recv_frames(self._sock)
                if len(frames) >= 2 and frames[0].bytes == corr:
                    break          # else: a late answer to an earlier request
        reply = protocol.decode(frames[1].buffer)
        if isinstance(reply, protocol.ErrorReply):
            raise RemoteError(reply.error_type, reply.message)
        if len(frames) > 2:
            return reply, frames[2:]
        return reply

    def send(self, message, blobs=()) -> None:
        """One-way message: no answer is expected."""
        with self._lock:
            sockets.send_frames(self._sock, [b"", protocol.encode(message), *blobs])

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._sock.close(linger=sockets.LINGER_MS)


class Sender:
    """One-way messages to many peers, each over its own cached DEALER."""

    def __init__(self):
        self._lock = threading.Lock()
        self._socks: dict[str, zmq.Socket] = {}

    def send(self, endpoint: str, message, blobs=()) -> None:
        payload = protocol.encode(message)
        with self._lock:
            sock = self._socks.get(endpoint)
            if sock is None:
                sock = self._socks[endpoint] = sockets.dealer(endpoint)
            sockets.send_frames(sock, [b"", payload, *blobs])

    def send_many(self, endpoint: str, payloads: list[bytes]) -> None:
        """Several encoded one-way messages to one peer, in order."""
        with self._lock:
            sock = self._socks.get(endpoint)
            if sock is None:
                sock = self._socks[endpoint] = sockets.dealer(endpoint)
            for payload in payloads:
                sock.send(b"", _MORE)
                sock.send(payload, 0)

    def forget(self, endpoint: str) -> None:
        """Close the socket to a peer that went away."""
        with self._lock:
            sock = self._socks.pop(endpoint, None)
        if sock is not None:
            sock.close(linger=0)

    def close(self) -> None:
        with self._lock:
            for sock in self._socks.values():
                sock.close(linger=sockets.LINGER_MS)
            self._socks.clear()
