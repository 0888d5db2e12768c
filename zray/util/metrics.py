"""User metrics, as in ``ray.util.metrics``: ``Counter``, ``Gauge``, ``Histogram``.

Create and record them anywhere: in the driver, a task or an actor. Each
process keeps its values and its core worker sends them to the GCS about once
a second (with its task events); the GCS sums them over processes and serves
them to the dashboard (``GetMetrics``), which exports them to Prometheus.

    from zray.util.metrics import Counter
    requests = Counter("requests", description="requests served", tag_keys=("route",))
    requests.inc(tags={"route": "/home"})

Metrics of the same name in one process share their values; the tags given
(with the default tags) must name exactly the metric's ``tag_keys``.
"""
from __future__ import annotations

import bisect
import math
import re
import threading

from ..broker import protocol as p
from ..worker import global_state

__all__ = ["Counter", "Gauge", "Histogram", "Metric"]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


class _Series:
    """The values of one metric name in this process."""
    __slots__ = ("name", "type", "description", "tag_keys", "boundaries", "values")

    def __init__(self, name, kind, description, tag_keys, boundaries):
        self.name, self.type, self.description = name, kind, description
        self.tag_keys, self.boundaries = tag_keys, boundaries
        self.values: dict[tuple, object] = {}     # tag values (in tag_keys order) -> value


class _Registry:
    """Every metric series of this process, and what was last sent."""

    def __init__(self):
        self.lock = threading.Lock()
        self.series: dict[str, _Series] = {}
        self.version = 0            # bumped by every change
        self.hooked = None          # the core worker that reports them

    def series_for(self, name, kind, description, tag_keys, boundaries=None) -> _Series:
        with self.lock:
            series = self.series.get(name)
            if series is None:
                series = self.series[name] = _Series(name, kind, description, tag_keys,
                                                     boundaries)
                self.version += 1
            elif series.type != kind or series.tag_keys != tag_keys \
                    or series.boundaries != boundaries:
                raise ValueError(
                    f"a metric named {name!r} already exists in this process as a "
                    f"{series.type} with tag_keys={series.tag_keys}"
                    + (f" and boundaries={series.boundaries}" if series.boundaries else "")
                    + "; give this one another name or the same definition")
        return series

    def changed(self) -> None:
        """(lock held) A value changed; make sure a core worker reports it."""
        self.version += 1
        worker = global_state.worker
        if worker is not None and worker is not self.hooked:
            self.hooked = worker
            worker.task_events.sources.append(_Collector(self, worker.worker_id))

    def snapshot(self) -> list[dict]:
        with self.lock:
            out = []
            for s in self.series.values():
                samples = []
                for key, value in s.values.items():
                    if s.type == "histogram":
                        value = {"buckets": list(value[0]), "sum": value[1], "count": value[2]}
                    samples.append({"tags": dict(zip(s.tag_keys, key)), "value": value})
                metric = {"name": s.name, "description": s.description, "type": s.type,
                          "tag_keys": list(s.tag_keys), "samples": samples}
                if s.type == "histogram":
                    metric["boundaries"] = list(s.boundaries)
                out.append(metric)
            return out


class _Collector:
    """Called by the core worker's flush: the metrics, when they changed."""

    def __init__(self, registry: _Registry, worker_id: bytes):
        self.registry = registry
        self.worker_id = worker_id
        self.sent_version = -1

    def __call__(self):
        version = self.registry.version
        if version == self.sent_version:
            return None
        self.sent_version = version
        return p.ReportMetrics(self.worker_id, self.registry.snapshot())


_registry = _Registry()


class Metric:
    """Base of the metric types: a name, a description, tag keys and default tags."""

    _type = ""

    def __init__(self, name: str, description: str = "", tag_keys=None, _boundaries=None):
        if not isinstance(name, str) or not name:
            raise ValueError("a metric needs a name (a non-empty string)")
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r} is not valid: use letters, digits, '_' "
                             f"and ':', not starting with a digit (Prometheus' rule)")
        if tag_keys is None:
            tag_keys = ()
        if isinstance(tag_keys, str) or not isinstance(tag_keys, (tuple, list)):
            raise TypeError(f"tag_keys must be a tuple of strings, got {tag_keys!r}")
        for key in tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"tag_keys must be strings, got {key!r}")
        if not isinstance(description, str):
            raise TypeError(f"description must be a string, got {type(description).__name__}")
        self._name = name
        self._description = description
        self._tag_keys = tuple(tag_keys)
        self._default_tags: dict[str, str] = {}
        self._series = _registry.series_for(name, self._type, description, self._tag_keys,
                                            _boundaries)

    @property
    def info(self) -> dict:
        return {"name": self._name, "description": self._description,
                "tag_keys": self._tag_keys, "default_tags": dict(self._default_tags)}

    def set_default_tags(self, default_tags: dict) -> "Metric":
        """Tags used when a record does not give them; returns the metric."""
        for key, value in default_tags.items():
            self._check_tag(key, value)
        self._default_tags = dict(default_tags)
        return self

    def _check_tag(self, key, value) -> None:
        if key not in self._tag_keys:
            raise ValueError(f"unknown tag key {key!r}: this metric's tag_keys are "
                             f"{self._tag_keys}")
        if not isinstance(value, str):
            raise TypeError(f"tag values must be strings, got {key}={value!r}")

    def _key(self, tags) -> tuple:
        merged = dict(self._default_tags)
        if tags:
            for key, value in tags.items():
                self._check_tag(key, value)
                merged[key] = value
        missing = [k for k in self._tag_keys if k not in merged]
        if missing:
            raise ValueError(f"Missing value for tag key(s) {missing} of metric "
                             f"{self._name!r}: pass them in tags= or set_default_tags()")
        return tuple(merged[k] for k in self._tag_keys)

    @staticmethod
    def _number(value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise TypeError(f"a metric value must be a finite number, got {value!r}")
        return float(value)


class Counter(Metric):
    """A value that only goes up (``inc``)."""

    _type = "counter"

    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        value = self._number(value)
        if value <= 0:
            raise ValueError(f"value must be > 0, got {value}")
        key = self._key(tags)
        values = self._series.values
        with _registry.lock:
            values[key] = values.get(key, 0.0) + value
            _registry.changed()

    def record(self, value: float, tags: dict | None = None) -> None:
        self.inc(value, tags)


class Gauge(Metric):
    """A value that goes up and down (``set``)."""

    _type = "gauge"

    def set(self, value: float, tags: dict | None = None) -> None:
        value = self._number(value)
        key = self._key(tags)
        with _registry.lock:
            self._series.values[key] = value
            _registry.changed()

    def record(self, value: float, tags: dict | None = None) -> None:
        self.set(value, tags)


class Histogram(Metric):
    """A distribution of observed values over buckets with upper ``boundaries``."""

    _type = "histogram"

    def __init__(self, name: str, description: str = "", boundaries=None, tag_keys=None):
        if not boundaries or not isinstance(boundaries, (list, tuple)):
            raise ValueError("a Histogram needs boundaries: a non-empty list of bucket upper "
                             "bounds, e.g. [0.1, 1, 10]")
        bounds = [self._number(b) for b in boundaries]
        if any(b <= 0 for b in bounds):
            raise ValueError(f"Invalid boundaries {list(boundaries)}: each must be > 0")
        if any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"Invalid boundaries {list(boundaries)}: they must increase")
        super().__init__(name, description, tag_keys, _boundaries=bounds)
        self.boundaries = bounds

    def observe(self, value: float, tags: dict | None = None) -> None:
        value = self._number(value)
        key = self._key(tags)
        index = bisect.bisect_left(self.boundaries, value)
        with _registry.lock:
            entry = self._series.values.get(key)
            if entry is None:
                entry = self._series.values[key] = [[0] * (len(self.boundaries) + 1), 0.0, 0]
            entry[0][index] += 1
            entry[1] += value
            entry[2] += 1
            _registry.changed()

    def record(self, value: float, tags: dict | None = None) -> None:
        self.observe(value, tags)

    @property
    def info(self) -> dict:
        return {**super().info, "boundaries": list(self.boundaries)}
