"""One bad message must not freeze a daemon.

* A peer that holds the cluster key may name any address for the daemons to
  send to (an actor watcher's ``reply_to``, a task's owner). A daemon never
  blocks on such a socket: a TCP service that speaks first (an SSH banner)
  given as that address leaves the GCS and the raylet serving, and the
  cluster still stops cleanly (no SIGKILL).
* A fuzzer holding the cluster key sends thousands of random messages — of
  every code in ``protocol.py``, with fields of the right types (random
  values) and of wrong types, plus truncated, oversized and garbage frames —
  to a live GCS and raylet; afterwards both still serve: a task runs and
  ``zray status`` works.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import msgpack
import psutil
import pytest
import zmq

import zray
from zray.broker import protocol as p
from zray.broker import security
from zray.broker.service import _snake
from zray.gcs.server import GcsServer
from zray.raylet.server import Raylet
from zray._private.cli import main as zray_status
from zray.worker import global_state, serialization
from zray._private.session import actor_ipc, inbox_ipc

from conftest import TcpPeer, local_daemons, wait_for

FUZZ_SEED = int(os.environ.get("ZRAY_FUZZ_SEED", "0")) or random.randrange(1, 1 << 30)
FUZZ_MESSAGES = int(os.environ.get("ZRAY_FUZZ_MESSAGES", "4000"))   # per daemon
FUZZ_BUDGET_S = 40.0


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

class Peers:
    """Plain DEALER sockets holding the cluster key (as any key holder could
    make), all closed at the end of a test."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.socks = []

    def connect(self, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 5000)      # the fuzzer itself must not hang
        if endpoint.startswith("tcp://"):
            security.configure_client(sock)
        sock.connect(endpoint)
        self.socks.append(sock)
        return sock

    def close(self):
        for sock in self.socks:
            sock.close(linger=0)
        self.ctx.destroy(linger=0)


@pytest.fixture
def peers():
    made = Peers()
    yield made
    made.close()


def _ping(sock: zmq.Socket, timeout: float = 5.0) -> bool:
    """True when the daemon answers a Ping on ``sock`` within ``timeout``."""
    corr = os.urandom(8)
    sock.send_multipart([corr, p.encode(p.Ping())])
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            return False
        frames = sock.recv_multipart()
        if frames[0] == corr:
            return p.decode(frames[1]) == p.Ack()


@zray.remote
def echo(x):
    return x


def assert_cluster_serves(daemons, peers) -> None:
    for name, (endpoint, pid, _) in daemons.items():
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, \
            f"the {name} died"
        assert _ping(peers.connect(endpoint)), f"the {name} no longer answers a Ping"
    assert zray.get([echo.remote(i) for i in range(4)], timeout=20) == list(range(4))
    me = global_state.worker.node_id.hex()
    assert any(n["NodeID"] == me and n["Alive"] for n in zray.nodes()), zray.nodes()
    status = subprocess.run(
        [sys.executable, "-c", "import sys; from zray._private.cli import main; sys.exit(main())",
         "status", "--address", zray.get_runtime_context().gcs_address],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "Traceback" not in status.stderr, status.stderr[-2000:]


@pytest.fixture
def banner():
    server = TcpPeer(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n")
    yield server
    server.close()


# --------------------------------------------------------------------------
# a daemon never blocks on a socket whose far end a peer chose
# --------------------------------------------------------------------------

def test_daemons_never_block_on_an_address_that_speaks_first(start_cluster, peers, banner):
    start_cluster()
    daemons = local_daemons()
    gcs = peers.connect(daemons["gcs"][0])
    raylet = peers.connect(daemons["raylet"][0])
    elsewhere = os.urandom(16)          # an owner on another node: reached over TCP
    owner = [banner.endpoint, os.urandom(16), 1, elsewhere]

    def provoke(count: int) -> None:
        for _ in range(count):
            # the GCS answers a watcher at once, at the address it gave
            gcs.send_multipart([b"", p.encode(p.WatchActor(os.urandom(16), banner.endpoint))])
            # the raylet tells the owner at once that its task cannot run
            spec = p.TaskSpec(os.urandom(16), b"", p.TASK_NORMAL, os.urandom(16), "f", [], [],
                              1, {}, 0, False, owner,
                              options={"strategy": "NODE", "node_id": os.urandom(16)})
            raylet.send_multipart([b"", p.encode(p.SubmitTask(list(spec)))])

    provoke(50)
    wait_for(lambda: len(banner.conns) >= 2, timeout=10)    # both daemons went there
    probes = {name: peers.connect(daemons[name][0]) for name in daemons}
    until = time.monotonic() + 3
    while time.monotonic() < until:     # and are asked to send there again and again
        provoke(20)
        for name, probe in probes.items():
            assert _ping(probe), f"the {name} stopped answering: it blocks on the banner"
    assert_cluster_serves(daemons, peers)
    with open(daemons["gcs"][2]) as f:
        text = f.read()
    assert text.count("dropped ActorInfo to " + banner.endpoint) == 1, \
        "drops to one peer must be logged once, not per message"

    gcs_pid = daemons["gcs"][1]
    started = time.monotonic()
    zray.shutdown()
    assert time.monotonic() - started < 10
    with open(daemons["gcs"][2]) as f:
        assert "GCS stopped" in f.read(), "the GCS did not stop on SIGTERM (it was killed)"
    wait_for(lambda: not psutil.pid_exists(gcs_pid) or
             psutil.Process(gcs_pid).status() == psutil.STATUS_ZOMBIE, timeout=5)


def test_node_with_a_resource_that_is_not_a_number_is_refused(start_cluster, peers):
    start_cluster()
    daemons = local_daemons()
    gcs = peers.connect(daemons["gcs"][0])
    bad = p.RegisterNode(os.urandom(16), "tcp://127.0.0.1:9", "tcp://127.0.0.1:9",
                         "127.0.0.1", "fuzz", 1, {"CPU": 2.0}, 1024, "/nonexistent")
    payload = msgpack.packb([p.RegisterNode.CODE, *bad[:6], {"CPU": "x"}, *bad[7:]],
                            use_bin_type=True)
    for _ in range(3):
        corr = os.urandom(8)
        gcs.send_multipart([corr, payload])
        assert gcs.poll(5000), "a bad RegisterNode got no answer"
        frames = gcs.recv_multipart()
        reply = p.decode(frames[1])
        assert frames[0] == corr and isinstance(reply, p.ErrorReply), reply
        assert "resources" in reply.message and "'x'" in reply.message, reply.message
    assert [n["Alive"] for n in zray.nodes()] == [True]
    assert_cluster_serves(daemons, peers)
    with open(daemons["gcs"][2]) as f:
        assert f.read().count("RegisterNode.resources") == 1, "logged once per peer"


# --------------------------------------------------------------------------
# the fuzzer
# --------------------------------------------------------------------------

def _valid_value(kind: str, rng: random.Random, endpoint: str):
    """A random value of the right kind for a field (harmless values: ids
    that name nothing, resources no node has, addresses that go nowhere)."""
    rid = lambda n: bytes(rng.getrandbits(8) for _ in range(n))     # noqa: E731
    junk_endpoint = rng.choice([endpoint, "tcp://127.0.0.1:9", "ipc:///nonexistent/fuzz"])
    address = [junk_endpoint, rid(16), rng.randrange(1 << 22), rid(16)]
    table = {
        "NodeId": lambda: rid(16), "WorkerId": lambda: rid(16), "TaskId": lambda: rid(16),
        "ActorId": lambda: rid(16), "PgId": lambda: rid(16), "FunctionHash": lambda: rid(16),
        "OptId": lambda: rng.choice([b"", rid(16)]), "ObjectId": lambda: rid(20),
        "JobId": lambda: rng.choice([b"", b"\xff" + rid(3)]),
        "Count": lambda: rng.choice([0, 1, rng.randrange(1 << 40)]),
        "Pid": lambda: rng.randrange(1 << 22),
        "Endpoint": lambda: junk_endpoint, "OptEndpoint": lambda: rng.choice(["", junk_endpoint]),
        "Resources": lambda: {"fuzz_resource": rng.random() * 4},
        "ResourceLevels": lambda: {"fuzz_resource": rng.random() * 4 - 1},
        "ResourceList": lambda: [{"fuzz_resource": rng.random()}],
        "ObjectIds": lambda: [rid(20) for _ in range(rng.randrange(3))],
        "OptIds": lambda: [rng.choice([b"", rid(16)]) for _ in range(rng.randrange(3))],
        "Strings": lambda: ["fuzz" * rng.randrange(3) for _ in range(rng.randrange(3))],
        "PeerAddress": lambda: address, "OptPeerAddress": lambda: rng.choice([[], address]),
        "TaskSpecFields": lambda: list(p.TaskSpec(
            rid(16), b"", rng.choice([0, 1, 2]), rid(16), "fuzz", [], [], 1,
            {"fuzz_resource": 1.0}, 0, False, address, 0, rng.choice([b"", rid(16)]), "m",
            rng.choice([{}, {"strategy": "NODE", "node_id": rid(16)}, {"strategy": "SPREAD"},
                        {"strategy": "NODE"}]))),
        "bytes": lambda: rid(rng.randrange(40)), "str": lambda: rng.choice(
            ["", "fuzz", "PACK", "driver", "worker", "\u2603" * 5]),
        "int": lambda: rng.choice([0, 1, -1, rng.randrange(-(1 << 40), 1 << 40)]),
        "bool": lambda: rng.random() < 0.5, "float": lambda: rng.random(),
        "list": lambda: [], "dict": lambda: {},
        # GCS rows, as replies and events carry them
        "OptFloat": lambda: rng.choice([None, rng.random() * 1e9]),
        "ByteStrings": lambda: [rid(rng.randrange(8)) for _ in range(rng.randrange(3))],
        "BundleNodes": lambda: [rng.choice([None, rid(16)]) for _ in range(rng.randrange(3))],
        "NodeRowFields": lambda: _valid_fields(p.NodeRow, rng, endpoint),
        "JobRowFields": lambda: _valid_fields(p.JobRow, rng, endpoint),
        "OptJobRowFields": lambda: rng.choice([[], _valid_fields(p.JobRow, rng, endpoint)]),
        "ActorSummaryFields": lambda: _valid_fields(p.ActorSummary, rng, endpoint),
        "NodeRows": lambda: [_valid_fields(p.NodeRow, rng, endpoint)],
        "JobRows": lambda: [_valid_fields(p.JobRow, rng, endpoint)],
        "ActorSummaries": lambda: [_valid_fields(p.ActorSummary, rng, endpoint)],
        "PlacementGroupRows": lambda: [_valid_fields(p.PlacementGroupRow, rng, endpoint)],
        # entries of list fields (wire review)
        "ReturnFields": lambda: _valid_return(rng),
        "Returns": lambda: [_valid_return(rng) for _ in range(rng.randrange(3))],
        "OptPinnedList": lambda: [rng.choice([None, [rng.randrange(1 << 20), 5]])],
        "OptSpilledList": lambda: [rng.choice([None, ["/nonexistent/fuzz", 5]])],
        "StoreClients": lambda: [[rid(16), rng.randrange(1 << 22), "worker"]],
        "StoreObjects": lambda: [[rid(20), 5, rng.choice([b"", rid(16)]), "SEALED",
                                  [["driver pid 1", 1]], True, False]],
        "Offsets": lambda: [rng.randrange(1 << 20) for _ in range(rng.randrange(3))],
        # actor calls
        "TaskSpecList": lambda: [_valid_value("TaskSpecFields", rng, endpoint)
                                 for _ in range(rng.randrange(3))],
    }
    return table.get(kind, lambda: rng.choice([None, 1, "x", b"x", [], {}]))()


def _valid_return(rng: random.Random) -> list:
    """A Return as a list, of any kind (ids that name nothing)."""
    object_id = os.urandom(20)
    kind = rng.choice([p.RET_INLINE, p.RET_STORED, p.RET_ERROR])
    payload = [os.urandom(16), rng.randrange(1 << 20)] if kind == p.RET_STORED else b"fuzz"
    return [object_id, kind, payload]


_WRONG_CONTENT = {      # values of the wire type a kind needs, but not of the kind
    bytes: [b"", b"x", b"\0" * 17, os.urandom(21), os.urandom(3)],
    str: ["", "x", "tcp://*:0", "tcp://127.0.0.1:0", "tcp://host:99999", "ipc://",
          "\u2603" * 3, "A" * 100_000],
    int: [-1, -(1 << 63), 1 << 63 - 1, 1 << 40],
    dict: [{"CPU": "x"}, {"CPU": -1}, {"CPU": float("nan")}, {"CPU": float("inf")}, {1: 2},
           {"CPU": None}, {"CPU": True}, {"strategy": "NODE"}, {b"CPU": 1.0}],
    list: [[1, "x"], [None], [b"x"], [[1, 2]], [{"CPU": "x"}], ["tcp://*:0", b"", -1, b""],
           [b"\0" * 20, 5], list(range(1000))],
}


def _invalid_value(rng: random.Random, types):
    """A wrong value for a field of wire type(s) ``types``: of that type with
    content that is not of the field's kind, or of another type."""
    wanted = types if isinstance(types, tuple) else (types,)
    for kind in wanted:
        if kind in _WRONG_CONTENT and rng.random() < 0.6:
            return rng.choice(_WRONG_CONTENT[kind])
    return rng.choice([None, -1, 1.5, float("nan"), "x", b"x", [], {}, True,
                       [1, "x"], {"CPU": "x"}])
def _valid_fields(cls, rng: random.Random, endpoint: str) -> list:
    fields = []
    for name in cls._fields:
        kind = cls.__annotations__.get(name, "")
        kind = getattr(kind, "__forward_arg__", kind)
        kind = kind if isinstance(kind, str) else getattr(kind, "__name__", "")
        fields.append(_valid_value(kind, rng, endpoint))
    return fields


def _sweep(rng: random.Random, endpoint: str):
    """Every code, every field, every wrong value of _WRONG_CONTENT that fits
    the field's wire type (and two of other types), the other fields valid:
    the systematic half of the fuzzer."""
    for code, cls in p.message_types().items():
        types = {index: kinds for index, _, kinds, _ in getattr(cls, "_checks", ())}
        for index in range(len(cls._fields)):
            wanted = types.get(index, object)
            wanted = wanted if isinstance(wanted, tuple) else (wanted,)
            wrong = [v for kind in wanted for v in _WRONG_CONTENT.get(kind, [])]
            for value in wrong + [None, rng.choice([1.5, "x", b"x", [], {}])]:
                fields = _valid_fields(cls, rng, endpoint)
                fields[index] = value
                corr = os.urandom(8) if rng.random() < 0.3 else b""
                yield [corr, msgpack.packb([code, *fields], use_bin_type=True)]


def _records() -> list:
    """Every record whose fields are checked: the messages and what travels in them."""
    return sorted({cls for cls in vars(p).values()
                   if isinstance(cls, type) and hasattr(cls, "_fast")}, key=lambda c: c.__name__)


def _checked_by_fields(cls, values) -> bool:
    try:
        p._check_fields(cls, values)
    except p.ProtocolError:
        return False
    return True


def test_the_compiled_check_accepts_only_what_the_field_checks_accept():
    """Each record's compiled check (one expression, the fast path of every
    decode) passes only values its fields' checks pass, on every sweep and
    fuzz case; and it passes a well-formed actor call and task spec, so
    those never pay for the checks a field at a time."""
    rng = random.Random(1)
    endpoint = "tcp://127.0.0.1:9"
    accepted = 0
    for cls in _records():
        types = {index: kinds for index, _, kinds, _ in cls._checks}
        for trial in range(150):
            fields = _valid_fields(cls, rng, endpoint)
            if trial and fields:        # the first one stays valid
                for i in ([rng.randrange(len(fields))] if rng.random() < 0.8 else
                          [i for i in range(len(fields)) if rng.random() < 0.5]):
                    fields[i] = _invalid_value(rng, types.get(i, object))
                if rng.random() < 0.1:
                    fields = fields[:rng.randrange(len(fields) + 1)]
            values = msgpack.unpackb(msgpack.packb(fields, use_bin_type=True), raw=False,
                                     strict_map_key=False)
            if cls._fast(values):
                accepted += 1
                assert _checked_by_fields(cls, values), (cls.__name__, values)
    assert accepted > len(_records())
    good = _valid_fields(p.TaskSpec, rng, endpoint)
    good[8], good[15] = {}, {}           # an actor call: no resources, no options
    assert p.TaskSpec._fast(good) and p.ExecuteCalls._fast([[good, good]])


def _served(daemon_class) -> list:
    """(code, record) of the messages a daemon class has a handler for."""
    return [(code, cls) for code, cls in p.message_types().items()
            if hasattr(daemon_class, "handle_" + _snake(cls.__name__))]


def _fuzz_frames(rng: random.Random, endpoint: str, served: list) -> list[bytes]:
    """One random multipart message for a daemon's ROUTER: half of them of a
    code it serves, the others of any code."""
    codes = served if served and rng.random() < 0.5 else list(p.message_types().items())
    code, cls = rng.choice(codes)
    types = {index: kinds for index, _, kinds, _ in getattr(cls, "_checks", ())}
    fields = _valid_fields(cls, rng, endpoint)
    mode = rng.random()                 # all fields valid, one wrong, or many wrong
    wrong = ([] if mode < 0.35 or not fields else
             [rng.randrange(len(fields))] if mode < 0.85 else
             [i for i in range(len(fields)) if rng.random() < 0.5])
    for i in wrong:
        fields[i] = _invalid_value(rng, types.get(i, object))
    shape = rng.random()
    if shape < 0.05:
        fields = fields[:rng.randrange(len(fields) + 1)]           # too few fields
    elif shape < 0.08:
        fields = fields + [_invalid_value(rng, object)]            # too many
    payload = msgpack.packb([code, *fields], use_bin_type=True)
    corr = os.urandom(8) if rng.random() < 0.3 else b""
    form = rng.random()
    if form < 0.05:
        payload = payload[:rng.randrange(len(payload))]              # truncated
    elif form < 0.08:
        payload = os.urandom(rng.randrange(1, 200))                  # garbage
    elif form < 0.09:
        payload = payload + os.urandom(2 * 1024 * 1024)              # oversized, trailing junk
    elif form < 0.10:
        return [os.urandom(rng.randrange(0, 12))]                    # a lone frame
    elif form < 0.11:
        return [os.urandom(rng.choice([1, 5, 9])), payload]          # bad correlation id
    elif form < 0.12:
        return [corr, payload, os.urandom(100), b""]                 # blobs nobody wanted
    return [corr, payload]


def test_fuzzed_messages_leave_gcs_and_raylet_serving(start_cluster, peers, banner):
    """Thousands of messages per daemon: first every code with each field
    wrong in turn, then random ones (seed in the failure message: rerun with
    ZRAY_FUZZ_SEED=<seed>)."""
    start_cluster()
    daemons = local_daemons()
    gcs_address = zray.get_runtime_context().gcs_address
    rng = random.Random(FUZZ_SEED)
    deadline = time.monotonic() + FUZZ_BUDGET_S
    sent = {"gcs": 0, "raylet": 0}
    socks = {name: [peers.connect(daemons[name][0]) for _ in range(4)] for name in sent}
    served = {"gcs": _served(GcsServer), "raylet": _served(Raylet)}
    probes = {name: peers.connect(daemons[name][0]) for name in sent}
    sweeps = {name: _sweep(rng, banner.endpoint) for name in sent}
    for i in range(10 ** 9):
        if time.monotonic() > deadline or min(sent.values()) >= FUZZ_MESSAGES:
            break
        name = ("gcs", "raylet")[i % 2]
        frames = next(sweeps[name], None) or _fuzz_frames(rng, banner.endpoint, served[name])
        try:
            socks[name][i // 2 % 4].send_multipart(frames)
        except zmq.Again:
            pytest.fail(f"the {name} stopped taking messages (seed {FUZZ_SEED})")
        sent[name] += 1
        if i % 400 == 399:
            # (replies pile up unread on the fuzzing sockets: that must not matter)
            for probe_name, probe in probes.items():
                assert _ping(probe, timeout=10), \
                    f"the {probe_name} stopped answering after {sent} fuzzed messages " \
                    f"(seed {FUZZ_SEED})"
        if i % 1000 == 999:             # what the fuzz put in the tables, `zray status` reads
            assert zray_status(["status", "--address", gcs_address]) == 0, \
                f"zray status failed after {sent} fuzzed messages (seed {FUZZ_SEED})"
    assert sent["gcs"] >= 1000 and sent["raylet"] >= 1000, sent
    try:
        assert_cluster_serves(daemons, peers)
    except AssertionError as err:
        raise AssertionError(f"{err} (fuzz seed {FUZZ_SEED}, sent {sent})") from None


# --------------------------------------------------------------------------
# GCS rows, events and query replies (issue 7): garbage of their shape
# --------------------------------------------------------------------------

#: the records that carry GCS rows, and the events and replies of issue 7
ROW_RECORDS = (p.NodeEvent, p.ResourcesEvent, p.JobEvent, p.ActorEvent, p.WorkerDiedEvent,
               p.LogEvent, p.TaskRowsEvent, p.NodesReply, p.ClusterInfoReply,
               p.RegisterJobReply, p.JobReply, p.KVValueReply, p.KVPutReply,
               p.KVDeleteReply, p.KVKeysReply, p.RegisterActorReply, p.NamedActorReply,
               p.ActorsReply, p.PlacementGroupsReply, p.StoreStatsReply, p.Ack)


def _row_garbage(cls, rng: random.Random, endpoint: str):
    """``cls`` with valid fields, then each field in turn made wrong, and each
    nested row with each of its fields wrong (payloads, as msgpack)."""
    fields = _valid_fields(cls, rng, endpoint)
    yield fields
    for index in range(len(fields)):
        for _ in range(3):
            wrong = list(fields)
            wrong[index] = _invalid_value(rng, object)
            yield wrong
    one_row = {"NodeRowFields": p.NodeRow, "JobRowFields": p.JobRow,
               "OptJobRowFields": p.JobRow, "ActorSummaryFields": p.ActorSummary}
    row_lists = {"NodeRows": p.NodeRow, "JobRows": p.JobRow,
                 "ActorSummaries": p.ActorSummary, "PlacementGroupRows": p.PlacementGroupRow}
    for index, name in enumerate(cls._fields):
        kind = cls.__annotations__.get(name)
        row_cls = one_row.get(kind) or row_lists.get(kind)
        if row_cls is None:
            continue
        for column in range(len(row_cls._fields)):
            row = _valid_fields(row_cls, rng, endpoint)
            row[column] = _invalid_value(rng, object)
            wrong = list(fields)
            wrong[index] = [row] if kind in row_lists else row
            yield wrong


def test_garbage_rows_events_and_replies_sent_to_the_gcs_leave_it_serving(start_cluster,
                                                                          peers, banner):
    """Every record that carries a GCS row, event or query reply, valid and
    with each field (and each column of a row inside it) wrong, sent to the
    GCS as a request: each gets an answer (the GCS serves none of them) and
    the cluster still serves; a peer decoding such a reply gets a
    ProtocolError naming the column."""
    start_cluster()
    daemons = local_daemons()
    gcs = peers.connect(daemons["gcs"][0])
    rng = random.Random(FUZZ_SEED)
    sent = 0
    for cls in ROW_RECORDS:
        for fields in _row_garbage(cls, rng, banner.endpoint):
            gcs.send_multipart([b"fz" + os.urandom(6),
                                msgpack.packb([cls.CODE, *fields], use_bin_type=True)])
            sent += 1
    answered = 0
    deadline = time.monotonic() + 20
    while answered < sent and gcs.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        frames = gcs.recv_multipart()
        assert isinstance(p.decode(frames[1]), p.ErrorReply), frames
        answered += 1
    assert answered == sent, f"{sent - answered} of {sent} records got no answer " \
                             f"(seed {FUZZ_SEED})"
    assert_cluster_serves(daemons, peers)
    bad_row = _valid_fields(p.NodeRow, rng, banner.endpoint)
    bad_row[0] = b"short"
    with pytest.raises(p.ProtocolError, match=r"NodeRow\.node_id"):
        p.decode(msgpack.packb([p.NodesReply.CODE, [bad_row]], use_bin_type=True))


# --------------------------------------------------------------------------
# wire review: entries of list fields (returns, pinned locations, spill
# files, store clients) are records, checked at decode
# --------------------------------------------------------------------------

#: record -> (the message field that holds entries of it, a message around entries)
_ENTRY_FIELDS = {
    p.Pinned: lambda entry: p.PinObjectsReply([entry], [None], [""]),
    p.SpilledCopy: lambda entry: p.PinObjectsReply([None], [entry], [""]),
    p.StoreClient: lambda entry: p.StoreObjectsReply([], 0, [entry]),
    p.StoreObject: lambda entry: p.StoreObjectsReply([entry], 1, []),
    p.PinHolder: lambda entry: p.StoreObjectsReply([
        [b"o" * 20, 5, b"", "PINNED", [entry], True, False]], 1, []),
    p.Return: lambda entry: p.ObjectValue(b"o" * 20, entry),
}


def _entry_garbage(rng: random.Random):
    """(message, garbage entry) pairs: each entry record with each column
    wrong in turn, with too few and too many columns, and not a list."""
    valid = {p.Pinned: [4096, 10], p.SpilledCopy: ["/tmp/x", 10],
             p.StoreClient: [os.urandom(16), 1234, "driver"],
             p.StoreObject: [os.urandom(20), 10, b"", "SEALED", [], True, False],
             p.PinHolder: ["worker pid 2", 3],
             p.Return: [os.urandom(20), p.RET_STORED, [os.urandom(16), 10]]}
    for record, make in _ENTRY_FIELDS.items():
        entry = valid[record]
        p.decode(p.encode(make(entry)))                 # the valid one decodes
        for column in range(len(entry)):
            right = type(entry[column])
            others = [v for v in (None, -1, 1.5, "x", b"x", [], {}, [1, "x"], True)
                      if type(v) is not right and {right, type(v)} != {int, bool}]
            for value in rng.sample(others, 4):
                wrong = list(entry)
                wrong[column] = value
                yield record, make(wrong)
        yield record, make(entry[:-1])
        yield record, make(entry + [1])
        yield record, make(b"not a list")
    for payload in ([b"short", 1], [os.urandom(16), -1], b"bytes", None):
        yield p.StoredAt, p.TaskReturned(b"t" * 16, [[os.urandom(20), p.RET_STORED, payload]])
    yield p.Return, p.GeneratorItem(b"t" * 16, 0, [os.urandom(20), p.RET_INLINE, 5])
    yield p.Return, p.TaskReturned(b"t" * 16, [[os.urandom(20), 7, b""]])


def test_garbage_entries_are_refused_at_decode_and_leave_a_driver_serving(start_cluster, peers):
    """Each garbage entry makes ``decode`` raise a ProtocolError naming the
    field (no handler reads it by position and trips); sent to a live
    driver's inbox (returns of tasks it never ran), they leave it serving."""
    start_cluster()
    cw = global_state.worker
    inbox = peers.connect(inbox_ipc(cw.session_dir, cw.worker_id))
    rng = random.Random(FUZZ_SEED)
    count = 0
    for record, message in _entry_garbage(rng):
        payload = p.encode(message)
        with pytest.raises(p.ProtocolError) as info:
            p.decode(payload)
        assert type(message).__name__ in str(info.value), (record, message, info.value)
        if isinstance(message, (p.TaskReturned, p.GeneratorItem, p.ObjectValue)):
            inbox.send_multipart([b"", payload])
            count += 1
    for _ in range(50):         # well-formed returns of tasks it never ran: freed, not kept
        inbox.send_multipart([b"", p.encode(p.TaskReturned(os.urandom(16), [
            _valid_return(rng) for _ in range(3)]))])
    assert count >= 20
    assert zray.get([echo.remote(i) for i in range(4)], timeout=20) == list(range(4))
    assert zray.get(zray.put(b"x" * 200_000), timeout=20) == b"x" * 200_000


# -- actor calls -----------------------------------------------------------------

@zray.remote
class _Counter:
    def __init__(self):
        self.seen = []

    def note(self, i):
        self.seen.append(i)
        return i

    def notes(self):
        return self.seen

    def pid(self):
        return os.getpid()


def _call_garbage(rng: random.Random, good: list):
    """ExecuteCalls (and ExecuteTask) payloads an actor must refuse whole:
    entries of the wrong type, specs with a field of the wrong kind, valid
    calls next to a bad one, and bytes that are not msgpack."""
    yield b"\x93garbage"
    yield msgpack.packb([p.ExecuteCalls.CODE], use_bin_type=True)
    for specs in ("x", None, 7, [1, 2], [[1, 2, 3]], [good, 5], [good, [good]],
                  [None] * 1000, [[b"x"] * 16]):
        yield msgpack.packb([p.ExecuteCalls.CODE, specs], use_bin_type=True)
    types = {index: kinds for index, _, kinds, _ in p.TaskSpec._checks}
    for _ in range(300):
        spec = list(good)
        index = rng.randrange(len(spec))
        spec[index] = _invalid_value(rng, types.get(index, object))
        try:
            p.task_spec(spec)
            continue                # still a valid spec: not garbage
        except p.ProtocolError:
            pass
        yield p.encode(p.ExecuteCalls([good, spec]))
        yield p.encode(p.ExecuteTask(spec))


def test_garbage_calls_sent_to_an_actor_are_refused_and_leave_it_serving(start_cluster, peers):
    """Malformed call batches sent to an actor's ROUTER are dropped whole
    (logged): none of their calls runs, the actor does not restart, and its
    caller's calls still run in order."""
    start_cluster(num_cpus=2)
    actor = _Counter.remote()
    pid = zray.get(actor.pid.remote(), timeout=30)
    cw = global_state.worker
    address = p.Address(*cw.actor_calls.actors[actor._actor_id].address)
    sock = peers.connect(actor_ipc(cw.session_dir, address.worker_id))
    good = list(p.TaskSpec(os.urandom(16), cw.job_id, p.TASK_ACTOR_METHOD, b"", "note",
                           [], [], 1, {}, 0, False, list(cw.address), 0, actor._actor_id,
                           "note", {}))
    good[5] = [list(p.ValueArg(p.ARG_VALUE, serialization.serialize(-1).to_bytes()))]
    rng = random.Random(FUZZ_SEED)
    count = 0
    for payload in _call_garbage(rng, good):
        sock.send_multipart([b"", payload])
        count += 1
    assert count > 100
    assert zray.get([actor.note.remote(i) for i in range(300)], timeout=60) == list(range(300))
    assert zray.get(actor.notes.remote(), timeout=20) == list(range(300)), \
        "a call of a refused batch ran"
    assert zray.get(actor.pid.remote(), timeout=20) == pid


def test_garbage_call_results_sent_to_a_driver_are_refused_and_leave_it_serving(
        start_cluster, peers):
    """Malformed CallsReturned (an actor's batch of results) sent to a
    driver's inbox are refused at decode, naming the record; well-formed
    ones for calls it never made are dropped; it goes on serving."""
    start_cluster()
    cw = global_state.worker
    inbox = peers.connect(inbox_ipc(cw.session_dir, cw.worker_id))
    rng = random.Random(FUZZ_SEED)
    task_id = os.urandom(16)
    garbage = [None, 5, [5], [[task_id]], [[task_id, 5]], [[b"short", []]],
               [[task_id, [[os.urandom(20), 7, b""]]]], [[task_id, []], [task_id, [], 1]],
               [[task_id, [[os.urandom(20), p.RET_STORED, b"not where"]]]]]
    for _ in range(50):
        garbage.append([[task_id, [_valid_return(rng)]], rng.choice(garbage[:8])])
    for returned in garbage:
        payload = msgpack.packb([p.CallsReturned.CODE, returned], use_bin_type=True)
        with pytest.raises(p.ProtocolError, match="CallsReturned"):
            p.decode(payload)
        inbox.send_multipart([b"", payload])
    for _ in range(50):         # well-formed results of calls it never made
        inbox.send_multipart([b"", p.encode(p.CallsReturned([
            [os.urandom(16), [_valid_return(rng)]] for _ in range(3)]))])
    actor = _Counter.remote()
    assert zray.get([actor.note.remote(i) for i in range(100)], timeout=30) == list(range(100))
    assert zray.get([echo.remote(i) for i in range(4)], timeout=20) == list(range(4))
