"""The store writer (a part of the core worker): puts serialized values into
this node's shared-memory store.

A value of at most ``POOLED_MAX_BYTES`` goes into a block reserved ahead:
one ReserveObjects round trip to the raylet brings the block for this value
and up to ``POOL_BYTES`` more of the same size class, which later values
fill without asking (SealReserved, one way, names each). Other values, and
any value once the store is full, are created one by one (CreateObject).

It owns the pool of reserved blocks. A caller may rely on: a value is in
the store and sealed (or on its way: seals are one way, and readers wait
for them) when ``put`` returns; reserved blocks go back to the store after
``POOL_IDLE_S`` unused, when the raylet asks (the store is full) and at
shutdown (the raylet drops a gone client's blocks).
"""
from __future__ import annotations

import os
import threading
import time

from .. import exceptions as exc
from ..broker import protocol as p
from ..config import config

#: largest value put into a reserved block (bigger ones are rare and large:
#: one round trip is small beside their copy)
POOLED_MAX_BYTES = 4 << 20
#: most bytes held in reserved blocks at once (at most 1/16 of the store)
POOL_BYTES = 16 << 20
#: size classes of reserved blocks (a value uses a block of its class)
SIZE_CLASS_BYTES = 64 << 10
#: reserved blocks unused this long go back to the store
POOL_IDLE_S = 1.0


def _size_class(size: int) -> int:
    return (size + SIZE_CLASS_BYTES - 1) // SIZE_CLASS_BYTES * SIZE_CLASS_BYTES


def _placeholder_id() -> bytes:
    """A fresh id for a reserved block (the size of an object id)."""
    return os.urandom(20)


class StoreWriter:
    def __init__(self, raylet, arena, before_retry):
        """``raylet``: the RpcClient to this node's raylet; ``arena``: the
        mapped store; ``before_retry()``: called before asking a full store
        again (let go of what this process holds but does not use)."""
        self._raylet = raylet
        self._arena = arena
        self._before_retry = before_retry
        self._lock = threading.Lock()
        self._class = 0                 # the size class of the pooled blocks
        self._pool: list[tuple[bytes, int]] = []    # (placeholder id, offset)
        self._last_used = 0.0
        self.pool_limit = min(POOL_BYTES, arena.size // 16)
        #: round trips to the raylet to create or reserve (tests, stats)
        self.create_requests = 0

    # -- putting -----------------------------------------------------------
    def put(self, object_id: bytes, ser, owner_id: bytes) -> None:
        """Write ``ser`` into this node's store and seal it. A store full of
        pinned or half-written objects is asked again with backoff
        (``object_store_full_delay_ms`` doubling to 1 s) for up to
        ``object_store_full_timeout_s``; then, or at once for an object larger
        than the whole store, ObjectStoreFullError naming who holds the room."""
        if ser.size <= POOLED_MAX_BYTES and _size_class(ser.size) * 2 <= self.pool_limit:
            block = self._pooled_block(ser.size)
            if block is not None:
                placeholder, offset = block
                try:
                    self._arena.write(offset, ser.chunks())
                except BaseException:
                    self._raylet.send(p.ReleaseReserved([placeholder]))
                    raise
                self._raylet.send(p.SealReserved(placeholder, object_id, ser.size, owner_id))
                return
        self._create(object_id, ser, owner_id)

    def _pooled_block(self, size: int):
        """A reserved block for a value of ``size`` bytes, or None (the store
        is full: the caller creates it the slow way, which waits for room)."""
        cls = _size_class(size)
        now = time.monotonic()
        with self._lock:
            self._last_used = now
            if self._class == cls and self._pool:
                return self._pool.pop()
            stale = self._take_pool_locked()
            self._class = cls
        if stale:
            self._raylet.send(p.ReleaseReserved(stale))
        count = max(1, self.pool_limit // cls)
        ids = [_placeholder_id() for _ in range(count)]
        self.create_requests += 1
        try:
            reply = self._raylet.call(p.ReserveObjects(ids, cls))
        except BaseException:
            # no answer (timeout, interrupt): blocks the raylet reserved for
            # us would be unknown here until we disconnect; give them back
            self._raylet.send(p.ReleaseReserved(ids))
            raise
        if reply.code < 0 or not reply.offsets:
            return None
        blocks = list(zip(ids, reply.offsets))
        with self._lock:
            if self._class == cls:
                self._pool.extend(blocks[1:])
                blocks = blocks[:1]
        if len(blocks) > 1:             # the class changed meanwhile (another thread)
            self._raylet.send(p.ReleaseReserved([b[0] for b in blocks[1:]]))
        return blocks[0]

    def _create(self, object_id: bytes, ser, owner_id: bytes) -> None:
        create = p.CreateObject(object_id, ser.size, owner_id)
        self.create_requests += 1
        reply = self._raylet.call(create)
        started = time.monotonic()
        delay = 0.0                     # first retry at once: our own dead views
        while reply.offset == p.CREATE_FULL:
            self.release_all()
            self._before_retry()        # our own dead or kept views may be what blocks it
            waited = time.monotonic() - started
            if waited >= config.object_store_full_timeout_s:
                raise exc.ObjectStoreFullError(
                    f"{reply.error} (still full after waiting {waited:.1f}s, "
                    f"object_store_full_timeout_s={config.object_store_full_timeout_s:g})")
            time.sleep(min(delay, config.object_store_full_timeout_s - waited))
            delay = min(max(delay * 2, config.object_store_full_delay_ms / 1000), 1.0)
            self.create_requests += 1
            reply = self._raylet.call(create)
        if reply.offset == p.CREATE_EXISTS:
            return                      # a retried task's result that is already there
        if reply.offset < 0:
            raise exc.ObjectStoreFullError(reply.error)
        self._arena.write(reply.offset, ser.chunks())
        self._raylet.send(p.SealObject(object_id))

    # -- giving blocks back ------------------------------------------------
    def _take_pool_locked(self) -> list[bytes]:
        ids = [placeholder for placeholder, _ in self._pool]
        self._pool = []
        return ids

    def release_all(self) -> None:
        """Give every reserved block back to the store (it needs room)."""
        with self._lock:
            ids = self._take_pool_locked()
        if ids:
            self._raylet.send(p.ReleaseReserved(ids))

    def tick(self, now: float) -> None:
        """(I/O thread, now and then) Give back blocks unused for POOL_IDLE_S."""
        if self._pool and now - self._last_used >= POOL_IDLE_S:
            self.release_all()

    def pooled_count(self) -> int:
        """Reserved blocks held now (tests, stats)."""
        return len(self._pool)
