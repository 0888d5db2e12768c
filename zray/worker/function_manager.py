"""Functions and classes travel once: exported to the GCS by content hash,
loaded by workers on first use and cached."""
from __future__ import annotations

import hashlib
import threading

import cloudpickle

from ..broker import protocol as p


class FunctionManager:
    def __init__(self, gcs):
        self.gcs = gcs
        self._exported: set[bytes] = set()
        self._loaded: dict[bytes, object] = {}
        self._lock = threading.Lock()

    def export(self, fn) -> bytes:
        """Pickle ``fn`` by value, store it in the GCS once, return its hash."""
        try:
            blob = cloudpickle.dumps(fn)
        except Exception as err:
            raise TypeError(f"cannot serialize {getattr(fn, '__qualname__', fn)!r} for "
                            f"remote execution: {type(err).__name__}: {err}") from err
        digest = hashlib.sha256(blob).digest()[:16]
        if digest not in self._exported:
            self.gcs.call(p.ExportFunction(digest, blob))
            with self._lock:
                self._exported.add(digest)
                self._loaded.setdefault(digest, fn)
        return digest

    def load(self, digest: bytes):
        fn = self._loaded.get(digest)
        if fn is not None:
            return fn
        reply = self.gcs.call(p.GetFunction(digest))
        if not reply.found:
            raise RuntimeError(f"function {digest.hex()} is not in the GCS function table")
        fn = cloudpickle.loads(reply.value)
        with self._lock:
            self._loaded[digest] = fn
        return fn
