"""The job table: one ``protocol.JobRow`` per driver that connected (rows
kept in memory by a ``rows.Table``, stored as dicts through ``storage.put``;
callers get the read-only rows themselves)."""
from __future__ import annotations

import time

from ..broker import protocol as p
from . import rows

TABLE = "jobs"


class JobManager:
    def __init__(self, storage):
        self.storage = storage
        self._table = rows.Table(storage, TABLE, p.JobRow)
        self._next = max([int.from_bytes(k, "big") for k in self._table.keys()],
                         default=0) + 1

    def _put(self, job: p.JobRow) -> p.JobRow:
        return self._table.put(job.job_id, job)

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
        return self._table.get(job_id)

    def all(self) -> list[p.JobRow]:
        return self._table.rows()
