"""Cluster state as Ray's State API rows: nodes, actors, tasks, jobs,
placement groups, objects and workers, with Ray's field names, filters and
limit; the task summary and the Chrome-trace timeline.

Only a GCS client is needed (``RpcClient`` to the GCS): the dashboard's
``/api/v0/*`` endpoints and ``zray.util.state`` share this module, so both
answer with the same rows. Nothing here imports Flask.
"""
from __future__ import annotations

import logging

from ..broker import protocol as p
from . import store_objects

log = logging.getLogger(__name__)

KINDS = ("nodes", "actors", "tasks", "jobs", "placement_groups", "objects", "workers")
#: Ray's default and largest ``limit`` of a list call
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
PREDICATES = ("=", "!=")
TASK_STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER",
               "RUNNING", "FINISHED", "FAILED")
#: namespace of the GCS KV where the job supervisor keeps its job rows
JOBS_KV_NAMESPACE = "__zray_jobs__"


class StateError(ValueError):
    """A list call with a bad kind, filter or limit (the message says which)."""


def _hex(value) -> str | None:
    if isinstance(value, (bytes, bytearray)):
        return value.hex() if value else None
    return value or None


def _ms(seconds) -> int | None:
    return int(seconds * 1000) if seconds else None


# --------------------------------------------------------------------------
# one function per kind: GCS records -> Ray rows
# --------------------------------------------------------------------------

def node_rows(gcs) -> list[dict]:
    nodes = gcs.call(p.GetNodes()).nodes
    first = min((n.start_time or 0 for n in nodes), default=0)
    rows = []
    for n in nodes:
        rows.append({
            "node_id": n.node_id.hex(), "node_ip": n.node_ip,
            "is_head_node": bool(n.start_time == first),
            "state": "ALIVE" if n.alive else "DEAD",
            "state_message": None if n.alive else "the node stopped or missed heartbeats",
            "node_name": n.node_ip, "hostname": n.hostname,
            "resources_total": dict(n.resources),
            "resources_available": dict(n.available),
            "object_store_used_bytes": n.store_used,
            "object_store_capacity_bytes": n.arena_size,
            "stats": n.stats or {}, "raylet_pid": n.pid,
            "start_time_ms": _ms(n.start_time), "end_time_ms": _ms(n.end_time),
            "labels": {},
        })
    return rows


def actor_rows(gcs) -> list[dict]:
    rows = []
    for a in gcs.call(p.ListActors()).actors:
        rows.append({
            "actor_id": a.actor_id.hex(), "class_name": a.class_name,
            "state": a.state, "job_id": _hex(a.job_id), "name": a.name or "",
            "node_id": _hex(a.node_id), "pid": a.pid or None,
            "ray_namespace": a.namespace, "num_restarts": a.restarts,
            "is_detached": bool(a.detached),
            "death_cause": ({"actor_died_error_context": {"error_message": a.death_message}}
                            if a.death_message else None),
            "repr_name": "", "start_time_ms": _ms(a.start_time),
            "end_time_ms": _ms(a.end_time),
        })
    return rows


#: task fields the GCS itself filters on (equality)
GCS_TASK_FILTERS = frozenset({"task_id", "name", "func_or_class_name", "state", "job_id",
                              "actor_id", "node_id", "worker_id", "type"})


def task_events(gcs, limit: int = 0, filters: dict | None = None) -> tuple[list, int]:
    """(task rows as the GCS keeps them, oldest first: the ``limit`` newest
    (all for 0) equal to ``filters``; how many events the GCS dropped);
    ([], 0) while the GCS has no task-event table."""
    request = getattr(p, "GetTaskEvents", None)
    if request is None:
        return [], 0
    reply = gcs.call(request(limit, filters or {}))
    return list(reply.events), int(reply.dropped)


def task_row(e: dict) -> dict:
    """One task event record (the GCS's, Ray's names) as a State API row."""
    history = e.get("events") or []
    created = history[0].get("created_ms") if history else None
    return {
        "task_id": _hex(e.get("task_id")), "attempt_number": e.get("attempt_number", 0),
        "name": e.get("name") or e.get("func_or_class_name") or "",
        "state": e.get("state"), "job_id": _hex(e.get("job_id")),
        "actor_id": _hex(e.get("actor_id")), "type": e.get("type") or "NORMAL_TASK",
        "func_or_class_name": e.get("func_or_class_name") or e.get("name") or "",
        "parent_task_id": _hex(e.get("parent_task_id")), "node_id": _hex(e.get("node_id")),
        "worker_id": _hex(e.get("worker_id")), "worker_pid": e.get("worker_pid"),
        "error_type": e.get("error_type"), "error_message": e.get("error_message"),
        "language": "PYTHON", "required_resources": e.get("required_resources") or {},
        "creation_time_ms": e.get("creation_time_ms") or created,
        "start_time_ms": e.get("start_time_ms"), "end_time_ms": e.get("end_time_ms"),
        "events": [{"state": h.get("state"), "created_ms": h.get("created_ms")}
                   for h in history],
    }


#: the fields of a task row a live page draws (its task stream and table)
STREAM_TASK_FIELDS = ("task_id", "name", "func_or_class_name", "state", "worker_id",
                      "start_time_ms", "end_time_ms", "error_type")


def stream_task_row(row: dict) -> dict:
    """A task row cut to ``STREAM_TASK_FIELDS``, for the live stream."""
    return {k: row[k] for k in STREAM_TASK_FIELDS}


def task_rows(gcs, limit: int = DEFAULT_LIMIT) -> tuple[list[dict], int]:
    """(the ``limit`` newest task rows as State API rows, oldest first; how
    many events the GCS dropped). ``limit`` 0 reads the whole table, which
    costs the GCS about a second of its loop at 100,000 rows: counts come
    from ``task_summary`` instead."""
    events, dropped = task_events(gcs, limit)
    return [task_row(e) for e in events], dropped


def task_summary(gcs) -> dict:
    """The GCS's counts of its task table, no rows travelling (a scan of
    the table in the GCS: about 0.1 s at 100,000 rows): ``by_state``
    {state: n}, ``by_name`` {name: {state: n}}, ``types`` {name: Ray's task
    type}, ``total`` rows and the events ``dropped``."""
    reply = gcs.call(p.GetTaskSummary())
    return {"by_state": dict(reply.by_state), "by_name": dict(reply.by_name),
            "types": dict(reply.types or {}), "total": int(reply.total),
            "dropped": int(reply.dropped)}


def driver_jobs(gcs) -> list[p.JobRow]:
    """The GCS's job table (one entry per driver that connected)."""
    return gcs.call(p.GetClusterInfo()).jobs


def submitted_jobs(gcs) -> list[dict]:
    """Job rows the job supervisor keeps in the GCS KV (Ray's JobDetails)."""
    import json
    rows = []
    for key in gcs.call(p.KVKeys(JOBS_KV_NAMESPACE, b"")).keys:
        found = gcs.call(p.KVGet(JOBS_KV_NAMESPACE, key))
        if not found.found:
            continue
        try:
            rows.append(json.loads(found.value))
        except ValueError as err:
            log.warning("job row %r in the GCS is not JSON (%s): skipped", key[:40], err)
    return rows


def job_rows(gcs) -> list[dict]:
    """Submitted jobs (type SUBMISSION) and the drivers that are not one of
    them (type DRIVER), in Ray's JobDetails shape."""
    submitted = submitted_jobs(gcs)
    by_pid = {row.get("driver_pid"): row for row in submitted if row.get("driver_pid")}
    rows = []
    for job in driver_jobs(gcs):
        job_id = job.job_id.hex()
        owner = by_pid.get(job.driver_pid)
        if owner is not None:
            owner["job_id"] = job_id
            continue
        rows.append({
            "type": "DRIVER", "job_id": job_id, "submission_id": None,
            "status": "RUNNING" if job.alive else "SUCCEEDED",
            "entrypoint": "", "message": None, "error_type": None,
            "start_time": _ms(job.start_time), "end_time": _ms(job.end_time),
            "metadata": {}, "runtime_env": {},
            "driver_info": {"id": job_id, "node_ip_address": "",
                            "pid": str(job.driver_pid)},
            "driver_agent_http_address": None, "driver_node_id": None,
            "driver_exit_code": None,
        })
    for row in submitted:
        row = dict(row)
        row.pop("driver_pid", None)
        row.pop("_process_start", None)
        rows.append(row)
    return sorted(rows, key=lambda r: r.get("start_time") or 0)


def placement_group_rows(gcs) -> list[dict]:
    rows = []
    for pg in gcs.call(p.GetPlacementGroups(b"", "")).groups:
        rows.append({
            "placement_group_id": pg.pg_id.hex(), "name": pg.name,
            "state": pg.state, "strategy": pg.strategy,
            "creator_job_id": _hex(pg.job_id), "is_detached": bool(pg.detached),
            "bundles": [{"bundle_id": i, "node_id": _hex(node_id), "unit_resources": bundle}
                        for i, (bundle, node_id) in enumerate(zip(pg.bundles, pg.nodes))],
        })
    return rows


def store_rows(gcs) -> list[dict]:
    """Per node, the totals of its object store: one row per node's store
    (the objects themselves: ``store_objects.object_rows``)."""
    rows = []
    for n in node_rows(gcs):
        stats = n["stats"]
        rows.append({
            "node_id": n["node_id"], "ip": n["node_ip"], "state": n["state"],
            "object_store_used_bytes": stats.get("store_used", n["object_store_used_bytes"]),
            "object_store_spilled_bytes": stats.get("store_spilled", 0),
            "object_store_capacity_bytes": n["object_store_capacity_bytes"],
            "disk_used_bytes": stats.get("disk_used"),
            "disk_total_bytes": stats.get("disk_total"),
        })
    return rows


def worker_rows(gcs) -> list[dict]:
    """Workers seen running the newest ``MAX_LIMIT`` tasks (task events)
    and hosting actors."""
    workers: dict[str, dict] = {}
    tasks, _ = task_rows(gcs, MAX_LIMIT)
    for t in tasks:
        if t["worker_id"]:
            workers.setdefault(t["worker_id"], {
                "worker_id": t["worker_id"], "is_alive": True, "worker_type": "WORKER",
                "node_id": t["node_id"], "pid": t["worker_pid"], "actor_id": None})
    for a in actor_rows(gcs):
        if a["pid"]:
            key = f"actor-{a['actor_id']}"
            workers[key] = {"worker_id": key, "is_alive": a["state"] != "DEAD",
                            "worker_type": "WORKER", "node_id": a["node_id"],
                            "pid": a["pid"], "actor_id": a["actor_id"]}
    return list(workers.values())


_ROWS = {"nodes": node_rows, "actors": actor_rows, "jobs": job_rows,
         "placement_groups": placement_group_rows, "workers": worker_rows}


# --------------------------------------------------------------------------
# filters, limit, the list call
# --------------------------------------------------------------------------

def parse_filters(filters) -> list[tuple[str, str, str]]:
    """Ray's filters: a list of ``(key, "=" | "!=", value)``; StateError if not."""
    out = []
    for item in filters or []:
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise StateError(f"a filter is (key, predicate, value), got {item!r:.80}")
        key, predicate, value = item
        if predicate not in PREDICATES:
            raise StateError(f"filter predicate must be one of {PREDICATES}, "
                             f"got {predicate!r:.20}")
        out.append((str(key), predicate, str(value)))
    return out


def _matches(row: dict, filters) -> bool:
    for key, predicate, value in filters:
        have = row.get(key)
        text = ("true" if have else "false") if isinstance(have, bool) else str(have)
        equal = text.lower() == value.lower() if isinstance(have, bool) else text == value
        if equal != (predicate == "="):
            return False
    return True


def list_state(gcs, kind: str, filters=None, limit: int = DEFAULT_LIMIT) -> dict:
    """Ray's ListApiResponse for ``kind``: {total, num_after_truncation,
    num_filtered, result, partial_failure_warning, warnings}."""
    kind = kind.replace("-", "_")
    if kind not in KINDS:
        raise StateError(f"unknown resource {kind!r}: one of {', '.join(KINDS)}")
    if not isinstance(limit, int) or not 0 < limit <= MAX_LIMIT:
        raise StateError(f"limit must be an integer in 1..{MAX_LIMIT}, got {limit!r:.20}")
    filters = parse_filters(filters)
    warnings = []
    if kind == "tasks":
        pushed = {k: v for k, pred, v in filters if pred == "=" and k in GCS_TASK_FILTERS}
        rest = [f for f in filters if not (f[1] == "=" and f[0] in GCS_TASK_FILTERS)]
        # only equality on fields the GCS knows: it filters and limits (fast with
        # 100,000 rows); num_filtered is then limit + 1 when more rows match.
        # Other filters search the newest MAX_LIMIT rows (as Ray's State API)
        events, dropped = task_events(gcs, MAX_LIMIT if rest else limit + 1, pushed)
        rows = [task_row(e) for e in reversed(events)]          # newest first
        filters = rest
        if rest and len(events) >= MAX_LIMIT:
            warnings.append(f"only the newest {MAX_LIMIT} tasks were searched for "
                            f"{rest!r:.200}: filter on '=' of {sorted(GCS_TASK_FILTERS)} "
                            f"to search them all")
        if dropped:
            warnings.append(f"{dropped} task events were dropped by the GCS (its table is "
                            f"bounded); the oldest tasks are missing")
    elif kind == "objects":
        # every live node's store: the ``limit`` most recently used objects of
        # each (the newest MAX_LIMIT of each when filtering); total: all objects
        rows, stored, node_warnings = store_objects.object_rows(
            gcs, MAX_LIMIT if filters else limit)
        warnings.extend(node_warnings)
    else:
        rows = _ROWS[kind](gcs)
    total = max(stored, len(rows)) if kind == "objects" else len(rows)
    matched = [r for r in rows if _matches(r, filters)]
    return {"total": total, "num_after_truncation": min(len(matched), limit),
            "num_filtered": len(matched), "result": matched[:limit],
            "partial_failure_warning": "", "warnings": warnings or None}


# --------------------------------------------------------------------------
# summaries and the timeline
# --------------------------------------------------------------------------

def summarize_tasks(counts: dict) -> dict:
    """Ray's task summary (per function name, counts by state) of
    ``task_summary``'s counts."""
    types = counts.get("types") or {}
    summary: dict[str, dict] = {}
    by_type: dict[str, int] = {}
    for name, states in counts.get("by_name", {}).items():
        kind = types.get(name) or "NORMAL_TASK"
        name = name or "?"
        entry = summary.setdefault(name, {"func_or_class_name": name, "type": kind,
                                          "state_counts": {}})
        for state, n in states.items():
            entry["state_counts"][state] = entry["state_counts"].get(state, 0) + n
            by_type[kind] = by_type.get(kind, 0) + n
    return {"summary": summary, "total_tasks": sum(by_type.values()),
            "total_actor_tasks": by_type.get("ACTOR_TASK", 0),
            "total_actor_scheduled": by_type.get("ACTOR_CREATION_TASK", 0),
            "summary_by": "func_name"}


def counts_by(rows: list[dict], key: str) -> dict:
    out: dict = {}
    for r in rows:
        out[r.get(key)] = out.get(r.get(key), 0) + 1
    return out
