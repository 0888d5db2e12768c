"""GCS tables in one sqlite file (``sqlite:///abs/path/gcs.db``).

The file holds two tables: ``zray_meta`` (the marker of a zray GCS file: its
layout ``format`` and the ``cluster_id``) and ``zray_rows`` (``tbl``, ``key``,
``value``, both msgpack, in insertion order). The journal is a WAL; each
``put`` and ``delete`` is committed before it returns, so what the GCS
answered survives a kill -9 of the GCS (``synchronous=NORMAL``: a power
loss may lose the last commits, never corrupt the file).

A file that is not sqlite (or is corrupt), a sqlite file of another program
(no ``zray_meta``), a file of another layout version or of another cluster
is refused with a ``StorageError`` naming the file, before anything in it
is changed.
"""
from __future__ import annotations

import os
import sqlite3

from .storage import FORMAT, MirroredStorage, StorageError, check_cluster

SQLITE_MAGIC = b"SQLite format 3\x00"
#: bound on waiting for another connection's lock on the file
BUSY_TIMEOUT_S = 5.0

_SCHEMA = (
    "CREATE TABLE zray_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE zray_rows (id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, key BLOB NOT NULL, "
    "value BLOB NOT NULL, UNIQUE (tbl, key))",
)


def path_of(url: str) -> str:
    """The file a ``sqlite:///abs/path`` URL names; StorageError if it names none."""
    path = url[len("sqlite://"):]
    if not path.startswith("/") or path.rstrip("/") == "":
        raise StorageError(f"GCS storage {url!r}: give an absolute file path, three slashes "
                           f"then the path: sqlite:///abs/path/gcs.db")
    return path


class SqliteStorage(MirroredStorage):
    """One sqlite file; open it with ``SqliteStorage.open(url, cluster_id, reuse)``."""

    def __init__(self, path: str, conn: sqlite3.Connection):
        super().__init__()
        self.path = path
        self._conn = conn

    @classmethod
    def open(cls, url: str, cluster_id: str | None = None, reuse: bool = False):
        path = path_of(url)
        where = f"{url!r} (file {path})"
        if os.path.isdir(path):
            raise StorageError(f"GCS storage {where} is a directory; name a file in it, "
                               f"e.g. sqlite://{os.path.join(path, 'gcs.db')}")
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise StorageError(f"GCS storage {where}: the directory {parent} does not exist; "
                               f"create it first")
        fresh = _create_private(path)
        if not fresh:
            _check_header(path, where)
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as err:
            raise StorageError(f"GCS storage {where} cannot be opened: {err}") from None
        try:
            store = cls(path, conn)
            store._start(where, cluster_id, reuse)
        except sqlite3.DatabaseError as err:
            conn.close()
            raise StorageError(f"GCS storage {where} is not a usable sqlite database "
                               f"(corrupt?): {err}; nothing was changed. Move it away or "
                               f"point --gcs-storage elsewhere") from None
        except BaseException:
            conn.close()
            raise
        return store

    def _start(self, where: str, cluster_id: str | None, reuse: bool) -> None:
        """Check the file is a zray GCS file of this cluster, then set it up."""
        conn = self._conn
        names = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if names and "zray_meta" not in names:
            raise StorageError(
                f"GCS storage {where} is a sqlite database of another program (it has no "
                f"zray_meta table; its tables: {', '.join(sorted(names))[:200]}); refusing to "
                f"use it, nothing was changed. Point --gcs-storage at a new file")
        meta = {}
        if names:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StorageError(f"GCS storage {where} is corrupt (sqlite quick_check: "
                                   f"{check}); nothing was changed. Move it away or point "
                                   f"--gcs-storage elsewhere")
            meta = dict(conn.execute("SELECT name, value FROM zray_meta"))
            if meta.get("format") != str(FORMAT) or "zray_rows" not in names:
                raise StorageError(
                    f"GCS storage {where} is a zray GCS file of layout "
                    f"{meta.get('format')!r}, this zray reads layout {FORMAT}; nothing was "
                    f"changed. Use the zray that wrote it, or a new file")
        self.cluster_id = check_cluster(where, meta.get("cluster_id"), cluster_id, reuse)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if not names:
            with _transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany("INSERT INTO zray_meta (name, value) VALUES (?, ?)",
                                 [("format", str(FORMAT)), ("cluster_id", self.cluster_id)])
        for table, key, value in conn.execute(
                "SELECT tbl, key, value FROM zray_rows ORDER BY id"):
            self._load(table, bytes(key), bytes(value))

    def _write(self, table: str, key: bytes, value: bytes) -> None:
        try:
            self._conn.execute(
                "INSERT INTO zray_rows (tbl, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
                (table, key, value))
        except sqlite3.Error as err:
            raise StorageError(f"GCS storage {self.path}: cannot write a row of {table}: "
                               f"{err}") from None

    def _remove(self, table: str, key: bytes) -> None:
        try:
            self._conn.execute("DELETE FROM zray_rows WHERE tbl = ? AND key = ?", (table, key))
        except sqlite3.Error as err:
            raise StorageError(f"GCS storage {self.path}: cannot delete a row of {table}: "
                               f"{err}") from None

    def close(self) -> None:
        """Close the file (the WAL is folded into it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _transaction:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, exc, tb):
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


def _create_private(path: str) -> bool:
    """Create ``path`` empty and private (0600) if it does not exist; whether it did."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    except OSError as err:
        raise StorageError(f"GCS storage {path}: cannot create the file: {err}") from None
    os.close(fd)
    return True


def _check_header(path: str, where: str) -> None:
    """StorageError unless ``path`` is empty or starts like a sqlite database."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as err:
        raise StorageError(f"GCS storage {where} cannot be read: {err}") from None
    if head and head != SQLITE_MAGIC:
        raise StorageError(f"GCS storage {where} is not a sqlite database (another kind of "
                           f"file, or corrupt); refusing to use it, nothing was changed. Move "
                           f"it away or point --gcs-storage at a new file")
