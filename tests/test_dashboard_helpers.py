"""Helpers of the dashboard tests (no tests here): HTTP requests with any Host,
Origin, cookie or body, and a local cluster whose dashboard answers."""
from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import zray
from zray.dashboard import launch


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class Dashboard:
    """A running dashboard: its URL and token, and requests to it."""

    def __init__(self, url: str, token: str):
        self.url = url
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.token = token

    def request(self, method: str, path: str, *, body=None, token: str | None = "default",
                headers: dict | None = None, timeout: float = 30.0) -> Reply:
        """One request; ``token=None`` sends none, a string sends that one."""
        headers = dict(headers or {})
        if token == "default":
            token = self.token
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_host="Host" in headers,
                            skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            if body is not None:
                conn.send(body)
            resp = conn.getresponse()
            return Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw) -> Reply:
        return self.request("POST", path, body=body, **kw)

    def answers(self) -> bool:
        try:
            return self.get("/api/version", timeout=2).status == 200
        except OSError:
            return False

    def wait_job(self, submission_id: str, states, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/api/jobs/{submission_id}").json()
            if job["status"] in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {submission_id} stayed {job['status']}: {job}")
            time.sleep(0.1)


def local_dashboard(timeout: float = 30.0) -> Dashboard:
    """The dashboard of this process's local cluster, once it answers."""
    info = launch.find()
    assert info is not None, "zray.init() recorded no dashboard"
    with open(info["token_file"]) as f:
        dash = Dashboard(info["url"], f.read().strip())
    deadline = time.monotonic() + timeout
    while not dash.answers():
        if time.monotonic() > deadline:
            raise AssertionError(f"the dashboard at {dash.url} did not answer within "
                                 f"{timeout}s")
        time.sleep(0.1)
    return dash


def start_local(**kwargs) -> Dashboard:
    kwargs.setdefault("num_cpus", 2)
    kwargs.setdefault("object_store_memory", 128 * 1024 * 1024)
    zray.init(**kwargs)
    return local_dashboard()
