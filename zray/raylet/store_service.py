"""The node's object store as the raylet serves it: create, seal, pin,
release, free, the objects each writer has not sealed yet, who owns what,
and callbacks that wait for a seal.

The raylet's handlers and ``ObjectTransfer`` both go through this part; no
one else touches the ``ObjectStore`` or the arena of a raylet.
"""
from __future__ import annotations

import logging
import time

from ..store import Arena, ObjectStore
from ..store.object_table import ObjectStoreFullError

log = logging.getLogger(__name__)

#: at most one "waits for room" line per this many seconds (callers retry)
FULL_LOG_INTERVAL_S = 10.0


class StoreService:
    """The store of one node. Callers may rely on: a callback given to
    :meth:`when_sealed` runs exactly once, with True once the object is
    sealed here, or False when its writer aborted or died first."""

    def __init__(self, arena: Arena, store: ObjectStore):
        self.arena = arena
        self.store = store
        self._unsealed: dict[object, set] = {}        # writer -> object ids not sealed
        self._seal_waiters: dict[bytes, list] = {}    # object id -> [callback(ok)]
        self._owner_of: dict[bytes, bytes] = {}       # object id -> owner worker id
        self._owned: dict[bytes, set] = {}            # owner worker id -> object ids
        self._last_full_log = 0.0

    # -- writing ----------------------------------------------------------
    def create(self, object_id: bytes, size: int, owner: bytes | None, writer) -> int:
        """Room for a primary copy ``writer`` fills then seals: its offset.
        Raises ObjectStoreFullError or ObjectExistsError."""
        offset = self.store.create(object_id, size, owner=owner, writer=writer)
        self._unsealed.setdefault(writer, set()).add(object_id)
        if owner is not None:
            self._owner_of[object_id] = owner
            self._owned.setdefault(owner, set()).add(object_id)
        return offset

    def create_copy(self, object_id: bytes, size: int, writer) -> int:
        """Room for a secondary copy (a pull); the caller seals or aborts it."""
        return self.store.create(object_id, size, primary=False, writer=writer)

    def seal(self, object_id: bytes, writer=None) -> None:
        """The object is complete: seal it and run what waited for it."""
        if writer is not None:
            writing = self._unsealed.get(writer)
            if writing:
                writing.discard(object_id)
        try:
            self.store.seal(object_id)
        except KeyError:
            log.warning("seal of unknown object %s dropped", object_id.hex())
        self._wake(object_id)

    def abort(self, object_id: bytes) -> None:
        """Drop a copy that will never be complete; waiters learn it is not here."""
        self.store.abort(object_id)
        self._wake(object_id)

    def when_sealed(self, object_id: bytes, callback) -> None:
        """Call ``callback(ok)`` once the object being created here is sealed
        (ok: it is here) or aborted (not ok); at once if it is not being created."""
        if self.store.is_being_created(object_id):
            self._seal_waiters.setdefault(object_id, []).append(callback)
        else:
            callback(self.store.contains(object_id))

    def _wake(self, object_id: bytes) -> None:
        for callback in self._seal_waiters.pop(object_id, ()):
            try:
                callback(self.store.contains(object_id))
            except Exception:       # one waiter's failure never stops the others
                log.exception("a callback waiting for the seal of %s failed",
                              object_id.hex()[:16])

    # -- reading ----------------------------------------------------------
    def pin(self, object_id: bytes, client) -> tuple[int, int] | None:
        """``(offset, size)`` pinned for ``client``, None if not here;
        raises ObjectStoreFullError when a spilled object has no room back."""
        return self.store.pin(object_id, client)

    def pin_all(self, object_ids, client, what: str = "restoring") -> tuple[list, list]:
        """Pin each object for ``client``: ``(locations, spill files)``, one
        of each per object (None where it does not apply); an object with no
        room to be restored is read from its spill file instead."""
        locations, spilled = [], []
        for object_id in object_ids:
            copy = None
            try:
                loc = self.store.pin(object_id, client)
            except ObjectStoreFullError as err:
                self.log_full(f"{what} {object_id.hex()[:16]}", err)
                loc, copy = None, self.store.spilled_copy(object_id)
            locations.append(list(loc) if loc else None)
            spilled.append(list(copy) if copy else None)
        return locations, spilled

    def release(self, object_id: bytes, client) -> None:
        self.store.release(object_id, client)

    def free(self, object_id: bytes) -> None:
        """The owner freed it: drop it here (once unpinned)."""
        self.store.free(object_id)
        owner = self._owner_of.pop(object_id, None)
        if owner is not None:
            owned = self._owned.get(owner)
            if owned:
                owned.discard(object_id)

    def free_owned_by(self, owner_id: bytes) -> None:
        """The owner is gone: free what it put here."""
        for object_id in self._owned.pop(owner_id, ()):
            self.store.free(object_id)
            self._owner_of.pop(object_id, None)

    def client_gone(self, client) -> None:
        """A client is gone: its pins go, its half-written objects are aborted."""
        self.store.release_client(client)
        for object_id in self._unsealed.pop(client, ()):
            self.abort(object_id)

    def release_client(self, client) -> None:
        """Drop every pin of ``client`` (a closed transfer connection)."""
        self.store.release_client(client)

    # -- looking ----------------------------------------------------------
    def contains(self, object_id: bytes) -> bool:
        return self.store.contains(object_id)

    def is_being_created(self, object_id: bytes) -> bool:
        return self.store.is_being_created(object_id)

    def has_room(self, size: int) -> bool:
        return self.store.has_room(size)

    def busy_report(self) -> str:
        return self.store.busy_report()

    def spilled_copy(self, object_id: bytes):
        return self.store.spilled_copy(object_id)

    def info(self, object_id: bytes):
        return self.store.info(object_id)

    def stats(self) -> dict:
        return self.store.stats()

    def list_objects(self, limit: int):
        return self.store.list_objects(limit)

    def read_view(self, offset: int, size: int):
        return self.arena.read_view(offset, size)

    def writable_view(self, offset: int, size: int):
        return self.arena.writable_view(offset, size)

    def log_full(self, what: str, err: ObjectStoreFullError) -> None:
        """Log a full store at most every FULL_LOG_INTERVAL_S (callers wait and retry)."""
        now = time.monotonic()
        if now - self._last_full_log > FULL_LOG_INTERVAL_S:
            self._last_full_log = now
            log.info("%s waits for room: %s", what, err)

    def close(self) -> None:
        """Close the store and remove the arena's file."""
        self.store.close()
        self.arena.close()
        self.arena.unlink()
