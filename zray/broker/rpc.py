"""Client side of the fabric: synchronous requests and one-way sends.

``RpcClient`` is the lazy-pirate request/reply client: one DEALER, a lock so
any thread may call, a correlation id so a late reply to a timed-out request
is never taken for the answer to the next one, and a bounded wait. When no
answer comes it says why, as far as the connection tells: a CURVE handshake
refused for a key, a peer that is not a ZeroMQ server, or a server that took
the request and stayed silent.

``Sender`` keeps one DEALER per peer endpoint for one-way messages; it never
blocks its caller, whatever the peer at that endpoint does.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import threading
import time

import zmq

from . import protocol, sockets

log = logging.getLogger(__name__)

_MORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
#: bound on the probe that tells why no answer came (connect, then read)
_PROBE_S = 0.25
#: how often a waiting call looks at ``RpcClient.broken``
_BROKEN_CHECK_S = 0.2


class RemoteError(RuntimeError):
    """The server answered a request with an error."""

    def __init__(self, error_type: str, message: str):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class NoAnswerError(TimeoutError):
    """A request got no answer in time. ``wrong_key`` is True only when the
    CURVE handshake with the server really failed for a key (the server holds
    another cluster key, or refused ours); ``reason`` says what was seen."""

    def __init__(self, message: str, reason: str, wrong_key: bool):
        super().__init__(message)
        self.reason = reason
        self.wrong_key = wrong_key


# --------------------------------------------------------------------------
# what the connection of a client socket went through (for NoAnswerError)
# --------------------------------------------------------------------------

_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_WATCHED = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | _HANDSHAKE_FAILED)
_monitor_ids = itertools.count()


class _ConnectionWatch:
    """Reads a client socket's monitor, only when asked why no answer came."""

    def __init__(self, sock: zmq.Socket):
        addr = f"inproc://zray-rpc-monitor-{os.getpid()}-{next(_monitor_ids)}"
        self._mon = sock.get_monitor_socket(_WATCHED, addr)
        self.connected = self.disconnected = self.secured = False
        self.failure: tuple[int, int] | None = None      # (event, value) of the last failure
        #: connections made and lost so far; ``down_since``: when the last
        #: one was lost (or this watch began), None while connected
        self.handshakes = self.disconnects = 0
        self.down_since: float | None = time.monotonic()

    def _drain(self) -> None:
        while True:
            try:
                event = sockets.monitor_event(self._mon.recv_multipart(_NOBLOCK))
            except zmq.Again:
                return
            kind = int(event["event"])
            if kind & zmq.EVENT_CONNECTED:
                self.connected = True
            elif kind & zmq.EVENT_DISCONNECTED:
                self.disconnected = True
                self.disconnects += 1
                if self.down_since is None:
                    self.down_since = time.monotonic()
            elif kind & zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.secured = True
                self.handshakes += 1
                self.down_since = None
                self.failure = None
            elif kind & _HANDSHAKE_FAILED:
                self.failure = (kind, int(event["value"]))

    def diagnose(self, endpoint: str) -> tuple[str, bool]:
        """(what was seen, whether a handshake failed for a key)."""
        self._drain()
        if self.failure is not None:
            kind, value = self.failure
            if kind & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return (f"the server refused this process's key (ZAP status {value})", True)
            if kind & zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # any service that hangs up looks like this: is it a CURVE server?
                mechanism = zmtp_mechanism(endpoint, timeout=_PROBE_S)
                if mechanism == "CURVE":
                    return ("the server (a ZeroMQ CURVE server) closed the connection during "
                            "the CURVE handshake: it holds another cluster key", True)
                if mechanism:
                    return (f"the server is a ZeroMQ server using {mechanism} security, not "
                            f"CURVE (not a zray cluster with a key)", False)
                return ("something listens there but it is not a ZeroMQ server (it closed "
                        f"the connection: {os.strerror(value)})", False)
            if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
                return "the CURVE handshake failed: the server holds another cluster key", True
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                return ("the server is a ZeroMQ server without CURVE security (not a zray "
                        "cluster with a key)", False)
            return f"the server is not a zray server (ZMTP error {value:#x})", False
        if self.secured:
            return "the connection and the cluster key were accepted, but no answer came", False
        if self.disconnected:
            return ("something listens there but it is not a ZeroMQ server (it closed the "
                    "connection)", False)
        if self.connected:
            return ("something listens there but it never completed a ZeroMQ handshake",
                    False)
        return "no connection could be made", False

    def close(self) -> None:
        self._mon.close(linger=0)


def zmtp_mechanism(endpoint: str, timeout: float = 1.0) -> str | None:
    """The security mechanism ("CURVE", "NULL", ...) a ZeroMQ server at a
    ``tcp://`` endpoint announces in its ZMTP 3 greeting; None when what
    answers there is not a ZeroMQ server (or nothing answers in time)."""
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    greeting = (b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\0")
                + b"\0" * 32)
    data = b""
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(greeting)
            while len(data) < 64:
                chunk = conn.recv(64 - len(data))
                if not chunk:
                    break
                data += chunk
    except (OSError, ValueError):
        pass
    if len(data) < 64 or data[0] != 0xFF or data[9] != 0x7F or data[10] < 3:
        return None
    return data[12:32].rstrip(b"\0").decode("ascii", "replace") or None


def diagnose(endpoint: str, timeout: float = 1.0) -> tuple[str, bool]:
    """What a request to ``endpoint`` meets now: (a sentence, whether the
    CURVE handshake failed for a key). For error messages of clients."""
    client = RpcClient(endpoint, timeout, "server")
    try:
        client.call(protocol.Ping(), timeout=timeout)
        return "it answers now", False
    except NoAnswerError as err:
        return err.reason, err.wrong_key
    except RemoteError:
        return "it answers now", False
    finally:
        client.close()


class ServerUnreachableError(NoAnswerError):
    """A client that rides out server restarts had no connection to its
    server for its whole ``reconnect_timeout``."""


class RpcClient:
    """Requests to one server; safe to share between threads.

    With ``reconnect_timeout`` (seconds), the client rides out a restart of
    its server (the GCS under a supervisor): a request the server may have
    lost with its connection is sent again once it is back, and a call waits
    while there is no connection, for at most ``reconnect_timeout`` from
    when it was lost; then it raises ``unreachable_error(text)`` (default
    ``ServerUnreachableError``). A resent request may reach the server twice:
    use it for requests the server treats as idempotent."""

    def __init__(self, endpoint: str, timeout: float = 30.0, name: str = "server",
                 reconnect_timeout: float | None = None, unreachable_error=None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.name = name
        self.reconnect_timeout = reconnect_timeout
        self.unreachable_error = unreachable_error or (
            lambda text: ServerUnreachableError(text, "no connection", False))
        self._lock = threading.Lock()
        self._watch = None

        def watch(sock):
            # before the connection is made: a handshake done before the
            # monitor was attached would leave the client "away" forever
            self._watch = _ConnectionWatch(sock)
        try:
            self._sock = sockets.dealer(
                endpoint, before_connect=watch if endpoint.startswith("tcp://") else None)
        except BaseException:
            if self._watch is not None:
                self._watch.close()
            raise
        self._ids = itertools.count(1)
        self._pid = os.getpid()
        #: set (to an exception) once the server is known dead: calls under
        #: way and later ones raise it instead of waiting out their timeout
        self.broken: BaseException | None = None

    def _no_answer(self, what: str, wait_s: float) -> NoAnswerError:
        reason, wrong_key = (self._watch.diagnose(self.endpoint) if self._watch is not None
                             else ("no answer came", False))
        text = (f"no answer from the {self.name} at {self.endpoint} within {wait_s:.1f}s "
                f"to {what}: {reason}")
        if wrong_key:
            text += " (wrong cluster key?)"
        return NoAnswerError(text, reason, wrong_key)

    def call(self, message, blobs=(), timeout: float | None = None):
        """Send ``message`` and return the decoded reply (and its blobs when
        the server sent any, as ``(reply, blobs)``).

        Raises ``NoAnswerError`` (a ``TimeoutError``) when no answer comes in
        time, and ``RemoteError`` when the server answers with an error. Never
        waits longer than the timeout, even when the request cannot be sent,
        but for at most 0.5 s more to probe why no answer came."""
        wait_s = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait_s
        if self.broken is not None:
            raise self.broken
        with self._lock:
            corr = next(self._ids).to_bytes(8, "little")
            frames = [corr, protocol.encode(message), *blobs]
            while True:
                try:
                    sockets.send_frames(self._sock, frames, _NOBLOCK)
                    break
                except zmq.Again:       # no connection to queue on (yet): wait for one
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._sock.poll(int(left * 1000), zmq.POLLOUT):
                        raise self._no_answer(type(message).__name__, wait_s) from None
            riding = self.reconnect_timeout is not None and self._watch is not None
            if riding:
                self._watch._drain()
                seen = self._watch.disconnects
            while True:
                if riding:      # while the server is away its deadline waits, up to a bound
                    deadline = self._riding_deadline(deadline, wait_s, type(message).__name__)
                left = deadline - time.monotonic()
                if left > 0 and not self._sock.poll(int(min(left, _BROKEN_CHECK_S) * 1000)):
                    if self.broken is not None:
                        raise self.broken
                    if riding:
                        seen = self._resend_if_lost(frames, seen)
                    continue
                if left <= 0:
                    raise self._no_answer(type(message).__name__, wait_s)
                frames_in = sockets.recv_frames(self._sock)
                if len(frames_in) >= 2 and frames_in[0].bytes == corr:
                    frames = frames_in
                    break          # else: a late answer to an earlier request
        reply = protocol.decode(frames[1].buffer)
        if isinstance(reply, protocol.ErrorReply):
            raise RemoteError(reply.error_type, reply.message)
        if len(frames) > 2:
            return reply, frames[2:]
        return reply

    def _resend_if_lost(self, frames, seen: int) -> int:
        """(lock held) Send the request again if the connection dropped since
        it was (re)sent: the server may have died with it. ZeroMQ queues it
        until the connection is back. Returns the disconnects seen."""
        self._watch._drain()
        if self._watch.disconnects == seen:
            return seen
        try:
            sockets.send_frames(self._sock, frames, _NOBLOCK)
        except zmq.Again:
            return seen         # no pipe to queue on yet: try again at the next check
        log.info("the connection to the %s at %s dropped: request sent again", self.name,
                 self.endpoint)
        return self._watch.disconnects

    def _riding_deadline(self, deadline: float, wait_s: float, what: str) -> float:
        """(lock held) The call's deadline: while the server is away (no
        connection, no key refused) ``wait_s`` from now, until it has been
        away for ``reconnect_timeout``: then ``unreachable_error``."""
        self._watch._drain()
        down = self._watch.down_since
        if down is None or self._watch.failure is not None:
            return deadline
        now = time.monotonic()
        if now - down >= self.reconnect_timeout:
            raise self.unreachable_error(self._unreachable_text(what))
        return max(deadline, now + wait_s)

    def _unreachable_text(self, what: str) -> str:
        gone = time.monotonic() - self._watch.down_since
        return (f"the {self.name} at {self.endpoint} is unreachable: no connection to it for "
                f"{gone:.0f}s (waited up to {self.reconnect_timeout:.0f}s for it to come back, "
                f"to answer {what}); check that it runs (`zray status`), or raise "
                f"ZRAY_GCS_RECONNECT_TIMEOUT_S")

    def reconnections(self) -> int:
        """How many times the connection came back after it was lost (the
        server restarted); never blocks (a call under way may be counting)."""
        if self._watch is None:
            return 0
        if self._lock.acquire(blocking=False):
            try:
                self._watch._drain()
            finally:
                self._lock.release()
        return max(self._watch.handshakes - 1, 0)

    def send(self, message, blobs=()) -> None:
        """One-way message: no answer is expected."""
        with self._lock:
            sockets.send_frames(self._sock, [b"", protocol.encode(message), *blobs])

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                if self._watch is not None:
                    self._sock.disable_monitor()
                    self._watch.close()
                self._sock.close(linger=sockets.LINGER_MS)


class Sender:
    """One-way messages to many peers, each over its own cached DEALER.

    Never blocks: each peer has a bounded queue (``sockets.PEER_HWM``); a
    message that does not fit — the peer is slow, silent, not a zray process,
    or its address does not parse — is dropped, and logged once per peer
    until a send to it succeeds again. At most ``max_peers`` sockets stay
    open; the least recently used is closed to make room."""

    def __init__(self, name: str = "sender", max_peers: int = 1024):
        self.name = name
        self.max_peers = max_peers
        self.dropped = 0
        self._lock = threading.Lock()
        self._socks: collections.OrderedDict[str, zmq.Socket] = collections.OrderedDict()
        self._dropping: dict[str, int] = {}     # peer -> messages dropped since the last log

    def _sock(self, endpoint: str) -> zmq.Socket:
        sock = self._socks.get(endpoint)
        if sock is not None:
            self._socks.move_to_end(endpoint)
            return sock
        while len(self._socks) >= self.max_peers:
            old, old_sock = self._socks.popitem(last=False)
            self._dropping.pop(old, None)
            old_sock.close(linger=0)
        sock = self._socks[endpoint] = sockets.peer_dealer(endpoint)
        return sock

    def _drop(self, endpoint: str, what: str, why: str) -> None:
        self.dropped += 1
        count = self._dropping.get(endpoint)
        if count is None:
            if len(self._dropping) > 4 * self.max_peers:
                self._dropping.clear()
            self._dropping[endpoint] = 0
            log.warning("%s: dropped %s to %s: %s; further drops to it are not logged "
                        "until it takes messages again", self.name, what, endpoint[:200], why)
        else:
            self._dropping[endpoint] = count + 1

    def _sent(self, endpoint: str) -> None:
        count = self._dropping.pop(endpoint, None)
        if count:
            log.warning("%s: %s takes messages again; %d more were dropped", self.name,
                        endpoint[:200], count)

    def send(self, endpoint: str, message, blobs=()) -> bool:
        """Queue ``message`` for the peer at ``endpoint``; False if it was dropped."""
        payload = protocol.encode(message)
        with self._lock:
            try:
                sockets.send_frames(self._sock(endpoint), [b"", payload, *blobs], _NOBLOCK)
            except zmq.Again:
                self._drop(endpoint, type(message).__name__,
                           f"{sockets.PEER_HWM} messages wait for it already, or its "
                           f"connection failed")
                return False
            except zmq.ZMQError as exc:
                self._drop(endpoint, type(message).__name__, f"cannot connect there: {exc}")
                return False
            if self._dropping:
                self._sent(endpoint)
            return True

    def send_many(self, endpoint: str, payloads: list[bytes]) -> bool:
        """Several encoded one-way messages to one peer, in order; False if
        any was dropped (those after it are dropped too, to keep the order)."""
        with self._lock:
            try:
                sock = self._sock(endpoint)
                for payload in payloads:
                    sock.send(b"", _MORE | _NOBLOCK)
                    sock.send(payload, _NOBLOCK)
            except zmq.Again:
                self._drop(endpoint, f"{len(payloads)} messages",
                           f"{sockets.PEER_HWM} messages wait for it already, or its "
                           f"connection failed")
                return False
            except zmq.ZMQError as exc:
                self._drop(endpoint, f"{len(payloads)} messages", f"cannot connect there: {exc}")
                return False
            if self._dropping:
                self._sent(endpoint)
            return True

    def forget(self, endpoint: str) -> None:
        """Close the socket to a peer that went away."""
        with self._lock:
            sock = self._socks.pop(endpoint, None)
            self._dropping.pop(endpoint, None)
        if sock is not None:
            sock.close(linger=0)

    def close(self) -> None:
        with self._lock:
            for sock in self._socks.values():
                sock.close(linger=sockets.LINGER_MS)
            self._socks.clear()
