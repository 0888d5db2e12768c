"""The object table of one node's store: which object lives where, who pins it.

Lives in the raylet and is single-threaded (no locks). An object is CREATED
(being written; never evicted) and then SEALED (immutable). A sealed object
is in the arena or spilled to a file in ``spill_dir``; pinning a spilled
object restores it first. When space runs out, unpinned sealed secondary
copies are evicted (LRU first), then unpinned sealed primary copies are
spilled (LRU first); only then does ``create`` (or a restore) raise
ObjectStoreFullError, which says how much is pinned or being written and by
whom. Such a store frees up by itself as holders let go: the caller may try
again later, and a reader may read a spilled object's file instead
(:meth:`ObjectStore.spilled_copy`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

from .allocator import Allocator
from .arena import Arena

log = logging.getLogger(__name__)

CREATED = "CREATED"
SEALED = "SEALED"


def _fmt(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class ObjectStoreFullError(Exception):
    """The store cannot make room for an object, even after evicting and
    spilling everything it may. Has ``requested``, ``capacity``, ``used``,
    ``busy`` (bytes pinned or being written: they free up by themselves once
    their holders let go) and ``never_fits`` (True when the object is larger
    than the whole store: waiting cannot help)."""

    def __init__(self, requested: int, capacity: int, used: int, detail: str = "",
                 busy: int = 0, never_fits: bool = False):
        self.requested, self.capacity, self.used = requested, capacity, used
        self.busy, self.never_fits = busy, never_fits
        msg = (
            f"object store is full: cannot allocate {_fmt(requested)} "
            f"(capacity {_fmt(capacity)}, used {_fmt(used)})"
        )
        if detail:
            msg += f"; {detail}"
        msg += (
            ". Raise object_store_memory, or free references to objects you no "
            "longer need (drop ObjectRefs and the arrays/views obtained from them)."
        )
        super().__init__(msg)


class ObjectExistsError(Exception):
    """``create`` was called for an object id the store already holds."""


class _Entry:
    __slots__ = ("object_id", "offset", "size", "owner", "primary", "state",
                 "pins", "freed", "spilled", "tick", "writer")

    def __init__(self, object_id, offset, size, owner, primary, writer=None):
        self.object_id = object_id
        self.offset = offset          # None while spilled
        self.size = size
        self.owner = owner
        self.primary = primary
        self.state = CREATED
        self.pins: dict = {}          # client -> count
        self.freed = False            # owner freed it; delete at last release
        self.spilled: str | None = None
        self.tick = 0
        self.writer = writer          # the client writing it while CREATED


#: how many holders and objects a full-store message names at most
_NAMED = 4


class ObjectStore:
    """The object table over one :class:`Arena`; spills into ``spill_dir``.

    Closing the arena is the caller's business; :meth:`close` only removes
    spill files. ``describe_client(client)`` names a client in error messages
    (e.g. "worker pid 123"); by default its ``repr``.
    """

    def __init__(self, arena: Arena, spill_dir: str, describe_client=None):
        self.arena = arena
        self.spill_dir = spill_dir
        self.describe_client = describe_client or repr
        self.allocator = Allocator(arena.size)
        # Insertion order is LRU order: least recently used first.
        self._objects: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_client: dict = {}    # client -> set of object ids it pins
        self._tick = 0
        self._num_evicted = 0
        self._num_restored = 0
        self._num_spilled = 0         # currently spilled objects
        self._spilled_bytes = 0

    # -- lifecycle -----------------------------------------------------------

    def create(self, object_id: bytes, size: int, owner=None, primary: bool = True,
               writer=None) -> int:
        """Reserve ``size`` bytes for a new object and return its offset.
        ``writer`` (a client) is named in full-store errors until the seal.

        Raises ObjectExistsError if the id is already present (in any state),
        ObjectStoreFullError if no room can be made now.
        """
        e = self._objects.get(object_id)
        if e is not None:
            what = "being created" if e.state == CREATED else "sealed"
            raise ObjectExistsError(f"object {object_id.hex()} already exists ({what})")
        if size < 0:
            raise ValueError(f"object size must be >= 0, got {size}")
        offset = self._allocate(size)
        e = _Entry(object_id, offset, size, owner, primary, writer)
        self._objects[object_id] = e
        self._touch(e)
        return offset

    def rename(self, old_id: bytes, new_id: bytes, size: int, owner=None) -> None:
        """Give a CREATED object (a block reserved ahead, see the raylet's
        StoreService.reserve) its real id, size (at most the reserved size)
        and owner. KeyError if ``old_id`` is not being created;
        ObjectExistsError if ``new_id`` is present; ValueError on a size
        larger than the block."""
        e = self._objects.get(old_id)
        if e is None or e.state != CREATED:
            raise KeyError(old_id)
        if new_id in self._objects:
            raise ObjectExistsError(f"object {new_id.hex()} already exists")
        if not 0 <= size <= e.size:
            raise ValueError(f"object of {size} bytes does not fit a reserved block "
                             f"of {e.size} bytes")
        del self._objects[old_id]
        e.object_id, e.size, e.owner = new_id, size, owner
        self._objects[new_id] = e
        self._touch(e)

    def known(self, object_id: bytes) -> bool:
        """True if the table has any record of the object (any state)."""
        return object_id in self._objects

    def seal(self, object_id: bytes) -> None:
        """Mark a created object immutable and readable. KeyError if unknown;
        sealing twice is a no-op."""
        e = self._objects[object_id]
        if e.state == SEALED:
            return
        e.state = SEALED
        e.writer = None
        self._touch(e)
        if e.freed and not e.pins:
            self._delete(e)

    def abort(self, object_id: bytes) -> None:
        """Drop a CREATED object (its writer failed). Ignores unknown or
        sealed ids."""
        e = self._objects.get(object_id)
        if e is not None and e.state == CREATED:
            self._delete(e)

    def free(self, object_id: bytes) -> None:
        """The owner no longer needs the object: delete it now if unpinned,
        else at its last release. Unknown ids are ignored."""
        e = self._objects.get(object_id)
        if e is None:
            return
        e.freed = True
        if e.state == SEALED and not e.pins:
            self._delete(e)

    # -- readers -------------------------------------------------------------

    def pin(self, object_id: bytes, client) -> tuple[int, int] | None:
        """``(offset, size)`` of a sealed object, pinned once more for
        ``client``; restores it from disk first if spilled (may raise
        ObjectStoreFullError). None if unknown, not sealed yet, or freed."""
        e = self._objects.get(object_id)
        if e is None or e.state != SEALED or e.freed:
            return None
        if e.offset is None:
            self._restore(e)
        e.pins[client] = e.pins.get(client, 0) + 1
        self._by_client.setdefault(client, set()).add(object_id)
        self._touch(e)
        return e.offset, e.size

    def spilled_copy(self, object_id: bytes) -> tuple[str, int] | None:
        """``(path, size)`` of the spill file of a sealed, unfreed object that
        is on disk only, else None. A reader that cannot get the object
        mapped (the store is full of pinned objects) may read this file
        instead; the file is complete whenever it exists under ``path``
        (written aside, then renamed), and may vanish at any moment (the
        object was restored or freed): ask again then."""
        e = self._objects.get(object_id)
        if e is None or e.state != SEALED or e.freed or e.spilled is None:
            return None
        return e.spilled, e.size

    def busy_report(self) -> str:
        """Who holds arena bytes that cannot be evicted or spilled now:
        ``"<n> is pinned or being written: <n> by <client> (objects ...),
        ..."``; the largest holders first."""
        by_holder: dict = {}              # name -> [bytes, [(size, object id)]]
        busy = 0
        for e in self._objects.values():
            if e.offset is None or self._reclaimable(e):
                continue
            size = self.allocator.size_of(e.offset)
            busy += size
            if e.state == CREATED:
                holders = [("being written by", e.writer)]
            else:
                holders = [("pinned by", c) for c in e.pins]
            for verb, client in holders:
                try:
                    name = f"{verb} {self.describe_client(client)}"
                except Exception:   # noqa: BLE001 -- a name is only a courtesy
                    log.warning("cannot name store client %r", client, exc_info=True)
                    name = f"{verb} {client!r}"
                slot = by_holder.setdefault(name, [0, []])
                slot[0] += size
                slot[1].append((size, e.object_id))
        if not busy:
            return "nothing is pinned or being written"
        parts = []
        ranked = sorted(by_holder.items(), key=lambda kv: -kv[1][0])
        for name, (nbytes, objects) in ranked[:_NAMED]:
            objects.sort(key=lambda so: -so[0])
            ids = ", ".join(oid.hex() for _, oid in objects[:_NAMED])
            more = f" and {len(objects) - _NAMED} more" if len(objects) > _NAMED else ""
            parts.append(f"{_fmt(nbytes)} {name} (object{'s' if len(objects) > 1 else ''} "
                         f"{ids}{more})")
        if len(ranked) > _NAMED:
            parts.append(f"{len(ranked) - _NAMED} more holder(s)")
        return f"{_fmt(busy)} is pinned or being written: " + "; ".join(parts)

    def pin_holders(self) -> list:
        """The clients that hold at least one pin now."""
        return list(self._by_client)

    def has_room(self, size: int) -> bool:
        """True if ``create(size)`` would find room now, counting what it may
        evict or spill (a fragmented arena may still refuse it)."""
        alloc = self.allocator
        if size > alloc.capacity:
            return False
        room = alloc.free_bytes + sum(alloc.size_of(e.offset) for e in self._objects.values()
                                      if self._reclaimable(e))
        return room >= alloc.block_size(size)

    def busy_bytes(self) -> int:
        """Arena bytes held by pinned or half-written objects."""
        return sum(self.allocator.size_of(e.offset) for e in self._objects.values()
                   if e.offset is not None and not self._reclaimable(e))

    def release(self, object_id: bytes, client) -> None:
        """Drop one of ``client``'s pins; ignores pins it does not hold."""
        e = self._objects.get(object_id)
        if e is None or client not in e.pins:
            return
        n = e.pins[client] - 1
        if n:
            e.pins[client] = n
            return
        del e.pins[client]
        self._forget_pin(client, object_id)
        if e.freed and not e.pins:
            self._delete(e)

    def release_client(self, client) -> None:
        """Drop every pin ``client`` holds (it died)."""
        for object_id in self._by_client.pop(client, ()):
            e = self._objects.get(object_id)
            if e is None:
                continue
            e.pins.pop(client, None)
            if e.freed and not e.pins:
                self._delete(e)

    def contains(self, object_id: bytes) -> bool:
        """True if the object is sealed and not freed (in the arena or spilled)."""
        e = self._objects.get(object_id)
        return e is not None and e.state == SEALED and not e.freed

    def is_being_created(self, object_id: bytes) -> bool:
        """True while the object is created but not sealed yet."""
        e = self._objects.get(object_id)
        return e is not None and e.state != SEALED and not e.freed

    def info(self, object_id: bytes) -> dict | None:
        """A snapshot of one object's record, or None if unknown."""
        e = self._objects.get(object_id)
        if e is None:
            return None
        return {
            "object_id": e.object_id, "state": e.state, "offset": e.offset,
            "size": e.size, "owner": e.owner, "primary": e.primary,
            "pins": dict(e.pins), "freed": e.freed, "spilled": e.spilled,
            "last_access": e.tick,
        }

    def list_objects(self, limit: int) -> tuple[list[dict], int]:
        """(at most ``limit`` object records, the most recently used first;
        how many objects the table holds). A record: object_id, size, owner
        (as given to ``create``), state (BEING_WRITTEN, PINNED, SEALED or
        SPILLED: on disk only), pins {client: count}, writer, primary, freed."""
        out = []
        for e in reversed(self._objects.values()):
            if len(out) >= limit:
                break
            if e.state == CREATED:
                state = "BEING_WRITTEN"
            elif e.pins:
                state = "PINNED"
            elif e.offset is None and e.spilled is not None:
                state = "SPILLED"
            else:
                state = "SEALED"
            out.append({"object_id": e.object_id, "size": e.size, "owner": e.owner,
                        "state": state, "pins": dict(e.pins), "writer": e.writer,
                        "primary": e.primary, "freed": e.freed})
        return out, len(self._objects)

    def stats(self) -> dict:
        """Counters: capacity, used (arena bytes allocated), num_objects,
        num_spilled and spilled_bytes (now on disk), num_evicted and
        num_restored (since start)."""
        return {
            "capacity": self.allocator.capacity,
            "used": self.allocator.used,
            "num_objects": len(self._objects),
            "num_spilled": self._num_spilled,
            "spilled_bytes": self._spilled_bytes,
            "num_evicted": self._num_evicted,
            "num_restored": self._num_restored,
        }

    def close(self) -> None:
        """Remove every spill file and forget all objects."""
        for e in self._objects.values():
            if e.spilled is not None:
                self._unspilled(e)
        self._objects.clear()
        self._by_client.clear()

    # -- internals -----------------------------------------------------------

    def _touch(self, e: _Entry) -> None:
        self._tick += 1
        e.tick = self._tick
        self._objects.move_to_end(e.object_id)

    def _forget_pin(self, client, object_id: bytes) -> None:
        ids = self._by_client.get(client)
        if ids is not None:
            ids.discard(object_id)
            if not ids:
                del self._by_client[client]

    def _delete(self, e: _Entry) -> None:
        del self._objects[e.object_id]
        if e.offset is not None:
            self.allocator.free(e.offset)
            e.offset = None
        if e.spilled is not None:
            self._unspilled(e)
        for client in e.pins:
            self._forget_pin(client, e.object_id)
        e.pins.clear()

    @staticmethod
    def _reclaimable(e: _Entry) -> bool:
        return e.state == SEALED and e.offset is not None and not e.pins

    def _full(self, size: int, detail: str = "", never_fits: bool = False
              ) -> ObjectStoreFullError:
        return ObjectStoreFullError(size, self.allocator.capacity, self.allocator.used, detail,
                                    busy=self.busy_bytes(), never_fits=never_fits)

    def _allocate(self, size: int) -> int:
        """Offset of ``size`` free bytes, evicting then spilling LRU-first."""
        alloc = self.allocator
        if size > alloc.capacity:
            raise self._full(size, "the object is larger than the whole store",
                             never_fits=True)
        offset = alloc.allocate(size)
        if offset is not None:
            return offset
        victims = [e for e in self._objects.values() if self._reclaimable(e)]
        room = alloc.free_bytes + sum(alloc.size_of(e.offset) for e in victims)
        if room < alloc.block_size(size):
            raise self._full(size, self.busy_report())
        # Secondary copies go first (another node has the object), then spill.
        for e in [v for v in victims if not v.primary] + [v for v in victims if v.primary]:
            if e.primary:
                try:
                    self._spill(e)
                except OSError as err:
                    raise self._full(size, f"spilling to {self.spill_dir} failed: {err}") from err
            else:
                self._delete(e)
                self._num_evicted += 1
            offset = alloc.allocate(size)
            if offset is not None:
                return offset
        raise self._full(size, f"free space is fragmented (largest free block "
                               f"{_fmt(alloc.largest_free())}); {self.busy_report()}")

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _spill(self, e: _Entry) -> None:
        """Write ``e`` to its spill file (aside first, then renamed, so a
        reader of :meth:`spilled_copy` never sees it half written) and free
        its arena block."""
        os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.spill_dir, e.object_id.hex())
        part = path + ".part"
        view = memoryview(self.arena.read_view(e.offset, e.size))
        try:
            with open(part, "wb", buffering=0) as f:
                done = 0
                while done < e.size:
                    done += f.write(view[done:])
            os.replace(part, path)
        except BaseException:
            self._unlink(part)
            raise
        finally:
            view.release()
        self.allocator.free(e.offset)
        e.offset = None
        e.spilled = path
        self._num_spilled += 1
        self._spilled_bytes += e.size

    def _unspilled(self, e: _Entry) -> None:
        """Remove ``e``'s spill file and stop counting it as spilled."""
        self._unlink(e.spilled)
        e.spilled = None
        self._num_spilled -= 1
        self._spilled_bytes -= e.size

    def _restore(self, e: _Entry) -> None:
        offset = self._allocate(e.size)   # e is spilled, so never a victim
        try:
            view = self.arena.writable_view(offset, e.size)
            try:
                with open(e.spilled, "rb", buffering=0) as f:
                    done = 0
                    while done < e.size:
                        n = f.readinto(view[done:])
                        if not n:
                            raise OSError(f"spill file {e.spilled} is truncated "
                                          f"({done} of {e.size} bytes)")
                        done += n
            finally:
                view.release()
        except BaseException:
            self.allocator.free(offset)
            raise
        self._unspilled(e)
        e.offset = offset
        self._num_restored += 1
