"""Task timelines as Chrome trace JSON (opens in Perfetto or chrome://tracing),
as ``ray.timeline`` and ``ray timeline`` make them.

One process lane per node and one thread lane per worker process; each task
that ran is a complete event ("ph": "X") from its start to its end, named
after its function (or ``Class.method``), with its ids, state and error in
``args``.
"""
from __future__ import annotations

import json

from ..broker import protocol as p


def chrome_trace(rows: list[dict]) -> list[dict]:
    """Trace events for task rows as ``GetTaskEvents`` returns them; rows of
    tasks that never started running are left out."""
    nodes: dict[str, int] = {}
    lanes: set[tuple[int, int]] = set()
    trace: list[dict] = []
    for row in sorted(rows, key=lambda r: r.get("start_time_ms") or 0):
        start = row.get("start_time_ms")
        if start is None:
            continue
        end = row.get("end_time_ms")
        node = row.get("node_id") or "unknown"
        pid = nodes.setdefault(node, len(nodes) + 1)
        tid = row.get("worker_pid") or 0
        if (pid, tid) not in lanes:
            lanes.add((pid, tid))
            trace.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                          "args": {"name": f"worker pid={tid} "
                                           f"({(row.get('worker_id') or '')[:12]})"}})
        event = {"ph": "X", "cat": row.get("type") or "task", "name": row.get("name") or "?",
                 "pid": pid, "tid": tid, "ts": start * 1000,
                 "dur": max(0, (end if end is not None else start) - start) * 1000,
                 "args": {"task_id": row.get("task_id"), "state": row.get("state"),
                          "job_id": row.get("job_id"), "actor_id": row.get("actor_id"),
                          "attempt_number": row.get("attempt_number")}}
        if row.get("state") == "FAILED":
            event["cname"] = "terrible"
            event["args"]["error_type"] = row.get("error_type")
            event["args"]["error_message"] = row.get("error_message")
        trace.append(event)
    for node, pid in nodes.items():
        trace.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                      "args": {"name": f"node {node[:12]}"}})
    return trace


def fetch_rows(gcs, timeout: float | None = None) -> list[dict]:
    """Every task row the GCS holds (``gcs``: an RpcClient to it)."""
    return gcs.call(p.GetTaskEvents(0, {}), timeout=timeout).events


def timeline(filename: str | None = None):
    """The task timeline of the cluster this process is connected to: the
    trace events, or None after writing them to ``filename`` as JSON."""
    from ..worker.global_state import require_worker
    trace = chrome_trace(fetch_rows(require_worker().gcs))
    if filename is None:
        return trace
    with open(filename, "w") as f:
        json.dump(trace, f)
    return None
