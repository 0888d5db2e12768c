"""Socket factories: every zray socket is made here, named by the pattern it plays.

All sockets share one ``zmq.Context`` per process (re-made after fork) and the
same defaults: no linger past a short grace, fast reconnects, high-water marks
large enough for bursts of tasks, and a size limit on daemon ROUTERs.

Security is decided here, per socket, from the endpoint's scheme: a socket
bound on ``tcp://`` is a CURVE server, one connecting to ``tcp://`` a CURVE
client, both with the cluster key (see ``security``); ``ipc://`` sockets stay
plain, their files being private to the user. A socket is never bound or
connected on both schemes.
"""
from __future__ import annotations

import itertools
import logging
import os
import struct
import threading

import zmq

from . import security
from .protocol import DATA_REQUEST_MAX_BYTES, MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

_ctx_lock = threading.Lock()
_ctx: zmq.Context | None = None
_ctx_pid = 0

HWM = 1_000_000
LINGER_MS = 200


def context() -> zmq.Context:
    """This process's ZeroMQ context (a fresh one in a forked child)."""
    global _ctx, _ctx_pid
    if _ctx is None or _ctx_pid != os.getpid():
        with _ctx_lock:
            if _ctx is None or _ctx_pid != os.getpid():
                _ctx = zmq.Context(io_threads=1)
                _ctx_pid = os.getpid()
    return _ctx


def term() -> None:
    """Close every socket of this process's context (at shutdown)."""
    global _ctx
    with _ctx_lock:
        if _ctx is not None and _ctx_pid == os.getpid():
            security.stop()         # the ZAP handler's sockets live in this context
            _ctx.destroy(linger=LINGER_MS)
        _ctx = None


def _socket(kind: int) -> zmq.Socket:
    sock = context().socket(kind)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.RECONNECT_IVL, 10)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
    return sock


def _bind(sock: zmq.Socket, endpoint: str) -> str:
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        old = os.umask(0o077)       # local endpoints are private to the user
        try:
            sock.bind(endpoint)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        return endpoint
    if endpoint.startswith("tcp://"):
        security.configure_server(sock, context())
    if endpoint.endswith(":0"):
        port = sock.bind_to_random_port(endpoint[:-2])
        return f"{endpoint[:-2]}:{port}"
    sock.bind(endpoint)
    return endpoint


def server_router(endpoint: str) -> tuple[zmq.Socket, str]:
    """ROUTER a daemon serves requests on (the request/reply server side).

    Frames bigger than MAX_MESSAGE_BYTES are dropped by ZeroMQ itself; at
    most REPLY_HWM messages wait for a peer (``Service.send_to`` never blocks).
    Returns the socket and the endpoint actually bound (port 0 resolved)."""
    sock = _socket(zmq.ROUTER)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, REPLY_HWM)  # replies a peer leaves unread: bounded
    return sock, _bind(sock, endpoint)


def inbox_router(endpoint: str) -> tuple[zmq.Socket, str]:
    """ROUTER a core worker receives one-way messages on (results, requests);
    returns it and the endpoint bound (port 0 resolved)."""
    sock = _socket(zmq.ROUTER)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    return sock, _bind(sock, endpoint)


def dealer(endpoint: str, identity: bytes | None = None, before_connect=None) -> zmq.Socket:
    """DEALER connected to a ROUTER (client side of request/reply, or one-way);
    ``before_connect(sock)`` runs first (a monitor attached then sees every
    event of the connection, however fast it is made). Raises
    ``zmq.ZMQError`` for an endpoint that does not parse, leaving no socket
    behind (the caller closes what ``before_connect`` made)."""
    sock = _socket(zmq.DEALER)
    try:
        if identity:
            sock.setsockopt(zmq.IDENTITY, identity)
        if before_connect is not None:
            before_connect(sock)
        return _connect(sock, endpoint)
    except BaseException:
        sock.close(linger=0)
        raise


#: events queued for one subscriber that does not take them (stopped, on a
#: stalled link); past that PUB drops that subscriber's events, and the
#: subscribers re-read what they need from the GCS (snapshots)
PUB_HWM = 10_000


def publisher(endpoint: str) -> tuple[zmq.Socket, str]:
    """XPUB of an event stream; returns the socket and the bound endpoint. At
    most ``PUB_HWM`` events wait for each subscriber. It sends as PUB does;
    reading it gives the subscriptions (see ``subscription_change``)."""
    sock = _socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, PUB_HWM)
    return sock, _bind(sock, endpoint)


def subscription_change(frame: bytes) -> tuple[bool, bytes] | None:
    """What a message read from a ``publisher`` says: (True, topic) for the
    first subscriber of a topic, (False, topic) when its last one left;
    None for anything else (a peer may send any bytes there)."""
    if len(frame) >= 1 and frame[0] in (0, 1):
        return frame[0] == 1, bytes(frame[1:])
    return None


def subscriber(endpoint: str, topics: list[bytes]) -> zmq.Socket:
    """SUB to an event stream, for the given topic prefixes."""
    sock = _socket(zmq.SUB)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    return _connect(sock, endpoint)


def _connect(sock: zmq.Socket, endpoint: str) -> zmq.Socket:
    """Connect ``sock`` (a client of the cluster: CURVE over TCP)."""
    if endpoint.startswith("tcp://"):
        security.configure_client(sock)
    sock.connect(endpoint)
    return sock


#: one-way messages queued for one peer before further ones are dropped
PEER_HWM = 10_000
#: replies queued on a daemon's ROUTER for one peer that does not read them
REPLY_HWM = 100_000


def peer_dealer(endpoint: str, hwm: int = PEER_HWM) -> zmq.Socket:
    """DEALER for one-way messages to an endpoint a peer named (an owner's
    inbox, a raylet, an actor watcher): it never blocks its caller. At most
    ``hwm`` messages wait for a slow, silent or hostile peer; past that, and
    when the peer's connection failed for good, ``send`` raises ``zmq.Again``
    (SNDTIMEO 0) at once. Raises ``zmq.ZMQError`` for an endpoint that does
    not parse, leaving no socket behind."""
    sock = _socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.SNDTIMEO, 0)
    try:
        return _connect(sock, endpoint)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise


#: messages queued per peer on the data port, each way (requests in,
#: answers of up to a chunk out); the puller keeps fewer than this in flight
DATA_PEER_HWM = 64
#: ZMTP heartbeats on the data link: a peer silent this long is disconnected
#: (and whatever it pinned is released)
DATA_HEARTBEAT_IVL_MS = 5_000
DATA_HEARTBEAT_TIMEOUT_MS = 30_000
#: a connection that has not logged in within this is dropped
DATA_HANDSHAKE_MS = 5_000


def _data_socket(kind: int) -> zmq.Socket:
    sock = _socket(kind)
    sock.setsockopt(zmq.SNDHWM, DATA_PEER_HWM)
    sock.setsockopt(zmq.RCVHWM, DATA_PEER_HWM)
    sock.setsockopt(zmq.HEARTBEAT_IVL, DATA_HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, DATA_HEARTBEAT_TIMEOUT_MS)
    return sock


def data_router(endpoint: str) -> tuple[zmq.Socket, str]:
    """ROUTER of the object-transfer link (the data port): not CURVE on
    purpose — every frame on it is sealed with AES-GCM (security.DataSeal),
    which moves bulk bytes several times faster. A connection must log in
    with the cluster key in the ZMTP handshake before ZeroMQ reads any of its
    messages (security.configure_data_server), and no frame larger than
    DATA_REQUEST_MAX_BYTES is read from anyone: a bigger one drops the
    connection. Returns the socket and the endpoint bound (port 0 resolved)."""
    sock = _data_socket(zmq.ROUTER)
    sock.setsockopt(zmq.MAXMSGSIZE, DATA_REQUEST_MAX_BYTES)
    sock.setsockopt(zmq.HANDSHAKE_IVL, DATA_HANDSHAKE_MS)   # idle strangers go soon
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    security.configure_data_server(sock, context())
    if endpoint.endswith(":0"):
        port = sock.bind_to_random_port(endpoint[:-2])
        endpoint = f"{endpoint[:-2]}:{port}"
    else:
        sock.bind(endpoint)
    security.serve_data_port(endpoint)
    return sock, endpoint


def data_dealer(endpoint: str, max_frame: int) -> tuple[zmq.Socket, bytes]:
    """DEALER of the object-transfer link, logged in to the data port at
    ``endpoint`` with a fresh one-time login; frames over ``max_frame`` bytes
    drop the connection. Returns the socket and its login id (b"" when
    security is off). A login is good once: after a disconnect, make a new
    socket rather than let this one reconnect."""
    sock = _data_socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, HWM)           # small requests, from us
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
    sock.setsockopt(zmq.RECONNECT_IVL, 1000)    # a used login is refused anyway
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
    try:
        login_id = security.configure_data_client(sock, endpoint)
        sock.connect(endpoint)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock, login_id


_MORE = int(zmq.SNDMORE)
_COPY_BELOW = 64 * 1024


def send_frames(sock: zmq.Socket, frames, flags: int = 0) -> None:
    """Send a multipart message: small frames copied (cheapest in pyzmq),
    large ones handed to ZeroMQ without a copy. Plain int flags: pyzmq's
    ``send_multipart`` spends more on enum arithmetic than on sending."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        big = not isinstance(frame, bytes) and memoryview(frame).nbytes >= _COPY_BELOW
        sock.send(frame, (flags | _MORE) if i < last else flags, copy=not big)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list:
    """Receive a multipart message as zmq Frames (zero-copy views of large
    frames; ``.bytes``/``.buffer`` give the data)."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:           # the frame says so: half the cost of asking the socket
        frame = sock.recv(0, copy=False)
        frames.append(frame)
    return frames


def recv_events(sock: zmq.Socket, limit: int):
    """Yield the ``(topic, event)`` pairs waiting on a SUB socket (at most
    ``limit``), decoded; malformed ones are logged and dropped."""
    from .protocol import ProtocolError, decode_event
    for _ in range(limit):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(frames) != 2:
            log.warning("dropped an event of %d frames", len(frames))
            continue
        topic, payload = frames
        try:
            event = decode_event(payload)
        except ProtocolError as err:
            log.warning("dropped an event on %r: %s", topic, err)
            continue
        yield topic, event


def tcp_endpoint(address: str) -> str:
    """``host:port`` or ``tcp://host:port`` as a ZeroMQ endpoint."""
    return address if "://" in address else f"tcp://{address}"


_monitor_ids = itertools.count()


def attach_monitor(sock: zmq.Socket, events: int) -> zmq.Socket:
    """A PAIR receiving ``sock``'s connection ``events`` (read them with
    ``monitor_event``); its queue is unbounded, so that an owner busy for a
    while never stalls ZeroMQ's I/O thread. Close both with ``close_monitored``."""
    address = f"inproc://zray-link-monitor-{os.getpid()}-{next(_monitor_ids)}"
    sock.monitor(address, events)
    monitor = sock.context.socket(zmq.PAIR)
    monitor.rcvhwm = 0
    monitor.linger = 0
    monitor.connect(address)
    return monitor


def close_monitored(sock: zmq.Socket, monitor: zmq.Socket) -> None:
    """Close ``sock`` and the monitor ``attach_monitor`` gave it."""
    try:
        sock.disable_monitor()
    except zmq.ZMQError:
        log.debug("the monitor of a socket was gone already")
    monitor.close(linger=0)
    sock.close(linger=0)


def monitor_event(frames) -> dict:
    """A socket monitor's message as ``{"event", "value", "endpoint"}``
    (ZeroMQ's form: a 16-bit event and a 32-bit value, then the endpoint).
    Decoded here, not with ``zmq.utils.monitor``, whose import pulls in
    asyncio (~40 ms at every process start). ValueError if malformed."""
    if len(frames) != 2 or len(frames[0]) != 6:
        raise ValueError("not a socket monitor message")
    event, value = struct.unpack("=Hi", frames[0])
    return {"event": event, "value": value, "endpoint": frames[1]}
