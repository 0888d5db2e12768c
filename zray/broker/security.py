"""Transport security of the zray fabric: ZeroMQ CURVE with one cluster key.

Every TCP connection between zray processes is authenticated and encrypted
with CURVE; local IPC endpoints stay plain (they are 0600 files in the 0700
session directory). The cluster has ONE secret: a CURVE keypair. Every peer
uses it both as its server key and as its client key, so

* a server (a socket bound on ``tcp://``) sets ``curve_server`` and the
  cluster secret key;
* a client (a socket connecting to ``tcp://``) sets ``curve_serverkey`` to
  the cluster public key and its own keypair to the cluster keypair;
* a ZAP handler in every process that serves on TCP accepts only clients whose
  public key is the cluster public key, i.e. who hold the cluster secret
  (CURVE makes the client prove it has the secret half of the key it shows).

A peer without the key is refused: a plain (NULL) peer or one that does not
know the cluster public key fails the handshake, one with its own keypair is
refused by the ZAP handler. Either way the server logs the refusal (with a
rate limit, since ZeroMQ peers retry) and keeps serving; the peer gets no
answer at all.

The key file (``<session_dir>/cluster.key``, mode 0600) holds both halves as
z85 text::

    public: <40 characters>
    secret: <40 characters>

A file holding just the secret key (one line of 40 characters) is accepted
too. A process finds its key in the environment (:func:`current`):
``ZRAY_CLUSTER_KEY`` (the secret key text itself) or else
``ZRAY_CLUSTER_KEY_FILE`` (the path of a key file). With neither, security is
off and sockets stay plain: only this module's own tests rely on that;
``zray.init()`` and ``zray start`` always provide a key to the processes they
start and refuse to join a cluster without one.
"""
from __future__ import annotations

import itertools
import logging
import hashlib
import hmac
import os
import socket
import struct
import threading
import time
from typing import NamedTuple

import zmq
import zmq.utils.z85

log = logging.getLogger(__name__)

ENV_KEY = "ZRAY_CLUSTER_KEY"
ENV_KEY_FILE = "ZRAY_CLUSTER_KEY_FILE"
KEY_FILE_NAME = "cluster.key"
ZAP_DOMAIN = "zray"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"     # where libzmq asks (RFC 27)

#: a refusal from the same peer, for the same reason, is logged at most this often
REFUSAL_LOG_INTERVAL_S = 30.0


class ClusterKeyError(ValueError):
    """A cluster key that cannot be used (missing file, malformed text)."""


class ClusterKey(NamedTuple):
    """The cluster's CURVE keypair, both halves as 40-byte z85 text."""
    public: bytes
    secret: bytes

    def __repr__(self) -> str:                 # never print the secret by accident
        return f"ClusterKey(public={self.public.decode()!r}, secret=<hidden>)"


# ---------------------------------------------------------------------------
# keys and key files
# ---------------------------------------------------------------------------

def generate() -> ClusterKey:
    """A fresh cluster keypair."""
    public, secret = zmq.curve_keypair()
    return ClusterKey(public, secret)


def from_secret(secret: str | bytes) -> ClusterKey:
    """The keypair whose secret half is ``secret`` (z85 text, 40 characters)."""
    raw = secret.strip().encode() if isinstance(secret, str) else secret.strip()
    if len(raw) != 40:
        raise ClusterKeyError(f"a cluster key is 40 characters of z85 text, got {len(raw)}")
    try:
        public = zmq.curve_public(raw)
    except (zmq.ZMQError, ValueError) as err:
        raise ClusterKeyError(f"not a valid z85 cluster key: {err}") from None
    return ClusterKey(public, raw)


def key_file_in(session_dir: str) -> str:
    """Where a session keeps its cluster key."""
    return os.path.join(session_dir, KEY_FILE_NAME)


def create_key_file(path: str) -> str:
    """Write a fresh cluster keypair to ``path`` (mode 0600); returns the path."""
    key = generate()
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"public: " + key.public + b"\nsecret: " + key.secret + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def load_key_file(path: str) -> ClusterKey:
    """The keypair in a key file (both halves, or just the secret)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            mode, owner = st.st_mode, st.st_uid
            text = f.read(4096)
    except OSError as err:
        raise ClusterKeyError(f"cannot read the cluster key file {path}: "
                              f"{err.strerror or err}") from None
    if owner not in (os.getuid(), 0) or mode & 0o022:
        why = (f"it belongs to uid {owner}, not to you (uid {os.getuid()})"
               if owner not in (os.getuid(), 0) else
               f"it is writable by other users (mode {mode & 0o777:o})")
        raise ClusterKeyError(f"refusing to read the cluster key file {path}: {why}; "
                              f"another user may have made it. Use a key file of your "
                              f"own with mode 600")
    if mode & 0o077:
        log.warning("the cluster key file %s is readable by others (mode %o): "
                    "chmod 600 it", path, mode & 0o777)
    fields = {}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        name, sep, value = line.partition(b":")
        if sep and name.strip() in (b"public", b"secret"):
            fields[name.strip().decode()] = value.strip()
    if "secret" not in fields:
        if len(lines) == 1 and len(lines[0]) == 40:
            fields["secret"] = lines[0]           # just the secret key, as in ZRAY_CLUSTER_KEY
        else:
            raise ClusterKeyError(f"{path} is not a zray cluster key file "
                                  f"(no 'secret:' line)")
    try:
        key = from_secret(fields["secret"])
    except ClusterKeyError as err:
        raise ClusterKeyError(f"{path}: {err}") from None
    if "public" in fields and fields["public"] != key.public:
        raise ClusterKeyError(f"{path}: the public key does not belong to the secret key")
    return key


def from_env(environ=None) -> ClusterKey | None:
    """The key named by ``ZRAY_CLUSTER_KEY`` (preferred) or
    ``ZRAY_CLUSTER_KEY_FILE``; None when neither is set."""
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_KEY)
    if text:
        try:
            return from_secret(text)
        except ClusterKeyError as err:
            raise ClusterKeyError(f"{ENV_KEY}: {err}") from None
    path = environ.get(ENV_KEY_FILE)
    if path:
        return load_key_file(path)
    return None


_key_lock = threading.Lock()
_key_cache: tuple = ((None, None), None)      # ((ZRAY_CLUSTER_KEY, ..._FILE), key)


def current() -> ClusterKey | None:
    """This process's cluster key, from the environment (read once, and again
    only if those variables change); None means security is off."""
    global _key_cache
    sig = (os.environ.get(ENV_KEY), os.environ.get(ENV_KEY_FILE))
    cached_sig, key = _key_cache
    if cached_sig == sig:
        return key
    with _key_lock:
        if _key_cache[0] != sig:
            _key_cache = (sig, from_env())
        return _key_cache[1]


# ---------------------------------------------------------------------------
# socket options
# ---------------------------------------------------------------------------

def configure_client(sock: zmq.Socket, key: ClusterKey | None = None) -> None:
    """Make ``sock`` a CURVE client with the cluster keypair (before connect)."""
    key = key or current()
    if key is None:
        return
    sock.curve_serverkey = key.public
    sock.curve_publickey = key.public
    sock.curve_secretkey = key.secret


def configure_server(sock: zmq.Socket, ctx: zmq.Context, key: ClusterKey | None = None) -> None:
    """Make ``sock`` a CURVE server guarded by this process's ZAP handler
    (before bind). ``ctx`` must be the context ``sock`` was made in."""
    key = key or current()
    if key is None:
        return
    guard = _guard_for(ctx)
    guard.allow(key.public)
    sock.curve_server = True
    sock.curve_secretkey = key.secret
    sock.zap_domain = ZAP_DOMAIN.encode()
    sock.zap_enforce_domain = True      # no ZAP handler answering: refuse, never admit
    guard.watch(sock)


# ---------------------------------------------------------------------------
# the guard: ZAP handler and handshake-failure monitor of one process
# ---------------------------------------------------------------------------

class _Refusals:
    """Log refused peers without flooding the log: a refused ZeroMQ peer
    retries every 100 ms. Per listening socket and reason, one line per
    REFUSAL_LOG_INTERVAL_S, plus one for each peer address not yet named in
    that interval; the refusals left out are counted in the next line."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last: dict[tuple, float] = {}   # (where, reason[, peer]) -> time logged
        self._untold: dict[tuple, int] = {}   # (where, reason) -> refusals not logged

    def note(self, where: str, peer: str | None, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            keys = [(where, reason)] + ([(where, reason, peer)] if peer else [])
            if all(now - self._last.get(k, -1e9) < REFUSAL_LOG_INTERVAL_S for k in keys):
                self._untold[keys[0]] = self._untold.get(keys[0], 0) + 1
                return
            if len(self._last) > 1000:
                self._last.clear()
                self._untold.clear()
            for k in keys:
                self._last[k] = now
            untold = self._untold.pop(keys[0], 0)
        more = f" ({untold} more refusals since the last report)" if untold else ""
        log.warning("security: refused a connection%s from %s: %s%s",
                    f" to {where}" if where else "", peer or "an unknown address", reason,
                    more)


_refusals = _Refusals()


def _zap_reply(request: list[bytes], allowed: set[bytes]) -> list[bytes]:
    """The answer to a ZAP request (ZeroMQ RFC 27): 200 for a CURVE client in
    our domain showing an allowed public key, 400 for anything else."""
    if len(request) < 6:
        _refusals.note("", None, "malformed ZAP request")
        return [b"1.0", request[1] if len(request) > 1 else b"", b"400",
                b"malformed request", b"", b""]
    version, request_id, domain, address, _identity, mechanism, *credentials = request
    peer = address.decode(errors="replace") or None
    if version == b"1.0" and domain == DATA_ZAP_DOMAIN:
        return _data_login_reply(request_id, peer, mechanism, credentials)
    if version != b"1.0" or domain != ZAP_DOMAIN.encode() or mechanism != b"CURVE" \
            or len(credentials) != 1:
        reason = f"not a zray CURVE client (domain {domain!r}, mechanism {mechanism!r})"
    else:
        shown = zmq.utils.z85.encode(credentials[0]) if len(credentials[0]) == 32 else b"?"
        if shown in allowed:                    # allowed keys are z85 text
            return [b"1.0", request_id, b"200", b"OK", b"", b""]
        reason = (f"client key {shown[:8].decode()}... is not the cluster key "
                  f"(the peer lacks the cluster secret)")
    _refusals.note("", peer, reason)
    return [b"1.0", request_id, b"400", reason.encode()[:255], b"", b""]


def _monitor_event(frames: list[bytes]) -> dict:
    """A socket monitor message: event (uint16), value (uint32), endpoint."""
    event, value = struct.unpack("=Hi", frames[0][:6])
    return {"event": event, "value": value, "endpoint": frames[1] if len(frames) > 1 else b""}


_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_MONITOR_EVENTS = (zmq.EVENT_LISTENING | zmq.EVENT_ACCEPTED | _FAILED
                   | zmq.EVENT_MONITOR_STOPPED)

_PROTOCOL_REASONS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        "not a CURVE peer (no cluster key: plain ZeroMQ or security off)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        "CURVE handshake failed (the peer uses a different cluster key)",
}


def _failure_reason(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:      # value is an errno
        return (f"the peer left during the CURVE handshake ({os.strerror(value)}): "
                f"a peer without the cluster key?")
    return _PROTOCOL_REASONS.get(value, f"CURVE handshake failed (ZMTP error {value:#x})")


class _Guard(threading.Thread):
    """This process's ZAP handler (it admits clients holding the cluster
    key) and the logger of handshakes that fail before ZAP is asked (a plain
    peer, or a peer with another cluster key), read from the monitors of the
    CURVE server sockets. One thread, started on first use."""

    def __init__(self, ctx: zmq.Context):
        super().__init__(name="zray-security", daemon=True)
        self.ctx = ctx
        self.pid = os.getpid()
        self.allowed: set[bytes] = set()
        self._lock = threading.Lock()
        self._pending: list[zmq.Socket] = []
        # bound here, before any CURVE server socket binds; used by the thread
        self._zap = ctx.socket(zmq.REP)
        self._zap.linger = 0
        self._zap.bind(ZAP_ENDPOINT)
        endpoint = f"inproc://zray-security-{id(self)}"
        self._pipe = ctx.socket(zmq.PAIR)
        self._pipe.linger = 0
        self._pipe.bind(endpoint)
        self._thread_pipe = ctx.socket(zmq.PAIR)
        self._thread_pipe.linger = 0
        self._thread_pipe.connect(endpoint)

    def allow(self, public: bytes) -> None:
        self.allowed.add(public)

    def watch(self, sock: zmq.Socket) -> None:
        """Log the handshakes that fail on ``sock`` (call before binding it)."""
        addr = f"inproc://zray-monitor-{os.getpid()}-{next(_monitor_ids)}"
        self._add(sock.get_monitor_socket(_MONITOR_EVENTS, addr))

    def _add(self, monitor: zmq.Socket) -> None:
        """Hand a monitor socket over to the thread (from the binding thread)."""
        with self._lock:
            try:
                self._pipe.send(b"ADD", zmq.NOBLOCK)    # never block a bind on logging
            except zmq.ZMQError:
                monitor.close(linger=0)
                return
            self._pending.append(monitor)

    def stop(self) -> None:
        with self._lock:
            try:
                self._pipe.send(b"STOP", zmq.NOBLOCK)
            except zmq.ZMQError:                    # the thread is gone already
                pass
        self.join(2)
        self._pipe.close(linger=0)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._thread_pipe, zmq.POLLIN)
        poller.register(self._zap, zmq.POLLIN)
        monitors: dict[zmq.Socket, list] = {}     # monitor -> [endpoint, last accepted peer]
        try:
            while True:
                try:
                    events = poller.poll()
                except zmq.ZMQError:                # the context went away under us
                    return
                for sock, _ in events:
                    if sock is self._thread_pipe:
                        if self._thread_pipe.recv() == b"STOP":
                            return
                        with self._lock:
                            pending, self._pending = self._pending, []
                        for monitor in pending:
                            monitors[monitor] = ["", None]
                            poller.register(monitor, zmq.POLLIN)
                        continue
                    try:                            # one bad message never stops the thread
                        if sock is self._zap:
                            self._zap.send_multipart(_zap_reply(self._zap.recv_multipart(),
                                                                self.allowed))
                        elif sock in monitors:
                            self._on_monitor(sock, monitors, poller)
                    except zmq.ZMQError as exc:
                        if exc.errno == zmq.ETERM:
                            return
                        log.warning("security thread: %s", exc)
                    except Exception:
                        log.exception("security thread: a message failed")
        finally:
            for monitor in monitors:
                monitor.close(linger=0)
            self._thread_pipe.close(linger=0)
            self._zap.close(linger=0)

    @staticmethod
    def _on_monitor(sock, monitors: dict, poller) -> None:
        state = monitors[sock]
        try:
            event = _monitor_event(sock.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return
        if event["event"] == zmq.EVENT_MONITOR_STOPPED:
            poller.unregister(sock)
            monitors.pop(sock, None)
            sock.close(linger=0)
        elif event["event"] == zmq.EVENT_LISTENING:
            state[0] = event["endpoint"].decode(errors="replace")
        elif event["event"] == zmq.EVENT_ACCEPTED:
            state[1] = _peer_of(event["value"], state[0])
        elif event["event"] & _FAILED:
            reason = _failure_reason(event["event"], event["value"])
            _refusals.note(state[0], state[1], reason)
            state[1] = None


def _peer_of(fd: int, where: str) -> str | None:
    """The remote host of the connection accepted on ``fd``, if it is
    still open and still a connection of the listener at ``where`` (fds are
    reused, so a closed one may already be another socket). Best effort: only
    for log lines."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        with socket.socket(fileno=dup) as s:
            local, peer = s.getsockname(), s.getpeername()
    except OSError:
        return None
    if not where.endswith(f":{local[1]}"):
        return None
    return peer[0]


_monitor_ids = itertools.count()
_guard_lock = threading.Lock()
_guard: _Guard | None = None


def _guard_for(ctx: zmq.Context) -> _Guard:
    """This process's guard on ``ctx``: started on first use, and started
    afresh in a forked child (threads are not inherited) or on a new context."""
    global _guard
    with _guard_lock:
        if _guard is None or _guard.pid != os.getpid() or _guard.ctx is not ctx:
            if _guard is not None and _guard.pid == os.getpid():
                try:
                    _guard.stop()
                except Exception:           # its context is already gone
                    log.debug("the previous guard would not stop", exc_info=True)
            _guard = _Guard(ctx)        # an inherited guard is dropped, never touched
            _guard.start()
        return _guard


def stop() -> None:
    """Stop this process's security thread (before its context ends)."""
    global _guard
    with _guard_lock:
        guard, _guard = _guard, None
    if guard is not None and guard.pid == os.getpid():
        try:
            guard.stop()
        except zmq.ZMQError:
            pass


# ---------------------------------------------------------------------------
# bulk data: AES-256-GCM sealed frames
# ---------------------------------------------------------------------------
#
# ZeroMQ's CURVE moves bulk bytes at a few hundred MB/s here; AES-GCM with
# AES-NI runs at several GB/s. So object chunks travel on a separate plain TCP
# socket, every request and every chunk sealed with AES-256-GCM under a key
# derived from the cluster secret: a peer without the secret can neither ask
# for data (it cannot log in to the data port, see below) nor read or alter it.

DATA_KEY_LABEL = b"zray object transfer v1"


class DataSeal:
    """Seals and opens frames of the object-transfer link."""

    def __init__(self, key: ClusterKey):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._aead = AESGCM(hashlib.sha256(DATA_KEY_LABEL + key.secret).digest())

    def seal(self, data, header: bytes) -> tuple[bytes, bytes]:
        """``(nonce, ciphertext)`` of ``data``, bound to ``header``."""
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, data, header)

    def open(self, nonce, ciphertext, header: bytes) -> bytes:
        """The plaintext; raises ``DataSealError`` if it was not sealed with our key."""
        from cryptography.exceptions import InvalidTag
        try:
            return self._aead.decrypt(bytes(nonce), ciphertext, header)
        except InvalidTag:
            raise DataSealError("a data frame did not open with the cluster key") from None

    def open_into(self, nonce, ciphertext, header: bytes, out) -> None:
        """Open straight into ``out`` (a writable buffer of the plaintext's size)."""
        from cryptography.exceptions import InvalidTag
        try:
            self._aead.decrypt_into(bytes(nonce), ciphertext, header, out)
        except InvalidTag:
            raise DataSealError("a data frame did not open with the cluster key") from None


class DataSealError(ValueError):
    """A sealed data frame that does not open with the cluster key."""


def data_seal() -> DataSeal | None:
    """The sealer for this process's cluster key (None when security is off)."""
    key = current()
    return DataSeal(key) if key is not None else None


# ---------------------------------------------------------------------------
# bulk data: the data port's login
# ---------------------------------------------------------------------------
#
# The data port (not CURVE: its chunks are sealed with AES-GCM, which is
# several times faster) reads a connection's first message only after a
# ZeroMQ PLAIN handshake whose credentials this process's ZAP handler
# checks: the username is the endpoint the peer connects to, the password a
# one-time login
# ``login id (16 random bytes) | unix time (8) | HMAC-SHA256 of both and the
# endpoint under a key derived from the cluster secret``. A login is accepted
# once, within DATA_LOGIN_WINDOW_S of this host's clock, and only at the
# endpoint it names: a captured login replayed from another socket (or to
# another node) is refused before ZeroMQ reads any message of the peer. The
# ZAP reply names the login id as the connection's User-Id, so every message
# on the data port carries the id of the login it came in on, and sealed
# requests bind that id into their AEAD data (replayed on any other
# connection they do not open).

DATA_ZAP_DOMAIN = b"zray-data"
DATA_LOGIN_LABEL = b"zray data-port login v1"
#: a login is accepted this long either side of the server's clock (hosts'
#: clocks must agree to within this)
DATA_LOGIN_WINDOW_S = 600
_LOGIN_BYTES = 16 + 8 + 32


def _login_mac_key(key: ClusterKey) -> bytes:
    return hashlib.sha256(DATA_LOGIN_LABEL + key.secret).digest()


def data_login(endpoint: str, key: ClusterKey | None = None,
               now: float | None = None) -> tuple[bytes, bytes, bytes] | None:
    """``(username, password, login_id)`` of a fresh one-time login to the
    data port at ``endpoint``; None when security is off."""
    key = key or current()
    if key is None:
        return None
    login_id = os.urandom(16)
    stamp = struct.pack(">q", int(time.time() if now is None else now))
    user = endpoint.encode()
    mac = hmac.new(_login_mac_key(key), user + b"\0" + login_id + stamp,
                   hashlib.sha256).digest()
    return user, login_id + stamp + mac, login_id


class _DataLogins:
    """The data ports of this process and the logins they have accepted
    (a login is good once). Used from the ZAP thread and the port's owner."""

    def __init__(self):
        self._lock = threading.Lock()
        self.endpoints: set[str] = set()
        self._seen: dict[bytes, int] = {}       # login id -> its time stamp

    def serve(self, endpoint: str) -> None:
        with self._lock:
            self.endpoints.add(endpoint)

    def forget(self, endpoint: str) -> None:
        with self._lock:
            self.endpoints.discard(endpoint)

    def check(self, username: bytes, password: bytes, now: float | None = None) -> bytes:
        """The login id of a good login; raises ValueError naming what is wrong."""
        key = current()
        if key is None:
            raise ValueError("this process has no cluster key")
        endpoint = username.decode(errors="replace")
        if len(password) != _LOGIN_BYTES:
            raise ValueError("not a zray data-port login")
        login_id, stamp, mac = password[:16], password[16:24], password[24:]
        good = hmac.new(_login_mac_key(key), username + b"\0" + login_id + stamp,
                        hashlib.sha256).digest()
        if not hmac.compare_digest(mac, good):
            raise ValueError("its login is not signed with the cluster key "
                             "(the peer lacks the cluster secret)")
        now = int(time.time() if now is None else now)
        (when,) = struct.unpack(">q", stamp)
        with self._lock:
            if endpoint not in self.endpoints:
                raise ValueError(f"its login is for {endpoint[:80]}, not a data port "
                                 f"of this process")
            if abs(now - when) > DATA_LOGIN_WINDOW_S:
                raise ValueError(f"its login is {now - when:+d} s old: a replayed login, "
                                 f"or the hosts' clocks differ by more than "
                                 f"{DATA_LOGIN_WINDOW_S} s (synchronise them, e.g. NTP)")
            if login_id in self._seen:
                raise ValueError("its login was used before (a replayed login)")
            if len(self._seen) >= 1024:
                horizon = now - 2 * DATA_LOGIN_WINDOW_S
                self._seen = {k: t for k, t in self._seen.items() if t >= horizon}
            self._seen[login_id] = when
        return login_id


_data_logins = _DataLogins()


def _data_login_reply(request_id: bytes, peer: str | None, mechanism: bytes,
                      credentials: list) -> list[bytes]:
    """The ZAP answer for a connection to a data port (see ``data_login``)."""
    if mechanism != b"PLAIN" or len(credentials) != 2:
        reason = f"not a zray data-port login (mechanism {mechanism!r})"
    else:
        try:
            login_id = _data_logins.check(credentials[0], credentials[1])
        except ValueError as err:
            reason = str(err)
        else:
            return [b"1.0", request_id, b"200", b"OK", login_id.hex().encode(), b""]
    _refusals.note("the data port", peer, reason)
    return [b"1.0", request_id, b"400", reason.encode()[:255], b"", b""]


def configure_data_server(sock: zmq.Socket, ctx: zmq.Context) -> bool:
    """Make ``sock`` (before bind) a data port that admits only connections
    with a good login (see ``data_login``); False when security is off.
    Call ``serve_data_port`` with the endpoint once it is bound."""
    if current() is None:
        return False
    _guard_for(ctx)                     # the ZAP handler
    sock.plain_server = True
    sock.zap_domain = DATA_ZAP_DOMAIN
    sock.zap_enforce_domain = True      # no ZAP handler answering: refuse, never admit
    return True


def serve_data_port(endpoint: str) -> None:
    """Accept logins naming ``endpoint`` (a bound data port of this process)."""
    _data_logins.serve(endpoint)


def forget_data_port(endpoint: str) -> None:
    """Refuse logins naming ``endpoint`` (its port is closed)."""
    _data_logins.forget(endpoint)


def peer_host(fd: int, where: str) -> str | None:
    """The remote host of the connection on ``fd`` accepted at ``where``, if
    still open (best effort, for log lines)."""
    return _peer_of(fd, where)


def configure_data_client(sock: zmq.Socket, endpoint: str) -> bytes:
    """Give ``sock`` (before connect) a fresh login to the data port at
    ``endpoint``; returns the login id (b"" when security is off). A login is
    good for one connection: make a new socket to reconnect."""
    login = data_login(endpoint)
    if login is None:
        return b""
    user, password, login_id = login
    sock.plain_username = user
    sock.plain_password = password
    return login_id
