"""GCS tables in Redis (``redis://host:port/db``), for a head that can be
replaced: a GCS started afresh on another host or port, pointed at the same
Redis, finds the cluster's tables there (Ray's GCS fault tolerance).

Layout, namespaced by the cluster id: ``zray:<cluster id>:meta`` is a hash
(``format``, ``cluster_id``), the marker of a zray cluster; each table is a
hash ``zray:<cluster id>:table:<name>`` of msgpack key -> msgpack value. Each
``put`` is written (HSET) before it returns; how durable that is is the Redis
server's setting (``appendonly yes`` for a restart of Redis itself). Rows come
back in Redis's hash order (insertion order for small tables only).

An unreachable Redis (after ``connect_timeout_s``), one holding the tables
of another zray cluster, or of several, is refused with a ``StorageError``
naming the URL, before anything is written.
"""
from __future__ import annotations

import time

from ..config import config
from .storage import (FORMAT, MirroredStorage, StorageError, StorageUnavailableError,
                      check_cluster, redact)

PREFIX = "zray:"


def _meta_key(cluster_id: str) -> str:
    return f"{PREFIX}{cluster_id}:meta"


def _table_prefix(cluster_id: str) -> str:
    return f"{PREFIX}{cluster_id}:table:"


class RedisStorage(MirroredStorage):
    """Open with ``RedisStorage.open(url, cluster_id, reuse)``."""

    def __init__(self, url: str, client):
        super().__init__()
        self.url = url
        self._client = client
        self._prefix = ""

    @classmethod
    def open(cls, url: str, cluster_id: str | None = None, reuse: bool = False,
             connect_timeout_s: float | None = None):
        shown = redact(url)
        try:
            import redis
        except ImportError:
            raise StorageError(f"GCS storage {shown!r} needs the redis client package: "
                               f"pip install redis") from None
        wait_s = config.connect_timeout_s if connect_timeout_s is None else connect_timeout_s
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=min(wait_s, 2.0),
                                          socket_timeout=max(wait_s, 5.0))
        except ValueError as err:
            raise StorageError(f"GCS storage {shown!r} is not a Redis URL "
                               f"(redis://host:port/db): {err}") from None
        _wait_reachable(client, shown, wait_s)
        store = cls(shown, client)
        try:
            store._start(cluster_id, reuse)
        except redis.RedisError as err:
            client.close()
            raise StorageError(f"GCS storage {shown!r}: Redis failed while loading the "
                               f"tables: {err}") from None
        except BaseException:
            client.close()
            raise
        return store

    def _start(self, cluster_id: str | None, reuse: bool) -> None:
        client = self._client
        clusters = sorted(key.decode()[len(PREFIX):-len(":meta")]
                          for key in client.scan_iter(match=f"{PREFIX}*:meta", count=1000))
        where = repr(self.url)
        if cluster_id is not None and cluster_id in clusters:
            stored = cluster_id
        elif len(clusters) > 1:
            raise StorageError(
                f"GCS storage {where} holds the tables of {len(clusters)} zray clusters "
                f"({', '.join(clusters)[:200]}); refusing to pick one, nothing was changed. "
                f"Give each cluster a Redis database of its own (redis://host:port/N)")
        else:
            stored = clusters[0] if clusters else None
        self.cluster_id = check_cluster(where, stored, cluster_id, reuse)
        meta_key = _meta_key(self.cluster_id)
        meta = {k.decode(): v.decode() for k, v in client.hgetall(meta_key).items()}
        if meta and meta.get("format") != str(FORMAT):
            raise StorageError(f"GCS storage {where} holds zray tables of layout "
                               f"{meta.get('format')!r}, this zray reads layout {FORMAT}; "
                               f"nothing was changed")
        if not meta:
            client.hset(meta_key, mapping={"format": str(FORMAT),
                                           "cluster_id": self.cluster_id})
        self._prefix = _table_prefix(self.cluster_id)
        for key in client.scan_iter(match=f"{self._prefix}*", count=1000):
            table = key.decode()[len(self._prefix):]
            for k, v in client.hgetall(key).items():
                self._load(table, bytes(k), bytes(v))

    def _write(self, table: str, key: bytes, value: bytes) -> None:
        try:
            self._client.hset(self._prefix + table, key, value)
        except Exception as err:    # redis.RedisError and socket errors alike
            raise StorageError(f"GCS storage {self.url!r}: cannot write a row of {table}: "
                               f"{err}") from None

    def _remove(self, table: str, key: bytes) -> None:
        try:
            self._client.hdel(self._prefix + table, key)
        except Exception as err:    # redis.RedisError and socket errors alike
            raise StorageError(f"GCS storage {self.url!r}: cannot delete a row of {table}: "
                               f"{err}") from None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _wait_reachable(client, url: str, wait_s: float) -> None:
    """Return once Redis answers PING; StorageError after ``wait_s``."""
    import redis
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.ping()
            return
        except redis.AuthenticationError as err:
            client.close()
            raise StorageError(f"GCS storage {url!r}: Redis refused the credentials: "
                               f"{err}") from None
        except (redis.ConnectionError, redis.TimeoutError) as err:
            if time.monotonic() >= deadline:
                client.close()
                raise StorageUnavailableError(
                    f"GCS storage {url!r}: Redis is unreachable (no answer within "
                    f"{wait_s:.0f}s: {err}); start it or fix the URL") from None
            time.sleep(0.1)
