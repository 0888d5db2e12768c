"""The object getter (a part of the core worker): ``get`` and ``wait``, the
values of objects this process owns or borrows, read-only views of stored
objects, and the owner's side of fetching (GetObject -> ObjectValue).

It owns: the views handed out (one per object, pinned while it lives), the
views kept while a ref to their object lives here, the views garbage
collected but not yet released, the owners known to be dead, and the hook
the worker process sets to lend its CPU while it waits. A caller may rely
on: waits are bounded by their ``timeout``; a borrowed object whose owner
died becomes OwnerDiedError; once the raylet died every waiter raises its
NodeDiedError; a repeated get of a stored object whose ref lives here asks
the raylet nothing (the view and its pin are kept) until the store needs the
room (see :meth:`ObjectGetter.let_go`).
"""
from __future__ import annotations

import collections
import logging
import time
import weakref

from .. import exceptions as exc
from ..broker import protocol as p
from ..broker import rpc
from ..config import config
from ..object_ref import ObjectRef
from ..store.spill_file import read_spill_file
from .._private.pids import pid_alive
from . import serialization
from .reference_table import PENDING, READY

log = logging.getLogger(__name__)


def error_return(object_id: bytes, error: BaseException) -> p.Return:
    """The Return that makes ``get`` of ``object_id`` raise ``error``."""
    return p.Return(object_id, p.RET_ERROR, serialization.error_bytes(error))


class ObjectGetter:
    def __init__(self, cond, worker, references, raylet, arena, send_to, raylet_error):
        """``references``: the ReferenceCounter; ``send_to(address, msg)``:
        a one-way message to a core worker; ``raylet_error()``: the
        NodeDiedError once this node's raylet died, else None."""
        self.cond = cond
        self._worker = worker
        self.address = worker.address
        self.node_id = worker.node_id
        self.worker_id = worker.worker_id
        self.pid = worker.pid
        self.references = references
        self.refs = references.refs
        self._raylet = raylet
        self._arena = arena
        self._send_to = send_to
        self._raylet_error = raylet_error
        self.blocked_hook = None            # the worker: tell the raylet we wait
        #: ``wait_locked(timeout)`` (lock held): wait for the tables to change; the
        #: core worker's reads the inboxes on this thread (see inbox.py)
        self.wait_locked = cond.wait
        self.dead_owners: dict[bytes, str] = {}     # worker id -> why (TOPIC_WORKER)
        self.dead_nodes: set[bytes] = set()
        self._views: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        #: object id -> its pinned view, kept while a ref to it lives here
        #: (dropped by ``forget_locked`` and ``let_go``)
        self._kept: dict[bytes, object] = {}
        #: PinObjects requests sent (tests: a kept view needs none)
        self.pin_requests = 0
        #: object ids of views garbage collected here, released by ``drain``
        self.released_views: collections.deque = collections.deque()

    def set_blocked_hook(self, hook) -> None:
        """``hook(blocked)`` is called when a wait starts and ends blocking."""
        self.blocked_hook = hook

    def drain(self) -> None:
        """Release the pins of views that were garbage collected."""
        views = self.released_views
        if views:
            ids = []
            while views:
                try:
                    ids.append(views.popleft())
                except IndexError:
                    break
            self._raylet.send(p.ReleaseObjects(ids))

    # -- get / wait --------------------------------------------------------
    def get(self, refs, timeout=None):
        single = isinstance(refs, ObjectRef)
        if single:
            refs = [refs]
        elif not isinstance(refs, (list, tuple)):
            raise TypeError(f"zray.get() takes an ObjectRef or a list of them, "
                            f"not {type(refs).__name__}")
        for ref in refs:
            if not isinstance(ref, ObjectRef):
                raise TypeError(f"zray.get() takes ObjectRefs, got {type(ref).__name__}: "
                                f"{ref!r:.60}")
        deadline = None if timeout is None else time.monotonic() + timeout
        for last_try in (False, True):
            rets = self.wait_for(refs, len(refs), deadline)
            if rets is None:
                raise exc.GetTimeoutError(
                    f"get timed out after {timeout}s waiting for {len(refs)} object(s)")
            held = self._pin_local(rets) if len(rets) > 1 else None
            try:
                values = [self.value_of(ret) for ret in rets]
            except exc.ObjectLostError:
                if last_try or not self._lost_with_a_node(rets):
                    raise
                continue
            del held
            return values[0] if single else values

    def _lost_with_a_node(self, rets) -> bool:
        """Whether a node that stored one of ``rets`` is dead by the GCS
        though this process has not handled its death yet (the node's
        notice comes on its own, after its workers'); if so, its death is
        handled now, as the notice would be (our objects whose only copy it
        had are rebuilt from their lineage), and the caller waits for the
        objects again."""
        nodes = {ret.stored_at.node_id for ret in rets if ret.kind == p.RET_STORED}
        if not nodes:           # (the error was a value: lost for good, an owner died)
            return False
        tasks = self._worker.task_manager
        nodes -= tasks.dead_nodes
        if not nodes:
            return False
        try:
            nodes_now = self._worker.gcs.call(p.GetNodes()).nodes
        except (rpc.NoAnswerError, rpc.RemoteError) as err:
            log.warning("could not ask the GCS whether a node that lost an object died: %s", err)
            return False
        alive = {node.node_id for node in nodes_now if node.alive}
        dead = nodes - alive
        for node_id in dead:
            tasks.node_died(node_id)
        return bool(dead)

    def _pin_local(self, rets) -> list:
        """Pin, in one request, the objects of a multi-get stored on this
        node that have no view here yet; their views (the caller holds them
        until it has the values). Objects it could not pin are left to
        ``view``, which asks again and handles full stores and spill files."""
        ids = []
        for ret in rets:
            if ret.kind == p.RET_STORED and ret.object_id not in self._views \
                    and ret.stored_at.node_id == self.node_id:
                ids.append(ret.object_id)
        ids = list(dict.fromkeys(ids))
        if len(ids) < 2:
            return []
        self.pin_requests += 1
        reply = self._raylet.call(p.PinObjects(ids, [self.node_id] * len(ids), [0] * len(ids)))
        return [self.view(object_id, pinned_at=location)
                for object_id, location in zip(ids, reply.pinned) if location is not None]

    def wait(self, refs, num_returns: int = 1, timeout=None, fetch_local: bool = True):
        """``(ready, not_ready)``. ``fetch_local``: an object counts as ready
        only once it is in this node's store (a stored object of another
        node is pulled here first); False: as soon as it exists anywhere."""
        if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
            raise TypeError("zray.wait() takes a list of ObjectRefs")
        if len({r._id for r in refs}) != len(refs):
            raise ValueError("zray.wait() got the same ObjectRef twice")
        if num_returns < 1 or num_returns > len(refs):
            raise ValueError(f"num_returns must be between 1 and {len(refs)}, "
                             f"got {num_returns}")
        deadline = None if timeout is None else time.monotonic() + timeout
        entries = self._wait_entries(refs, num_returns, deadline)
        error = self._raylet_error()
        if error is not None:       # the refs it failed are "ready": say why instead
            raise error
        if entries is None:         # timed out: what is ready now
            with self.cond:
                table = self.refs.entries
                entries = [table.get(r._id) for r in refs]
        # the first ``num_returns`` ready ones in order (a cut of the list, not
        # a pass per ref: wait() is called on long lists again and again)
        taken = []
        for index, entry in enumerate(entries):
            if entry is not None and entry.state == READY and (
                    not fetch_local or self._fetch_local(entry.ret)):
                taken.append(index)
                if len(taken) == num_returns:
                    break
        refs = list(refs)
        ready = [refs[i] for i in taken]
        not_ready, start = [], 0
        for index in taken:
            not_ready += refs[start:index]
            start = index + 1
        not_ready += refs[start:]
        return ready, not_ready

    def _fetch_local(self, ret: p.Return) -> bool:
        """Pull a stored object of another node into this node's store (one
        bounded request: a store too full for it now counts as not local);
        whether it is local now."""
        if ret.kind != p.RET_STORED:
            return True
        where = ret.stored_at
        if where.node_id == self.node_id or ret.object_id in self._views:
            return True
        self.pin_requests += 1
        reply = self._raylet.call(p.PinObjects([ret.object_id], [where.node_id], [where.size]))
        location, spilled, full = reply.pinned[0], reply.spill_files[0], reply.full[0]
        if location is not None:        # pulled and pinned: keep it while the view lives
            self.view(ret.object_id, pinned_at=location)
            return True
        if full or spilled is None:
            log.info("wait: object %s is not local yet: %s", ret.object_id.hex(),
                     full or "it is in no store")
            return False
        return True                     # spilled to this node's disk: local

    def wait_for(self, refs, num_ready: int, deadline):
        """Wait until ``num_ready`` of ``refs`` are ready; their Returns
        (None for those not ready), or None on timeout. Borrowed values are
        asked of their owners."""
        entries = self._wait_entries(refs, num_ready, deadline)
        if entries is None:
            return None
        return [e.ret if e.state == READY else None for e in entries]

    def _wait_entries(self, refs, num_ready: int, deadline):
        """``wait_for``, returning the refs' table entries (None on timeout)."""
        requests = []
        with self.cond:
            table = self.refs.entries
            entries = [table.get(ref._id) for ref in refs]
            if None in entries:
                entries = [self._entry_for_unknown(ref) if e is None else e
                           for ref, e in zip(refs, entries)]
            pending = [e for e in entries if e.state != READY]
            if len(entries) - len(pending) >= num_ready:
                return entries          # ready already: no request, no wait
            for ref, entry in zip(refs, entries):
                if not entry.owned and entry.state == PENDING and not entry.requested:
                    entry.requested = True
                    requests.append(ref)
            blocked = False
            last_check = time.monotonic()
            # task path: a get (every ref) skips the ready head of ``pending``
            # instead of rescanning it at each wake-up (O(n) in all, not O(n²))
            whole, head = num_ready >= len(entries), 0
            borrowed = None
            while True:
                if whole:
                    while head < len(pending) and pending[head].state == READY:
                        head += 1
                    if head == len(pending):
                        break
                else:
                    if pending:
                        pending = [e for e in pending if e.state != READY]
                    if len(entries) - len(pending) >= num_ready:
                        break
                error = self._raylet_error()
                if error is not None:
                    if blocked:
                        self._set_blocked(False)
                    raise error
                if requests:
                    self.cond.release()
                    try:
                        for ref in requests:
                            self._send_to(ref._owner, p.GetObject(ref._id, list(self.address)))
                    finally:
                        self.cond.acquire()
                    requests = []
                    continue
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    if blocked:
                        self._set_blocked(False)
                    return None
                if not blocked and self.blocked_hook is not None:
                    blocked = True
                    self._set_blocked(True)
                if now - last_check > 1.0:
                    last_check = now
                    if borrowed is None:    # only borrowed objects can lose their owner
                        borrowed = [(ref, e) for ref, e in zip(refs, entries) if not e.owned]
                    if borrowed:
                        self._check_owners([r for r, _ in borrowed], [e for _, e in borrowed])
                wait = 1.0 if deadline is None else min(1.0, deadline - now)
                self.wait_locked(wait)
            if blocked:
                self._set_blocked(False)
            return entries

    def _set_blocked(self, blocked: bool) -> None:
        self.cond.release()
        try:
            self.blocked_hook(blocked)
        finally:
            self.cond.acquire()

    def _entry_for_unknown(self, ref):
        """(lock held) A ref whose entry is gone or never counted here."""
        stale = ref._worker is not None and ref._worker is not self._worker
        owner = p.Address(*ref._owner)
        if owner.worker_id == self.worker_id or stale:
            why = (f"object {ref.hex()} belongs to a zray session that was shut down"
                   if stale else f"object {ref.hex()} was freed: no reference to it was held")
            error = exc.OwnerDiedError(why) if stale else exc.ObjectLostError(why)
            entry = self.refs.add_owned(ref._id, error_return(ref._id, error))
            self.references.released.append(ref._id)
            entry.local = 1
            return entry
        entry, _ = self.refs.add_borrowed(ref._id, owner)
        entry.local += 1
        self.references.released.append(ref._id)
        if not entry.requested:
            entry.requested = True
            self._send_to(owner, p.GetObject(ref._id, list(self.address)))
        return entry

    def _check_owners(self, refs, entries) -> None:
        """(lock held) Fail borrowed objects whose owner process died."""
        for ref, entry in zip(refs, entries):
            if entry.owned or entry.state == READY:
                continue
            owner = p.Address(*ref._owner)
            why = self.dead_owners.get(owner.worker_id)
            if why is None and owner.node_id in self.dead_nodes:
                why = f"its node {owner.node_id.hex()[:12]} died"
            if why is not None:         # told by the GCS (TOPIC_WORKER, TOPIC_NODE)
                self.owner_died_error_locked(ref._id, entry, why)
                continue
            if owner.node_id == self.node_id and (not pid_alive(owner.pid) or (
                    owner.pid == self.pid and owner.worker_id != self.worker_id)):
                entry.ret = error_return(ref._id, exc.OwnerDiedError(
                    f"the owner of object {ref.hex()} (pid {owner.pid}) died"))
                entry.state = READY

    @staticmethod
    def owner_died_error_locked(object_id: bytes, entry, why: str) -> None:
        """(lock held) Make a borrowed entry an OwnerDiedError."""
        entry.ret = error_return(object_id, exc.OwnerDiedError(
            f"the owner of object {object_id.hex()} died, so its value cannot be had: {why}"))
        entry.state = READY

    def owner_died_locked(self, worker_id: bytes, node_id: bytes, why: str) -> None:
        """(lock held) A worker (``worker_id`` b"": every one of ``node_id``)
        died: the objects we borrow from it that have no value yet become
        OwnerDiedError, now and when asked for later."""
        if worker_id:
            if len(self.dead_owners) > 100_000:
                self.dead_owners.clear()
            self.dead_owners[worker_id] = why
        for object_id, entry in list(self.refs.entries.items()):
            if entry.owned or entry.state == READY:
                continue
            owner = p.Address(*entry.owner)
            if (owner.worker_id == worker_id if worker_id else owner.node_id == node_id):
                self.owner_died_error_locked(object_id, entry, why)

    # -- values ------------------------------------------------------------
    def value_of(self, ret: p.Return, raise_errors: bool = True):
        """The value a Return holds; raises it if it is an error (unless
        ``raise_errors`` is False: then the error is returned)."""
        kind = ret.kind
        if kind == p.RET_STORED:
            where = ret.stored_at
            _, value = serialization.deserialize(
                self.view(ret.object_id, source=where.node_id, size=where.size))
            return value
        code, value = serialization.deserialize(ret.payload)
        if kind == p.RET_ERROR or code == serialization.KIND_ERROR:
            if not raise_errors:
                return value
            if isinstance(value, exc.RayTaskError):
                raise value.as_instanceof_cause()
            raise value
        return value

    def view(self, object_id: bytes, pinned_at=None, source: bytes = b"", size: int = 0):
        """A read-only view of a stored object, pinned while it lives.
        ``pinned_at`` is a ``p.Pinned`` when the raylet pinned it for us."""
        view = self._views.get(object_id)
        if view is not None:
            if pinned_at is not None:
                self.released_views.append(object_id)     # one pin is enough
            return view
        if pinned_at is None:
            pinned_at, view = self._pin_or_read_spilled(object_id, source, size)
            if view is not None:        # a private copy of a spill file: nothing pinned
                self._views[object_id] = view
                return view
        view = self._arena.read_view(pinned_at.offset, pinned_at.size)
        weakref.finalize(view, self.released_views.append, object_id)
        self._views[object_id] = view
        self._keep(object_id, view)
        return view

    def _keep(self, object_id: bytes, view) -> None:
        """Keep ``view`` (and so its pin) while a ref to the object lives
        here. No lock: dict operations are atomic, and the second look
        undoes a keep that raced with ``forget_locked``."""
        if self.refs.get(object_id) is None:
            return
        self._kept[object_id] = view
        if self.refs.get(object_id) is None:
            self._kept.pop(object_id, None)

    def forget_locked(self, object_id: bytes) -> None:
        """(lock held) No ref to ``object_id`` lives here any more: its view
        is no longer kept (its pin goes once the user's arrays go too)."""
        self._kept.pop(object_id, None)

    def let_go(self) -> None:
        """The store needs room: stop keeping views. Their pins are
        released at the next ``drain`` unless the user still holds them."""
        if self._kept:
            self._kept.clear()

    def kept_count(self) -> int:
        """How many views are kept for live refs (for tests and stats)."""
        return len(self._kept)

    def _pin_or_read_spilled(self, object_id: bytes, source: bytes, size: int = 0):
        """``(location, None)`` once the raylet pinned the object for us, or
        ``(None, private copy)`` when the store is too full of pinned objects
        to restore it from disk and we read its spill file instead (the file
        may vanish meanwhile, restored or spilled again: then ask again).
        An object on another node that this store has no room for yet is
        asked for again with backoff, as in ``store_put``, then
        ObjectStoreFullError. ObjectLostError only when it is nowhere."""
        started, delay, rereads = None, 0.0, 0
        while True:
            self.pin_requests += 1
            reply = self._raylet.call(p.PinObjects([object_id], [source], [size]))
            location, spilled, full = reply.pinned[0], reply.spill_files[0], reply.full[0]
            if location is not None:
                return location, None
            if full:
                now = time.monotonic()
                started = now if started is None else started
                if now - started >= config.object_store_full_timeout_s:
                    raise exc.ObjectStoreFullError(
                        f"{full} (still full after waiting {now - started:.1f}s, "
                        f"object_store_full_timeout_s={config.object_store_full_timeout_s:g})")
                self.let_go()                   # our own kept views may be what blocks it
                self._worker.drain_releases()
                time.sleep(delay)
                delay = min(max(delay * 2, config.object_store_full_delay_ms / 1000), 1.0)
                continue
            if spilled is None:
                raise exc.ObjectLostError(f"object {object_id.hex()} is not in the object store")
            path, length = spilled.path, spilled.size
            view = read_spill_file(path, length)
            if view is not None:
                return None, view
            rereads += 1
            if rereads >= 5:
                raise exc.ObjectLostError(f"object {object_id.hex()} is spilled but its spill "
                                          f"file kept changing while it was read; try again")

    # -- the owner's side of fetching --------------------------------------
    def handle_get_object(self, msg: p.GetObject) -> None:
        """Answer a borrower with the value, now or once it is ready."""
        with self.cond:
            entry = self.refs.get(msg.object_id)
            if entry is None or not entry.owned:
                ret = error_return(msg.object_id, exc.ObjectLostError(
                    f"object {msg.object_id.hex()} was freed by its owner"))
            elif entry.state == READY:
                ret = entry.ret
            else:
                if entry.remote_waiters is None:
                    entry.remote_waiters = []
                entry.remote_waiters.append(msg.reply_to)
                return
        self._send_to(msg.reply_to, p.ObjectValue(msg.object_id, ret))

    def answer_waiters_locked(self, object_id: bytes, entry) -> None:
        """(lock held) The value of ``object_id`` is in: send it to the
        borrowers that asked for it."""
        if entry.remote_waiters:
            for address in entry.remote_waiters:
                self._send_to(address, p.ObjectValue(object_id, entry.ret))
            entry.remote_waiters = None

    def handle_object_value(self, msg: p.ObjectValue) -> bool:
        """A value we asked an owner for; whether waiters should wake."""
        with self.cond:
            entry = self.refs.get(msg.object_id)
            if entry is not None and entry.state == PENDING:
                entry.ret = msg.returned
                entry.state = READY
                return True
        return False
