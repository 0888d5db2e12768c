"""The job table: one entry per driver that connected (rows written through,
callers get copies)."""
from __future__ import annotations

import time

from .rows import copy_row

TABLE = "jobs"


class JobManager:
    def __init__(self, storage):
        self.storage = storage
        self._next = max([int.from_bytes(k, "big") for k, _ in storage.items(TABLE)],
                         default=0) + 1

    def register(self, msg) -> dict:
        job_id = self._next.to_bytes(4, "big")
        self._next += 1
        job = {"job_id": job_id, "driver_pid": msg.driver_pid,
               "driver_address": list(msg.driver_address), "namespace": msg.namespace,
               "sys_path": list(msg.sys_path), "cwd": msg.cwd,
               "start_time": time.time(), "end_time": None, "alive": True}
        self.storage.put(TABLE, job_id, job)
        return copy_row(job)

    def finish(self, job_id: bytes) -> dict | None:
        """Mark a job finished; None if it is unknown or finished already."""
        job = self.storage.get(TABLE, job_id)
        if job is None or not job["alive"]:
            return None
        job["alive"] = False
        job["end_time"] = time.time()
        self.storage.put(TABLE, job_id, job)
        return copy_row(job)

    def get(self, job_id: bytes) -> dict | None:
        return copy_row(self.storage.get(TABLE, job_id))

    def all(self) -> list[dict]:
        return [copy_row(j) for _, j in self.storage.items(TABLE)]
