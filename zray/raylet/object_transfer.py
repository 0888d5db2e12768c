"""Moving objects between nodes: a raylet that needs an object pulls it from
the raylet that has it, in chunks, several in flight, each sent by the source
straight out of its arena (zero-copy). Requests for an object already being
pulled join that pull.

Protocol (raylet DEALER -> peer raylet ROUTER, over TCP):
``FetchChunk(object_id, offset, length)`` -> ``ObjectChunk(...)`` + the bytes.
The source pins the object on the first fetch and keeps it pinned until the
puller sends ``ReleaseObjects`` (so the memory a pending send reads from is
never reused).
"""
from __future__ import annotations

import logging
import time

import zmq

from ..broker import protocol as p
from ..broker import sockets
from ..store.object_table import ObjectExistsError, ObjectStoreFullError

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024
WINDOW = 4              # chunks in flight per pull
FETCH_CORR = b"fetch\0\0\0"   # a request (8-byte correlation id): the source answers it


class Pull:
    __slots__ = ("object_id", "source", "size", "offset", "next", "received", "done",
                 "started")

    def __init__(self, object_id: bytes, source: bytes):
        self.object_id = object_id
        self.source = source
        self.size = -1
        self.offset = -1          # where the local copy is, once created
        self.next = 0             # next byte to request
        self.received = 0
        self.done: list = []      # callbacks(ok: bool)
        self.started = time.monotonic()


class ObjectTransfer:
    """Pulls in progress on this raylet and the links to peer raylets."""

    def __init__(self, raylet):
        self.raylet = raylet
        self.pulls: dict[bytes, Pull] = {}
        self.links: dict[bytes, zmq.Socket] = {}

    # -- pulling ----------------------------------------------------------
    def pull(self, object_id: bytes, source: bytes, on_done) -> None:
        """Make ``object_id`` local (a secondary copy); ``on_done(ok)`` after."""
        if self.raylet.store.contains(object_id):
            on_done(True)
            return
        pull = self.pulls.get(object_id)
        if pull is not None:
            pull.done.append(on_done)
            return
        link = self._link(source)
        if link is None:
            on_done(False)
            return
        pull = self.pulls[object_id] = Pull(object_id, source)
        pull.done.append(on_done)
        self._request(pull, link, 0, CHUNK_BYTES)     # learn the size from chunk 0

    def _link(self, node_id: bytes):
        sock = self.links.get(node_id)
        if sock is None:
            address = self.raylet.view.address(node_id)
            if address is None:
                return None
            sock = self.links[node_id] = sockets.dealer(address)
            self.raylet.watch(sock, self._on_link)
        return sock

    def _request(self, pull: Pull, link, offset: int, length: int) -> None:
        link.send_multipart([FETCH_CORR, p.encode(p.FetchChunk(pull.object_id, offset, length))])
        pull.next = offset + length

    def _on_link(self, sock) -> None:
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = p.decode(frames[1].buffer)
            except (p.ProtocolError, IndexError) as err:
                log.warning("dropped a transfer message: %s", err)
                continue
            if isinstance(msg, p.ObjectChunk):
                self._on_chunk(sock, msg, frames[2] if len(frames) > 2 else None)

    def _on_chunk(self, link, msg: p.ObjectChunk, data) -> None:
        pull = self.pulls.get(msg.object_id)
        if pull is None:
            return
        if msg.error or data is None:
            log.warning("pull of %s failed: %s", msg.object_id.hex(), msg.error)
            return self._finish(pull, False)
        store = self.raylet.store
        if pull.offset < 0:
            pull.size = msg.total_size
            try:
                pull.offset = store.create(msg.object_id, msg.total_size, primary=False)
            except ObjectExistsError:
                return self._finish(pull, True)
            except ObjectStoreFullError as err:
                log.warning("no room to pull %s: %s", msg.object_id.hex(), err)
                return self._finish(pull, False)
            while pull.next < pull.size and pull.next < WINDOW * CHUNK_BYTES:
                self._request(pull, link, pull.next, CHUNK_BYTES)
        self.raylet.arena.write(pull.offset + msg.offset, [data.buffer])
        pull.received += len(data)
        if pull.next < pull.size:
            self._request(pull, link, pull.next, CHUNK_BYTES)
        if pull.received >= pull.size:
            store.seal(msg.object_id)
            link.send_multipart([b"", p.encode(p.ReleaseObjects([msg.object_id]))])
            seconds = time.monotonic() - pull.started
            log.info("pulled %s (%d bytes) in %.3fs", msg.object_id.hex()[:12], pull.size,
                     seconds)
            self._finish(pull, True)

    def _finish(self, pull: Pull, ok: bool) -> None:
        self.pulls.pop(pull.object_id, None)
        if not ok and pull.offset >= 0:
            self.raylet.store.abort(pull.object_id)
        for callback in pull.done:
            callback(ok)

    def node_died(self, node_id: bytes) -> None:
        for pull in [q for q in self.pulls.values() if q.source == node_id]:
            self._finish(pull, False)
        sock = self.links.pop(node_id, None)
        if sock is not None:
            self.raylet.unwatch(sock)
            sock.close(linger=0)

    # -- serving ----------------------------------------------------------
    def serve_chunk(self, req, msg: p.FetchChunk) -> None:
        """Send one chunk of a local object to a pulling peer, zero-copy."""
        store = self.raylet.store
        if msg.offset == 0:
            loc = store.pin(msg.object_id, req.identity)
        else:
            info = store.info(msg.object_id)
            loc = (info["offset"], info["size"]) if info and info["offset"] is not None \
                else None
        if loc is None:
            self.raylet.reply(req, p.ObjectChunk(msg.object_id, msg.offset, 0,
                                                 "not in this node's store"))
            return
        offset, size = loc
        length = max(0, min(msg.length, size - msg.offset))
        view = self.raylet.arena.read_view(offset + msg.offset, length)
        self.raylet.reply(req, p.ObjectChunk(msg.object_id, msg.offset, size, ""), [view])

    def close(self) -> None:
        for sock in self.links.values():
            sock.close(linger=0)
        self.links.clear()
