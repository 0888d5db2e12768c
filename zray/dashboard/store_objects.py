"""What the object stores of the cluster hold, as ``ray memory`` shows it:
one row per object in the store of each live node, and a summary by owner.

Each live node's raylet is asked (``ListStoreObjects``) at the address in
its GCS node row, all nodes at once, each with its own timeout: a node that
does not answer costs at most ``timeout`` and becomes a warning, never an
error or a hang. Owners are named by the raylets, which know the pid and
kind of their local drivers and workers. Nothing here imports Flask.
"""
from __future__ import annotations

import logging
import threading

from ..broker import protocol as p
from ..broker.rpc import RemoteError, RpcClient

log = logging.getLogger(__name__)

#: how long one node's raylet may take to answer before it is left out
NODE_TIMEOUT_S = 2.0


def _ask(node: p.NodeRow, limit: int, timeout: float, out: dict) -> None:
    client = RpcClient(node.address, timeout, f"raylet of node {node.node_id.hex()[:12]}")
    try:
        out[node.node_id] = client.call(p.ListStoreObjects(limit), timeout=timeout)
    except (TimeoutError, RemoteError, OSError) as err:
        out[node.node_id] = err
    finally:
        client.close()


def ask_raylets(nodes: list[p.NodeRow], limit: int, timeout: float = NODE_TIMEOUT_S
                ) -> tuple[dict, list[str]]:
    """({node id: StoreObjectsReply} of the live nodes that answered within
    ``timeout``; a warning per node that did not). ``nodes``: GCS node rows."""
    replies: dict = {}
    threads = []
    for node in nodes:
        if not node.alive or not node.address:
            continue
        t = threading.Thread(target=_ask, args=(node, limit, timeout, replies),
                             name="zray-dashboard-store-query", daemon=True)
        t.start()
        threads.append((node, t))
    warnings = []
    answers = {}
    for node, t in threads:
        t.join(timeout + 1.0)
        reply = replies.get(node.node_id)
        name = f"node {node.node_id.hex()[:12]} ({node.node_ip or '?'})"
        if isinstance(reply, p.StoreObjectsReply):
            answers[node.node_id] = reply
        elif reply is None:
            warnings.append(f"{name} did not answer within {timeout:.1f}s: its objects "
                            f"are not listed")
        else:
            log.warning("listing the objects of %s failed: %s", name, reply)
            warnings.append(f"{name} did not list its objects: {reply}")
    return answers, warnings


def object_rows(gcs, limit: int = 100, timeout: float = NODE_TIMEOUT_S
                ) -> tuple[list[dict], int, list[str]]:
    """(one row per object, at most ``limit`` per node, most recently used
    first; how many objects the stores hold in all; warnings of nodes left
    out). Row fields: object_id, object_size, node_id, node_ip, state
    (BEING_WRITTEN | PINNED | SEALED | SPILLED), pinned_by (who holds it, as
    text), is_primary, freed, owner_worker_id, owner_pid, owner_type
    (DRIVER | WORKER), owner_node_id, owner_ip; and Ray's ``pid``, ``ip``,
    ``type`` (the owner's)."""
    nodes = gcs.call(p.GetNodes()).nodes
    answers, warnings = ask_raylets(nodes, limit, timeout)
    ip_of = {n.node_id: n.node_ip for n in nodes}
    owners = {}                                      # worker id -> (pid, kind, node id)
    for node_id, reply in answers.items():
        for client in reply.store_clients:
            owners[client.worker_id] = (client.pid, client.kind, node_id)
    rows, total = [], 0
    for node_id, reply in answers.items():
        total += reply.total
        for o in reply.store_objects:
            pid, kind, owner_node = owners.get(o.owner_id, (None, None, None))
            owner_ip = ip_of.get(owner_node) if owner_node else None
            rows.append({
                "object_id": o.object_id.hex(), "object_size": o.size,
                "node_id": node_id.hex(), "node_ip": ip_of.get(node_id, ""),
                "state": o.state,
                "pinned_by": [h.who if h.count == 1 else f"{h.who} (x{h.count})"
                              for h in o.holders],
                "is_primary": bool(o.primary), "freed": bool(o.freed),
                "owner_worker_id": o.owner_id.hex() or None, "owner_pid": pid,
                "owner_type": kind.upper() if kind else None,
                "owner_node_id": owner_node.hex() if owner_node else None,
                "owner_ip": owner_ip,
                "pid": pid, "ip": owner_ip, "type": kind.upper() if kind else None,
            })
    return rows, total, warnings


def summarize_by_owner(rows: list[dict]) -> list[dict]:
    """Per owner (worker id; None for copies whose owner is unknown here):
    owner_pid, owner_type, owner_node_id, count, bytes, pinned (count),
    pinned_bytes, spilled (count), spilled_bytes; the largest owners first."""
    out: dict = {}
    for r in rows:
        key = r["owner_worker_id"]
        s = out.setdefault(key, {"owner_worker_id": key, "owner_pid": r["owner_pid"],
                                 "owner_type": r["owner_type"],
                                 "owner_node_id": r["owner_node_id"], "count": 0, "bytes": 0,
                                 "pinned": 0, "pinned_bytes": 0, "spilled": 0,
                                 "spilled_bytes": 0})
        s["count"] += 1
        s["bytes"] += r["object_size"]
        if r["state"] == "PINNED":
            s["pinned"] += 1
            s["pinned_bytes"] += r["object_size"]
        elif r["state"] == "SPILLED":
            s["spilled"] += 1
            s["spilled_bytes"] += r["object_size"]
    return sorted(out.values(), key=lambda s: -s["bytes"])
