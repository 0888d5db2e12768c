"""The key-value table (namespaced); the function table lives in it too."""
from __future__ import annotations

TABLE = "kv"
FUNCTIONS = "__functions__"


class KVManager:
    def __init__(self, storage):
        self.storage = storage

    def put(self, namespace: str, key: bytes, value: bytes, overwrite: bool) -> bool:
        """Store; False (and nothing changed) if the key exists and not overwrite."""
        k = (namespace, key)
        if not overwrite and self.storage.get(TABLE, k) is not None:
            return False
        self.storage.put(TABLE, k, value)
        return True

    def get(self, namespace: str, key: bytes):
        return self.storage.get(TABLE, (namespace, key))

    def delete(self, namespace: str, key: bytes) -> bool:
        return self.storage.delete(TABLE, (namespace, key))

    def keys(self, namespace: str, prefix: bytes) -> list[bytes]:
        return [k[1] for k, _ in self.storage.items(TABLE)
                if k[0] == namespace and k[1].startswith(prefix)]
