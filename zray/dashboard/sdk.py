"""A small client of the dashboard's Jobs API (what ``zray job`` uses); the
same calls as Ray's ``JobSubmissionClient``, over the standard library.

    client = JobClient()                       # this host's cluster's dashboard
    sid = client.submit_job(entrypoint="python run.py", working_dir="./project")
    client.get_job_status(sid); client.get_job_logs(sid); client.stop_job(sid)
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.error
import urllib.request
import zipfile

from . import launch
from .token_file import ENV_TOKEN, read_token_file

ENV_ADDRESS = "ZRAY_DASHBOARD_ADDRESS"
#: directories never packed into a working_dir upload
SKIP_DIRS = frozenset({".git", "__pycache__", ".venv", "venv", ".mypy_cache",
                       ".pytest_cache", "node_modules"})


class JobClientError(RuntimeError):
    """The dashboard refused a request or cannot be reached (says which and why)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class JobClient:
    def __init__(self, address: str | None = None, token: str | None = None,
                 token_file: str | None = None, timeout: float = 30.0):
        """``address``: ``http://host:port`` (default ``$ZRAY_DASHBOARD_ADDRESS``,
        else the dashboard of this host's cluster); the token: ``token``,
        ``token_file``, ``$ZRAY_DASHBOARD_TOKEN``, else that dashboard's file."""
        info = launch.find() if not (address or os.environ.get(ENV_ADDRESS)) else None
        address = address or os.environ.get(ENV_ADDRESS) or (info.url if info else None)
        if not address:
            raise JobClientError("no dashboard to ask: pass --address http://HOST:PORT (or "
                                 f"set {ENV_ADDRESS}); `zray start --head` prints it")
        self.address = address.rstrip("/")
        if not self.address.startswith(("http://", "https://")):
            self.address = "http://" + self.address
        if token is None:
            if token_file:
                token = read_token_file(token_file)
            elif os.environ.get(ENV_TOKEN):
                token = os.environ[ENV_TOKEN].strip()
            elif info is not None:
                token = read_token_file(info.token_file)
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body=None, raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.address + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                message = json.loads(text).get("msg", text)
            except (ValueError, AttributeError):
                message = text
            if err.code == 404 and method == "GET" and path.startswith("/api/packages/"):
                return 404, None
            raise JobClientError(f"{method} {path}: {err.code} {message}", err.code) from None
        except (urllib.error.URLError, OSError) as err:
            raise JobClientError(f"cannot reach the dashboard at {self.address}: "
                                 f"{getattr(err, 'reason', err)}") from None

    def upload_working_dir(self, path: str) -> str:
        """Zip ``path``, upload it unless already there; its ``gcs://`` URI."""
        if not os.path.isdir(path):
            raise JobClientError(f"working_dir {path} is not a directory")
        buf = io.BytesIO()
        digest = hashlib.sha1()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                for name in sorted(files):
                    full = os.path.join(root, name)
                    rel = os.path.relpath(full, path)
                    with open(full, "rb") as f:
                        data = f.read()
                    digest.update(rel.encode() + b"\0" + data)
                    z.writestr(rel, data)
        name = f"_ray_pkg_{digest.hexdigest()[:16]}.zip"
        status, _ = self._request("GET", f"/api/packages/gcs/{name}")
        if status != 200:
            self._request("PUT", f"/api/packages/gcs/{name}", raw=buf.getvalue())
        return f"gcs://{name}"

    def submit_job(self, *, entrypoint: str, submission_id: str | None = None,
                   runtime_env: dict | None = None, metadata: dict | None = None,
                   working_dir: str | None = None) -> str:
        runtime_env = dict(runtime_env or {})
        if working_dir:
            runtime_env["working_dir"] = working_dir
        wd = runtime_env.get("working_dir")
        if wd and "://" not in wd:
            runtime_env["working_dir"] = self.upload_working_dir(wd)
        body = {"entrypoint": entrypoint, "runtime_env": runtime_env,
                "metadata": metadata or {}}
        if submission_id:
            body["submission_id"] = submission_id
        return self._request("POST", "/api/jobs/", body)[1]["submission_id"]

    def get_job_info(self, job_id: str) -> dict:
        return self._request("GET", f"/api/jobs/{job_id}")[1]

    def get_job_status(self, job_id: str) -> str:
        return self.get_job_info(job_id)["status"]

    def get_job_logs(self, job_id: str) -> str:
        return self._request("GET", f"/api/jobs/{job_id}/logs")[1]["logs"]

    def list_jobs(self) -> list[dict]:
        return self._request("GET", "/api/jobs/")[1]

    def stop_job(self, job_id: str) -> bool:
        return self._request("POST", f"/api/jobs/{job_id}/stop")[1]["stopped"]

    def delete_job(self, job_id: str) -> bool:
        return self._request("DELETE", f"/api/jobs/{job_id}")[1]["deleted"]
