"""The raylet's link to the GCS once its loop runs: one DEALER (the ZeroMQ
guide's asynchronous client) for heartbeats, one-way reports and the few
requests the raylet makes, and the SUB to the GCS event stream.

Nothing here blocks the raylet's loop: a send that cannot be queued (the GCS
has been away long enough to fill the queue) is dropped and logged, and a
request's answer arrives as a callback on the loop (or ``None`` after its
timeout). The heartbeat's answer drives recovery: HEARTBEAT_DEAD (this node
was declared dead) and HEARTBEAT_UNKNOWN (a GCS that restarted without its
tables) are handed to the raylet; a GCS whose connection came back is read
again (``GetClusterInfo``) so what its event stream said meanwhile is not lost.
"""
from __future__ import annotations

import itertools
import logging
import time

import zmq

from ..broker import protocol as p
from ..broker import sockets
from ..config import config
from .gcs_health import GcsHealth

log = logging.getLogger(__name__)

#: correlation id of heartbeats (requests use REQUEST_PREFIX + a counter)
HEARTBEAT_CORR = b"hb" + bytes(6)
REQUEST_PREFIX = b"rq"
#: a request the GCS does not answer within this is given up (callback(None))
REQUEST_TIMEOUT_S = 2.0
#: at most one re-registration per this many seconds (queued beats all ask for one)
REGISTER_AGAIN_S = 1.0
#: how many replies or events one wakeup of the loop reads
BATCH = 256


class GcsLink:
    """What the raylet says to and hears from the GCS while it runs.

    ``registration()`` makes the RegisterNode to send (the node id may have
    changed); ``on_event(topic, event)`` gets each event; ``on_dead()`` runs
    when the GCS declared this node dead (the raylet starts over and calls
    :meth:`register`); ``on_registered()`` after a registration is answered;
    ``on_cluster(nodes)`` with the GCS's node rows after it came back."""

    def __init__(self, gcs_address: str, watch, reconnections, registration, on_event,
                 on_dead, on_registered, on_cluster):
        self.gcs_address = gcs_address
        self._watch = watch                     # watch(sock, handler | None)
        self._reconnections = reconnections     # () -> times the GCS connection came back
        self._registration = registration
        self._on_event, self._on_dead = on_event, on_dead
        self._on_registered, self._on_cluster = on_registered, on_cluster
        self.health = GcsHealth(gcs_address)    # logs when the GCS goes silent
        self.pub_address: str | None = None
        self.events = None
        self.sock = sockets.dealer(sockets.tcp_endpoint(gcs_address))
        watch(self.sock, self._on_replies)
        self._ids = itertools.count(1)
        self._pending: dict[bytes, tuple] = {}  # corr -> (deadline, callback, what)
        self._registered_at = -REGISTER_AGAIN_S
        self._seen_reconnections = 0
        self._catching_up = False
        self.dropped = 0                        # sends dropped: the GCS queue was full

    # -- sending ----------------------------------------------------------
    def send(self, message) -> bool:
        """One-way message to the GCS; False (logged) if it cannot be queued now."""
        return self._send(b"", message)

    def beat(self, heartbeat: p.Heartbeat) -> None:
        """Send a heartbeat; its answer comes back on the loop."""
        self._send(HEARTBEAT_CORR, heartbeat)

    def request(self, message, callback, timeout: float = REQUEST_TIMEOUT_S) -> None:
        """Send a request; ``callback(reply)`` on the loop, ``callback(None)``
        if it fails or no answer came within ``timeout``."""
        corr = REQUEST_PREFIX + next(self._ids).to_bytes(6, "little")
        if self._send(corr, message):
            self._pending[corr] = (time.monotonic() + timeout, callback, type(message).__name__)
        else:
            callback(None)

    def _send(self, corr: bytes, message) -> bool:
        try:
            self.sock.send_multipart([corr, p.encode(message)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as err:
            self.dropped += 1
            log.warning("dropped a %s to the GCS at %s: %s (the GCS does not take messages)",
                        type(message).__name__, self.gcs_address, err)
            return False

    # -- registering ------------------------------------------------------
    def register(self) -> None:
        """Register this node (again): after a restart of the GCS without its
        tables, or as a new node after it declared this one dead."""
        self._registered_at = time.monotonic()
        self.request(self._registration(), self._registered,
                     timeout=min(REQUEST_TIMEOUT_S, config.connect_timeout_s))

    def _registered(self, reply) -> None:
        if not isinstance(reply, p.RegisterNodeReply):
            log.error("could not register with the GCS at %s (no answer in time); the next "
                      "heartbeat answer asks again", self.gcs_address)
            return
        self._on_registered()
        if reply.pub_address != self.pub_address:
            self.subscribe(reply.pub_address)

    def subscribe(self, pub_address: str) -> None:
        """Take the GCS events from ``pub_address`` (at start, or from a GCS
        that restarted on another port); ZeroMQ reconnects a SUB to the same
        address by itself."""
        if self.events is not None:
            log.info("GCS events now at %s (were at %s)", pub_address, self.pub_address)
            self._watch(self.events, None)
            self.events.close(linger=0)
        self.pub_address = pub_address
        self.events = sockets.subscriber(pub_address, [p.TOPIC_NODE, p.TOPIC_RESOURCES])
        self._watch(self.events, self._on_events)

    # -- hearing ----------------------------------------------------------
    def _on_events(self, sock) -> None:
        for topic, event in sockets.recv_events(sock, BATCH):
            self._on_event(topic, event)

    def _on_replies(self, sock) -> None:
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            corr = frames[0]
            try:
                reply = p.decode(frames[1])
            except p.ProtocolError as err:
                log.warning("dropped a malformed answer from the GCS: %s", err)
                continue
            if corr == HEARTBEAT_CORR:
                self._on_heartbeat_reply(reply)
                continue
            pending = self._pending.pop(corr, None)
            if pending is None:
                continue                # answered after its timeout
            if isinstance(reply, p.ErrorReply):
                log.warning("the GCS failed %s: %s: %s", pending[2], reply.error_type,
                            reply.message)
                reply = None
            self._call(pending[1], reply, pending[2])

    def _on_heartbeat_reply(self, reply) -> None:
        status = getattr(reply, "status", None)
        if status is None:
            return
        self.health.answered()
        if status == p.HEARTBEAT_DEAD:
            self._on_dead()
        elif status == p.HEARTBEAT_UNKNOWN:
            if time.monotonic() - self._registered_at < REGISTER_AGAIN_S:
                return
            log.warning("the GCS at %s does not know this node (it restarted without its "
                        "tables); registering again", self.gcs_address)
            self.register()

    @staticmethod
    def _call(callback, reply, what: str) -> None:
        try:
            callback(reply)
        except Exception:       # one bad answer never stops the loop
            log.exception("handling the GCS's answer to %s failed", what)

    # -- timers -----------------------------------------------------------
    def check(self) -> None:
        """(timer) Expire unanswered requests, log a silent GCS, and read the
        cluster again from a GCS whose connection came back."""
        self.health.check()
        if self._pending:
            now = time.monotonic()
            for corr, (deadline, callback, what) in list(self._pending.items()):
                if deadline <= now:
                    del self._pending[corr]
                    self._call(callback, None, what)
        count = self._reconnections()
        if count != self._seen_reconnections and not self._catching_up:
            self._catching_up = True
            self.request(p.GetClusterInfo(), lambda reply: self._caught_up(reply, count))

    def _caught_up(self, reply, count: int) -> None:
        self._catching_up = False
        if reply is None:           # the next check asks again
            log.warning("could not read the cluster from the GCS after it restarted")
            return
        self._seen_reconnections = count
        log.info("the GCS at %s restarted (its connection came back); reading the cluster "
                 "from its tables", self.gcs_address)
        self._on_cluster(reply.nodes)
        pub_address = reply.pub_address
        if pub_address and pub_address != self.pub_address:
            self.subscribe(pub_address)

    def close(self) -> None:
        for sock in (self.events, self.sock):
            if sock is not None:
                self._watch(sock, None)
                sock.close(linger=0)
