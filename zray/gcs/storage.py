"""The storage seam of the GCS: tables of key -> msgpack-able value.

Every backend offers the same five calls (``get``, ``put``, ``delete``,
``items``, ``close``) and a ``cluster_id`` (the cluster whose tables it
holds); a manager writes every change through ``put`` before the GCS
replies, and never keeps a reference to a value it got from ``get`` or
``items`` (a persistent backend returns a fresh copy each time).
``open_storage(url)`` picks the backend from a URL:

- ``memory://``: dicts in this process, lost when the GCS exits (the local
  ``zray.init()`` default);
- ``memory+copy://``: the same, but every ``put`` and ``get`` deep-copies,
  so a test can prove no code relies on sharing a row with the table;
- ``sqlite:///abs/path/gcs.db``: one sqlite file (WAL); each ``put`` is
  committed before it returns, so it survives a kill -9 of the GCS
  (see sqlite_storage.py);
- ``redis://host:port/db``: one Redis hash per table, namespaced by the
  cluster id, for a head that can be replaced (see redis_storage.py).

Keys and values may be what msgpack carries (None, bool, int, float, str,
bytes, lists, dicts with any of those as keys) and tuples; a persistent
backend gives back tuples as tuples.

The cluster-id check: the GCS passes the id of the cluster it serves, or
None for "whatever is stored there". A storage that holds tables of another
cluster is refused (``StorageError``) unless ``reuse=True`` says to take them
over; then, as with None, the stored id is kept and ``storage.cluster_id``
says which it is. A restarted GCS of the same cluster passes the same id.
"""
from __future__ import annotations

import copy
import os
import re

import msgpack

#: version of the persistent layout (rows, meta); a store of another is refused
FORMAT = 1
_EXT_TUPLE = 1


class StorageError(RuntimeError):
    """The GCS cannot use the storage it was given (the message says which and why)."""


class StorageUnavailableError(StorageError):
    """The storage does not answer now (an unreachable Redis); it may later."""


class InMemoryStorage:
    """Tables in dicts of this process."""

    def __init__(self, cluster_id: str | None = None):
        self._tables: dict[str, dict] = {}
        self.cluster_id = cluster_id or new_cluster_id()

    def get(self, table: str, key):
        return self._tables.get(table, {}).get(key)

    def put(self, table: str, key, value) -> None:
        self._tables.setdefault(table, {})[key] = value

    def delete(self, table: str, key) -> bool:
        return self._tables.get(table, {}).pop(key, None) is not None

    def items(self, table: str) -> list:
        return list(self._tables.get(table, {}).items())

    def close(self) -> None:
        """Release what the backend holds (nothing, here)."""


class DeepCopyStorage(InMemoryStorage):
    """In memory, but no caller ever shares an object with the table."""

    def get(self, table: str, key):
        return copy.deepcopy(super().get(table, key))

    def put(self, table: str, key, value) -> None:
        super().put(table, key, copy.deepcopy(value))

    def items(self, table: str) -> list:
        return copy.deepcopy(super().items(table))


# --------------------------------------------------------------------------
# what persistent backends share: the row codec and an in-memory mirror
# --------------------------------------------------------------------------

def redact(url: str) -> str:
    """``url`` with its password (``redis://user:secret@host``) hidden, for messages."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def new_cluster_id() -> str:
    return os.urandom(8).hex()


def _default(obj):
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, _packer().pack(list(obj)))
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, bool):
        return bool(obj)
    for kind in (int, float, str, bytes):      # subclasses (IntEnum, ...) as their base
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"a GCS table cannot store a value of type {type(obj).__name__}: "
                    f"{obj!r:.80}")


def _ext_hook(code: int, data: bytes):
    if code == _EXT_TUPLE:
        return tuple(unpack(data))
    return msgpack.ExtType(code, data)


def _packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, strict_types=True, default=_default)


def pack(value) -> bytes:
    """``value`` as stored bytes (tuples kept as tuples); TypeError for what
    no table can store."""
    return _packer().pack(value)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)


class MirroredStorage:
    """Base of the persistent backends: every row is kept packed in this
    process too, so reads never touch the disk or the network; writes go to
    the backend (``_write``/``_remove``) first, then to the mirror."""

    def __init__(self):
        self._rows: dict[str, dict[bytes, bytes]] = {}
        self.cluster_id: str = ""

    def _load(self, table: str, key: bytes, value: bytes) -> None:
        self._rows.setdefault(table, {})[key] = value

    def get(self, table: str, key):
        data = self._rows.get(table, {}).get(pack(key))
        return None if data is None else unpack(data)

    def put(self, table: str, key, value) -> None:
        k, v = pack(key), pack(value)
        self._write(table, k, v)
        self._rows.setdefault(table, {})[k] = v

    def delete(self, table: str, key) -> bool:
        k = pack(key)
        if k not in self._rows.get(table, {}):
            return False
        self._remove(table, k)
        del self._rows[table][k]
        return True

    def items(self, table: str) -> list:
        return [(unpack(k), unpack(v)) for k, v in self._rows.get(table, {}).items()]

    def _write(self, table: str, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    def _remove(self, table: str, key: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def check_cluster(where: str, stored: str | None, expected: str | None, reuse: bool) -> str:
    """The cluster id to use with tables found at ``where`` (holding
    ``stored``, None when empty); StorageError when they are another
    cluster's and ``reuse`` is False."""
    if stored is None:
        return expected or new_cluster_id()
    if expected is None or stored == expected or reuse:
        return stored
    raise StorageError(
        f"GCS storage {where} holds the tables of another zray cluster (id {stored}; this GCS "
        f"serves cluster {expected}); refusing to use it, nothing was changed. Point "
        f"--gcs-storage at a new location, or pass --gcs-storage-reuse to take over "
        f"that cluster's tables")


def open_storage(url: str, cluster_id: str | None = None, reuse: bool = False):
    """The backend ``url`` names, opened for the cluster ``cluster_id``
    (None: whatever cluster the storage holds, or a new one). StorageError,
    saying what is wrong and what to do, for a URL no backend takes and for
    a storage that cannot be used (see each backend); nothing is overwritten."""
    if url in ("memory://", ""):
        return InMemoryStorage(cluster_id)
    if url == "memory+copy://":
        return DeepCopyStorage(cluster_id)
    if url.startswith("sqlite://"):
        from .sqlite_storage import SqliteStorage
        return SqliteStorage.open(url, cluster_id, reuse)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_storage import RedisStorage
        return RedisStorage.open(url, cluster_id, reuse)
    raise StorageError(f"GCS storage {redact(url)!r}: unknown scheme; use memory://, "
                       f"sqlite:///path/to/gcs.db or redis://host:port/db")
