"""The node's object store as the raylet serves it: create, seal, pin,
release, free, the objects each writer has not sealed yet, who owns what,
and callbacks that wait for a seal.

The raylet's handlers and ``ObjectTransfer`` both go through this part; no
one else touches the ``ObjectStore`` or the arena of a raylet.

Drivers and workers keep the views (and pins) of objects they still hold
refs to, so a repeated get is a local lookup. When the store cannot make
room, the clients holding pins or reserved blocks are asked to let go of
them (``ask_to_let_go``, set by the raylet); the caller that met the full
store retries with backoff, as it always does.

Reserved blocks: a client may reserve blocks ahead (``reserve``), write an
object into one without asking, and then name it (``seal_reserved``, one
way). Until every block reserved before a question about an unknown object
is named or dropped, that object may still be being created here: pins and
task arguments of it wait (``is_being_created``, ``when_sealed``), so a
reader that learnt of the object from its writer never sees it "lost".
"""
from __future__ import annotations

import logging
import time

from ..broker import protocol as p
from ..store import Arena, ObjectStore
from ..store.object_table import ObjectExistsError, ObjectStoreFullError

log = logging.getLogger(__name__)

#: at most one "waits for room" line per this many seconds (callers retry)
FULL_LOG_INTERVAL_S = 10.0
#: pin holders are asked to let go of kept views at most this often
LET_GO_INTERVAL_S = 0.005


class StoreService:
    """The store of one node. Callers may rely on: a callback given to
    :meth:`when_sealed` runs exactly once, with True once the object is
    sealed here, or False when its writer aborted or died first."""

    def __init__(self, arena: Arena, store: ObjectStore, ask_to_let_go=None):
        """``ask_to_let_go(clients)``: ask these pin holders (store client
        ids) to stop keeping views they no longer need; called when the
        store is full of pinned objects."""
        self.arena = arena
        self.store = store
        self.ask_to_let_go = ask_to_let_go
        self._last_let_go = 0.0
        self._unsealed: dict[object, set] = {}        # writer -> object ids not sealed
        self._seal_waiters: dict[bytes, list] = {}    # object id -> [callback(ok)]
        self._owner_of: dict[bytes, bytes] = {}       # object id -> owner worker id
        self._owned: dict[bytes, set] = {}            # owner worker id -> object ids
        self._last_full_log = 0.0
        #: reserved blocks not named yet: placeholder id -> (sequence, writer)
        self._reserved: dict[bytes, tuple[int, object]] = {}
        self._reserve_seq = 0
        #: unknown object -> the last block reserved when it was first
        #: waited for: blocks reserved later cannot turn out to be it
        self._settled: dict[bytes, int] = {}
        #: unknown objects freed while blocks were reserved -> the last
        #: block reserved then: one of the blocks up to it may still be named
        #: so (then it is dropped at once). Kept, in free order, until every
        #: such block is named or dropped (``_unreserve``).
        self._freed_early: dict[bytes, int] = {}

    # -- writing ----------------------------------------------------------
    def create(self, object_id: bytes, size: int, owner: bytes | None, writer) -> int:
        """Room for a primary copy ``writer`` fills then seals: its offset.
        Raises ObjectStoreFullError or ObjectExistsError."""
        try:
            offset = self.store.create(object_id, size, owner=owner, writer=writer)
        except ObjectStoreFullError as err:
            self._full(err)
            raise
        self._unsealed.setdefault(writer, set()).add(object_id)
        if owner is not None:
            self._owner_of[object_id] = owner
            self._owned.setdefault(owner, set()).add(object_id)
        return offset

    def create_copy(self, object_id: bytes, size: int, writer) -> int:
        """Room for a secondary copy (a pull); the caller seals or aborts it."""
        try:
            return self.store.create(object_id, size, primary=False, writer=writer)
        except ObjectStoreFullError as err:
            self._full(err)
            raise

    def _full(self, err: ObjectStoreFullError) -> None:
        """The store is full of pinned objects: ask their holders to let go
        of the views they only keep (at most every LET_GO_INTERVAL_S)."""
        if err.never_fits or self.ask_to_let_go is None:
            return
        now = time.monotonic()
        if now - self._last_let_go < LET_GO_INTERVAL_S:
            return
        self._last_let_go = now
        holders = set(self.store.pin_holders())
        holders.update(writer for _, writer in self._reserved.values())
        if holders:
            self.ask_to_let_go(list(holders))

    # -- reserved blocks --------------------------------------------------
    def reserve(self, placeholder_ids, size: int, writer) -> list[int]:
        """Blocks of ``size`` bytes ``writer`` may fill without asking, one
        per placeholder id: their offsets. The first may evict or spill (it
        raises ObjectStoreFullError or ObjectExistsError as ``create``); the
        others are taken only from free space (fewer offsets then: a later
        block that cannot be had ends the list, and the blocks already
        reserved are the caller's). Nothing stays reserved if it raises."""
        offsets = []
        try:
            for i, placeholder in enumerate(placeholder_ids):
                if i and self.store.allocator.largest_free() \
                        < self.store.allocator.block_size(size):
                    break
                try:
                    offsets.append(self.create(placeholder, size, None, writer))
                except (ObjectStoreFullError, ObjectExistsError):
                    if not i:
                        raise
                    break
                self._reserve_seq += 1
                self._reserved[placeholder] = (self._reserve_seq, writer)
        except BaseException:
            # the caller gets no offsets: give back what it would not know of
            self.release_reserved(placeholder_ids[:len(offsets)], writer)
            raise
        return offsets

    def seal_reserved(self, placeholder: bytes, object_id: bytes, size: int,
                      owner: bytes | None, writer) -> None:
        """``writer`` filled a reserved block with ``object_id``: name the
        block and seal it. An object already here (a retried task's result)
        keeps its copy and the block is dropped."""
        if self._reserved.get(placeholder, (0, writer))[1] != writer:
            log.warning("seal of a block %s reserved by another client dropped",
                        placeholder.hex()[:16])
            return
        if self._freed_early.pop(object_id, None) is not None:   # its owner freed it already
            self.abort(placeholder)
            return
        try:
            self.store.rename(placeholder, object_id, size, owner)
        except KeyError:
            log.warning("seal of unknown reserved block %s dropped", placeholder.hex()[:16])
            self.abort(placeholder)
            return
        except (ObjectExistsError, ValueError) as err:
            if isinstance(err, ValueError):
                log.warning("seal of reserved block %s dropped: %s", placeholder.hex()[:16], err)
            self.abort(placeholder)
            return
        writing = self._unsealed.get(writer)
        if writing is not None:
            writing.discard(placeholder)
            writing.add(object_id)
        if owner is not None:
            self._owner_of[object_id] = owner
            self._owned.setdefault(owner, set()).add(object_id)
        self.seal(object_id, writer)
        self._unreserve(placeholder)
        self._wake(placeholder)

    def release_reserved(self, placeholder_ids, writer) -> None:
        """``writer`` no longer needs these reserved blocks."""
        for placeholder in placeholder_ids:
            held = self._reserved.get(placeholder)
            if held is not None and held[1] == writer:
                writing = self._unsealed.get(writer)
                if writing is not None:
                    writing.discard(placeholder)
                self.abort(placeholder)

    def reserved_count(self) -> int:
        """Reserved blocks not named yet (for tests and stats)."""
        return len(self._reserved)

    def freed_early_count(self) -> int:
        """Objects freed before a block reserved earlier was named, still
        remembered: at most those freed while the oldest such block is
        unnamed (for tests and stats)."""
        return len(self._freed_early)

    def _may_become(self, object_id: bytes) -> list[bytes]:
        """The reserved blocks that may still turn out to be ``object_id``
        (unknown here): those reserved before it was first asked about."""
        if not self._reserved or self.store.known(object_id):
            return []
        limit = self._settled.get(object_id)
        if limit is None:
            return list(self._reserved)
        return [b for b, (seq, _) in self._reserved.items() if seq <= limit]

    def _wait_for_reserved(self, object_id: bytes, pending: list, callback) -> None:
        """Call ``callback(ok)`` once ``object_id`` is sealed here, or once
        every block of ``pending`` is named or dropped (ok: it is here)."""
        if object_id not in self._settled:
            if len(self._settled) > 100_000:
                self._settled.clear()
            self._settled[object_id] = self._reserve_seq
        state = {"left": len(pending), "done": False}

        def finish() -> None:
            if state["done"]:
                return
            state["done"] = True
            waiters = self._seal_waiters.get(object_id)
            if waiters is not None and on_object in waiters:
                waiters.remove(on_object)
                if not waiters:
                    del self._seal_waiters[object_id]
            callback(self.store.contains(object_id))

        def on_object(ok: bool) -> None:
            finish()

        def on_block(ok: bool) -> None:
            state["left"] -= 1
            if state["left"] <= 0 or self.store.known(object_id):
                finish()

        self._seal_waiters.setdefault(object_id, []).append(on_object)
        for placeholder in pending:
            self._seal_waiters.setdefault(placeholder, []).append(on_block)

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
        self._unreserve(object_id)
        self._wake(object_id)

    def _unreserve(self, placeholder: bytes) -> None:
        """A reserved block was named or dropped: forget the early frees
        that no block left can turn out to be."""
        if self._reserved.pop(placeholder, None) is None:
            return
        if not self._reserved:
            self._freed_early.clear()       # no block left that could become them
            self._settled.clear()
            return
        oldest = next(iter(self._reserved.values()))[0]     # blocks are kept in seq order
        freed = self._freed_early
        while freed:
            object_id, seq = next(iter(freed.items()))
            if seq >= oldest:
                break
            del freed[object_id]            # every block reserved before its free is gone

    def when_sealed(self, object_id: bytes, callback) -> None:
        """Call ``callback(ok)`` once the object being created here is sealed
        (ok: it is here) or aborted (not ok); at once if it is not being created.
        An unknown object waits for the blocks reserved now (see the module)."""
        if self.store.is_being_created(object_id):
            self._seal_waiters.setdefault(object_id, []).append(callback)
            return
        pending = self._may_become(object_id)
        if pending:
            self._wait_for_reserved(object_id, pending, callback)
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
    def pin(self, object_id: bytes, client) -> p.Pinned | None:
        """Where the object is pinned for ``client``, None if not here;
        raises ObjectStoreFullError when a spilled object has no room back."""
        try:
            loc = self.store.pin(object_id, client)
        except ObjectStoreFullError as err:
            self._full(err)
            raise
        return None if loc is None else p.Pinned._make(loc)

    def pin_all(self, object_ids, client, what: str = "restoring") -> tuple[list, list]:
        """Pin each object for ``client``: ``(locations, spill files)``
        (``Pinned`` and ``SpilledCopy`` records), one of each per object
        (None where it does not apply); an object with no room to be
        restored is read from its spill file instead."""
        locations, spilled = [], []
        for object_id in object_ids:
            copy = None
            try:
                loc = self.store.pin(object_id, client)
            except ObjectStoreFullError as err:
                self._full(err)
                self.log_full(f"{what} {object_id.hex()[:16]}", err)
                loc, copy = None, self.store.spilled_copy(object_id)
            locations.append(p.Pinned._make(loc) if loc else None)
            spilled.append(p.SpilledCopy._make(copy) if copy else None)
        return locations, spilled

    def release(self, object_id: bytes, client) -> None:
        self.store.release(object_id, client)

    def free(self, object_id: bytes) -> None:
        """The owner freed it: drop it here (once unpinned)."""
        if self._reserved and not self.store.known(object_id):
            self._freed_early.pop(object_id, None)      # kept in free order
            self._freed_early[object_id] = self._reserve_seq
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

    def is_being_created(self, object_id: bytes, made_here: bool = True) -> bool:
        """True while the object is created but not sealed here, or while
        it is unknown and a block reserved before it was first asked about
        is not named yet (it may turn out to be it). ``made_here`` False: its
        owner says another node made it, so no block reserved here can turn
        out to be it (a pin of it pulls at once instead of waiting)."""
        if self.store.is_being_created(object_id):
            return True
        return made_here and bool(self._may_become(object_id))

    def has_room(self, size: int) -> bool:
        return self.store.has_room(size)

    def busy_report(self) -> str:
        return self.store.busy_report()

    def spilled_copy(self, object_id: bytes):
        return self.store.spilled_copy(object_id)

    def info(self, object_id: bytes):
        return self.store.info(object_id)

    def stats(self) -> dict:
        """The store's counters (ObjectStore.stats) and ``num_reserved``:
        blocks clients reserved and have not filled yet (counted in ``used``;
        given back when unused for a second)."""
        stats = self.store.stats()
        stats["num_reserved"] = len(self._reserved)
        return stats

    def list_objects(self, limit: int):
        """What ObjectStore.list_objects says, without the reserved blocks
        not filled yet (they are room set aside, not objects)."""
        if not self._reserved:
            return self.store.list_objects(limit)
        records, total = self.store.list_objects(limit + len(self._reserved))
        records = [r for r in records if r["object_id"] not in self._reserved][:limit]
        return records, total - len(self._reserved)

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
