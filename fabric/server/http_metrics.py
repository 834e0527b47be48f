"""HTTP requests counted in plain ints on the event loop, turned into metrics at scrape time.

Every gateway request passes through here, so recording one is a dict lookup, a bisect and
three additions (~0.3 µs); prometheus-client's ``labels(...).inc()`` and
``labels(...).observe()`` cost ~5 µs together (each takes a lock and builds a label key). The
gateway records on the loop thread and ``/metrics`` is rendered on the same thread, so nothing
here needs a lock.

Labels are bounded: ``endpoint`` is the route's template (``/kv/{key}``, never the raw path;
``unmatched`` for no route), ``method`` one of HTTP's standard methods or ``other`` (a parser
may accept a method HTTP does not define), ``status`` the answer's code.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from aiohttp.hdrs import METH_ALL
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

OTHER_METHOD = "other"


class RouteStats:
    """One (endpoint, method)'s requests: per-bucket counts (not cumulative), their sum, and
    how many got each status."""

    __slots__ = ("bucket_counts", "by_status", "seconds_sum")

    def __init__(self, bucket_count: int) -> None:
        self.bucket_counts = [0] * bucket_count  # the last one is +Inf
        self.seconds_sum = 0.0
        self.by_status: dict[int, int] = {}


class HttpRequestStats(Collector):
    """``syncfab_http_requests_total{endpoint,method,status}``, the histogram
    ``syncfab_http_request_seconds{endpoint,method}`` and the gauge
    ``syncfab_http_requests_in_progress`` (long-polls included; a scrape counts itself)."""

    def __init__(self, buckets_s: Sequence[float]) -> None:
        self._bounds_s = list(buckets_s)
        self._les = [floatToGoString(b) for b in buckets_s] + ["+Inf"]
        # Keyed by what the request said, so the common call skips the method check; a made-up
        # method finds no entry, takes the slow path and lands in its endpoint's "other".
        self._by_route: dict[tuple[str, str], RouteStats] = {}
        self.in_progress = 0  # the server adds one as it routes a request, takes it off as it answers

    def record(self, endpoint: str, method: str, status: int, elapsed_s: float) -> None:
        stats = self._by_route.get((endpoint, method))
        if stats is None:
            stats = self._stats_for(endpoint, method)
        stats.bucket_counts[bisect.bisect_left(self._bounds_s, elapsed_s)] += 1  # le: bound included
        stats.seconds_sum += elapsed_s
        by_status = stats.by_status
        by_status[status] = by_status.get(status, 0) + 1

    def _stats_for(self, endpoint: str, method: str) -> RouteStats:
        key = (endpoint, method if method in METH_ALL else OTHER_METHOD)
        stats = self._by_route.get(key)
        if stats is None:
            stats = self._by_route[key] = RouteStats(len(self._les))
        return stats

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "syncfab_http_requests",
            "HTTP requests by route template, method and status",
            labels=["endpoint", "method", "status"],
        )
        latency = HistogramMetricFamily(
            "syncfab_http_request_seconds",
            "HTTP request latency at the gateway, by route template and method",
            labels=["endpoint", "method"],
        )
        for (endpoint, method), stats in sorted(self._by_route.items()):
            for status, count in sorted(stats.by_status.items()):
                requests.add_metric([endpoint, method, str(status)], count)
            cumulative, buckets = 0, []
            for le, count in zip(self._les, stats.bucket_counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            latency.add_metric([endpoint, method], buckets, stats.seconds_sum)
        yield requests
        yield latency
        yield GaugeMetricFamily(
            "syncfab_http_requests_in_progress",
            "HTTP requests being answered now, long-polls included (a scrape counts itself)",
            value=self.in_progress,
        )
