"""zray's settings: one typed object with defaults, overridable by environment.

Every field can be set with an environment variable ``ZRAY_<FIELD>`` (upper
case), e.g. ``ZRAY_NODE_TIMEOUT_S=3``. Daemons receive the driver's settings
through their environment, so one place decides them.
"""
from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass
class Config:
    #: values up to this size travel inside messages; larger ones go to the store
    inline_threshold: int = 100 * 1024
    #: how often a raylet reports to the GCS
    heartbeat_interval_s: float = 0.5
    #: a node that has not reported for this long is declared dead
    node_timeout_s: float = 10.0
    #: bound on a request to a daemon
    rpc_timeout_s: float = 30.0
    #: bound on reaching a cluster at start-up
    connect_timeout_s: float = 5.0
    #: default object store size when none is given: this share of memory
    object_store_fraction: float = 0.3
    #: cap of the default object store size
    object_store_max_bytes: int = 20 * 1024 ** 3
    #: idle workers beyond the node's CPU count are stopped after this long
    idle_worker_timeout_s: float = 10.0
    #: a put or task result that finds the store full of pinned objects and
    #: objects being written retries after this long, doubling up to 1 s ...
    object_store_full_delay_ms: int = 10
    #: ... until this much time has passed; then it raises ObjectStoreFullError
    #: (an object larger than the whole store raises at once)
    object_store_full_timeout_s: float = 10.0
    #: the directory under which sessions live (per user: users never share one)
    temp_dir: str = f"/tmp/zray-{os.getuid()}"
    #: how a driver starts its local daemons: "fork" (of the driver, when it
    #: runs a single thread; else spawned) or "spawn" (fresh interpreters)
    start_method: str = "fork"
    #: how often each core worker sends the task state changes it saw to the
    #: GCS (for the dashboard, `zray timeline`); 0 turns task events off
    task_events_report_interval_ms: int = 1000
    #: task rows the GCS keeps; the oldest are dropped (and counted) past it
    task_events_max: int = 100_000
    #: where the GCS keeps its tables: "memory://" (lost when the GCS exits),
    #: "sqlite:///path/gcs.db" or "redis://host:port/db" (survive a restart)
    gcs_storage: str = "memory://"
    #: a call that needs the GCS while it is down waits this long for it to
    #: come back, then raises a RayError saying the GCS is unreachable
    gcs_reconnect_timeout_s: float = 60.0
    # -- task path
    #: a driver leases a worker from its raylet and sends it its tasks
    #: directly; it gives the worker (and the CPU it holds) back after the
    #: lease was idle this long; 0 turns worker leases off
    worker_lease_idle_ms: int = 100

    @classmethod
    def from_env(cls, environ=None) -> "Config":
        environ = os.environ if environ is None else environ
        values = {}
        for field in dataclasses.fields(cls):
            raw = environ.get("ZRAY_" + field.name.upper())
            if raw is None:
                continue
            kind = type(field.default)
            try:
                values[field.name] = kind(raw)
            except ValueError:
                raise ValueError(
                    f"ZRAY_{field.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)

    def reload(self, environ=None) -> None:
        """Take the settings ``environ`` (default: this process's) says now."""
        fresh = Config.from_env(environ)
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(fresh, field.name))

    def to_env(self) -> dict[str, str]:
        """These settings as ZRAY_* environment variables (for child processes)."""
        return {"ZRAY_" + f.name.upper(): str(getattr(self, f.name))
                for f in dataclasses.fields(self)}


config = Config.from_env()
