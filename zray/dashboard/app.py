"""The dashboard's Flask app: pages, Ray's Jobs and State APIs, Server-Sent
Events, Prometheus metrics, and the guard every request passes first.

``create_app`` wires it to a GCS client, a ClusterView, a JobSupervisor and a
Guard; ``python -m zray.dashboard`` serves it with gunicorn (server.py). Job
log tailing over a websocket, as Ray's clients use it, is in log_tail.py.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time

from flask import (Flask, Response, abort, jsonify, make_response, redirect, render_template,
                   request, stream_with_context, url_for)

from ..broker.rpc import RemoteError
from . import log_tail, metrics, priority, rows, store_objects
from .jobs import MAX_PACKAGE_BYTES, JobError

log = logging.getLogger(__name__)

#: largest body of any request but a package upload
MAX_BODY = 1 << 20
#: a refused (too large) body up to this size is read and dropped, so its
#: client gets the 413 (see _discard_body)
DISCARD_MAX = 2 * (MAX_PACKAGE_BYTES + (1 << 20))
DISCARD_S = 10.0
#: Server-Sent Event streams open at once (each holds a server thread)
MAX_STREAMS = 8
#: a stream ends after this long (EventSource reconnects by itself)
STREAM_S = 60.0
#: a live page gets at most one update per this long
EVENT_INTERVAL_S = 1.0
#: the live pages' job rows are re-read at least this often (else on a change)
JOBS_REREAD_S = 10.0
API_VERSION = "4"
#: the Ray version whose Jobs API this one answers as (Ray's clients check it)
RAY_COMPATIBLE_VERSION = "2.60.0"
PAGES = (("overview", "/", "Overview"), ("nodes", "/nodes", "Nodes"),
         ("tasks", "/tasks", "Tasks"), ("actors", "/actors", "Actors"),
         ("placement_groups", "/placement-groups", "Placement groups"),
         ("jobs", "/jobs", "Jobs"), ("logs", "/logs", "Logs"), ("memory", "/memory", "Memory"))
#: objects the Memory page asks each node for (its owner summary counts them)
MEMORY_PAGE_OBJECTS = 1000
#: object rows the Memory page shows (the largest)
MEMORY_PAGE_ROWS = 200


def create_app(*, gcs, view, supervisor, guard, session_dir: str,
               stopping: threading.Event | None = None) -> Flask:
    """The app. ``stopping``, once set, ends live streams and websockets."""
    app = Flask(__name__)
    stopping = stopping or threading.Event()
    app.config["MAX_CONTENT_LENGTH"] = MAX_PACKAGE_BYTES + (1 << 20)
    registry = metrics.make_registry(gcs)
    streams = threading.BoundedSemaphore(MAX_STREAMS)
    logs_dir = os.path.realpath(os.path.join(session_dir, "logs"))

    def api_error(status: int, message: str):
        return make_response(jsonify({"result": False, "msg": message, "error": message}),
                             status)

    def is_api(path: str) -> bool:
        return path.startswith(("/api/", "/metrics"))

    # -- the guard ----------------------------------------------------------
    @app.before_request
    def check_request():
        if not guard.host_allowed(request.headers.get("Host")):
            log.warning("refused a request for Host %r from %s (not an allowed host name)",
                        (request.headers.get("Host") or "")[:100], request.remote_addr)
            return api_error(403, "this Host is not served here (allowed: the dashboard's "
                                  "bind address, localhost, and --dashboard-allowed-hosts)")
        # a websocket is opened by any page: its Origin is checked like a mutation's
        upgrade = (request.headers.get("Upgrade") or "").lower() == "websocket"
        if (upgrade or request.method in ("POST", "PUT", "PATCH", "DELETE")) and \
                not guard.origin_allowed(
                request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"),
                request.headers.get("Host")):
            log.warning("refused a %s %s from Origin %r", request.method, request.path,
                        (request.headers.get("Origin") or "")[:100])
            return api_error(403, "cross-site request refused (its Origin is not this "
                                  "dashboard)")
        if not request.path.startswith("/api/packages/"):
            request.max_content_length = MAX_BODY
        if request.path in ("/login",):
            return None
        if not guard.authenticated(request.headers.get("Authorization"),
                                   request.cookies.get("zray_dashboard_session")):
            if is_api(request.path) or request.method != "GET":
                resp = api_error(401, "the dashboard token is required: send "
                                      "'Authorization: Bearer <token>' (the token is in "
                                      "<session_dir>/dashboard.token, printed by `zray "
                                      "start --head`)")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="zray dashboard"'
                return resp
            return redirect(url_for("login", next=request.full_path.rstrip("?")))
        return None

    @app.after_request
    def security_headers(resp):
        resp.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; script-src 'self'; style-src 'self' "
                                "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        # not "no-referrer": with it Chrome sends "Origin: null" on form posts
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.errorhandler(413)
    def too_large(err):
        _discard_body()
        return api_error(413, f"the request body is too large (at most {MAX_BODY} bytes; a "
                              f"package upload at most {MAX_PACKAGE_BYTES} bytes)")

    @app.errorhandler(404)
    def not_found(err):
        return api_error(404, f"no such page or API: {request.path[:200]}")

    @app.errorhandler(405)
    def bad_method(err):
        return api_error(405, f"{request.method} is not allowed on {request.path[:200]}")

    @app.errorhandler(TimeoutError)
    def gcs_silent(err):
        log.warning("the GCS did not answer: %s", err)
        return api_error(503, f"the GCS did not answer: {err}")

    @app.errorhandler(RemoteError)
    def gcs_error(err):
        return api_error(502, f"the GCS refused the request: {err}")

    @app.errorhandler(JobError)
    def job_error(err):
        return api_error(err.status, err.message)

    @app.errorhandler(rows.StateError)
    def state_error(err):
        return api_error(400, str(err))

    # -- login ----------------------------------------------------------------
    def safe_next(target: str | None) -> str:
        if target and target.startswith("/") and not target.startswith(("//", "/\\")):
            return target
        return "/"

    @app.route("/login", methods=["GET", "POST"])
    def login():
        error = None
        if request.method == "POST":
            if guard.token_ok(request.form.get("token", "").strip()):
                resp = redirect(safe_next(request.args.get("next")))
                resp.set_cookie("zray_dashboard_session", guard.cookie_value(), httponly=True,
                                samesite="Strict", secure=request.scheme == "https", path="/")
                return resp
            log.warning("a login with a wrong token from %s", request.remote_addr)
            error = "Wrong token."
        status = 401 if error else 200
        return render_template("login.html", error=error, pages=()), status

    @app.route("/logout", methods=["POST"])
    def logout():
        resp = redirect(url_for("login"))
        resp.delete_cookie("zray_dashboard_session", path="/")
        return resp

    # -- pages ----------------------------------------------------------------
    def page(name: str, **context):
        return render_template(f"{name}.html", page=name, pages=PAGES, **context)

    @app.route("/")
    def overview():
        return page("overview", summary=view.summary())

    @app.route("/nodes")
    def nodes_page():
        return page("nodes", nodes=rows.node_rows(gcs))

    @app.route("/tasks")
    def tasks_page():
        return page("tasks")

    @app.route("/tasks/<task_id>")
    def task_page(task_id):
        if not all(c in "0123456789abcdef" for c in task_id) or len(task_id) > 64:
            abort(404)
        events, _ = rows.task_events(gcs, 10, {"task_id": task_id})
        found = [rows.task_row(e) for e in events if rows.task_row(e)["task_id"] == task_id]
        if not found:
            found = [t for t in view.recent_tasks() if t["task_id"] == task_id]
        if not found:
            return page("task", task=None, task_id=task_id), 404
        return page("task", task=found[-1], task_id=task_id)

    @app.route("/actors")
    def actors_page():
        return page("actors", actors=rows.actor_rows(gcs))

    @app.route("/placement-groups")
    def placement_groups_page():
        return page("placement_groups", groups=rows.placement_group_rows(gcs))

    @app.route("/jobs")
    def jobs_page():
        return page("jobs", jobs=rows.job_rows(gcs))

    @app.route("/jobs/<job_id>")
    def job_page(job_id):
        job = supervisor.get(job_id)
        if job is None:
            abort(404)
        return page("job", job=job)

    @app.route("/logs")
    def logs_page():
        node = request.args.get("node", "")[:12]
        files = [f for f in list_log_files() if not node or node in f["filename"]]
        return page("logs", files=files, node=node)

    @app.route("/logs/view")
    def log_page():
        path = log_file(request.args.get("filename", ""))
        return page("log", filename=os.path.relpath(path, logs_dir))

    @app.route("/memory")
    def memory_page():
        objects, total, warnings = store_objects.object_rows(gcs, MEMORY_PAGE_OBJECTS)
        return page("memory", stores=rows.store_rows(gcs), total=total, warnings=warnings,
                    owners=store_objects.summarize_by_owner(objects),
                    objects=sorted(objects, key=lambda o: -o["object_size"])[:MEMORY_PAGE_ROWS])

    @app.get("/api/v0/objects/summarize")
    def api_summarize_objects():
        objects, total, warnings = store_objects.object_rows(
            gcs, _int_arg("limit", rows.MAX_LIMIT, 1, rows.MAX_LIMIT))
        return jsonify({"result": True, "msg": "", "data": {"result": {
            "summary_by": "owner", "total_objects": total, "listed_objects": len(objects),
            "summary": store_objects.summarize_by_owner(objects), "warnings": warnings}}})

    # -- logs (only files inside the session's log directory) ----------------
    def list_log_files() -> list[dict]:
        out = []
        for name in sorted(os.listdir(logs_dir)):
            path = os.path.join(logs_dir, name)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append({"filename": name, "size": os.path.getsize(path)})
        return out

    def log_file(name: str) -> str:
        """The path of log file ``name``; 400 for a path that leaves the log
        directory (``..``, absolute, links), 404 for a missing file."""
        if not name or "\0" in name or name.startswith(("/", "\\")) or ".." in \
                name.replace("\\", "/").split("/") or len(name) > 255:
            abort(make_response(jsonify({"result": False, "msg": "filename must be the name "
                                         "of a file in the session's log directory (no '..', "
                                         "no absolute path)"}), 400))
        path = os.path.realpath(os.path.join(logs_dir, name))
        if os.path.dirname(path) != logs_dir:
            abort(make_response(jsonify({"result": False, "msg": "filename must be a file "
                                         "of the session's log directory"}), 400))
        if not os.path.isfile(path):
            abort(404)
        return path

    @app.get("/api/v0/logs")
    def api_logs():
        return jsonify({"result": True, "msg": "", "data": {"result": list_log_files()}})

    @app.get("/api/v0/logs/file")
    def api_log_file():
        path = log_file(request.args.get("filename", ""))
        offset = _int_arg("offset", 0, 0)
        size = os.path.getsize(path)
        if offset == 0 and "lines" in request.args:
            offset = max(0, size - 200 * _int_arg("lines", 1000, 1, 100_000))
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(4 << 20)
        return jsonify({"result": True, "data": {"filename": os.path.basename(path),
                                                 "offset": offset + len(data),
                                                 "text": data.decode(errors="replace")}})

    @app.get("/api/v0/logs/stream")
    def api_log_stream():
        path = log_file(request.args.get("filename", ""))
        return tail_stream(path, _int_arg("offset", 0, 0))

    def tail_stream(path: str, offset: int):
        """SSE of what is appended to ``path`` from ``offset`` on."""
        if not streams.acquire(blocking=False):
            return api_error(503, "too many live streams are open; close a tab and retry")

        def gen():
            pos = offset
            deadline = time.monotonic() + STREAM_S
            try:
                yield "retry: 1000\n\n"
                while time.monotonic() < deadline and not stopping.is_set():
                    try:
                        with open(path, "rb") as f:
                            f.seek(pos)
                            data = f.read(256 * 1024)
                    except FileNotFoundError:
                        data = b""
                    if data:
                        pos += len(data)
                        yield _sse("log", {"offset": pos, "text": data.decode(errors="replace")})
                    else:
                        yield ": idle\n\n"
                        stopping.wait(0.3)
            finally:
                streams.release()
        return _sse_response(gen())

    # -- the live stream of the pages -----------------------------------------
    @app.get("/api/events")
    def api_events():
        if not streams.acquire(blocking=False):
            return api_error(503, "too many live streams are open; close a tab and retry")

        def gen():
            priority.lower_this_thread()    # a live page yields to the cluster
            version = -1
            since_ms = 0.0
            deadline = time.monotonic() + STREAM_S
            try:
                yield "retry: 1000\n\n"
                while time.monotonic() < deadline and not stopping.is_set():
                    sent = time.monotonic()
                    version = view.wait_change(version, 1.0)
                    now_ms = time.time() * 1000
                    summary = view.summary()
                    summary["tasks"] = view.recent_tasks(since_ms or now_ms - 60_000, stream=True)
                    summary["now_ms"] = now_ms
                    summary["jobs"] = job_summaries()
                    since_ms = now_ms - 1000
                    yield _sse("summary", summary)
                    stopping.wait(max(0.0, EVENT_INTERVAL_S - (time.monotonic() - sent)))
            finally:
                streams.release()
        return _sse_response(gen())

    jobs_cache = {"at": 0.0, "rows": [], "versions": None}
    jobs_lock = threading.Lock()

    def job_summaries() -> list[dict]:
        """The jobs' rows for the live pages, read from the GCS when a job
        changed (a driver's job event, a submitted job's row), at most once
        a second, and every JOBS_REREAD_S whatever happened."""
        versions = (view.jobs_version, getattr(supervisor, "version", 0))
        with jobs_lock:
            age = time.monotonic() - jobs_cache["at"]
            if age > JOBS_REREAD_S or (versions != jobs_cache["versions"]
                                       and age > EVENT_INTERVAL_S):
                jobs_cache["versions"] = versions
                jobs_cache["rows"] = [{k: j.get(k) for k in ("submission_id", "job_id",
                                                            "status", "type", "entrypoint")}
                                      for j in rows.job_rows(gcs)]
                jobs_cache["at"] = time.monotonic()
            return jobs_cache["rows"]

    @app.get("/api/cluster_status")
    def api_cluster_status():
        return jsonify({"result": True, "data": view.summary()})

    # -- Ray's Jobs API -------------------------------------------------------
    @app.get("/api/version")
    def api_version():
        return jsonify({"version": API_VERSION, "ray_version": RAY_COMPATIBLE_VERSION,
                        "ray_commit": "zray", "session_name": os.path.basename(session_dir),
                        "zray_version": _zray_version()})

    @app.route("/api/packages/<protocol>/<package_name>", methods=["GET", "PUT"])
    def api_package(protocol, package_name):
        if request.method == "GET":
            if supervisor.package_exists(protocol, package_name):
                return jsonify({"result": True, "msg": "package exists"})
            return api_error(404, f"package {package_name[:200]} is not here")
        supervisor.put_package(protocol, package_name, request.get_data())
        return jsonify({"result": True, "msg": "package uploaded"})

    @app.post("/api/jobs/")
    def api_submit_job():
        submission_id = supervisor.submit(_json_body())
        return jsonify({"job_id": submission_id, "submission_id": submission_id})

    @app.get("/api/jobs/")
    def api_list_jobs():
        return jsonify(rows.job_rows(gcs))

    @app.get("/api/jobs/<job_id>")
    def api_get_job(job_id):
        job = supervisor.get(job_id)
        if job is None:
            return api_error(404, f"Job {job_id[:200]} does not exist")
        return jsonify(job)

    @app.get("/api/jobs/<job_id>/logs")
    def api_job_logs(job_id):
        job = supervisor.get(job_id)
        if job is None or not job.get("submission_id"):
            return api_error(404, f"Job {job_id[:200]} does not exist")
        return jsonify({"logs": supervisor.logs(job["submission_id"])})

    @app.get("/api/jobs/<job_id>/logs/stream")
    def api_job_log_stream(job_id):
        job = supervisor.get(job_id)
        if job is None or not job.get("submission_id"):
            return api_error(404, f"Job {job_id[:200]} does not exist")
        return tail_stream(supervisor.log_file(job["submission_id"]), _int_arg("offset", 0, 0))

    log_tail.register(app, supervisor=supervisor, streams=streams, stopping=stopping,
                      api_error=api_error)

    @app.post("/api/jobs/<job_id>/stop")
    def api_stop_job(job_id):
        return jsonify({"stopped": supervisor.stop(job_id)})

    @app.delete("/api/jobs/<job_id>")
    def api_delete_job(job_id):
        return jsonify({"deleted": supervisor.delete(job_id)})

    # -- Ray's State API --------------------------------------------------------
    @app.get("/api/v0/<kind>")
    def api_list(kind):
        kind = kind.replace("-", "_")
        if kind not in rows.KINDS:
            abort(404)
        data = rows.list_state(gcs, kind, _filters(), _int_arg("limit", rows.DEFAULT_LIMIT, 1,
                                                                rows.MAX_LIMIT))
        return jsonify({"result": True, "msg": "", "data": {"result": data}})

    @app.get("/api/v0/tasks/summarize")
    def api_summarize_tasks():
        summary = rows.summarize_tasks(rows.task_summary(gcs))
        return jsonify({"result": True, "msg": "",
                        "data": {"result": {"node_id_to_summary": {"cluster": summary}}}})

    @app.get("/api/v0/timeline")
    def api_timeline():
        from ..util.timeline import chrome_trace
        events, _ = rows.task_events(gcs)
        return jsonify(chrome_trace(events))

    @app.get("/metrics")
    def api_metrics():
        return Response(metrics.render(registry), mimetype=None,
                        content_type=metrics.CONTENT_TYPE)

    return app


# -- helpers -------------------------------------------------------------------

def _sse(event: str, data) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=_jsonable)}\n\n"


def _jsonable(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def _sse_response(gen) -> Response:
    resp = Response(stream_with_context(gen), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


def _discard_body() -> None:
    """Read and drop a refused body of at most DISCARD_MAX bytes (within
    DISCARD_S), so a client that sends it all before reading the answer
    (requests, http.client) gets the answer, not a broken pipe; a larger or
    slower one finds the connection closed."""
    length = request.content_length or 0
    if not 0 < length <= DISCARD_MAX:
        return
    stream = request.environ.get("wsgi.input")
    deadline = time.monotonic() + DISCARD_S
    left = length
    try:
        while left > 0 and time.monotonic() < deadline:
            chunk = stream.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
    except OSError as err:
        log.info("a refused request body was cut short: %s", err)


def _json_body():
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw)
    except ValueError as err:
        raise JobError(400, f"the request body is not valid JSON: {err}") from None


def _int_arg(name: str, default: int, low: int, high: int = 1 << 62) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise rows.StateError(f"{name} must be an integer, got {raw[:20]!r}") from None
    if not low <= value <= high:
        raise rows.StateError(f"{name} must be in {low}..{high}, got {value}")
    return value


def _filters() -> list:
    """Ray's filter query: filter_keys, filter_predicates, filter_values."""
    keys = request.args.getlist("filter_keys")
    predicates = request.args.getlist("filter_predicates")
    values = request.args.getlist("filter_values")
    if not len(keys) == len(predicates) == len(values):
        raise rows.StateError("filter_keys, filter_predicates and filter_values must come "
                              "in equal numbers")
    return list(zip(keys, predicates, values))


def _zray_version() -> str:
    try:
        from importlib.metadata import version
        return version("zray")
    except Exception:   # noqa: BLE001 — not installed as a distribution
        log.debug("zray's version is unknown (not installed as a distribution)")
        return "unknown"
