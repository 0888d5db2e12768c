"""The job table: one ``protocol.JobRow`` per driver that connected (rows
stored as dicts through ``storage.put``; callers get copies)."""
from __future__ import annotations

import time

from ..broker import protocol as p
from . import rows

TABLE = "jobs"


class JobManager:
    def __init__(self, storage):
        self.storage = storage
        self._next = max([int.from_bytes(k, "big") for k, _ in storage.items(TABLE)],
                         default=0) + 1

    def _put(self, job: p.JobRow) -> p.JobRow:
        self.storage.put(TABLE, job.job_id, rows.stored(job))
        return job

    def register(self, msg: p.RegisterJob) -> p.JobRow:
        job_id = self._next.to_bytes(4, "big")
        self._next += 1
        return self._put(p.JobRow(
            job_id=job_id, driver_pid=msg.driver_pid, driver_address=list(msg.driver_address),
            namespace=msg.namespace, sys_path=list(msg.sys_path), cwd=msg.cwd,
            start_time=time.time(), end_time=None, alive=True))

    def finish(self, job_id: bytes) -> p.JobRow | None:
        """Mark a job finished; None if it is unknown or finished already."""
        job = self.get(job_id)
        if job is None or not job.alive:
            return None
        return self._put(job._replace(alive=False, end_time=time.time()))

    def get(self, job_id: bytes) -> p.JobRow | None:
        return rows.load(p.JobRow, self.storage.get(TABLE, job_id))

    def all(self) -> list[p.JobRow]:
        return [rows.load(p.JobRow, j) for _, j in self.storage.items(TABLE)]
