"""The State API, as ``ray.util.state``: ``list_nodes``, ``list_actors``,
``list_tasks``, ``list_jobs``, ``list_placement_groups``, ``list_objects``,
``list_workers`` and ``summarize_tasks``.

Rows are dicts with Ray's field names (the same rows as the dashboard's
``GET /api/v0/<kind>``); ``filters`` is a list of ``(key, "=" | "!=", value)``
and ``limit`` caps the rows returned (default 100). They ask the GCS
directly: the cluster this process is connected to, else ``address``
(``host:port`` of a GCS, or ``"auto"``: this host's ``zray start --head``),
with the key ``ZRAY_CLUSTER_KEY[_FILE]`` names or that this host holds for it.
"""
from __future__ import annotations

import contextlib
import os

from ..dashboard import rows

__all__ = ["list_nodes", "list_actors", "list_tasks", "list_jobs", "list_placement_groups",
           "list_objects", "list_workers", "summarize_tasks", "summarize_objects",
           "StateApiError"]

StateApiError = rows.StateError


@contextlib.contextmanager
def _gcs(address: str | None):
    from ..worker import global_state
    if address is None and global_state.worker is not None:
        yield global_state.worker.gcs
        return
    from ..broker import security, sockets
    from ..broker.rpc import RpcClient
    from ..config import config
    from .._private.node import find_cluster_key
    from .._private.session import read_current_cluster
    if address in (None, "auto"):
        address = os.environ.get("ZRAY_ADDRESS") if address is None else None
        if not address or address == "auto":
            current = read_current_cluster()
            if current is None:
                raise ConnectionError("no zray cluster to ask: call zray.init() first, pass "
                                      "address='host:port', or start one with `zray start "
                                      "--head`")
            address = current["gcs_address"]
    if security.from_env() is None:
        key_file = find_cluster_key(address)
        if key_file is None:
            raise ConnectionError(f"no cluster key for the cluster at {address}: set "
                                  f"{security.ENV_KEY_FILE}")
        os.environ[security.ENV_KEY_FILE] = key_file
    gcs = RpcClient(sockets.tcp_endpoint(address), config.connect_timeout_s, "GCS")
    try:
        yield gcs
    finally:
        gcs.close()


def _list(kind: str, address, filters, limit, detail, raise_on_missing_output=True,
          _explain=False) -> list[dict]:
    with _gcs(address) as gcs:
        return rows.list_state(gcs, kind, filters, limit)["result"]


def list_nodes(address=None, filters=None, limit=rows.DEFAULT_LIMIT, detail=False,
               **kwargs) -> list[dict]:
    return _list("nodes", address, filters, limit, detail)


def list_actors(address=None, filters=None, limit=rows.DEFAULT_LIMIT, detail=False,
                **kwargs) -> list[dict]:
    return _list("actors", address, filters, limit, detail)


def list_tasks(address=None, filters=None, limit=rows.DEFAULT_LIMIT, detail=False,
               **kwargs) -> list[dict]:
    return _list("tasks", address, filters, limit, detail)


def list_jobs(address=None, filters=None, limit=rows.DEFAULT_LIMIT, detail=False,
              **kwargs) -> list[dict]:
    return _list("jobs", address, filters, limit, detail)


def list_placement_groups(address=None, filters=None, limit=rows.DEFAULT_LIMIT, detail=False,
                          **kwargs) -> list[dict]:
    return _list("placement_groups", address, filters, limit, detail)


def list_objects(address=None, filters=None, limit=rows.DEFAULT_LIMIT, detail=False,
                 **kwargs) -> list[dict]:
    """The objects in the stores of every live node, as ``ray memory`` lists
    them: object_id, object_size, state (BEING_WRITTEN, PINNED, SEALED,
    SPILLED), pinned_by, node_id, owner_worker_id, owner_pid, owner_type;
    ``limit`` objects of each node at most. A node that does not answer
    within 2 s is left out."""
    return _list("objects", address, filters, limit, detail)


def summarize_objects(address=None, limit=rows.MAX_LIMIT, **kwargs) -> list[dict]:
    """Per owner of objects in the stores: count, bytes, pinned and spilled
    (counts and bytes); the largest owners first (``limit`` objects of each
    node are counted)."""
    from ..dashboard import store_objects
    with _gcs(address) as gcs:
        objects, _, _ = store_objects.object_rows(gcs, limit)
    return store_objects.summarize_by_owner(objects)


def list_workers(address=None, filters=None, limit=rows.DEFAULT_LIMIT, detail=False,
                 **kwargs) -> list[dict]:
    return _list("workers", address, filters, limit, detail)


def summarize_tasks(address=None, **kwargs) -> dict:
    """Per function name, the number of tasks in each state (counted by the
    GCS over its whole task table)."""
    with _gcs(address) as gcs:
        return rows.summarize_tasks(rows.task_summary(gcs))
