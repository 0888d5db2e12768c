"""The key-value table (namespaced); the function table lives in it too.

Each namespace is its own storage table (``kv:<namespace>``), keyed by the
user's bytes key, so listing one namespace never reads another's values.
"""
from __future__ import annotations

TABLE_PREFIX = "kv:"
FUNCTIONS = "__functions__"


def _table(namespace: str) -> str:
    return TABLE_PREFIX + namespace


class KVManager:
    def __init__(self, storage):
        self.storage = storage

    def put(self, namespace: str, key: bytes, value: bytes, overwrite: bool) -> bool:
        """Store; False (and nothing changed) if the key exists and not overwrite."""
        if not overwrite and self.storage.get(_table(namespace), key) is not None:
            return False
        self.storage.put(_table(namespace), key, value)
        return True

    def get(self, namespace: str, key: bytes) -> bytes | None:
        return self.storage.get(_table(namespace), key)

    def delete(self, namespace: str, key: bytes) -> bool:
        return self.storage.delete(_table(namespace), key)

    def keys(self, namespace: str, prefix: bytes) -> list[bytes]:
        return [k for k, _ in self.storage.items(_table(namespace)) if k.startswith(prefix)]
