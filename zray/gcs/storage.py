"""The storage seam of the GCS: tables of key -> msgpack-able value.

Every backend offers the same four calls; a manager writes every change
through ``put`` before the GCS replies, and never keeps a reference to a
value it got from ``get`` or ``items`` (a persistent backend returns a fresh
copy each time). ``open_storage(url)`` picks the backend from a URL:

- ``memory://``: dicts in this process, lost when the GCS exits (the local
  ``zray.init()`` default);
- ``memory+copy://``: the same, but every ``put`` and ``get`` deep-copies,
  so a test can prove no code relies on sharing a row with the table.
"""
from __future__ import annotations

import copy


class InMemoryStorage:
    """Tables in dicts of this process."""

    def __init__(self):
        self._tables: dict[str, dict] = {}

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


class StorageError(RuntimeError):
    """The GCS cannot use the storage it was given (the message says which and why)."""


def open_storage(url: str):
    """The backend ``url`` names; StorageError for a URL no backend takes."""
    if url in ("memory://", ""):
        return InMemoryStorage()
    if url == "memory+copy://":
        return DeepCopyStorage()
    raise StorageError(f"GCS storage {url!r}: unknown scheme; use memory://, "
                       f"sqlite:///path/to/gcs.db or redis://host:port/db")
