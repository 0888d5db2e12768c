"""Moving objects between nodes: a raylet that needs an object pulls it from
the raylet that has it, in chunks, several in flight. Requests for an object
already being pulled join that pull.

The transfer link is its own TCP socket pair (``sockets.data_router`` /
``data_dealer``). Every frame on it is sealed with AES-256-GCM under the
cluster key (``security.DataSeal``): the source encrypts each chunk straight
out of its arena, the puller decrypts it straight into its own arena, and a
peer without the key is refused. Frames:

* request  ``[corr, nonce, seal(msgpack(["fetch", object_id, offset, length]))]``
  or ``[b"", nonce, seal(msgpack(["release", object_id]))]``;
* answer   ``[corr, header, nonce, seal(chunk, aad=header)]`` with
  ``header = msgpack([object_id, offset, total_size, error])``.

The source pins the object on the first fetch and keeps it pinned until the
puller's "release" (so a chunk is never read from reused memory).
"""
from __future__ import annotations

import logging
import time

import msgpack
import zmq

from ..broker import security, sockets
from ..store.object_table import ObjectExistsError, ObjectStoreFullError

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024
WINDOW = 4              # chunks in flight per pull
FETCH_CORR = b"fetch\0\0\0"
REFUSAL_LOG_INTERVAL_S = 30.0


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
    """Pulls in progress on this raylet, the links to peers, and the serving
    side of the transfer link."""

    def __init__(self, raylet, node_ip: str):
        self.raylet = raylet
        self._seal = None                 # made at first use (imports cryptography)
        self.pulls: dict[bytes, Pull] = {}
        self.links: dict[bytes, zmq.Socket] = {}
        self.server, self.endpoint = sockets.data_router(f"tcp://{node_ip}:0")
        raylet.watch(self.server, self._on_request)
        self._last_refusal = 0.0

    @property
    def seal(self):
        if self._seal is None:
            self._seal = security.data_seal() or _Plain()
        return self._seal

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
            address = self.raylet.view.data_address(node_id)
            if not address:
                return None
            sock = self.links[node_id] = sockets.data_dealer(address)
            self.raylet.watch(sock, self._on_link)
        return sock

    def _send_request(self, link, corr: bytes, request: list) -> None:
        nonce, sealed = self.seal.seal(msgpack.packb(request, use_bin_type=True), b"request")
        link.send_multipart([corr, nonce, sealed], copy=False)

    def _request(self, pull: Pull, link, offset: int, length: int) -> None:
        self._send_request(link, FETCH_CORR, ["fetch", pull.object_id, offset, length])
        pull.next = offset + length

    def _on_link(self, sock) -> None:
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 4:
                log.warning("dropped a transfer answer of %d frames", len(frames))
                continue
            try:
                object_id, offset, total, error = msgpack.unpackb(frames[1].bytes)
            except (ValueError, TypeError, msgpack.UnpackException):
                log.warning("dropped a transfer answer with a bad header")
                continue
            self._on_chunk(sock, object_id, offset, total, error, frames)

    def _on_chunk(self, link, object_id, offset, total, error, frames) -> None:
        pull = self.pulls.get(object_id)
        if pull is None:
            return
        if error:
            log.warning("pull of %s failed: %s", object_id.hex(), error)
            return self._finish(pull, False)
        store = self.raylet.store
        if pull.offset < 0:
            pull.size = total
            try:
                pull.offset = store.create(object_id, total, primary=False)
            except ObjectExistsError:
                return self._finish(pull, True)
            except ObjectStoreFullError as err:
                log.warning("no room to pull %s: %s", object_id.hex(), err)
                return self._finish(pull, False)
            while pull.next < pull.size and pull.next < WINDOW * CHUNK_BYTES:
                self._request(pull, link, pull.next, CHUNK_BYTES)
        sealed = frames[3].buffer
        length = len(sealed) - (16 if frames[2].bytes else 0)
        target = self.raylet.arena.writable_view(pull.offset + offset, length)
        try:
            self.seal.open_into(frames[2].bytes, sealed, frames[1].bytes, target)
        except security.DataSealError as err:
            log.warning("pull of %s: %s", object_id.hex(), err)
            return self._finish(pull, False)
        pull.received += length
        if pull.next < pull.size:
            self._request(pull, link, pull.next, CHUNK_BYTES)
        if pull.received >= pull.size:
            self.raylet.seal(object_id)
            self._send_request(link, b"", ["release", object_id])
            log.info("pulled %s (%d bytes) in %.3fs", object_id.hex()[:12], pull.size,
                     time.monotonic() - pull.started)
            self._finish(pull, True)

    def _finish(self, pull: Pull, ok: bool) -> None:
        self.pulls.pop(pull.object_id, None)
        if not ok and pull.offset >= 0:
            self.raylet.store.abort(pull.object_id)
            for req, msg in self.raylet.pins_waiting_seal.pop(pull.object_id, ()):
                self.raylet.handle_pin_objects(req, msg)      # answered: not here
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
    def _on_request(self, sock) -> None:
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 4:
                self._refuse(f"{len(frames)} frames")
                continue
            identity, corr = frames[0].bytes, frames[1].bytes
            try:
                request = msgpack.unpackb(
                    self.seal.open(frames[2].bytes, frames[3].buffer, b"request"))
                kind, object_id = request[0], request[1]
            except security.DataSealError:
                self._refuse("its request does not open with the cluster key")
                continue
            except (ValueError, TypeError, IndexError, msgpack.UnpackException):
                self._refuse("a malformed request")
                continue
            if kind == "release":
                self.raylet.store.release(object_id, identity)
            elif kind == "fetch" and len(request) == 4:
                self._serve_chunk(sock, identity, corr, object_id, request[2], request[3])
            else:
                self._refuse(f"an unknown request {kind!r}")

    def _refuse(self, why: str) -> None:
        now = time.monotonic()
        if now - self._last_refusal > REFUSAL_LOG_INTERVAL_S:
            self._last_refusal = now
            log.warning("object transfer: refused a peer: %s", why)

    def _serve_chunk(self, sock, identity, corr, object_id, offset, length) -> None:
        """Send one chunk of a local object, sealed straight out of the arena."""
        store = self.raylet.store
        if offset == 0:
            loc = store.pin(object_id, identity)
        else:
            info = store.info(object_id)
            loc = (info["offset"], info["size"]) if info and info["offset"] is not None \
                else None
        if loc is None:
            header = msgpack.packb([object_id, offset, 0, "not in this node's store"])
            frames = [identity, corr, header, b"", b""]
        else:
            base, size = loc
            length = max(0, min(length, size - offset))
            header = msgpack.packb([object_id, offset, size, ""])
            nonce, sealed = self.seal.seal(self.raylet.arena.read_view(base + offset, length),
                                           header)
            frames = [identity, corr, header, nonce, sealed]
        try:
            sock.send_multipart(frames, copy=False)
        except zmq.ZMQError as err:
            log.warning("object transfer: the puller of %s went away: %s", object_id.hex(), err)

    def close(self) -> None:
        for sock in self.links.values():
            sock.close(linger=0)
        self.links.clear()
        self.server.close(linger=0)
