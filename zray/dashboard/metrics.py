"""``GET /metrics``: the cluster in Prometheus text, made with
``prometheus_client`` from a fresh read of the GCS at each scrape (task
counts from its summary: no task rows travel).

Series (all prefixed ``zray_``): per node ``node_cpu_total``/``node_cpu_used``
(logical CPUs), ``node_cpu_percent``, ``node_mem_used_bytes``/
``node_mem_total_bytes``, ``node_object_store_used_bytes``/
``..._spilled_bytes``/``..._capacity_bytes``, ``node_workers``; cluster-wide
``tasks{State}``, ``actors{State}``, ``nodes{State}`` and
``gcs_requests_per_second`` (since the previous scrape); and user metrics
(``zray.util.metrics`` Counter/Gauge/Histogram) as ``ray_<name>``.
"""
from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from ..broker import protocol as p
from . import rows

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: user metrics (zray.util.metrics) appear as ray_<name>, as in Ray
USER_PREFIX = "ray_"


def _metric_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


class ClusterCollector:
    """A prometheus_client collector reading the GCS at each scrape."""

    def __init__(self, gcs):
        self.gcs = gcs
        self._lock = threading.Lock()
        self._last: tuple[float, int] | None = None   # (monotonic, requests served)

    def _requests_per_s(self, served: int | None) -> float:
        if served is None:
            return 0.0
        now = time.monotonic()
        with self._lock:
            last, self._last = self._last, (now, served)
        if last is None or now <= last[0]:
            return 0.0
        return max(0.0, (served - last[1]) / (now - last[0]))

    def collect(self):
        info = self.gcs.call(p.GetClusterInfo())
        per_node = {
            "node_cpu_total": GaugeMetricFamily("zray_node_cpu_total",
                                                "logical CPUs of the node", labels=["NodeId"]),
            "node_cpu_used": GaugeMetricFamily("zray_node_cpu_used",
                                               "logical CPUs in use by tasks and actors",
                                               labels=["NodeId"]),
            "node_cpu_percent": GaugeMetricFamily("zray_node_cpu_percent",
                                                  "host CPU utilisation (%)", labels=["NodeId"]),
            "node_mem_used_bytes": GaugeMetricFamily("zray_node_mem_used_bytes",
                                                     "host memory in use", labels=["NodeId"]),
            "node_mem_total_bytes": GaugeMetricFamily("zray_node_mem_total_bytes",
                                                      "host memory", labels=["NodeId"]),
            "node_object_store_used_bytes": GaugeMetricFamily(
                "zray_node_object_store_used_bytes", "object store bytes in use",
                labels=["NodeId"]),
            "node_object_store_spilled_bytes": GaugeMetricFamily(
                "zray_node_object_store_spilled_bytes", "object bytes spilled to disk",
                labels=["NodeId"]),
            "node_object_store_capacity_bytes": GaugeMetricFamily(
                "zray_node_object_store_capacity_bytes", "object store size",
                labels=["NodeId"]),
            "node_workers": GaugeMetricFamily("zray_node_workers", "worker processes",
                                              labels=["NodeId"]),
            "node_disk_used_bytes": GaugeMetricFamily("zray_node_disk_used_bytes",
                                                      "disk in use where the session lives",
                                                      labels=["NodeId"]),
            "node_disk_total_bytes": GaugeMetricFamily("zray_node_disk_total_bytes",
                                                       "disk size where the session lives",
                                                       labels=["NodeId"]),
        }
        nodes_by_state = GaugeMetricFamily("zray_nodes", "nodes by state", labels=["State"])
        counts = {"ALIVE": 0, "DEAD": 0}
        for n in info.nodes:
            counts["ALIVE" if n.alive else "DEAD"] += 1
            if not n.alive:
                continue
            node_id = n.node_id.hex()
            stats = n.stats or {}
            total = n.resources.get("CPU", 0.0)
            values = {
                "node_cpu_total": total,
                "node_cpu_used": max(0.0, total - n.available.get("CPU", 0.0)),
                "node_cpu_percent": stats.get("cpu_percent", 0.0),
                "node_mem_used_bytes": stats.get("mem_used", 0),
                "node_mem_total_bytes": stats.get("mem_total", 0),
                "node_object_store_used_bytes": stats.get("store_used", n.store_used),
                "node_object_store_spilled_bytes": stats.get("store_spilled", 0),
                "node_object_store_capacity_bytes": n.arena_size,
                "node_workers": stats.get("num_workers", 0),
                "node_disk_used_bytes": stats.get("disk_used", 0),
                "node_disk_total_bytes": stats.get("disk_total", 0),
            }
            for key, value in values.items():
                per_node[key].add_metric([node_id], float(value or 0))
        for state, count in counts.items():
            nodes_by_state.add_metric([state], count)
        yield from per_node.values()
        yield nodes_by_state

        tasks = GaugeMetricFamily("zray_tasks", "tasks by state (in the GCS's task "
                                                "event table)", labels=["State"])
        by_state = {s: 0 for s in rows.TASK_STATES}
        by_state.update(rows.task_summary(self.gcs)["by_state"])
        for state, count in by_state.items():
            tasks.add_metric([str(state)], count)
        yield tasks

        actors = GaugeMetricFamily("zray_actors", "actors by state", labels=["State"])
        by_state = {s: 0 for s in p.ACTOR_STATES}
        for actor in self.gcs.call(p.ListActors()).actors:
            by_state[actor.state] = by_state.get(actor.state, 0) + 1
        for state, count in by_state.items():
            actors.add_metric([str(state)], count)
        yield actors

        rate = GaugeMetricFamily("zray_gcs_requests_per_second",
                                 "requests the GCS served per second since the last scrape")
        rate.add_metric([], self._requests_per_s(info.requests_served))
        yield rate
        yield from self._user_metrics()

    def _user_metrics(self):
        """What tasks and actors report through zray.util.metrics."""
        request = getattr(p, "GetMetrics", None)
        if request is None:
            return
        for m in getattr(self.gcs.call(request()), "metrics", []):
            name = USER_PREFIX + _metric_name(m["name"])
            keys = list(m.get("tag_keys", []))
            doc = m.get("description") or m["name"]
            if m["type"] == "counter":
                family = CounterMetricFamily(name, doc, labels=keys)
            elif m["type"] == "histogram":
                family = HistogramMetricFamily(name, doc, labels=keys)
            else:
                family = GaugeMetricFamily(name, doc, labels=keys)
            for sample in m.get("samples", []):
                labels = [str(sample.get("tags", {}).get(k, "")) for k in keys]
                value = sample["value"]
                if m["type"] == "histogram":
                    bounds = [str(b) for b in m.get("boundaries", [])] + ["+Inf"]
                    running, buckets = 0.0, []
                    for bound, count in zip(bounds, value["buckets"]):
                        running += count
                        buckets.append((bound, running))
                    family.add_metric(labels, buckets, value["sum"])
                else:
                    family.add_metric(labels, value)
            yield family


def make_registry(gcs) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(gcs))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
