"""The GCS storage backends: every value the GCS keeps round-trips, the
tables survive close and reopen, and bad storage is refused with a message
naming it, nothing overwritten."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from zray.gcs.storage import StorageError, open_storage

from redis_helpers import RedisServer, redis_server  # noqa: F401 — a fixture

#: rows like the GCS's own: bytes keys, (namespace, key) tuples, nested dicts,
#: floats, None, lists, booleans, big ints
ROWS = [
    ("nodes", b"\x01" * 16, {"node_id": b"\x01" * 16, "resources": {"CPU": 2.0, "memory": 1e9},
                             "available": {"CPU": 0.5}, "alive": True, "end_time": None,
                             "stats": {}, "pid": 4242, "last_heartbeat": 12345.678}),
    ("kv", ("__functions__", b"\xff\x00digest"), b"\x80\x05cloudpickled"),
    ("kv", ("ns", b"key"), b""),
    ("actors", b"\x02" * 16, {"spec": [b"t", 1, "f", [1.5, None], {"a": [b"x"]}],
                              "name": "counter", "namespace": "", "restarts": 3,
                              "node_id": None, "no_restart": False, "big": 2 ** 63 - 1}),
    ("pgs", b"\x03" * 16, {"bundles": [{"CPU": 1.0}, {"CPU": 1.0}], "nodes": [None, b"n"],
                           "state": "CREATED", "name": ""}),
    ("session", "info", {"pub_port": 40001, "cluster_id": "abc", "t": (1, b"2", "3")}),
]


def _fill(store):
    for table, key, value in ROWS:
        store.put(table, key, value)


def _check(store):
    for table, key, value in ROWS:
        assert store.get(table, key) == value
    assert store.items("kv") == [(ROWS[1][1], ROWS[1][2]), (ROWS[2][1], ROWS[2][2])]
    assert store.get("session", "info")["t"] == (1, b"2", "3")      # a tuple stays one
    assert store.get("nodes", b"missing") is None
    assert store.items("no such table") == []


def _sqlite_url(tmp_path, name="gcs.db"):
    return f"sqlite://{tmp_path / name}"


@pytest.fixture(params=["sqlite", "redis"])
def backend_url(request, tmp_path):
    if request.param == "sqlite":
        yield _sqlite_url(tmp_path)
        return
    server = RedisServer()
    try:
        yield server.url
    finally:
        server.stop()


def test_every_kind_of_row_round_trips_and_survives_reopen(backend_url):
    store = open_storage(backend_url, "cluster-a")
    _fill(store)
    _check(store)
    store.close()
    again = open_storage(backend_url, "cluster-a")
    try:
        _check(again)
        assert again.cluster_id == "cluster-a"
    finally:
        again.close()


def test_updates_and_deletes_persist(backend_url):
    store = open_storage(backend_url, "c")
    store.put("kv", ("ns", b"a"), b"1")
    store.put("kv", ("ns", b"b"), b"2")
    store.put("kv", ("ns", b"a"), b"changed")
    assert store.delete("kv", ("ns", b"b")) is True
    assert store.delete("kv", ("ns", b"b")) is False
    got = store.get("actors", b"x")
    assert got is None
    store.put("actors", b"x", {"state": "ALIVE"})
    row = store.get("actors", b"x")
    row["state"] = "mutated by a caller"            # never changes the table
    assert store.get("actors", b"x") == {"state": "ALIVE"}
    store.close()
    again = open_storage(backend_url, None)          # "whatever is there"
    try:
        assert again.items("kv") == [(("ns", b"a"), b"changed")]
        assert again.cluster_id == "c"
    finally:
        again.close()


def test_a_value_no_table_can_store_is_refused_at_put(backend_url):
    store = open_storage(backend_url)
    try:
        with pytest.raises(TypeError, match="cannot store a value of type object"):
            store.put("kv", ("ns", b"k"), object())
        assert store.get("kv", ("ns", b"k")) is None
    finally:
        store.close()


def test_another_clusters_tables_are_refused_unless_reused(backend_url):
    store = open_storage(backend_url, "old-cluster")
    store.put("kv", ("ns", b"k"), b"old value")
    store.close()
    with pytest.raises(StorageError) as err:
        open_storage(backend_url, "new-cluster")
    text = str(err.value)
    assert "old-cluster" in text and "new-cluster" in text and "--gcs-storage-reuse" in text
    assert backend_url.split("/")[-1] in text or backend_url in text
    reused = open_storage(backend_url, "new-cluster", reuse=True)
    try:
        assert reused.cluster_id == "old-cluster"
        assert reused.get("kv", ("ns", b"k")) == b"old value"
    finally:
        reused.close()


def test_sqlite_put_is_on_disk_when_it_returns(tmp_path):
    """What a put wrote is in the file for any other reader at once (the
    GCS replies after the put, then may be killed)."""
    store = open_storage(_sqlite_url(tmp_path), "c")
    try:
        store.put("kv", ("ns", b"k"), b"v")
        conn = sqlite3.connect(str(tmp_path / "gcs.db"))
        try:
            assert conn.execute("SELECT count(*) FROM zray_rows").fetchone()[0] == 1
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()
    finally:
        store.close()
    assert oct(os.stat(tmp_path / "gcs.db").st_mode & 0o777) == "0o600"


def test_sqlite_survives_a_kill_9_of_its_writer(tmp_path):
    url = _sqlite_url(tmp_path)
    code = ("import os, sys; from zray.gcs.storage import open_storage\n"
            f"s = open_storage({url!r}, 'c')\n"
            "for i in range(200): s.put('kv', ('ns', b'%d' % i), b'x' * i)\n"
            "sys.stdout.write('done\\n'); sys.stdout.flush(); os.kill(os.getpid(), 9)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert out.stdout == b"done\n" and out.returncode == -9
    store = open_storage(url, "c")
    try:
        assert len(store.items("kv")) == 200
        assert store.get("kv", ("ns", b"199")) == b"x" * 199
    finally:
        store.close()


@pytest.mark.parametrize("content, says", [
    (b"this is a text file, not a database\n" * 10, "not a sqlite database"),
    (b"SQLite format 3\x00" + b"\xde\xad" * 600, "corrupt"),
])
def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path, content, says):
    path = tmp_path / "gcs.db"
    path.write_bytes(content)
    with pytest.raises(StorageError, match=says) as err:
        open_storage(f"sqlite://{path}", "c")
    assert str(path) in str(err.value)
    assert path.read_bytes() == content             # nothing overwritten


def test_sqlite_refuses_another_programs_database(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('alice')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match="another program.*users") as err:
        open_storage(f"sqlite://{path}", None)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before
    assert not os.path.exists(f"{path}-wal")


@pytest.mark.parametrize("url, says", [
    ("sqlite://relative/gcs.db", "absolute file path"),
    ("sqlite:///no/such/dir/gcs.db", "does not exist"),
    ("postgres://host/db", "unknown scheme"),
])
def test_bad_storage_urls_are_refused_with_what_to_write(url, says):
    with pytest.raises(StorageError, match=says):
        open_storage(url)


def test_redis_unreachable_is_refused_within_the_bound():
    pytest.importorskip("redis")
    from redis_helpers import free_port
    import time
    url = f"redis://127.0.0.1:{free_port()}/0"
    from zray.gcs.redis_storage import RedisStorage
    start = time.monotonic()
    with pytest.raises(StorageError, match="unreachable") as err:
        RedisStorage.open(url, "c", connect_timeout_s=1.0)
    assert time.monotonic() - start < 4
    assert url in str(err.value)


def test_redis_keys_are_namespaced_by_cluster(redis_server):  # noqa: F811
    store = open_storage(redis_server.url, "abc")
    store.put("kv", ("ns", b"k"), b"v")
    store.close()
    import redis
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert sorted(k.decode() for k in client.keys("*")) == ["zray:abc:meta",
                                                               "zray:abc:table:kv"]
        client.hset("zray:other:meta", mapping={"format": "1", "cluster_id": "other"})
    finally:
        client.close()
    with pytest.raises(StorageError, match="2 zray clusters"):
        open_storage(redis_server.url, None)
    again = open_storage(redis_server.url, "abc")       # its own id picks its tables
    try:
        assert again.get("kv", ("ns", b"k")) == b"v"
    finally:
        again.close()


def test_the_gcs_refuses_bad_storage_with_exit_code_2_naming_it(tmp_path):
    """Exit code 2 tells its supervisor not to restart it."""
    (tmp_path / "logs").mkdir()
    bad = tmp_path / "foreign.db"
    bad.write_bytes(b"not a database at all" * 10)
    out = subprocess.run([sys.executable, "-m", "zray.gcs", "--address", "127.0.0.1:0",
                          "--session-dir", str(tmp_path), "--storage", f"sqlite://{bad}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert str(bad) in out.stderr and "not a sqlite database" in out.stderr
    assert bad.read_bytes() == b"not a database at all" * 10
