"""The storage seam of the GCS: tables of key -> msgpack-able value.

``InMemoryStorage`` keeps them in dicts. A persistent storage (sqlite in the
session directory) plugs in behind the same four calls.
"""
from __future__ import annotations


class InMemoryStorage:
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
