"""The job supervisor: runs submitted jobs' entrypoints on the head, as Ray's
Jobs API describes them.

A job is a shell command (its *entrypoint*) run as a subprocess in its own
process group, with ``runtime_env`` ``working_dir`` (a package uploaded as a
zip, ``gcs://_ray_pkg_<hash>.zip``, or a directory of the head) as its
current directory and on its ``PYTHONPATH``, ``env_vars`` in its
environment, and ``ZRAY_ADDRESS`` naming the cluster, so a driver in it
joins the cluster by itself. Its output goes to
``<session>/logs/job-driver-<submission_id>.log``.

``entrypoint_num_cpus``/``_num_gpus``/``_memory``/``_resources`` are
reserved for the entrypoint as Ray does: a placement group of one bundle
holds them from before the entrypoint starts until it ends; the job stays
PENDING, saying so, while the cluster cannot give them.

Status: PENDING -> RUNNING -> SUCCEEDED | FAILED | STOPPED. Stopping sends
SIGTERM to the job's process group, then SIGKILL after ``stop_grace_s``.
Every row is written through to the GCS KV (namespace
``rows.JOBS_KV_NAMESPACE``), so it outlives a dashboard restart; a job that
was running when its dashboard died is marked FAILED when the next one starts.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
import uuid
import zipfile

import psutil

from ..broker import protocol as p
from .._private.session import log_path
from .rows import JOBS_KV_NAMESPACE

log = logging.getLogger(__name__)

PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = \
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"
TERMINAL = frozenset({SUCCEEDED, FAILED, STOPPED})
#: the fields of Ray's JobSubmitRequest
REQUEST_FIELDS = frozenset({"entrypoint", "submission_id", "job_id", "runtime_env", "metadata",
                            "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory",
                            "entrypoint_resources", "entrypoint_label_selector"})
RUNTIME_ENV_FIELDS = frozenset({"working_dir", "env_vars", "config"})
MAX_ENTRYPOINT = 64 * 1024
MAX_PACKAGE_BYTES = 256 * 1024 * 1024
MAX_UNPACKED_BYTES = 2 * 1024 ** 3
_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}\Z")
_PACKAGE = re.compile(r"[A-Za-z0-9_.-]{1,200}\.zip\Z")
LOG_TAIL_CHARS = 20_000
#: how often a job waiting for its entrypoint resources asks the GCS again
RESERVE_POLL_S = 0.2


class JobError(Exception):
    """A request the supervisor refuses; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Job:
    def __init__(self, row: dict):
        self.row = row
        self.proc: subprocess.Popen | None = None
        self.stop_requested = False
        self.pg_id: bytes | None = None     # the entrypoint resources' reservation


class JobSupervisor:
    def __init__(self, gcs, session_dir: str, gcs_address: str, stop_grace_s: float = 3.0):
        self.gcs = gcs
        self.session_dir = session_dir
        self.gcs_address = gcs_address
        self.stop_grace_s = stop_grace_s
        self.packages_dir = os.path.join(session_dir, "runtime_resources", "packages")
        self.workdirs = os.path.join(session_dir, "runtime_resources", "working_dirs")
        os.makedirs(self.packages_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.workdirs, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._closed = False
        #: bumped at every change of a job row (live pages re-read them then)
        self.version = 0
        # entrypoints start from this thread, made now (by the app's builder,
        # at the normal priority): a request thread may run lowered (see
        # priority.py) and a child inherits its thread's priority
        self._launcher = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="zray-job-launcher")
        self._launcher.submit(int).result()

    # -- rows in the GCS ----------------------------------------------------
    def _save(self, row: dict) -> None:
        self.gcs.call(p.KVPut(JOBS_KV_NAMESPACE, row["submission_id"].encode(),
                              json.dumps(row).encode(), True))
        self.version += 1                   # the live pages re-read the job rows

    def _load(self, submission_id: str) -> dict | None:
        raw = self.gcs.call(p.KVGet(JOBS_KV_NAMESPACE, submission_id.encode())).value
        return json.loads(raw) if raw else None     # KVValueReply: b"" when not found

    def recover(self) -> None:
        """Mark jobs a previous dashboard left RUNNING or PENDING as FAILED
        (ending their processes if they still run): nobody supervises them."""
        for key in self.gcs.call(p.KVKeys(JOBS_KV_NAMESPACE, b"")).keys:
            row = self._load(key.decode(errors="replace"))
            if not row or row["status"] in TERMINAL:
                continue
            pid, started = row.get("driver_pid"), row.get("_process_start")
            try:
                proc = psutil.Process(pid) if pid else None
                if proc is not None and abs(proc.create_time() - (started or 0)) < 1.0:
                    os.killpg(pid, signal.SIGKILL)
            except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                pass
            groups = self.gcs.call(p.GetPlacementGroups(b"", f"_job_{key.decode()}")).groups
            for group in groups:          # what it held for its entrypoint returns
                self.gcs.call(p.RemovePlacementGroup(group.pg_id))
            row.update(status=FAILED, end_time=_now_ms(), error_type="JOB_SUPERVISOR_LOST",
                       message="the dashboard that supervised this job exited while it ran")
            self._save(row)

    # -- packages (working_dir uploads) -------------------------------------
    def package_path(self, protocol: str, name: str) -> str:
        if protocol != "gcs":
            raise JobError(400, f"package protocol must be 'gcs', got {protocol[:20]!r}")
        if not _PACKAGE.match(name) or name.startswith("."):
            raise JobError(400, "package name must look like _ray_pkg_<hash>.zip (letters, "
                                "digits, '_', '-', '.')")
        return os.path.join(self.packages_dir, name)

    def package_exists(self, protocol: str, name: str) -> bool:
        return os.path.isfile(self.package_path(protocol, name))

    def put_package(self, protocol: str, name: str, data: bytes) -> None:
        path = self.package_path(protocol, name)
        if len(data) > MAX_PACKAGE_BYTES:
            raise JobError(413, f"a package may hold {MAX_PACKAGE_BYTES >> 20} MiB at most")
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            with zipfile.ZipFile(tmp) as z:
                _check_members(z)
        except (zipfile.BadZipFile, JobError) as err:
            os.unlink(tmp)
            raise JobError(400, f"the package is not a usable zip file: {err}") from None
        os.replace(tmp, path)

    def _working_dir(self, spec) -> str | None:
        if spec is None:
            return None
        if not isinstance(spec, str) or not spec:
            raise JobError(400, "runtime_env.working_dir must be a string")
        if "://" not in spec:
            if not os.path.isdir(spec):
                raise JobError(400, f"runtime_env.working_dir {spec[:200]!r} is not a "
                                    f"directory of the head node; upload it (the Jobs SDK "
                                    f"and `zray job submit --working-dir` do)")
            return os.path.abspath(spec)
        protocol, _, name = spec.partition("://")
        path = self.package_path(protocol, name)
        if not os.path.isfile(path):
            raise JobError(400, f"package {spec[:200]!r} was never uploaded: PUT it to "
                                f"/api/packages/{protocol}/{name} first")
        target = os.path.join(self.workdirs, name[:-4])
        if not os.path.isdir(target):
            tmp = f"{target}.{uuid.uuid4().hex}.tmp"
            with zipfile.ZipFile(path) as z:
                _check_members(z)
                z.extractall(tmp)
            try:
                os.rename(tmp, target)
            except OSError:             # another submission extracted it first
                _rmtree(tmp)
        return target

    # -- the API ------------------------------------------------------------
    def submit(self, body) -> str:
        """Start a job from a JobSubmitRequest body; its submission id."""
        if not isinstance(body, dict):
            raise JobError(400, "the request body must be a JSON object like "
                                "{\"entrypoint\": \"python script.py\"}")
        unknown = set(body) - REQUEST_FIELDS
        if unknown:
            raise JobError(400, f"unknown field(s) {sorted(unknown)[:5]}; known: "
                                f"{sorted(REQUEST_FIELDS)}")
        entrypoint = body.get("entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise JobError(400, "'entrypoint' must be a non-empty string (a shell command)")
        if len(entrypoint) > MAX_ENTRYPOINT:
            raise JobError(400, f"'entrypoint' is {len(entrypoint)} characters long; at most "
                                f"{MAX_ENTRYPOINT} are accepted (put long code in a file "
                                f"of the working_dir)")
        submission_id = body.get("submission_id") or body.get("job_id") \
            or f"zraysubmit_{uuid.uuid4().hex[:16]}"
        if not isinstance(submission_id, str) or not _ID.match(submission_id):
            raise JobError(400, "'submission_id' must be 1-128 letters, digits, '_', '-' "
                                "or '.'")
        runtime_env = body.get("runtime_env") or {}
        if not isinstance(runtime_env, dict):
            raise JobError(400, "'runtime_env' must be a JSON object")
        unsupported = set(runtime_env) - RUNTIME_ENV_FIELDS
        if unsupported:
            raise JobError(400, f"runtime_env field(s) {sorted(unsupported)[:5]} are not "
                                f"supported by zray (supported: working_dir, env_vars)")
        env_vars = runtime_env.get("env_vars") or {}
        if not isinstance(env_vars, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                and "\0" not in k + v for k, v in env_vars.items()):
            raise JobError(400, "runtime_env.env_vars must map names to string values")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise JobError(400, "'metadata' must map strings to strings")
        bundle = _entrypoint_bundle(body)
        with self._lock:
            if self._closed:
                raise JobError(503, "the dashboard is stopping")
            if submission_id in self._jobs or self._load(submission_id) is not None:
                raise JobError(400, f"Job with submission_id {submission_id} already exists. "
                                    f"Please use a different submission_id.")
            workdir = self._working_dir(runtime_env.get("working_dir"))
            row = {
                "type": "SUBMISSION", "job_id": None, "submission_id": submission_id,
                "driver_info": None, "status": PENDING, "entrypoint": entrypoint,
                "message": "Job has not started yet.", "error_type": None,
                "start_time": _now_ms(), "end_time": None, "metadata": metadata,
                "runtime_env": runtime_env, "driver_agent_http_address": None,
                "driver_node_id": None, "driver_exit_code": None,
                "entrypoint_num_cpus": body.get("entrypoint_num_cpus"),
                "entrypoint_num_gpus": body.get("entrypoint_num_gpus"),
                "entrypoint_memory": body.get("entrypoint_memory"),
                "entrypoint_resources": body.get("entrypoint_resources"),
            }
            job = _Job(row)
            self._jobs[submission_id] = job
            self._save(row)
        if bundle:
            threading.Thread(target=self._reserve_then_start,
                             args=(job, bundle, workdir, env_vars), daemon=True,
                             name=f"job-{submission_id[:20]}-reserve").start()
        else:
            self._start(job, workdir, env_vars)
        return submission_id

    def _reserve_then_start(self, job: _Job, bundle: dict, workdir, env_vars) -> None:
        """Hold ``bundle`` for the job (a placement group), then start it; a
        job stopped meanwhile ends STOPPED without starting."""
        job.pg_id = os.urandom(16)
        sid = job.row["submission_id"]
        try:
            self.gcs.call(p.CreatePlacementGroup(job.pg_id, [bundle], "PACK", f"_job_{sid}",
                                                 b"", True))
            with self._lock:
                job.row["message"] = (f"Job is waiting for its entrypoint resources {bundle} "
                                      f"to become available.")
                self._save(job.row)
            while not job.stop_requested and not self._closed:
                groups = self.gcs.call(p.GetPlacementGroups(job.pg_id, "")).groups
                if groups and groups[0].state == p.PG_CREATED:
                    break
                time.sleep(RESERVE_POLL_S)
        except (TimeoutError, OSError) as err:
            self._finish(job, FAILED, f"could not reserve the entrypoint resources {bundle}: "
                                      f"{err}", None, "JOB_SUPERVISOR_ERROR")
            return
        if job.stop_requested or self._closed:
            self._finish(job, STOPPED, "Job was intentionally stopped.", None)
            return
        self._start(job, workdir, env_vars)

    def _start(self, job: _Job, workdir: str | None, env_vars: dict) -> None:
        row = job.row
        env = dict(os.environ)
        env.pop("ZRAY_DIE_WITH_PARENT", None)
        env.update({"ZRAY_ADDRESS": self.gcs_address,
                    "ZRAY_JOB_SUBMISSION_ID": row["submission_id"],
                    "RAY_JOB_SUBMISSION_ID": row["submission_id"]})
        if workdir:
            env["PYTHONPATH"] = os.pathsep.join(
                [workdir] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.update(env_vars)
        path = self.log_file(row["submission_id"])
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            job.proc = self._launcher.submit(
                subprocess.Popen, row["entrypoint"], shell=True,
                cwd=workdir or self.session_dir, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                close_fds=True).result()
        except OSError as err:
            self._finish(job, FAILED, f"the entrypoint could not start: {err}", None,
                         "JOB_ENTRYPOINT_COMMAND_START_ERROR")
            return
        finally:
            os.close(out)
        with self._lock:
            row.update(status=RUNNING, message="Job is currently running.",
                       driver_pid=job.proc.pid,
                       _process_start=_create_time(job.proc.pid))
            if job.stop_requested:
                self._signal(job, signal.SIGTERM)
            self._save(row)
        log.info("job %s started (pid %d): %s", row["submission_id"], job.proc.pid,
                 row["entrypoint"][:200])
        threading.Thread(target=self._wait, args=(job,), daemon=True,
                         name=f"job-{row['submission_id'][:20]}").start()

    def _wait(self, job: _Job) -> None:
        code = job.proc.wait()
        if job.stop_requested:
            self._finish(job, STOPPED, "Job was intentionally stopped.", code)
        elif code == 0:
            self._finish(job, SUCCEEDED, "Job finished successfully.", code)
        else:
            tail = self.logs(job.row["submission_id"])[-LOG_TAIL_CHARS:]
            self._finish(job, FAILED, f"Job entrypoint command failed with exit code {code}, "
                                      f"last available logs (truncated to {LOG_TAIL_CHARS} "
                                      f"chars):\n{tail}", code, "JOB_ENTRYPOINT_COMMAND_ERROR")

    def _finish(self, job: _Job, status: str, message: str, code, error_type=None) -> None:
        if job.pg_id is not None:                   # its reserved resources return
            try:
                self.gcs.call(p.RemovePlacementGroup(job.pg_id))
            except (TimeoutError, OSError) as err:
                log.error("could not return the resources of job %s: %s",
                          job.row["submission_id"], err)
        with self._lock:
            job.row.update(status=status, message=message, driver_exit_code=code,
                           end_time=_now_ms(), error_type=error_type)
            try:
                self._save(job.row)
            except (TimeoutError, OSError) as err:
                log.error("could not record job %s as %s in the GCS: %s",
                          job.row["submission_id"], status, err)
        log.info("job %s %s (exit code %s)", job.row["submission_id"], status, code)

    def get(self, job_or_submission_id: str) -> dict | None:
        """The job's row (by submission id, or by the job id of its driver)."""
        with self._lock:
            job = self._jobs.get(job_or_submission_id)
            if job is not None:
                return _public(job.row)
        if _ID.match(job_or_submission_id or ""):
            row = self._load(job_or_submission_id)
            if row is not None:
                return _public(row)
        from .rows import job_rows
        for row in job_rows(self.gcs):
            if row.get("job_id") == job_or_submission_id:
                return row
        return None

    def stop(self, submission_id: str) -> bool:
        """Ask a running job to stop; False when it has already ended."""
        with self._lock:
            job = self._jobs.get(submission_id)
            if job is None:
                if self._load(submission_id) is None:
                    raise JobError(404, f"Job {submission_id} does not exist")
                return False
            if job.row["status"] in TERMINAL:
                return False
            job.stop_requested = True
            if job.proc is None:
                return True
            self._signal(job, signal.SIGTERM)
        threading.Thread(target=self._kill_after_grace, args=(job,), daemon=True).start()
        return True

    def _signal(self, job: _Job, sig: int) -> None:
        try:
            os.killpg(job.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_after_grace(self, job: _Job) -> None:
        try:
            job.proc.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            log.info("job %s did not stop within %.1fs of SIGTERM: SIGKILL",
                     job.row["submission_id"], self.stop_grace_s)
            self._signal(job, signal.SIGKILL)

    def delete(self, submission_id: str) -> bool:
        """Forget a finished job (its row and log); JobError if it still runs."""
        with self._lock:
            job = self._jobs.get(submission_id)
            row = job.row if job is not None else self._load(submission_id)
            if row is None:
                raise JobError(404, f"Job {submission_id} does not exist")
            if row["status"] not in TERMINAL:
                raise JobError(400, f"Attempted to delete job with submission_id "
                                    f"{submission_id}, but it is in the non-terminal state "
                                    f"{row['status']}; stop it first")
            self._jobs.pop(submission_id, None)
            self.gcs.call(p.KVDelete(JOBS_KV_NAMESPACE, submission_id.encode()))
        try:
            os.unlink(self.log_file(submission_id))
        except OSError:
            pass
        return True

    def log_file(self, submission_id: str) -> str:
        return log_path(self.session_dir, f"job-driver-{submission_id}.log")

    def logs(self, submission_id: str, offset: int = 0, limit: int = 16 << 20) -> str:
        try:
            with open(self.log_file(submission_id), "rb") as f:
                f.seek(offset)
                return f.read(limit).decode(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop every running job (SIGTERM, then SIGKILL after the grace)."""
        with self._lock:
            self._closed = True
            running = [j for j in self._jobs.values()
                       if j.proc is not None and j.proc.poll() is None]
            for job in running:
                job.stop_requested = True
                self._signal(job, signal.SIGTERM)
        self._launcher.shutdown(wait=False)
        deadline = time.monotonic() + self.stop_grace_s
        for job in running:
            try:
                job.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(job, signal.SIGKILL)


def _entrypoint_bundle(body: dict) -> dict:
    """The resources a request asks to hold for its entrypoint, as one
    bundle ({} for none); JobError (400) for a malformed amount."""
    bundle = {}
    for name, resource in (("entrypoint_num_cpus", "CPU"), ("entrypoint_num_gpus", "GPU"),
                           ("entrypoint_memory", "memory")):
        value = body.get(name)
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, (int, float)) or value < 0):
            raise JobError(400, f"'{name}' must be a number >= 0")
        if value:
            bundle[resource] = float(value)
    resources = body.get("entrypoint_resources") or {}
    if not isinstance(resources, dict) or not all(
            isinstance(k, str) and k and not isinstance(v, bool) and isinstance(v, (int, float))
            and v >= 0 for k, v in resources.items()):
        raise JobError(400, "'entrypoint_resources' must map resource names to numbers >= 0")
    if {"CPU", "GPU", "memory"} & set(resources):
        raise JobError(400, "give CPU, GPU and memory with entrypoint_num_cpus, "
                            "entrypoint_num_gpus and entrypoint_memory, not in "
                            "entrypoint_resources")
    bundle.update({k: float(v) for k, v in resources.items() if v})
    return bundle


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("driver_pid", "_process_start")}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _check_members(z: zipfile.ZipFile) -> None:
    """JobError for a zip that would write outside its directory or expand
    past MAX_UNPACKED_BYTES."""
    if sum(info.file_size for info in z.infolist()) > MAX_UNPACKED_BYTES:
        raise JobError(400, f"the zip expands to more than {MAX_UNPACKED_BYTES >> 30} GiB")
    for name in z.namelist():
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise JobError(400, f"the zip holds a path outside its directory: {name[:100]!r}")


def _rmtree(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)
