"""Bad input, by design: junk on a daemon's socket is dropped and logged and
the daemon keeps serving; a request with junk gets an ErrorReply; wrong
values passed to the API raise clear exceptions at the call.

The junk comes from plain pyzmq DEALER sockets (what any local process
could do) and, for what a DEALER cannot produce (a frame cut off mid-way, a
frame announcing more bytes than a daemon accepts), from a raw socket that
speaks just enough of ZMTP 3.0.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time

import msgpack
import psutil
import pytest
import zmq

import zray
from zray.broker import protocol as p
from zray.broker import security
from zray.broker.rpc import NoAnswerError, RpcClient
from zray.exceptions import RayError
from zray.worker import global_state

from conftest import TcpPeer, local_daemons, wait_for

MiB = 1024 * 1024


# --------------------------------------------------------------------------
# where the daemons are
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemons(cluster):
    """name -> (zmq endpoint, pid, log file) of the cluster's GCS and raylet."""
    return local_daemons()


@pytest.fixture(scope="module")
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def dealer(ctx):
    """Plain DEALER sockets connected to a daemon; closed after the test."""
    made = []

    def connect(endpoint: str) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 500)
        if endpoint.startswith("tcp://"):      # TCP peers must hold the cluster key
            security.configure_client(sock)
        sock.connect(endpoint)
        made.append(sock)
        return sock

    yield connect
    for sock in made:
        sock.close(linger=0)


def assert_still_serving(name: str, daemons) -> None:
    """The daemon lives, tasks still run and the GCS still answers."""
    pid = daemons[name][1]
    assert psutil.pid_exists(pid) and \
        psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, f"the {name} died"

    @zray.remote
    def echo(x):
        return x

    values = list(range(4))
    assert zray.get([echo.remote(v) for v in values], timeout=20) == values
    nodes = zray.nodes()
    assert [n["Alive"] for n in nodes] == [True], nodes
    assert zray.cluster_resources().get("CPU") == 2.0
    # and nothing the junk did holds on to a CPU
    wait_for(lambda: zray.available_resources().get("CPU") == 2.0, timeout=5)


def _request(sock: zmq.Socket, payload: bytes, timeout: float = 5.0):
    """Send a request (8-byte correlation id); return the decoded reply."""
    corr = os.urandom(8)
    sock.send_multipart([corr, payload])
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            pytest.fail(f"no reply within {timeout}s: the request was met with silence")
        frames = sock.recv_multipart()
        if frames[0] == corr:
            assert len(frames) >= 2, frames
            return p.decode(frames[1])


# --------------------------------------------------------------------------
# a raw ZMTP 3.0 peer (NULL mechanism), for frames a DEALER never sends
# --------------------------------------------------------------------------

class RawZmtp:
    def __init__(self, endpoint: str, timeout: float = 5.0):
        if endpoint.startswith("ipc://"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(endpoint[len("ipc://"):])
        else:
            host, port = endpoint[len("tcp://"):].rsplit(":", 1)
            self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        greeting = (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
                    + b"\x00" + b"\x00" * 31)
        self.sock.sendall(greeting)
        peer = self._recv_exactly(64)
        assert peer[0] == 0xFF and peer[9] == 0x7F, f"not a ZMTP peer: {peer!r}"
        name, value = b"Socket-Type", b"DEALER"
        body = (b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(value))
                + value)
        self.sock.sendall(b"\x04" + bytes([len(body)]) + body)
        flags = self._recv_exactly(1)[0]
        size = self._recv_exactly(1)[0] if not flags & 0x02 else \
            struct.unpack(">Q", self._recv_exactly(8))[0]
        assert flags & 0x04 and self._recv_exactly(size)[:6] == b"\x05READY"

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            data += chunk
        return data

    def send_frame(self, data: bytes, more: bool = False, declared: int | None = None):
        """A message frame; ``declared`` lies about its length."""
        size = len(data) if declared is None else declared
        flags = 0x01 if more else 0
        if size > 255:
            head = bytes([flags | 0x02]) + struct.pack(">Q", size)
        else:
            head = bytes([flags, size])
        self.sock.sendall(head + data)

    def closed_by_peer(self, timeout: float) -> bool:
        """True when the daemon drops the connection within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(4096):
                pass
            return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------
# junk on the wire: dropped, the daemon keeps serving
# --------------------------------------------------------------------------

def _valid(message) -> bytes:
    return p.encode(message)


JUNK = {
    "single frame": lambda name: [b"just one frame"],
    "empty message frames": lambda name: [b"", b""],
    "random payload": lambda name: [b"", os.urandom(200)],
    "msgpack that is not a list": lambda name: [b"", msgpack.packb({"code": 16})],
    "msgpack list without a code": lambda name: [b"", msgpack.packb(["Ping", 1])],
    "empty list": lambda name: [b"", msgpack.packb([])],
    "unknown message code": lambda name: [b"", msgpack.packb([9999, b"x", 1])],
    "negative message code": lambda name: [b"", msgpack.packb([-1])],
    "known code, too few fields": lambda name: [
        b"", msgpack.packb([p.KVPut.CODE if name == "gcs" else p.SubmitTask.CODE])],
    "known code, too many fields": lambda name: [
        b"", msgpack.packb([p.Ping.CODE, 1, 2, 3])],
    "known code, fields of the wrong type": lambda name: [
        b"", msgpack.packb([p.KVGet.CODE, 12, "not bytes"] if name == "gcs"
                           else [p.SubmitTask.CODE, "not a spec"])],
    "truncated msgpack payload": lambda name: [
        b"", _valid(p.KVPut("ns", b"key", b"v" * 100, True))[:20]],
    "correlation id of 5 bytes": lambda name: [b"12345", _valid(p.Ping())],
    "message not served by this daemon": lambda name: [
        b"", _valid(p.WorkerReady(b"w" * 16, b"t" * 16) if name == "gcs"
                    else p.KVKeys("ns", b""))],
    "blobs nobody asked for": lambda name: [b"", _valid(p.Ping()), b"x" * 1000, b"y"],
}


@pytest.mark.parametrize("case", sorted(JUNK))
@pytest.mark.parametrize("name", ["gcs", "raylet"])
def test_junk_is_dropped_and_daemon_keeps_serving(name, case, daemons, dealer):
    sock = dealer(daemons[name][0])
    sock.send_multipart(JUNK[case](name))
    sock.send_multipart(JUNK[case](name))          # twice: it was not a fluke
    assert_still_serving(name, daemons)


def test_wrongly_typed_task_spec_does_not_break_the_raylet(daemons, dealer):
    """A SubmitTask of the right shape whose fields are nonsense must be
    refused, not queued where it would poison scheduling."""
    spec = ["task", 7, "kind", None, 3.5, "args", {"kw": 1}, "one", "CPU", "r", "e",
            "owner"]
    sock = dealer(daemons["raylet"][0])
    sock.send_multipart([b"", _valid(p.SubmitTask(spec))])
    spec_right_types = [os.urandom(16), os.urandom(4), p.TASK_NORMAL, os.urandom(20), "junk",
                        [[p.ARG_VALUE, b"not a serialized value"]], [], 1, {"CPU": 1.0},
                        0, False, ["ipc:///nonexistent/inbox", os.urandom(16), 1, b""]]
    sock.send_multipart([b"", _valid(p.SubmitTask(spec_right_types))])
    assert_still_serving("raylet", daemons)


def test_wrongly_typed_node_registration_does_not_break_the_gcs(daemons, dealer):
    """A RegisterNode whose fields are nonsense must not land in the node
    table, where it would break every reader of it."""
    sock = dealer(daemons["gcs"][0])
    sock.send_multipart([b"", msgpack.packb(
        [p.RegisterNode.CODE, 1, 2, 3, 4, "pid", "resources", "size", 5])])
    assert_still_serving("gcs", daemons)


# Raw ZMTP (NULL mechanism) cannot get past the GCS's CURVE handshake; the
# refusal of such peers is covered in test_security.py. Here: the raylet's IPC port.
@pytest.mark.parametrize("name", ["raylet"])
def test_truncated_multiframe_message_is_dropped(name, daemons):
    # a first frame that announces more frames, then the peer goes away
    raw = RawZmtp(daemons[name][0])
    raw.send_frame(os.urandom(8), more=True)
    raw.send_frame(_valid(p.Ping())[:1], more=True)
    raw.close()
    # a frame cut off in the middle of its bytes
    raw = RawZmtp(daemons[name][0])
    raw.send_frame(b"", more=True)
    raw.send_frame(b"x" * 10, declared=100)
    raw.close()
    assert_still_serving(name, daemons)


# Raw ZMTP (NULL mechanism) cannot get past the GCS's CURVE handshake: the raylet's IPC port.
@pytest.mark.parametrize("name", ["raylet"])
def test_frame_over_the_size_limit_is_refused(name, daemons):
    """A frame announcing more than MAX_MESSAGE_BYTES: the daemon's ROUTER
    refuses it as soon as it reads the length (MAXMSGSIZE) and drops the
    connection, instead of buffering half a gigabyte. Only the header and a
    few bytes are sent."""
    raw = RawZmtp(daemons[name][0])
    try:
        raw.send_frame(b"", more=True)
        raw.send_frame(b"x" * 4096, declared=p.MAX_MESSAGE_BYTES + 1)
        assert raw.closed_by_peer(timeout=5), \
            "the daemon kept reading a frame over MAX_MESSAGE_BYTES (no size limit)"
    finally:
        raw.close()
    # a frame under the limit is not refused on its header alone
    raw = RawZmtp(daemons[name][0])
    try:
        raw.send_frame(b"", more=True)
        raw.send_frame(b"x" * 4096, declared=64 * MiB)
        assert not raw.closed_by_peer(timeout=0.5)
    finally:
        raw.close()
    assert_still_serving(name, daemons)


# --------------------------------------------------------------------------
# requests with junk: an ErrorReply, not silence
# --------------------------------------------------------------------------

BAD_REQUESTS = {
    "random payload": lambda name: os.urandom(64),
    "msgpack that is not a list": lambda name: msgpack.packb("hello"),
    "unknown message code": lambda name: msgpack.packb([9999]),
    "known code, wrong number of fields": lambda name: msgpack.packb([p.GetNodes.CODE, 1, 2]),
    "message not served by this daemon": lambda name: _valid(
        p.WorkerReady(b"w" * 16, b"t" * 16) if name == "gcs" else p.KVKeys("ns", b"")),
    "known code, fields of the wrong type": lambda name: msgpack.packb(
        [p.KVPut.CODE, "zray_test", 12, 3, "yes"] if name == "gcs"
        else [p.PinObjects.CODE, 12]),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
@pytest.mark.parametrize("name", ["gcs", "raylet"])
def test_junk_request_gets_an_error_reply(name, case, daemons, dealer):
    sock = dealer(daemons[name][0])
    reply = _request(sock, BAD_REQUESTS[case](name))
    assert isinstance(reply, p.ErrorReply), reply
    assert reply.error_type and reply.message
    # and a good request on the same socket is still answered
    assert _request(sock, _valid(p.Ping())) == p.Ack()


def test_wrongly_typed_kv_put_does_not_poison_the_kv_table(daemons, dealer):
    """A KVPut whose key is not bytes is refused; it must not land in the
    table, where it would break every later listing of the namespace."""
    sock = dealer(daemons["gcs"][0])
    sock.send_multipart([b"", msgpack.packb([p.KVPut.CODE, "zray_poison", 12, b"v", True])])
    assert _request(sock, _valid(p.KVPut("zray_poison", b"good", b"v", True))) == \
        p.KVPutReply(True)
    reply = _request(sock, _valid(p.KVKeys("zray_poison", b"")))
    assert reply == p.KVKeysReply([b"good"]), reply


def test_junk_is_logged_with_a_reason(daemons, dealer):
    for name in ("gcs", "raylet"):
        sock = dealer(daemons[name][0])
        sock.send_multipart([b"", msgpack.packb([31337])])
        log_file = daemons[name][2]
        wait_for(lambda: "unknown message code 31337" in open(log_file).read(), timeout=5)


# --------------------------------------------------------------------------
# wrong values through the API: clear exceptions at the call
# --------------------------------------------------------------------------

def test_unserializable_argument_raises_type_error_naming_it(cluster):
    @zray.remote
    def take(x=None, y=None):
        return "ran"

    lock = threading.Lock()
    with pytest.raises(TypeError) as info:
        take.remote(lock)
    text = str(info.value)
    assert "lock" in text and "argument 0" in text, text

    with pytest.raises(TypeError) as info:
        take.remote(1, y=[1, lock])
    text = str(info.value)
    assert "lock" in text and "'y'" in text, text

    # nothing was submitted, and the cluster goes on
    assert zray.get(take.remote(1, y=2), timeout=20) == "ran"
    assert global_state.worker.stats()["pending_tasks"] == 0


def test_unserializable_return_value_raises_on_get(cluster):
    @zray.remote
    def make_lock():
        return threading.Lock()

    with pytest.raises(RayError) as info:
        zray.get(make_lock.remote(), timeout=20)
    assert "serializ" in str(info.value).lower(), str(info.value)

    @zray.remote
    def fine():
        return "ok"
    assert zray.get(fine.remote(), timeout=20) == "ok"


def test_get_of_something_that_is_not_a_ref_raises_type_error(cluster):
    @zray.remote
    def one():
        return 1

    ref = one.remote()
    for bad in (1, "ref", None, [ref, 1], {"a": ref}):
        with pytest.raises(TypeError):
            zray.get(bad, timeout=5)
    assert zray.get([ref], timeout=20) == [1]


def test_put_of_a_ref_raises_type_error(cluster):
    ref = zray.put(1)
    with pytest.raises(TypeError):
        zray.put(ref)
    assert zray.get(zray.put([ref]), timeout=10) == [ref]   # nested refs are fine


def test_invalid_options_raise_value_error(cluster):
    @zray.remote
    def f():
        return 1

    with pytest.raises(ValueError, match="foo"):
        f.options(foo=1)
    with pytest.raises(ValueError, match="foo"):
        zray.remote(foo=1)(lambda: 1)
    with pytest.raises(ValueError):
        f.options(num_cpus=-1)
    with pytest.raises(ValueError):
        f.options(max_retries="many")
    with pytest.raises(TypeError):
        f()                                   # a remote function is not called directly
    assert zray.get(f.options(num_cpus=1).remote(), timeout=20) == 1


def test_wait_and_cancel_reject_non_refs(cluster):
    with pytest.raises(TypeError):
        zray.wait(zray.put(1))
    with pytest.raises(TypeError):
        zray.cancel("not a ref")


# --------------------------------------------------------------------------
# "wrong cluster key?" only when the CURVE handshake really failed for a key
# --------------------------------------------------------------------------

@pytest.fixture
def curve_server(ctx):
    """A ZeroMQ CURVE ROUTER on loopback with the given keypair that never
    answers; returns its endpoint."""
    made = []

    def start(key: security.ClusterKey) -> str:
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_server = True
        sock.curve_secretkey = key.secret
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        made.append(sock)
        return f"tcp://127.0.0.1:{port}"

    yield start
    for sock in made:
        sock.close(linger=0)


def _no_answer(endpoint: str, timeout: float = 1.5) -> NoAnswerError:
    client = RpcClient(endpoint, timeout, "GCS")
    try:
        with pytest.raises(NoAnswerError) as info:
            client.call(p.Ping())
    finally:
        client.close()
    return info.value


def test_a_server_with_another_cluster_key_is_reported_as_a_wrong_key(cluster, curve_server):
    err = _no_answer(curve_server(security.generate()))
    assert err.wrong_key, str(err)
    assert "wrong cluster key?" in str(err) and "another cluster key" in str(err), str(err)


@pytest.mark.parametrize("server", ["silent TCP service", "SSH banner",
                                    "zray key accepted, no answer"])
def test_a_server_that_does_not_answer_is_a_timeout_not_a_key_problem(cluster, curve_server,
                                                                       server):
    listener = None
    if server == "zray key accepted, no answer":
        endpoint = curve_server(security.current())
    else:
        listener = TcpPeer(b"SSH-2.0-OpenSSH_9.6\r\n" if server == "SSH banner" else b"")
        endpoint = listener.endpoint
    try:
        started = time.monotonic()
        err = _no_answer(endpoint)
        assert time.monotonic() - started < 5
    finally:
        if listener is not None:
            listener.close()
    text = str(err)
    assert not err.wrong_key and "wrong cluster key" not in text, text
    assert f"at {endpoint} within 1.5s" in text, text


def test_driver_joining_an_address_that_does_not_answer_is_told_so(cluster, tmp_path):
    """zray.init(address=...) of a silent service, with a key in hand: a
    timeout that says so, not a guess at the key."""
    listener = TcpPeer()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ZRAY_", "RAY_"))}
        env.update(ZRAY_CLUSTER_KEY=security.generate().secret.decode(),
                   ZRAY_TEMP_DIR=str(tmp_path), ZRAY_CONNECT_TIMEOUT_S="2")
        code = (f"import zray\ntry:\n    zray.init(address={listener.endpoint[6:]!r})\n"
                f"except ConnectionError as err:\n    print('ERROR', err)\n")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        listener.close()
    assert out.returncode == 0, out.stderr
    assert "ERROR" in out.stdout and "did not answer within 2s" in out.stdout, out.stdout
    assert "wrong cluster key" not in out.stdout, out.stdout


# --------------------------------------------------------------------------
# every field is checked against its kind when a message is decoded
# --------------------------------------------------------------------------

_NODE = os.urandom(16)
_OWNER = ["tcp://127.0.0.1:5000", os.urandom(16), 123, os.urandom(16)]
_SPEC = list(p.TaskSpec(os.urandom(16), b"\0\0\0\1", p.TASK_NORMAL, os.urandom(16), "f",
                        [[p.ARG_VALUE, b"x"]], [], 1, {"CPU": 1.0}, 3, False, _OWNER))
_GOOD = {
    "RegisterNode": p.RegisterNode(_NODE, "ipc:///tmp/s/raylet", "tcp://10.0.0.1:7000",
                                   "10.0.0.1", "host", 42, {"CPU": 2, "GPU": 0.5}, 1 << 30,
                                   "/tmp/s"),
    "Heartbeat": p.Heartbeat(_NODE, {"CPU": -1.0}, 0, {"CPU": 2.0}),
    "WatchActor": p.WatchActor(os.urandom(16), "tcp://[::1]:6000"),
    "PinObjects": p.PinObjects([os.urandom(20)], [b""], [0]),
    "GetObject": p.GetObject(os.urandom(20), _OWNER),
    "SubmitTask": p.SubmitTask(_SPEC),
    "RegisterJob": p.RegisterJob(1, [], "ns", ["/a"], "/"),
}
_BAD_FIELDS = [
    ("RegisterNode", "resources", {"CPU": "x"}), ("RegisterNode", "resources", {"CPU": -1}),
    ("RegisterNode", "resources", {"CPU": float("nan")}), ("RegisterNode", "resources", {1: 2}),
    ("RegisterNode", "resources", {"CPU": float("inf")}), ("RegisterNode", "pid", -5),
    ("RegisterNode", "address", "nowhere"), ("RegisterNode", "data_address", "tcp://h:70000"),
    ("Heartbeat", "node_id", b"abc"), ("Heartbeat", "available", {"CPU": "x"}),
    ("WatchActor", "reply_to", "tcp://*:0"), ("WatchActor", "reply_to", "tcp://h:0"),
    ("WatchActor", "actor_id", b""), ("PinObjects", "object_ids", [b"short"]),
    ("PinObjects", "sources", [b"x" * 3]), ("GetObject", "reply_to", ["tcp://h:1", b"w", 1, b"n"]),
    ("SubmitTask", "spec", _SPEC[:11] + [["tcp://*:0", b"w" * 16, 1, b"n" * 16]]),
    ("SubmitTask", "spec", _SPEC[:8] + [{"CPU": "one"}] + _SPEC[9:]),
    ("RegisterJob", "sys_path", [1]),
]


def test_well_formed_messages_decode_to_themselves():
    for message in _GOOD.values():
        assert p.decode(p.encode(message)) == message


@pytest.mark.parametrize("name,field,value", _BAD_FIELDS,
                         ids=[f"{n}.{f}={v!r:.30}" for n, f, v in _BAD_FIELDS])
def test_a_field_not_of_its_kind_is_refused_naming_it(name, field, value):
    message = _GOOD[name]._replace(**{field: value})
    with pytest.raises(p.ProtocolError) as info:
        p.decode(msgpack.packb([message.CODE, *message], use_bin_type=True))
    assert f"{name}.{field}" in str(info.value), str(info.value)


def test_a_client_of_an_address_that_does_not_parse_leaves_no_socket_behind(monkeypatch):
    """``RpcClient`` (and ``sockets.dealer``) given an endpoint ZeroMQ cannot
    parse raise ZMQError and close the socket and the connection watch they
    made: a caller retrying bad addresses does not pile up sockets."""
    from zray.broker import rpc, sockets
    made = []
    real = sockets._socket
    monkeypatch.setattr(sockets, "_socket", lambda kind: made.append(real(kind)) or made[-1])
    watches = []
    real_watch = rpc._ConnectionWatch

    class Watch(real_watch):
        def __init__(self, sock):
            super().__init__(sock)
            watches.append(self)
    monkeypatch.setattr(rpc, "_ConnectionWatch", Watch)
    with pytest.raises(zmq.ZMQError):
        RpcClient("tcp://256.1.1.1:not-a-port")
    with pytest.raises(zmq.ZMQError):
        sockets.dealer("nonsense://x")
    assert len(made) == 2 and all(sock.closed for sock in made)
    assert len(watches) == 1 and watches[0]._mon.closed
