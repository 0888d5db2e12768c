"""The reference counter (a part of the core worker): the reference table of
this process — owned and borrowed objects — and the rules that keep an
object alive or free it.

It owns: the table (``refs``), the refs garbage collected but not yet
applied (``released``), borrowing (AddBorrower/RemoveBorrower both ways),
the refs contained in owned values. A caller may rely on: an owned object is
freed in the store (FreeObjects) once no ``ObjectRef`` here, no pending task
argument, no borrower and no unclaimed generator item holds it; a borrowed
one is then given back to its owner (RemoveBorrower). The table is guarded
by the core worker's lock (``cond``): methods named ``*_locked`` expect it
held, the others take it.
"""
from __future__ import annotations

import collections
import logging

from ..broker import protocol as p
from ..object_ref import ObjectRef
from .reference_table import ReferenceTable

log = logging.getLogger(__name__)


class ReferenceCounter:
    def __init__(self, cond, worker, send_to, raylet, on_freed):
        """``worker``: the core worker the refs made here count with;
        ``send_to(address, msg)``: a one-way message to another core worker;
        ``on_freed(object_id, entry)`` (lock held): an owned or borrowed
        entry lost its last hold — returns a callable to run once the lock is
        released, or None."""
        self.cond = cond
        self._worker = worker
        self.address = worker.address
        self.worker_id = worker.worker_id
        self._send_to = send_to
        self._raylet = raylet
        self._on_freed = on_freed
        self.refs = ReferenceTable()
        #: object ids of refs garbage collected here, applied by ``drain``
        self.released: collections.deque = collections.deque()

    def owns(self, ref: ObjectRef) -> bool:
        return p.Address(*ref._owner).worker_id == self.worker_id

    # -- refs made here ----------------------------------------------------
    def new_owned_ref(self, object_id: bytes, ret=None, contained=None) -> ObjectRef:
        """A counted ref to a new object this process owns (``ret``: its
        value's Return when it has one already)."""
        with self.cond:
            self.add_owned_ref_locked(object_id, ret, contained)
        return ObjectRef(object_id, self.address, self._worker)

    def add_owned_ref_locked(self, object_id: bytes, ret=None, contained=None):
        """(lock held) The entry of a new owned object with one local ref."""
        entry = self.refs.add_owned(object_id, ret)
        entry.local = 1
        entry.contained = contained or None
        return entry

    def deserialized_ref(self, object_id: bytes, owner) -> ObjectRef:
        """A ref that arrived inside a value: count it, and if another
        process owns it, tell that owner we borrow it."""
        owner = p.Address(*owner)
        with self.cond:
            if owner.worker_id == self.worker_id:
                entry = self.refs.get(object_id)
                if entry is None:       # freed already; the ref can only fail
                    return ObjectRef(object_id, owner, None)
                entry.local += 1
                return ObjectRef(object_id, owner, self._worker)
            entry, new = self.refs.add_borrowed(object_id, owner)
            entry.local += 1
        if new:
            self._send_to(owner, p.AddBorrower([object_id], self.worker_id))
        return ObjectRef(object_id, owner, self._worker)

    def lend(self, refs, borrower_id: bytes) -> None:
        """Refs inside a value sent to ``borrower_id`` stay alive until it
        gives them back (it sends RemoveBorrower when it drops them)."""
        for ref in refs:
            owner = p.Address(*ref._owner)
            if owner.worker_id == self.worker_id:
                with self.cond:
                    entry = self.refs.get(ref._id)
                    if entry is not None:
                        if entry.borrowers is None:
                            entry.borrowers = set()
                        entry.borrowers.add(borrower_id)
            elif owner.worker_id != borrower_id:
                self._send_to(owner, p.AddBorrower([ref._id], borrower_id))

    # -- holds of submitted tasks -----------------------------------------
    def hold_submitted(self, object_ids) -> None:
        """Count ``object_ids`` as arguments of a pending task."""
        with self.cond:
            for object_id in object_ids:
                entry = self.refs.get(object_id)
                if entry is not None:
                    entry.submitted += 1

    def release_submitted(self, object_ids) -> None:
        """A task that held ``object_ids`` as arguments ended."""
        self._release(object_ids, "submitted")

    def drain(self) -> None:
        """Apply the refs that were garbage collected."""
        released = self.released
        if not released:
            return
        ids = []
        while released:
            try:
                ids.append(released.popleft())
            except IndexError:
                break
        self._release(ids, "local")

    def _release(self, object_ids, field: str) -> None:
        after = []
        with self.cond:
            for object_id in object_ids:
                entry = self.refs.release(object_id, field)
                if entry is not None:
                    self._forget_locked(object_id, entry, after)
        self.run_after(after)

    # -- borrowers ---------------------------------------------------------
    def add_borrower(self, object_ids, borrower: bytes) -> None:
        with self.cond:
            for object_id in object_ids:
                entry = self.refs.get(object_id)
                if entry is not None and entry.owned:
                    if entry.borrowers is None:
                        entry.borrowers = set()
                    entry.borrowers.add(borrower)

    def remove_borrower(self, object_ids, borrower: bytes) -> None:
        after = []
        with self.cond:
            for object_id in object_ids:
                entry = self.refs.remove_borrower(object_id, borrower)
                if entry is not None:
                    self._forget_locked(object_id, entry, after)
        self.run_after(after)

    def drop_dead_borrower_locked(self, worker_id: bytes, after: list) -> None:
        """(lock held) A dead borrower gives nothing back: drop it from every
        entry; pass ``after`` to ``run_after`` once the lock is released."""
        for object_id, entry in list(self.refs.entries.items()):
            if entry.owned and entry.borrowers and worker_id in entry.borrowers:
                gone = self.refs.remove_borrower(object_id, worker_id)
                if gone is not None:
                    self._forget_locked(object_id, gone, after)

    # -- freeing -----------------------------------------------------------
    def _forget_locked(self, object_id, entry, after: list) -> None:
        """(lock held) An entry lost its last hold: collect what to tell whom."""
        if entry.owned:
            ret = entry.ret
            if ret is not None and ret.kind == p.RET_STORED:
                after.append(("free", object_id))
            entry.contained = None
        else:
            after.append(("give_back", (entry.owner, object_id)))
        follow = self._on_freed(object_id, entry)
        if follow is not None:
            after.append(("call", follow))

    def run_after(self, after: list) -> None:
        """(lock released) Send what ``_forget_locked`` collected."""
        if not after:
            return
        freed, give_back = [], {}
        for what, arg in after:
            if what == "free":
                freed.append(arg)
            elif what == "give_back":
                owner, object_id = arg
                give_back.setdefault(owner, []).append(object_id)
            else:
                arg()
        if freed:
            self._raylet.send(p.FreeObjects(freed))
        for owner, ids in give_back.items():
            self._send_to(owner, p.RemoveBorrower(ids, self.worker_id))

    def __len__(self):
        return len(self.refs)
