"""Objects this process knows — owned or borrowed — and who refers to them.

An entry is alive while any of these hold it: ``ObjectRef``s in this process
(``local``), tasks submitted with it as an argument (``submitted``), other
processes borrowing it (``borrowers``, owned entries only), or a pending
generator item nobody has taken yet. When none does, the entry goes: an owned
one is freed everywhere, a borrowed one is given back to its owner.
"""
from __future__ import annotations

PENDING, READY = 0, 1

#: the index of the id that counts an actor's handles (Ray: ObjectID::ForActorHandle):
#: ``actor_id + ACTOR_HANDLE_INDEX``, owned by the actor's creator, borrowed elsewhere
ACTOR_HANDLE_INDEX = b"\xff\xff\xff\xfe"


def actor_handle_id(actor_id: bytes) -> bytes:
    """The object id whose references are an actor's handles."""
    return actor_id + ACTOR_HANDLE_INDEX


def actor_of_handle_id(object_id: bytes) -> bytes | None:
    """The actor an id counts the handles of, or None for an ordinary object."""
    if len(object_id) == 20 and object_id.endswith(ACTOR_HANDLE_INDEX):
        return object_id[:16]
    return None


class Entry:
    __slots__ = ("owned", "owner", "state", "ret", "local", "submitted", "borrowers",
                 "contained", "remote_waiters", "requested", "held")

    def __init__(self, owned: bool, owner=None, ret=None):
        self.owned = owned
        self.owner = owner              # Address of the owner (borrowed entries)
        self.state = READY if ret is not None else PENDING
        self.ret = ret                  # [object_id, RET_*, payload]
        self.local = 0
        self.submitted = 0
        self.borrowers = None           # set of worker ids
        self.contained = None           # ObjectRefs inside the value, kept alive with it
        self.remote_waiters = None      # inbox endpoints waiting for the value
        self.requested = False          # borrowed: GetObject sent to the owner
        self.held = False               # an unclaimed generator item

    def in_use(self) -> bool:
        return bool(self.local or self.submitted or self.borrowers or self.held)


class ReferenceTable:
    """Entries by object id. Not thread-safe: the core worker holds its lock."""

    def __init__(self):
        self.entries: dict[bytes, Entry] = {}

    def get(self, object_id: bytes) -> Entry | None:
        return self.entries.get(object_id)

    def add_owned(self, object_id: bytes, ret=None) -> Entry:
        entry = Entry(True, None, ret)
        self.entries[object_id] = entry
        return entry

    def add_borrowed(self, object_id: bytes, owner) -> tuple[Entry, bool]:
        """The entry for a borrowed ref, and whether it is new here."""
        entry = self.entries.get(object_id)
        if entry is not None:
            return entry, False
        entry = Entry(False, owner)
        self.entries[object_id] = entry
        return entry, True

    def release(self, object_id: bytes, field: str) -> Entry | None:
        """Drop one reference of kind ``field`` ("local" or "submitted");
        returns the entry if that was its last hold (it is then removed)."""
        entry = self.entries.get(object_id)
        if entry is None:
            return None
        setattr(entry, field, getattr(entry, field) - 1)
        if entry.in_use():
            return None
        del self.entries[object_id]
        return entry

    def remove_borrower(self, object_id: bytes, borrower: bytes) -> Entry | None:
        entry = self.entries.get(object_id)
        if entry is None or not entry.borrowers:
            return None
        entry.borrowers.discard(borrower)
        if entry.in_use():
            return None
        del self.entries[object_id]
        return entry

    def __len__(self):
        return len(self.entries)
