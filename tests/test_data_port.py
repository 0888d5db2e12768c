"""The object-transfer port (issue 9, "The data port"): what a raylet's data
port accepts from a peer, replayed as an attacker would.

* a peer without the cluster key cannot make the raylet buffer anything:
  huge frames and multipart floods on unauthenticated connections leave its
  memory flat, and it keeps serving;
* a sealed fetch request or a login captured on one connection is refused
  when sent again, from this or any other socket;
* no transfer pin outlives its connection: an object dropped by its owner
  leaves the store even if a puller had opened a fetch and vanished;
* nor its pull: a puller that finds no room or a copy already being made
  releases the source's pin at once, on a link that stays open;
* a source with no room to restore a spilled object serves its spill file;
* full-store messages name the object transfers that pin.

The tests speak to the port directly: raw TCP for the attacker, and for a
legitimate puller a DEALER logged in with the cluster key (as a raylet's
``ObjectTransfer`` does).
"""
from __future__ import annotations

import glob
import os
import socket
import struct
import threading
import time

import numpy as np
import psutil
import pytest
import zmq

import zray
from zray.broker import protocol as p
from zray.broker import security, sockets
from zray.raylet.object_transfer import ANSWER_MAX_BYTES, CHUNK_BYTES, REQUEST_AAD
from zray.worker import global_state

from conftest import wait_for

MB = 1024 * 1024
ANSWER_WAIT_MS = 5000          # a legitimate fetch is answered well within this
REFUSED_WAIT_MS = 1000         # a refused request: no answer within this


# ---------------------------------------------------------------- helpers

def _node() -> p.NodeRow:
    return global_state.worker.gcs.call(p.GetNodes()).nodes[0]


def _key() -> security.ClusterKey:
    return security.load_key_file(security.key_file_in(global_state.worker.session_dir))


def _store_used() -> int:
    return global_state.worker.raylet.call(p.GetStoreStats()).stats["used"]


def _raylet_log() -> str:
    text = ""
    for path in glob.glob(os.path.join(global_state.worker.session_dir, "**", "raylet_*.log"),
                          recursive=True):
        with open(path, errors="replace") as f:
            text += f.read()
    return text


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    return host, int(port)


def _raw_zmtp(endpoint: str) -> socket.socket:
    """A raw TCP peer that greets as a plain (NULL, keyless) ZeroMQ DEALER and
    then sends whatever it likes, as an attacker would."""
    s = socket.create_connection(_host_port(endpoint), timeout=5)
    s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0")
              + b"\0" * 32)
    ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    s.sendall(bytes([0x04, len(ready)]) + ready)
    return s


def _long_frame_header(size: int, more: bool = False) -> bytes:
    return bytes([0x02 | (0x01 if more else 0)]) + struct.pack(">Q", size)


def _blast(sock: socket.socket, first: bytes, total: int, piece: bytes) -> None:
    """Send ``first`` then ``piece`` until ``total`` bytes went or the raylet
    dropped the connection."""
    try:
        sock.sendall(first)
        sent = 0
        while sent < total:
            sock.sendall(piece)
            sent += len(piece)
    except OSError:
        pass                            # dropped: what the raylet should do
    finally:
        sock.close()


class Puller:
    """A logged-in connection to a data port, as a raylet's transfer makes."""

    def __init__(self, endpoint: str, key: security.ClusterKey, login=None):
        self.ctx = sockets.context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.MAXMSGSIZE, ANSWER_MAX_BYTES)
        user, password, self.login = login or security.data_login(endpoint, key)
        self.credentials = (user, password, self.login)
        self.sock.plain_username, self.sock.plain_password = user, password
        self.sock.connect(endpoint)
        self.seal = security.DataSeal(key)
        self.seq = 0

    def request_frames(self, message) -> list[bytes]:
        nonce, sealed = self.seal.seal(p.encode(message), REQUEST_AAD + self.login)
        return [b"fetch\0\0\0", nonce, sealed]

    def fetch(self, object_id: bytes, offset: int = 0) -> list[bytes]:
        self.seq += 1
        frames = self.request_frames(p.DataFetch(self.seq, object_id, offset, CHUNK_BYTES))
        self.sock.send_multipart(frames)
        return frames

    def answer(self, wait_ms: int = ANSWER_WAIT_MS):
        """(DataChunk header, plaintext) of the next answer, or None."""
        if not self.sock.poll(wait_ms):
            return None
        _corr, header, nonce, sealed = self.sock.recv_multipart()
        decoded = p.decode(header)
        if decoded.error:
            return decoded, b""
        return decoded, self.seal.open(nonce, sealed, header + self.login)

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture(scope="module")
def node(cluster):
    """The local cluster's one node (the ``cluster`` fixture is shared)."""
    info = _node()
    yield info
    zray.get(zray.put(1))              # the raylet still serves after each test


def _object_id(ref) -> bytes:
    return ref.binary()


# ---------------------------------------------------------------- tests

def test_keyless_peers_sending_huge_frames_do_not_grow_the_raylet(node):
    raylet = psutil.Process(node.pid)
    before = raylet.memory_info().rss
    piece = b"\0" * MB
    attackers = []
    for _ in range(8):                          # 8 connections x a 500 MB frame
        sock = _raw_zmtp(node.data_address)
        t = threading.Thread(target=_blast, daemon=True, args=(
            sock, _long_frame_header(500 * MB), 500 * MB, piece))
        t.start()
        attackers.append(t)
    for t in attackers:
        t.join(60)
    assert not any(t.is_alive() for t in attackers), "the raylet kept reading 500 MB frames"
    growth = raylet.memory_info().rss - before
    assert growth < 100 * MB, f"the raylet grew by {growth / MB:.0f} MB"
    assert zray.get(zray.put(np.arange(10))).sum() == 45          # still serving
    wait_for(lambda: "refused a connection that failed the login handshake"
             in _raylet_log(), timeout=10)


def test_keyless_multipart_flood_is_not_buffered(node):
    raylet = psutil.Process(node.pid)
    before = raylet.memory_info().rss
    part = bytes([0x01 | 0x02]) + struct.pack(">Q", 4000) + b"x" * 4000   # 4 kB, "more"
    attackers = []
    for _ in range(4):                          # small frames that never end a message
        sock = _raw_zmtp(node.data_address)
        t = threading.Thread(target=_blast, daemon=True,
                             args=(sock, b"", 200 * MB, part * 256))
        t.start()
        attackers.append(t)
    for t in attackers:
        t.join(60)
    growth = raylet.memory_info().rss - before
    assert growth < 100 * MB, f"the raylet grew by {growth / MB:.0f} MB"


def test_logged_in_peer_sending_a_frame_over_the_request_limit_is_dropped(node):
    raylet = psutil.Process(node.pid)
    before = raylet.memory_info().rss
    puller = Puller(node.data_address, _key())
    monitor = puller.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        puller.sock.send(b"\0" * (64 * MB))
        assert monitor.poll(10_000), "the raylet did not drop the connection"
    finally:
        puller.sock.disable_monitor()
        monitor.close(linger=0)
        puller.close()
    assert raylet.memory_info().rss - before < 100 * MB


def test_a_silent_stranger_is_dropped_within_the_handshake_time(node):
    s = socket.create_connection(_host_port(node.data_address), timeout=15)
    started = time.monotonic()
    try:
        while s.recv(4096):               # the raylet's greeting, then its close
            pass
    except OSError:
        pass                              # reset: dropped as well
    finally:
        s.close()
    assert time.monotonic() - started < sockets.DATA_HANDSHAKE_MS / 1000 + 3


def test_login_without_the_key_is_refused(node):
    wrong = security.generate()
    puller = Puller(node.data_address, wrong)
    try:
        puller.fetch(b"\1" * 20)
        assert puller.answer(REFUSED_WAIT_MS) is None
    finally:
        puller.close()
    wait_for(lambda: "lacks the cluster secret" in _raylet_log(), timeout=10)


def test_fetch_with_the_key_is_served(node):
    ref = zray.put(np.full(3 * MB, 7, dtype=np.uint8))
    puller = Puller(node.data_address, _key())
    try:
        puller.fetch(_object_id(ref))
        answer = puller.answer()
        assert answer is not None, "a logged-in puller got no answer"
        header, chunk = answer
        assert header.error == "" and header.total_size >= 3 * MB
        assert chunk.count(7) == 3 * MB
    finally:
        puller.close()


def test_replayed_fetch_is_refused_on_every_other_socket(node):
    key = _key()
    ref = zray.put(np.ones(100 * MB // 8))
    object_id = _object_id(ref)
    victim = Puller(node.data_address, key)
    others = []
    try:
        captured = victim.fetch(object_id)
        assert victim.answer() is not None
        # 3 keyless sockets, and 2 with their own good logins, resend it
        for i in range(5):
            if i < 3:
                sock = sockets.context().socket(zmq.DEALER)
                sock.linger = 0
                sock.connect(node.data_address)
            else:
                sock = Puller(node.data_address, key).sock
            sock.send_multipart(captured)
            others.append(sock)
        for sock in others:
            assert not sock.poll(REFUSED_WAIT_MS), "a replayed fetch was served"
        victim.sock.send_multipart(captured)            # and on its own connection
        assert victim.answer(REFUSED_WAIT_MS) is None, "a replay on its connection was served"
        wait_for(lambda: "refused a re" in _raylet_log() or "replayed" in _raylet_log(),
                 timeout=10)
    finally:
        victim.close()
        for sock in others:
            sock.close(linger=0)


def test_replayed_login_is_refused(node):
    key = _key()
    first = Puller(node.data_address, key)
    try:
        first.fetch(b"\1" * 20)
        assert first.answer() is not None               # its login was good
        second = Puller(node.data_address, key, login=first.credentials)
        try:
            second.seq = 100
            second.fetch(b"\1" * 20)
            assert second.answer(REFUSED_WAIT_MS) is None, "a replayed login was admitted"
        finally:
            second.close()
    finally:
        first.close()
    wait_for(lambda: "login was used before" in _raylet_log(), timeout=10)


@pytest.mark.parametrize("chunks_unread", [0, 3])
def test_pin_of_a_puller_that_vanished_is_released(node, chunks_unread):
    baseline = _store_used()
    ref = zray.put(np.ones(100 * MB // 8))
    assert _store_used() >= baseline + 100 * MB
    puller = Puller(node.data_address, _key())
    puller.fetch(_object_id(ref))                       # pins it for this connection
    assert puller.answer() is not None, "the fetch was not served"
    for i in range(chunks_unread):                      # vanish mid-transfer
        puller.fetch(_object_id(ref), (i + 1) * CHUNK_BYTES)
    puller.close()                                      # gone, without a release
    del ref                                             # the owner drops it
    wait_for(lambda: _store_used() <= baseline, timeout=15)


# ---------------------------------------------------------------- the login itself

def test_a_login_is_good_once_for_its_endpoint_within_the_window(monkeypatch):
    key = security.generate()
    monkeypatch.setenv(security.ENV_KEY, key.secret.decode())
    logins = security._DataLogins()
    logins.serve("tcp://127.0.0.1:1")
    user, password, login_id = security.data_login("tcp://127.0.0.1:1", key)
    assert logins.check(user, password) == login_id
    with pytest.raises(ValueError, match="used before"):
        logins.check(user, password)
    user, password, _ = security.data_login("tcp://127.0.0.1:2", key)
    with pytest.raises(ValueError, match="not a data port"):
        logins.check(user, password)
    user, password, _ = security.data_login("tcp://127.0.0.1:1", key,
                                            now=time.time() - 2 * security.DATA_LOGIN_WINDOW_S)
    with pytest.raises(ValueError, match="clocks"):
        logins.check(user, password)
    user, password, _ = security.data_login("tcp://127.0.0.1:1", security.generate())
    with pytest.raises(ValueError, match="cluster secret"):
        logins.check(user, password)
    tampered = bytearray(security.data_login("tcp://127.0.0.1:1", key)[1])
    tampered[0] ^= 1
    with pytest.raises(ValueError, match="cluster secret"):
        logins.check(user, bytes(tampered))


# ---------------------------------------------------------------- two transfers, one process

class _Raylet:
    """Just what ObjectTransfer uses of a raylet: a store service on a
    private arena, the cluster view's data addresses, and the watch loop
    (shared by every _Raylet of a test through ``loop``)."""

    def __init__(self, name: str, loop: dict, peers: dict, tmp_path):
        from types import SimpleNamespace
        from zray.raylet.object_transfer import ObjectTransfer
        from zray.raylet.store_service import StoreService
        from zray.store import Arena, ObjectStore
        self.arena = Arena.create(f"/dev/shm/zray_test-data-port-{os.getpid()}-{name}",
                                  64 * MB)
        self.store = ObjectStore(self.arena, str(tmp_path / name))
        self.view = SimpleNamespace(data_address=peers.get, alive=lambda node_id: True)
        self.loop = loop
        self.service = StoreService(self.arena, self.store)
        self.transfer = ObjectTransfer(self.service, self.view, self.watch, "127.0.0.1")

    def watch(self, sock, handler) -> None:
        if handler is None:
            self.loop.pop(sock, None)
        else:
            self.loop[sock] = handler

    def close(self) -> None:
        self.transfer.close()
        self.service.close()


def _run_until(loop: dict, predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        poller = zmq.Poller()
        for sock in list(loop):
            poller.register(sock, zmq.POLLIN)
        for sock, _ in poller.poll(50):
            handler = loop.get(sock)
            if handler is not None:
                handler(sock)


@pytest.fixture
def two_raylets(tmp_path, monkeypatch):
    monkeypatch.setenv(security.ENV_KEY, security.generate().secret.decode())
    monkeypatch.delenv(security.ENV_KEY_FILE, raising=False)
    loop, peers = {}, {}
    made = []
    try:
        for name in ("source", "puller"):
            made.append(_Raylet(name, loop, peers, tmp_path))
        source, puller = made
        peers[b"S" * 16] = source.transfer.endpoint
        yield source, puller, loop
    finally:
        for raylet in made:
            raylet.close()


def _stored(raylet: _Raylet, size: int, fill: int) -> bytes:
    object_id = os.urandom(20)
    offset = raylet.store.create(object_id, size)
    raylet.arena.writable_view(offset, size)[:] = bytes([fill]) * size
    raylet.store.seal(object_id)
    return object_id


def _drop_connections(transfer) -> None:
    """Cut the data port's connections under ZeroMQ (as a network fault would)."""
    for session in list(transfer.sessions.values()):
        with socket.socket(fileno=os.dup(session.fd)) as s:
            s.shutdown(socket.SHUT_RDWR)


def test_a_pull_starts_again_on_a_new_link_when_its_connection_drops(two_raylets):
    source, puller, loop = two_raylets
    size = 5 * CHUNK_BYTES + 123
    object_id = _stored(source, size, 9)
    done = []
    puller.transfer.pull(object_id, b"S" * 16, done.append)
    pull = puller.transfer.pulls[object_id]
    _run_until(loop, lambda: pull.received > 0 or done)
    assert not done
    _drop_connections(source.transfer)
    _run_until(loop, lambda: done)
    assert done == [True] and pull.links == 2
    offset, got = puller.store.pin(object_id, "test")
    assert got == size and bytes(puller.arena.read_view(offset, size)).count(9) == size
    # the source holds no pin: not the dropped connection's, not the new one's
    _run_until(loop, lambda: not source.store.info(object_id)["pins"])


def test_a_pull_whose_logins_are_refused_fails_instead_of_hanging(two_raylets):
    source, puller, loop = two_raylets
    object_id = _stored(source, CHUNK_BYTES, 1)
    security.forget_data_port(source.transfer.endpoint)     # every login now refused
    done = []
    puller.transfer.pull(object_id, b"S" * 16, done.append)
    _run_until(loop, lambda: done)
    assert done == [False]
    assert not puller.store.contains(object_id)


def _pinned_source_store(source: _Raylet, object_size: int, fill_size: int) -> bytes:
    """An object of ``object_size`` on ``source`` that is spilled, and
    ``source``'s store full of pinned objects of ``fill_size`` (a reader's
    views): no room to restore it."""
    from zray.store import ObjectStoreFullError
    object_id = _stored(source, object_size, 4)
    for i in range(source.arena.size // fill_size):
        try:
            source.store.pin(_stored(source, fill_size, 10 + i), "a reader's view")
        except ObjectStoreFullError:
            break
    assert source.store.info(object_id)["spilled"], "the object was not spilled"
    assert not source.store.has_room(object_size)
    return object_id


def _source_pins(source: _Raylet, object_id: bytes) -> dict:
    info = source.store.info(object_id)
    return info["pins"] if info else {}


def test_a_pull_that_finds_no_room_here_releases_the_source_pin_at_once(two_raylets):
    source, puller, loop = two_raylets
    object_id = _stored(source, 10 * MB, 2)
    baseline = source.store.stats()["used"]
    puller.store.pin(_stored(puller, 60 * MB, 1), "a reader's view")     # 60 of 64 MB
    done = []
    puller.transfer.pull(object_id, b"S" * 16, done.append)
    _run_until(loop, lambda: done)
    assert done == [False] and not puller.store.contains(object_id)
    # The source unpins it without the link closing: the owner's free takes it.
    _run_until(loop, lambda: not _source_pins(source, object_id), timeout=5)
    assert b"S" * 16 in puller.transfer.links and source.transfer.sessions
    source.store.free(object_id)
    assert source.store.stats()["used"] == baseline - 10 * MB


def test_a_pull_of_an_object_being_created_here_releases_the_source_pin_at_once(two_raylets):
    source, puller, loop = two_raylets
    object_id = _stored(source, 10 * MB, 2)
    puller.store.create(object_id, 10 * MB, writer="a local writer")      # not sealed yet
    done = []
    puller.transfer.pull(object_id, b"S" * 16, done.append)
    _run_until(loop, lambda: done)
    _run_until(loop, lambda: not _source_pins(source, object_id), timeout=5)
    assert b"S" * 16 in puller.transfer.links and source.transfer.sessions


def test_a_source_with_no_room_to_restore_a_spilled_object_serves_its_spill_file(
        two_raylets):
    source, puller, loop = two_raylets
    size = 2 * CHUNK_BYTES + 4321                   # three chunks, the last one short
    object_id = _pinned_source_store(source, size, 16 * MB)
    done = []
    puller.transfer.pull(object_id, b"S" * 16, done.append)
    _run_until(loop, lambda: done)
    assert done == [True], "the pull failed instead of reading the spill file"
    offset, got = puller.store.pin(object_id, "test")
    assert got == size and bytes(puller.arena.read_view(offset, size)).count(4) == size
    assert source.store.info(object_id)["spilled"] and not _source_pins(source, object_id)
    _run_until(loop, lambda: not any(s.from_file for s in source.transfer.sessions.values()),
               timeout=5)


def test_a_spilled_object_restored_while_served_from_its_file_is_read_from_the_arena(
        two_raylets):
    source, puller, loop = two_raylets
    size = 2 * CHUNK_BYTES
    object_id = _pinned_source_store(source, size, 16 * MB)
    peer = Puller(source.transfer.endpoint, security.current())
    try:
        peer.fetch(object_id)                                   # from the spill file
        _run_until(loop, lambda: peer.sock.poll(0))
        header, first = peer.answer()
        assert header.error == "" and first == bytes([4]) * CHUNK_BYTES
        source.store.release_client("a reader's view")
        assert source.store.pin(object_id, "a reader") is not None      # restored
        assert source.store.spilled_copy(object_id) is None             # file gone
        peer.fetch(object_id, CHUNK_BYTES)
        _run_until(loop, lambda: peer.sock.poll(0))
        header, second = peer.answer()
        assert header.error == "" and second == bytes([4]) * CHUNK_BYTES
        assert len(_source_pins(source, object_id)) == 2   # the reader and the transfer
    finally:
        peer.close()
    _run_until(loop, lambda: list(_source_pins(source, object_id)) == ["a reader"])


def test_transfer_pins_and_pulls_are_named_in_full_store_messages(two_raylets):
    source, puller, loop = two_raylets
    object_id = _stored(source, 10 * MB, 2)
    peer = Puller(source.transfer.endpoint, security.current())
    try:
        peer.seq = 1
        peer.sock.send_multipart(peer.request_frames(
            p.DataFetch(1, object_id, 0, CHUNK_BYTES)))
        _run_until(loop, lambda: _source_pins(source, object_id))
        (client,) = _source_pins(source, object_id)
        name = source.transfer.describe_client(client)
        assert name.startswith("an object transfer to 127.0.0.1 (connection ")
        assert source.transfer.describe_client(b"pull:" + b"\xab" * 16) == \
            "an object pull from node " + "ab" * 6
        assert source.transfer.describe_client(b"a worker") is None
    finally:
        peer.close()


def test_full_store_error_names_the_object_transfer_that_pins(node, monkeypatch):
    from zray import exceptions as zexc
    from zray.config import config
    from conftest import STORE_BYTES, call_bounded
    monkeypatch.setattr(config, "object_store_full_timeout_s", 1.0)
    baseline = _store_used()
    refs = [zray.put(np.full(60 * MB, i, dtype=np.uint8)) for i in range(STORE_BYTES // (64 * MB))]
    puller = Puller(node.data_address, _key())
    try:
        for ref in refs:                        # this connection pins them all
            puller.fetch(_object_id(ref))
            assert puller.answer() is not None, "the fetch was not served"
        outcome, err = call_bounded(lambda: zray.put(np.ones(32 * MB, np.uint8)), timeout=20)
        assert outcome == "raised" and isinstance(err, zexc.ObjectStoreFullError), err
        assert "pinned by an object transfer to 127.0.0.1 (connection " in str(err)
        assert "unknown client" not in str(err)
    finally:
        puller.close()
    del refs, ref
    wait_for(lambda: zray.put(0) is not None and _store_used() <= baseline, timeout=15)
