"""``GET /api/jobs/<id>/logs/tail``: a job's log over a websocket, as Ray's
``JobSubmissionClient.tail_job_logs`` (and so ``ray job submit`` and ``ray
job logs --follow``) reads it: text frames with what the job's driver
wrote, from the start, then a normal close (1000) once the job has ended
and everything it wrote was sent.

The request passes the app's guard first (token, Host; an Origin, when a
page sends one, must be the dashboard's), so a refused upgrade is a plain
401/403. A missing job is a 404 and a full house (``streams``, shared with
the Server-Sent Event streams) a 503, both before the upgrade. A tail is
bounded: it reads at most ``CHUNK`` bytes at a time and sends them before
reading more, a send that cannot go on for ``SEND_TIMEOUT_S`` (a client
that stopped reading) ends the connection, and a client that does not
answer pings within ``PING_S`` is dropped. It holds one server thread.
"""
from __future__ import annotations

import codecs
import logging
import socket
import struct

from flask import Response, request
from simple_websocket import ConnectionClosed, Server
from simple_websocket import ConnectionError as WebSocketError
from wsproto.events import TextMessage
from wsproto.utilities import RemoteProtocolError

from .jobs import TERMINAL

log = logging.getLogger(__name__)

ROUTE = "/api/jobs/<job_id>/logs/tail"
#: bytes of the log read and sent at a time (one text frame at most)
CHUNK = 64 * 1024
#: how often an idle tail looks for new output and the job's end
POLL_S = 0.2
#: a frame that cannot be sent within this long ends the connection
SEND_TIMEOUT_S = 10.0
#: the server pings this often; a client that missed the previous pong is dropped
PING_S = 15.0
#: a client sends nothing but control frames: any message over this closes it
MAX_MESSAGE = 4096
#: how long a closed tail waits for the client's close frame
CLOSE_WAIT_S = 2.0
#: close codes
NORMAL, GOING_AWAY = 1000, 1001


def register(app, *, supervisor, streams, stopping, api_error) -> None:
    """Add the route to ``app``."""

    @app.route(ROUTE, websocket=True)
    def api_tail_job_logs(job_id):
        job = supervisor.get(job_id)
        if job is None or not job.get("submission_id"):
            return api_error(404, f"Job {job_id[:200]} does not exist")
        if not streams.acquire(blocking=False):
            return api_error(503, "too many live streams are open; close one and retry")
        try:
            try:
                ws = Server.accept(request.environ, ping_interval=PING_S,
                                   max_message_size=MAX_MESSAGE)
            except (WebSocketError, RemoteProtocolError) as err:
                return api_error(400, f"not a valid websocket handshake: {err}")
            try:
                _bound_sends(ws.sock)
                _tail(ws, supervisor, job["submission_id"], stopping)
                _finish(ws)
            except (ConnectionClosed, OSError) as err:
                log.info("log tail of job %s ended by the client: %s", job_id[:64],
                         err or type(err).__name__)
            finally:
                _abort(ws)
        finally:
            streams.release()
        return _UpgradedResponse(ws.mode)


def _tail(ws, supervisor, submission_id: str, stopping) -> None:
    path = supervisor.log_file(submission_id)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pos = 0
    while ws.connected:
        if stopping.is_set():
            _close(ws, GOING_AWAY, "the dashboard is stopping")
            return
        row = supervisor.get(submission_id)
        ended = row is None or row.get("status") in TERMINAL
        data = _read(path, pos)
        if data:
            pos += len(data)
            _send(ws, decoder.decode(data))
            continue
        if ended:       # read after the job ended and nothing was left: all sent
            _send(ws, decoder.decode(b"", final=True))
            _close(ws, NORMAL, "the job has ended")
            return
        stopping.wait(POLL_S)


def _read(path: str, pos: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            return f.read(CHUNK)
    except FileNotFoundError:           # the driver has not written yet
        return b""


def _send(ws, text: str) -> None:
    """One text frame, all of it or an OSError (simple_websocket's own
    ``send`` may write part of a frame when a send times out)."""
    if text:
        ws.sock.sendall(ws.ws.send(TextMessage(data=text)))


def _close(ws, code: int, reason: str) -> None:
    if ws.connected:
        ws.close(code, reason)


def _bound_sends(sock: socket.socket) -> None:
    """A blocking send on ``sock`` fails after SEND_TIMEOUT_S (EAGAIN)."""
    seconds = int(SEND_TIMEOUT_S)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", seconds, int((SEND_TIMEOUT_S - seconds) * 1e6)))


def _finish(ws) -> None:
    """After our close frame: wait (at most CLOSE_WAIT_S) for the client's,
    which ends the reader thread, so the client reads every frame before
    the connection goes."""
    ws.sock.shutdown(socket.SHUT_WR)
    ws.thread.join(CLOSE_WAIT_S)


def _abort(ws) -> None:
    """End the connection now: the websocket's reader thread wakes up and
    exits whatever the client does."""
    ws.connected = False
    try:
        ws.sock.shutdown(socket.SHUT_RDWR)
    except OSError:                     # the client closed it already
        log.debug("log tail socket already closed")


class _UpgradedResponse(Response):
    """What the view returns once the websocket is done: nothing more may
    be written on the connection (gunicorn: close it)."""

    def __init__(self, mode: str):
        super().__init__()
        self._mode = mode

    def __call__(self, environ, start_response):
        if self._mode == "gunicorn":
            raise StopIteration()       # gunicorn closes the connection
        if self._mode == "werkzeug":    # Flask's development server
            return super().__call__(environ, start_response)
        return []
