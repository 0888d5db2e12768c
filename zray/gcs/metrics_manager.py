"""User metrics (``zray.util.metrics``): the latest values each process
reported, summed over processes when asked.

Each core worker reports the current values of all its metrics (counters and
histograms cumulative since the process started), so the GCS keeps only the
latest report per process and merges on reading: counters and histograms add
up over processes (those of exited processes included), a gauge shows the
value reported last. Bounded: at most ``MAX_METRICS`` metrics per report and
``MAX_SAMPLES`` tag sets per metric are kept, and past ``MAX_REPORTERS``
processes or ``MAX_TOTAL_SAMPLES`` samples in all, the process silent
longest is forgotten.
"""
from __future__ import annotations

import collections
import logging
import math

log = logging.getLogger(__name__)

TYPES = ("counter", "gauge", "histogram")
MAX_REPORTERS = 10_000
MAX_METRICS = 1_000
MAX_SAMPLES = 1_000
MAX_TOTAL_SAMPLES = 1_000_000


def _number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _valid_value(kind: str, value, buckets: int) -> bool:
    if kind != "histogram":
        return _number(value)
    return (isinstance(value, dict) and isinstance(value.get("buckets"), list)
            and len(value["buckets"]) == buckets
            and all(_number(c) for c in value["buckets"])
            and _number(value.get("sum")) and _number(value.get("count")))


def _clean(metric) -> dict | None:
    """A reported metric checked field by field; None if it is malformed."""
    if not isinstance(metric, dict):
        return None
    name, kind = metric.get("name"), metric.get("type")
    tag_keys = metric.get("tag_keys", [])
    if not isinstance(name, str) or not name or len(name) > 256 or kind not in TYPES \
            or not isinstance(tag_keys, list) or not all(isinstance(k, str) for k in tag_keys):
        return None
    boundaries = metric.get("boundaries", [])
    if kind == "histogram" and (not isinstance(boundaries, list) or not boundaries
                                or not all(_number(b) for b in boundaries)):
        return None
    samples = {}
    reported = metric.get("samples", [])
    if not isinstance(reported, list):
        return None
    for sample in reported[:MAX_SAMPLES]:
        if not isinstance(sample, dict) or not isinstance(sample.get("tags", {}), dict):
            return None
        tags = sample.get("tags", {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            return None
        if not _valid_value(kind, sample.get("value"), len(boundaries) + 1):
            return None
        samples[tuple(sorted(tags.items()))] = sample["value"]
    description = metric.get("description", "")
    return {"name": name, "type": kind, "tag_keys": list(tag_keys),
            "description": description[:1024] if isinstance(description, str) else "",
            "boundaries": list(boundaries) if kind == "histogram" else None,
            "samples": samples}


class MetricsManager:
    def __init__(self):
        self.reports: collections.OrderedDict[bytes, list] = collections.OrderedDict()
        self.sizes: dict[bytes, int] = {}       # samples in each process's report
        self.total = 0
        self.rejected = 0

    def report(self, worker_id: bytes, metrics: list) -> None:
        """Keep ``metrics`` as that process's latest report (malformed ones
        are logged and left out)."""
        clean = []
        bad = []
        for metric in metrics[:MAX_METRICS]:
            checked = _clean(metric)
            if checked is None:
                bad.append(metric)
                continue
            clean.append(checked)
        if bad:                     # one line per report, however many were bad
            self.rejected += len(bad)
            log.warning("dropped %d malformed user metric(s) from worker %r, the first: %.200r",
                        len(bad), worker_id[:16], bad[0])
        self.total -= self.sizes.pop(worker_id, 0)
        self.reports.pop(worker_id, None)
        self.reports[worker_id] = clean
        self.sizes[worker_id] = size = sum(len(m["samples"]) for m in clean)
        self.total += size
        while len(self.reports) > 1 and (len(self.reports) > MAX_REPORTERS
                                         or self.total > MAX_TOTAL_SAMPLES):
            old, _ = self.reports.popitem(last=False)
            self.total -= self.sizes.pop(old)

    def query(self) -> list[dict]:
        """Every metric, merged over processes (see the module's docstring)."""
        merged: dict[str, dict] = {}
        for metrics in self.reports.values():        # oldest report first
            for metric in metrics:
                name = metric["name"]
                out = merged.get(name)
                if out is None or out["type"] != metric["type"] or (
                        metric["type"] == "histogram"
                        and out["boundaries"] != metric["boundaries"]):
                    if out is not None:
                        log.warning("user metric %r was reported with another type or other "
                                    "boundaries; the latest report wins", name)
                    out = merged[name] = {**metric, "samples": {}}
                out["description"] = metric["description"] or out["description"]
                samples = out["samples"]
                for tags, value in metric["samples"].items():
                    if metric["type"] == "gauge" or tags not in samples:
                        samples[tags] = value if metric["type"] != "histogram" else {
                            "buckets": list(value["buckets"]), "sum": value["sum"],
                            "count": value["count"]}
                    elif metric["type"] == "counter":
                        samples[tags] += value
                    else:
                        total = samples[tags]
                        total["buckets"] = [a + b for a, b in zip(total["buckets"],
                                                                  value["buckets"])]
                        total["sum"] += value["sum"]
                        total["count"] += value["count"]
        result = []
        for metric in merged.values():
            row = {"name": metric["name"], "description": metric["description"],
                   "type": metric["type"], "tag_keys": metric["tag_keys"],
                   "samples": [{"tags": dict(tags), "value": value}
                               for tags, value in metric["samples"].items()]}
            if metric["type"] == "histogram":
                row["boundaries"] = metric["boundaries"]
            result.append(row)
        return result
