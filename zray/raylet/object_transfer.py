"""Moving objects between nodes: a raylet that needs an object pulls it from
the raylet that has it, in chunks, several in flight. Requests for an object
already being pulled join that pull.

The transfer link is its own TCP socket pair: a source raylet's data port
(``sockets.data_router``) and, on each puller, one DEALER per source
(``sockets.data_dealer``). What a source accepts:

* a connection only after it logged in with the cluster key in the ZMTP
  handshake, with a one-time login bound to this data port (see
  ``security.data_login``): before that no message of the peer is read, and
  a replayed login is refused;
* frames of at most ``protocol.DATA_REQUEST_MAX_BYTES`` from anyone (a bigger
  one drops the connection), at most ``sockets.DATA_PEER_HWM`` messages queued
  per connection;
* requests sealed with AES-256-GCM under the cluster key and bound to the
  connection's login id, with a sequence number that must grow: a request
  replayed on the same or another connection is refused.

Frames (records in ``protocol``: DataFetch, DataRelease, DataChunk):

* request  ``[corr, nonce, seal(encode(DataFetch|DataRelease), aad=b"request" + login)]``;
* answer   ``[corr, header, nonce, seal(chunk, aad=header + login)]`` with
  ``header = encode(DataChunk)``.

The source pins the object on a connection's first fetch of it and unpins it
on that connection's DataRelease, or when the connection closes (peer gone,
silent past the heartbeat timeout, or dropped for a bad frame): no transfer
pin outlives its connection. A puller sends that DataRelease as soon as its
pull ends, whether it completed, failed, or found no room or an existing
copy here. A spilled object that the source has no room to restore is
served from its spill file instead (not pinned: a file that vanishes
because the object was restored meanwhile is followed into the arena).

A puller whose link drops makes a new one (a login is good once) and
restarts its pulls from that source: a pull may use LINK_ATTEMPTS links, and
more for up to LINK_RETRY_S from its start while its source is alive (a
loaded source may miss the login handshake's deadline); a refused login
ends the pull at once. A fetch of an object its source is still writing
(its seal has not reached the source's raylet yet) waits for that seal.

ObjectTransfer is given only the node's ``StoreService``, the cluster view
(``data_address``, ``alive``) and ``watch(sock, handler)`` (handler None:
stop watching) of the raylet's loop.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import time

import zmq

from ..broker import protocol as p
from ..broker import security, sockets
from ..store.object_table import ObjectExistsError, ObjectStoreFullError

#: prefix of the store client names of this module: a data-port connection's
#: pins (``TRANSFER_CLIENT`` + routing id) and a pull's half-written copy
#: (``PULL_WRITER`` + source node id); see :meth:`ObjectTransfer.describe_client`
TRANSFER_CLIENT = b"transfer:"
PULL_WRITER = b"pull:"

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024
WINDOW = 4              # chunks in flight per pull
LINK_WINDOW = 16        # chunks in flight per link (below sockets.DATA_PEER_HWM)
LINK_ATTEMPTS = 3       # links one pull may use before it fails ...
LINK_RETRY_S = 60.0     # ... unless it started less than this ago (source alive)
LINK_ATTEMPTS_MAX = 12  # and never more than this many
FETCH_CORR = b"fetch\0\0\0"
REFUSAL_LOG_INTERVAL_S = 30.0
#: the largest answer frame a puller reads: a sealed chunk (16-byte tag) and slack
ANSWER_MAX_BYTES = CHUNK_BYTES + 4096
REQUEST_AAD = b"request"

_SERVER_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
                  | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_LINK_EVENTS = (zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class _Plain:
    """Stand-in for DataSeal when security is off (unit tests of the broker)."""

    @staticmethod
    def seal(data, header):
        return b"", bytes(data)

    @staticmethod
    def open(nonce, data, header):
        return bytes(data)

    @staticmethod
    def open_into(nonce, data, header, out):
        memoryview(out)[:] = memoryview(data)


class Pull:
    __slots__ = ("object_id", "source", "size", "offset", "next", "received", "done",
                 "started", "links", "pinned_on")

    def __init__(self, object_id: bytes, source: bytes):
        self.object_id = object_id
        self.source = source
        self.size = -1
        self.offset = -1          # where the local copy is, once created
        self.next = 0             # next byte to request
        self.received = 0
        self.done: list = []      # callbacks(ok: bool)
        self.started = time.monotonic()
        self.links = 0            # links this pull has used
        self.pinned_on = None     # the _Link whose connection pins the object at the source


class _Link:
    """This raylet's logged-in connection to one source's data port."""
    __slots__ = ("node_id", "sock", "monitor", "login", "seq", "in_flight", "waiting")

    def __init__(self, node_id: bytes, sock, monitor, login: bytes):
        self.node_id, self.sock, self.monitor, self.login = node_id, sock, monitor, login
        self.seq = 0
        self.in_flight = 0                          # fetches sent, not yet answered
        self.waiting: collections.deque = collections.deque()   # fetches held back


class _Session:
    """One connection to this raylet's data port, known from its first message."""
    __slots__ = ("identity", "login", "fd", "last_seq", "pinned", "from_file", "client",
                 "peer")

    def __init__(self, identity: bytes, login: bytes, fd: int, peer: str | None):
        self.identity, self.login, self.fd, self.peer = identity, login, fd, peer
        self.last_seq = 0
        self.pinned: set[bytes] = set()
        self.from_file: set[bytes] = set()        # objects served from their spill file
        self.client = TRANSFER_CLIENT + identity  # the store's name for its pins


class ObjectTransfer:
    """Pulls in progress on this raylet, the links to peers, and the serving
    side of the transfer link (the data port)."""

    def __init__(self, store, view, watch, node_ip: str):
        self.store = store                # StoreService
        self.view = view                  # ClusterView: data_address(), alive()
        self.watch = watch                # watch(sock, handler | None)
        self._seal = None                 # made at first use (imports cryptography)
        self.pulls: dict[bytes, Pull] = {}
        self.links: dict[bytes, _Link] = {}
        self._link_of_monitor: dict = {}
        self.server, self.endpoint = sockets.data_router(f"tcp://{node_ip}:0")
        self.monitor = sockets.attach_monitor(self.server, _SERVER_EVENTS)
        self.sessions: dict[bytes, _Session] = {}     # routing id -> session
        self._by_fd: dict[int, _Session] = {}
        self._open_fds: set[int] = set()              # connections the port has open
        self._last_peer: str | None = None            # host of the last one (for logs)
        watch(self.monitor, self._on_monitor)
        watch(self.server, self._on_request)
        self._refusals: dict[str, tuple[float, int]] = {}   # kind -> (logged at, untold)

    @property
    def seal(self):
        if self._seal is None:
            self._seal = security.data_seal() or _Plain()
        return self._seal

    # -- pulling ----------------------------------------------------------
    def pull(self, object_id: bytes, source: bytes, on_done) -> None:
        """Make ``object_id`` local (a secondary copy); ``on_done(ok)`` after."""
        if self.store.contains(object_id):
            on_done(True)
            return
        pull = self.pulls.get(object_id)
        if pull is not None:
            pull.done.append(on_done)
            return
        pull = self.pulls[object_id] = Pull(object_id, source)
        pull.done.append(on_done)
        self._start(pull)

    def _start(self, pull: Pull) -> None:
        """(Re)start ``pull`` from byte 0 on the current link to its source."""
        link = self._link(pull.source)
        if link is None:
            self._finish(pull, False)
            return
        pull.links += 1
        pull.next = pull.received = 0
        pull.pinned_on = None           # a pin of a closed connection is gone with it
        if pull.offset < 0:
            self._request(pull, link, 0)            # learn the size from chunk 0
        else:
            self._fill_window(pull, link)

    def _fill_window(self, pull: Pull, link: _Link) -> None:
        while pull.next < pull.size and pull.next < pull.received + WINDOW * CHUNK_BYTES:
            self._request(pull, link, pull.next)

    def _link(self, node_id: bytes) -> _Link | None:
        link = self.links.get(node_id)
        if link is None:
            address = self.view.data_address(node_id)
            if not address:
                return None
            try:
                sock, login = sockets.data_dealer(address, ANSWER_MAX_BYTES)
            except zmq.ZMQError as err:
                log.warning("object transfer: cannot connect to %s: %s", address, err)
                return None
            monitor = sockets.attach_monitor(sock, _LINK_EVENTS)
            link = self.links[node_id] = _Link(node_id, sock, monitor, login)
            self._link_of_monitor[monitor] = link
            self.watch(sock, self._on_link)
            self.watch(monitor, self._on_link_monitor)
        return link

    def _send_request(self, link: _Link, corr: bytes, message) -> None:
        nonce, sealed = self.seal.seal(p.encode(message), REQUEST_AAD + link.login)
        try:
            link.sock.send_multipart([corr, nonce, sealed], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as err:       # a full queue: the link is stuck; drop it
            self._link_lost(link, f"cannot queue a request ({err})")

    def _request(self, pull: Pull, link: _Link, offset: int) -> None:
        pull.next = offset + CHUNK_BYTES
        if link.in_flight >= LINK_WINDOW:
            link.waiting.append((pull, offset))
            return
        link.in_flight += 1
        link.seq += 1
        self._send_request(link, FETCH_CORR,
                           p.DataFetch(link.seq, pull.object_id, offset, CHUNK_BYTES))

    def _answered(self, link: _Link) -> None:
        """One fetch of ``link`` was answered: send one that waited, if any."""
        link.in_flight = max(0, link.in_flight - 1)
        while link.waiting and link.in_flight < LINK_WINDOW:
            pull, offset = link.waiting.popleft()
            if self.pulls.get(pull.object_id) is pull and self.links.get(pull.source) is link:
                link.in_flight += 1
                link.seq += 1
                self._send_request(link, FETCH_CORR,
                                   p.DataFetch(link.seq, pull.object_id, offset, CHUNK_BYTES))

    def _on_link(self, sock) -> None:
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError:            # closed under us (link dropped)
                return
            if len(frames) != 4:
                log.warning("dropped a transfer answer of %d frames", len(frames))
                continue
            try:
                header = p.decode(frames[1].bytes)
            except p.ProtocolError as err:
                log.warning("dropped a transfer answer with a bad header: %s", err)
                continue
            if not isinstance(header, p.DataChunk):
                log.warning("dropped a transfer answer headed %s", type(header).__name__)
                continue
            link = next((lk for lk in self.links.values() if lk.sock is sock), None)
            if link is None:
                return
            self._answered(link)
            try:
                self._on_chunk(link, header, frames)
            except Exception:       # one bad answer never stops the raylet
                log.exception("object transfer: an answer failed")
            if self.links.get(link.node_id) is not link:
                return              # the link was dropped meanwhile

    def _on_chunk(self, link: _Link, header, frames) -> None:
        object_id = header.object_id
        pull = self.pulls.get(object_id)
        if pull is None or pull.source != link.node_id:
            return
        if header.error:
            log.warning("pull of %s failed: %s", object_id.hex(), header.error)
            return self._finish(pull, False)
        store = self.store
        if pull.pinned_on is None:
            pull.pinned_on = link       # the source pinned it at our first fetch
        if pull.offset < 0:
            pull.size = header.total_size
            try:
                pull.offset = store.create_copy(object_id, header.total_size,
                                                PULL_WRITER + pull.source)
            except ObjectExistsError:
                return self._finish(pull, True)
            except ObjectStoreFullError as err:
                log.warning("no room to pull %s: %s", object_id.hex(), err)
                return self._finish(pull, False)
            self._fill_window(pull, link)
        elif header.total_size != pull.size:
            log.warning("pull of %s: the source now says %d bytes, not %d", object_id.hex(),
                        header.total_size, pull.size)
            return self._finish(pull, False)
        sealed = frames[3].buffer
        length = len(sealed) - (16 if frames[2].bytes else 0)
        if length < 0 or header.offset + length > pull.size:
            log.warning("pull of %s: a chunk at %d of %d bytes does not fit the object",
                        object_id.hex(), header.offset, length)
            return self._finish(pull, False)
        target = store.writable_view(pull.offset + header.offset, length)
        try:
            self.seal.open_into(frames[2].bytes, sealed, frames[1].bytes + link.login, target)
        except security.DataSealError as err:
            log.warning("pull of %s: %s", object_id.hex(), err)
            return self._finish(pull, False)
        pull.received += length
        if pull.next < pull.size:
            self._request(pull, link, pull.next)
        if pull.received >= pull.size:
            store.seal(object_id)
            log.info("pulled %s (%d bytes) in %.3fs", object_id.hex()[:12], pull.size,
                     time.monotonic() - pull.started)
            self._finish(pull, True)

    def _finish(self, pull: Pull, ok: bool) -> None:
        if self.pulls.get(pull.object_id) is not pull:
            return
        self.pulls.pop(pull.object_id, None)
        self._release_source_pin(pull)
        if not ok and pull.offset >= 0:
            self.store.abort(pull.object_id)    # what waited for its seal: not here
        for callback in pull.done:
            callback(ok)

    def _release_source_pin(self, pull: Pull) -> None:
        """Tell the source to unpin ``pull``'s object now (DataRelease), if
        the connection that pinned it is still open; a closed one took its
        pins with it."""
        link, pull.pinned_on = pull.pinned_on, None
        if link is None or self.links.get(pull.source) is not link:
            return
        link.seq += 1
        self._send_request(link, b"", p.DataRelease(link.seq, pull.object_id))

    def _on_link_monitor(self, monitor) -> None:
        link = self._link_of_monitor.get(monitor)
        for _ in range(64):
            try:
                event = sockets.monitor_event(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            if link is None or self.links.get(link.node_id) is not link:
                return
            kind = event["event"]
            refused = kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            if refused:
                why = (f"the source refused our login (ZAP status {event['value']}): "
                       f"another cluster key, or clocks apart by more than "
                       f"{security.DATA_LOGIN_WINDOW_S} s?")
            elif kind == zmq.EVENT_DISCONNECTED:
                why = "the connection closed"
            else:
                why = f"the login handshake failed (event {kind:#x}, {event['value']})"
            self._link_lost(link, why, refused)
            return

    def _close_link(self, link: _Link) -> None:
        if self.links.get(link.node_id) is link:
            del self.links[link.node_id]
        self._link_of_monitor.pop(link.monitor, None)
        self.watch(link.sock, None)
        self.watch(link.monitor, None)
        sockets.close_monitored(link.sock, link.monitor)

    def _link_lost(self, link: _Link, why: str, refused: bool = False) -> None:
        """The link to a source failed: pulls from it start again on a new
        link (a login is good once), or fail when :meth:`_may_relink` says so."""
        self._close_link(link)
        pulls = [q for q in self.pulls.values() if q.source == link.node_id]
        if not pulls:
            log.info("object transfer: link to %s closed: %s", link.node_id.hex()[:12], why)
            return
        log.warning("object transfer: link to %s lost with %d pulls in progress: %s",
                    link.node_id.hex()[:12], len(pulls), why)
        for pull in pulls:
            if not self._may_relink(pull, refused):
                log.warning("pull of %s failed: %d links to its source failed; the last: %s",
                            pull.object_id.hex(), pull.links, why)
                self._finish(pull, False)
            else:
                self._start(pull)

    def _may_relink(self, pull: Pull, refused: bool) -> bool:
        """Whether ``pull`` may try one more link after its link failed: while
        it used fewer than LINK_ATTEMPTS links; then, unless its login was
        refused (another key fails the same way every time), while its
        source is alive, for LINK_RETRY_S from its start (a loaded source may
        miss a handshake deadline or drop a connection), up to LINK_ATTEMPTS_MAX."""
        if pull.links < LINK_ATTEMPTS:
            return True
        if refused:
            return False
        return (pull.links < LINK_ATTEMPTS_MAX and self.view.alive(pull.source)
                and time.monotonic() - pull.started < LINK_RETRY_S)

    def node_died(self, node_id: bytes) -> None:
        link = self.links.get(node_id)
        if link is not None:
            self._close_link(link)      # first: nothing is sent to a dead node
        for pull in [q for q in self.pulls.values() if q.source == node_id]:
            self._finish(pull, False)

    # -- serving ----------------------------------------------------------
    def _on_monitor(self, monitor, limit: int | None = 256) -> None:
        """Connections of the data port opening and closing (``limit`` events
        at most; None: all there are); a closed one's pins are released."""
        count = itertools.count()
        while limit is None or next(count) < limit:
            try:
                event = sockets.monitor_event(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.ZMQError:            # Again: none left (or closed)
                return
            kind, value = event["event"], event["value"]
            if kind == zmq.EVENT_ACCEPTED:                  # value: the fd
                self._open_fds.add(value)
                self._last_peer = security.peer_host(value, self.endpoint)
            elif kind == zmq.EVENT_DISCONNECTED:
                self._open_fds.discard(value)
                session = self._by_fd.get(value)
                if session is not None:
                    self._close_session(session, "its connection closed")
            else:                                           # value: an error code
                self._refuse("a connection that failed the login handshake (a peer "
                             "without the cluster key, or not a zray peer)",
                             self._last_peer)

    def _close_session(self, session: _Session, why: str) -> None:
        if self._by_fd.get(session.fd) is session:
            del self._by_fd[session.fd]
        if self.sessions.get(session.identity) is session:
            del self.sessions[session.identity]
        if session.pinned:
            log.info("object transfer: released %d pins of a puller: %s",
                     len(session.pinned), why)
        session.pinned.clear()
        session.from_file.clear()
        self.store.release_client(session.client)

    def _session_of(self, identity: bytes, first) -> _Session | None:
        """The session of the connection a message came in on (made at its
        first message); None for a connection that is closed already."""
        try:
            login = bytes.fromhex(first.get("User-Id"))
        except (zmq.ZMQError, ValueError, TypeError):
            login = b""                         # security off: no login
        session = self.sessions.get(identity)
        if session is not None and session.login == login:
            return session
        if session is not None:                 # a new connection took this routing id
            self._close_session(session, "its routing id was reused")
        self._on_monitor(self.monitor, None)    # learn of every close up to now
        fd = first.get(zmq.SRCFD)
        if fd not in self._open_fds:
            self._refuse("a request from a connection that has closed", None)
            return None
        old = self._by_fd.get(fd)
        if old is not None:                     # fds are reused: that connection is gone
            self._close_session(old, "its connection closed")
        session = self.sessions[identity] = self._by_fd[fd] = _Session(
            identity, login, fd, security.peer_host(fd, self.endpoint))
        return session

    def describe_client(self, client) -> str | None:
        """A store client of this module named for full-store messages
        ("an object transfer to 10.0.0.2 (connection 00ab12cd)", "an object
        pull from node 1a2b3c4d5e6f"); None for a client not of this module."""
        if not isinstance(client, bytes):
            return None
        if client.startswith(PULL_WRITER):
            return f"an object pull from node {client[len(PULL_WRITER):].hex()[:12]}"
        if not client.startswith(TRANSFER_CLIENT):
            return None
        identity = client[len(TRANSFER_CLIENT):]
        session = self.sessions.get(identity)
        to = f" to {session.peer}" if session is not None and session.peer else ""
        return f"an object transfer{to} (connection {identity.hex()[:12]})"

    def _on_request(self, sock) -> None:
        self._on_monitor(self.monitor)
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 4:
                self._refuse(f"a request of {len(frames)} frames", None)
                continue
            try:
                self._on_request_frames(sock, frames)
            except Exception:       # one bad request never stops the raylet
                log.exception("object transfer: a request failed")

    def _on_request_frames(self, sock, frames) -> None:
        """Check one request (session, seal, sequence) and serve it."""
        identity, corr = frames[0].bytes, frames[1].bytes
        session = self._session_of(identity, frames[1])
        if session is None:
            return
        try:
            message = p.decode(self.seal.open(frames[2].bytes, frames[3].buffer,
                                              REQUEST_AAD + session.login))
        except security.DataSealError:
            self._refuse("a request that does not open with the cluster key and its "
                         "connection's login (replayed from another connection?)", None)
            return
        except p.ProtocolError as err:
            self._refuse(f"a malformed request: {err}", None)
            return
        if not isinstance(message, (p.DataFetch, p.DataRelease)):
            self._refuse(f"a {type(message).__name__} on the data port", None)
            return
        if message.seq <= session.last_seq:
            self._refuse(f"a replayed request (sequence number {message.seq} after "
                         f"{session.last_seq})", None)
            return
        session.last_seq = message.seq
        if isinstance(message, p.DataRelease):
            session.from_file.discard(message.object_id)
            if message.object_id in session.pinned:
                session.pinned.discard(message.object_id)
                self.store.release(message.object_id, session.client)
        elif message.offset == 0 and self.store.is_being_created(message.object_id) \
                and message.object_id not in session.pinned:
            # Its writer's seal has not reached us yet (seals are one-way and
            # may come after the puller heard of the object): answer once sealed.
            self.store.when_sealed(message.object_id,
                                   lambda ok: self._serve_sealed(sock, session, corr, message))
        else:
            self._serve_chunk(sock, session, corr, message)

    def _serve_sealed(self, sock, session: _Session, corr: bytes, fetch) -> None:
        """Serve a fetch that waited for its object's seal, unless its
        connection closed meanwhile."""
        if self.sessions.get(session.identity) is session:
            self._serve_chunk(sock, session, corr, fetch)

    def _refuse(self, why: str, peer: str | None) -> None:
        """Log a refusal, at most once per REFUSAL_LOG_INTERVAL_S for each kind
        (its first words), counting the ones left out."""
        kind = " ".join(why.split()[:4])
        now = time.monotonic()
        last, untold = self._refusals.get(kind, (-1e9, 0))
        if now - last < REFUSAL_LOG_INTERVAL_S:
            self._refusals[kind] = (last, untold + 1)
            return
        if len(self._refusals) > 100:
            self._refusals.clear()
        self._refusals[kind] = (now, 0)
        more = f" ({untold} more since the last report)" if untold else ""
        log.warning("object transfer: refused %s on the data port%s%s", why,
                    f" from {peer}" if peer else "", more)

    def _pin(self, session: _Session, object_id: bytes):
        """Pin ``object_id`` for ``session``: ``(offset, size)`` in the arena,
        else ``(None, error)``; a spilled object the store has no room to
        restore is marked to be read from its spill file (``(None, "")``)."""
        store = self.store
        try:
            loc = store.pin(object_id, session.client)
        except ObjectStoreFullError as err:
            if store.spilled_copy(object_id) is None:
                return None, f"the source's store has no room to restore it now: {err}"
            session.from_file.add(object_id)
            return None, ""
        if loc is None:
            return None, "not in this node's store"
        session.from_file.discard(object_id)
        session.pinned.add(object_id)
        return loc, ""

    def _read(self, session: _Session, fetch) -> tuple[object, int, str]:
        """``(bytes-like, total size, "")`` for one fetch: from the arena, or
        from the spill file of an object the store cannot restore now; or
        ``(None, 0, error)``. The first fetch of an object must be at offset 0
        (it pins the object for the connection)."""
        object_id = fetch.object_id
        if object_id not in session.pinned and object_id not in session.from_file:
            if fetch.offset != 0:
                return None, 0, "fetch at offset 0 first"
            _, error = self._pin(session, object_id)
            if error:
                return None, 0, error
        for _ in range(2):
            if object_id in session.from_file:
                data = self._read_spilled(object_id, fetch)
                if data is not None:
                    return data
                # Restored or freed since: pin it in the arena, if it is there.
                _, error = self._pin(session, object_id)
                if error:
                    return None, 0, error
                continue
            info = self.store.info(object_id)
            if not info or info["offset"] is None:
                return None, 0, "not in this node's store"
            base, size = info["offset"], info["size"]
            length = max(0, min(fetch.length, CHUNK_BYTES, size - fetch.offset))
            return self.store.read_view(base + min(fetch.offset, size), length), size, ""
        return None, 0, "not in this node's store (it moved while being read)"

    def _read_spilled(self, object_id: bytes, fetch):
        """``(bytes, size, "")`` of one fetch read from the object's spill
        file, or None when the object is not (or no longer) on disk only."""
        copy = self.store.spilled_copy(object_id)
        if copy is None:
            return None
        path, size = copy
        length = max(0, min(fetch.length, CHUNK_BYTES, size - fetch.offset))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(fd, length, min(fetch.offset, size))
        finally:
            os.close(fd)
        if len(data) != length:
            log.warning("object transfer: spill file %s is %d bytes short; asking the "
                        "store again", path, length - len(data))
            return None
        return data, size, ""

    def _serve_chunk(self, sock, session: _Session, corr: bytes, fetch) -> None:
        """Send one chunk of a local object, sealed straight out of the arena
        (or out of its spill file)."""
        data, size, error = self._read(session, fetch)
        if data is None:
            header = p.encode(p.DataChunk(fetch.object_id, fetch.offset, 0, error))
            frames = [session.identity, corr, header, b"", b""]
        else:
            header = p.encode(p.DataChunk(fetch.object_id, fetch.offset, size, ""))
            nonce, sealed = self.seal.seal(data, header + session.login)
            frames = [session.identity, corr, header, nonce, sealed]
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as err:       # gone, or not reading its answers: drop
            log.warning("object transfer: dropped a chunk of %s for a puller: %s",
                        fetch.object_id.hex()[:16], err)

    def close(self) -> None:
        for link in list(self.links.values()):
            self._close_link(link)
        security.forget_data_port(self.endpoint)
        sockets.close_monitored(self.server, self.monitor)
