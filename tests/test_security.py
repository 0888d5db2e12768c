"""Transport security: every TCP connection of the fabric is CURVE with the
cluster key; a peer without it gets no answer and the refusal is logged; IPC
stays plain.

The unit tests at the top are the only place where security is off (no key
in the environment): they check the key files and the socket options alone.
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

import pytest
import zmq

import zray
from zray.broker import protocol as p
from zray.broker import security, sockets
from zray.config import config
from zray._private.node import NodeProcesses, sweep_session
from zray._private import session
from zray.worker import global_state

from conftest import wait_for


# --------------------------------------------------------------------------
# key files and the key of a process (no cluster)
# --------------------------------------------------------------------------

def test_key_file_round_trip_and_formats(tmp_path):
    path = security.create_key_file(str(tmp_path / "cluster.key"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = security.load_key_file(path)
    assert key.public == zmq.curve_public(key.secret)
    assert "secret" in open(path).read() and key.secret.decode() not in repr(key)
    # a file with just the secret (what ZRAY_CLUSTER_KEY holds) is a key file too
    bare = tmp_path / "bare.key"
    bare.write_bytes(key.secret + b"\n")
    assert security.load_key_file(str(bare)) == key
    assert security.from_secret(key.secret.decode()) == key
    # a public half that does not belong to the secret, junk, a missing file
    other = security.generate()
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"public: " + other.public + b"\nsecret: " + key.secret + b"\n")
    with pytest.raises(security.ClusterKeyError, match="does not belong"):
        security.load_key_file(str(bad))
    bad.write_text("hello\n")
    with pytest.raises(security.ClusterKeyError):
        security.load_key_file(str(bad))
    with pytest.raises(security.ClusterKeyError, match="cannot read"):
        security.load_key_file(str(tmp_path / "missing.key"))


def test_current_key_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(security.ENV_KEY, raising=False)
    monkeypatch.delenv(security.ENV_KEY_FILE, raising=False)
    assert security.current() is None                    # security off: tests only
    path = security.create_key_file(str(tmp_path / "cluster.key"))
    monkeypatch.setenv(security.ENV_KEY_FILE, path)
    from_file = security.current()
    assert from_file == security.load_key_file(path)
    assert security.current() is from_file               # loaded once
    other = security.generate()
    monkeypatch.setenv(security.ENV_KEY, other.secret.decode())   # takes precedence
    assert security.current() == other
    monkeypatch.setenv(security.ENV_KEY, "too short")
    with pytest.raises(security.ClusterKeyError, match=security.ENV_KEY):
        security.current()


def test_without_a_key_tcp_sockets_stay_plain(monkeypatch):
    monkeypatch.delenv(security.ENV_KEY, raising=False)
    monkeypatch.delenv(security.ENV_KEY_FILE, raising=False)
    ctx = zmq.Context()
    try:
        server = ctx.socket(zmq.ROUTER)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client = sockets.dealer(f"tcp://127.0.0.1:{port}")
        assert client.getsockopt(zmq.MECHANISM) == zmq.NULL
        client.send_multipart([b"x", b"hello"])
        assert server.poll(5000), "a plain client of a plain server got no answer"
        client.close(linger=0)
        server.close(linger=0)
    finally:
        ctx.destroy(linger=0)


# --------------------------------------------------------------------------
# a running cluster
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gcs(cluster):
    """(GCS tcp endpoint, session dir, the cluster key, GCS log path)."""
    worker = global_state.worker
    session_dir = worker.session_dir
    key = security.load_key_file(security.key_file_in(session_dir))
    return ("tcp://" + zray.get_runtime_context().gcs_address, session_dir, key,
            os.path.join(session_dir, "logs", "gcs.log"))


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _ping(ctx, endpoint: str, key=None, timeout: float = 1.0, client_key=None):
    """Send a Ping on a fresh DEALER (CURVE with ``key`` when given, and with
    ``client_key`` as the client's own keypair); the reply or None."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if key is not None:
        security.configure_client(sock, key)
        if client_key is not None:
            sock.curve_publickey = client_key.public
            sock.curve_secretkey = client_key.secret
    sock.connect(endpoint)
    corr = os.urandom(8)
    sock.send_multipart([corr, p.encode(p.Ping())])
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000)):
                return None
            frames = sock.recv_multipart()
            if frames[0] == corr:
                return p.decode(frames[1])
    finally:
        sock.close(linger=0)


def _still_serving():
    @zray.remote
    def echo(x):
        return x

    assert zray.get([echo.remote(i) for i in range(4)], timeout=30) == list(range(4))
    assert [n["Alive"] for n in zray.nodes()] == [True]


def test_init_creates_a_private_key_file_in_the_session_dir(gcs):
    _, session_dir, key, _ = gcs
    path = security.key_file_in(session_dir)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.stat(path).st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(os.path.join(session_dir, "sockets")).st_mode) == 0o700
    assert os.environ[security.ENV_KEY_FILE] == path
    assert security.current() == key


def test_plain_client_gets_no_answer_a_keyed_one_does(gcs, ctx):
    endpoint, _, key, _ = gcs
    assert _ping(ctx, endpoint, timeout=1.0) is None, "a plain client was answered over TCP"
    assert _ping(ctx, endpoint, key, timeout=10.0) == p.Ack()


def test_wrong_keys_are_refused_and_logged(gcs, ctx):
    endpoint, _, key, log_file = gcs
    other = security.generate()
    # another cluster's key altogether: the CURVE handshake fails
    assert _ping(ctx, endpoint, other, timeout=1.0) is None
    # the cluster's public key but a keypair of its own: ZAP refuses it
    assert _ping(ctx, endpoint, key, client_key=other, timeout=1.0) is None

    def logged():
        text = open(log_file).read()
        return "refused" in text and "different cluster key" in text \
            and f"client key {other.public[:8].decode()}" in text
    wait_for(logged, timeout=10, interval=0.1)
    line = next(l for l in open(log_file) if "is not the cluster key" in l)
    assert "WARNING" in line and "127.0.0.1" in line, line
    # the GCS keeps serving the cluster and keyed clients
    assert _ping(ctx, endpoint, key, timeout=10.0) == p.Ack()
    _still_serving()


def test_refusals_are_not_logged_on_every_retry(gcs, ctx):
    """A refused ZeroMQ peer reconnects every 100 ms; the log must not grow
    by a line each time."""
    endpoint, _, key, log_file = gcs
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.RECONNECT_IVL, 10)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 10)
    sock.connect(endpoint)                     # plain, retrying for 2 s
    before = open(log_file).read().count("refused")
    time.sleep(2)
    sock.close(linger=0)
    after = open(log_file).read().count("refused")
    # ~200 attempts; a line per reason (mismatch, or the peer leaving
    # mid-handshake), and per reason once more when the peer's address is known
    assert after - before <= 4, f"{after - before} refusal lines in 2 s"


def test_ipc_endpoints_stay_plain(gcs, ctx):
    raylet = global_state.worker.raylet.endpoint
    assert raylet.startswith("ipc://")
    assert _ping(ctx, raylet, timeout=10.0) == p.Ack()


def test_raylet_with_the_wrong_key_is_refused(gcs, tmp_path, monkeypatch):
    """A raylet started with another cluster's key cannot join: it gives up,
    the GCS logs the refusal, the cluster is unaffected."""
    endpoint, _, _, log_file = gcs
    monkeypatch.setattr(config, "connect_timeout_s", 2.0)
    wrong = security.create_key_file(str(tmp_path / "wrong.key"))
    rogue_dir = session.new_session_dir()
    node = NodeProcesses(rogue_dir, detached=False, cluster_key_file=wrong)
    try:
        node.start_raylet(endpoint[len("tcp://"):], os.urandom(16), num_cpus=1,
                          object_store_memory=64 * 1024 * 1024)
        proc = node.procs[0]
        proc.wait(30)
        assert proc.returncode != 0
    finally:
        node.stop()
        sweep_session(rogue_dir)
    assert "different cluster key" in open(log_file).read()
    _still_serving()


def _python(code: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _clean_env(tmp_path, **extra) -> dict:
    """No key, no address, a private (empty) session root; short timeouts."""
    env = {k: v for k, v in os.environ.items()
           if k not in (security.ENV_KEY, security.ENV_KEY_FILE, "ZRAY_ADDRESS",
                        "RAY_ADDRESS")}
    env["ZRAY_TEMP_DIR"] = str(tmp_path / "sessions")
    env["ZRAY_CONNECT_TIMEOUT_S"] = "2"
    env.update(extra)
    return env


def test_driver_with_the_wrong_key_gets_a_clear_error(gcs, tmp_path):
    endpoint, _, _, _ = gcs
    address = endpoint[len("tcp://"):]
    code = (f"import zray\n"
            f"try:\n    zray.init(address={address!r})\n"
            f"except ConnectionError as err:\n    print('ERROR', err)\n")
    env = _clean_env(tmp_path, ZRAY_CLUSTER_KEY=security.generate().secret.decode())
    started = time.monotonic()
    out = _python(code, env)
    assert out.returncode == 0, out.stderr
    assert "ERROR" in out.stdout and "wrong cluster key" in out.stdout, out.stdout
    assert time.monotonic() - started < 20


def test_no_key_for_a_cluster_is_a_clear_error(tmp_path):
    """Something listens at the address, but this host has no key for it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = "127.0.0.1:%d" % listener.getsockname()[1]
        code = (f"import zray\n"
                f"try:\n    zray.init(address={address!r})\n"
                f"except ConnectionError as err:\n    print('ERROR', err)\n")
        out = _python(code, _clean_env(tmp_path))
        assert out.returncode == 0, out.stderr
        assert "no cluster key" in out.stdout and security.ENV_KEY_FILE in out.stdout, \
            out.stdout
        status = subprocess.run([sys.executable, "-m", "zray._private.cli", "start",
                                 f"--address={address}"], env=_clean_env(tmp_path),
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 1
        assert "no cluster key" in status.stderr and "--cluster-key-file" in status.stderr, \
            status.stderr


def test_a_driver_on_this_host_finds_the_key_of_a_running_cluster(gcs, tmp_path):
    """No key in the environment: the key file of the GCS's session on this
    host is used (what `zray start --address` and `zray status` do too)."""
    endpoint, _, _, _ = gcs
    address = endpoint[len("tcp://"):]
    code = (f"import zray\nzray.init(address={address!r})\n"
            f"@zray.remote\ndef f(x):\n    return x + 1\n"
            f"print('RESULT', zray.get(f.remote(1), timeout=30))\nzray.shutdown()\n")
    out = _python(code, _clean_env(tmp_path, ZRAY_CONNECT_TIMEOUT_S="10"), timeout=90)
    assert out.returncode == 0, out.stderr
    assert "RESULT 2" in out.stdout, out.stdout
    status = subprocess.run([sys.executable, "-m", "zray._private.cli", "status", "--address",
                             address], env=_clean_env(tmp_path), capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "1 alive, 0 dead" in status.stdout, status.stdout


def test_zray_start_with_the_wrong_key_fails_clearly(gcs, tmp_path):
    endpoint, _, _, _ = gcs
    wrong = security.create_key_file(str(tmp_path / "wrong.key"))
    out = subprocess.run([sys.executable, "-m", "zray._private.cli", "start",
                          f"--address={endpoint[len('tcp://'):]}",
                          f"--cluster-key-file={wrong}"],
                         env=_clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "wrong cluster key" in out.stderr, out.stderr
    _still_serving()
