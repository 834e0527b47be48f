"""The gateway's request counts: plain ints on the hot path, Prometheus families at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from syncfab.fabric.server.http_metrics import HttpRequestStats

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
REQUESTS = "syncfab_http_requests_total"
BUCKET = "syncfab_http_request_seconds_bucket"


def _samples(stats: HttpRequestStats) -> dict[SampleKey, float]:
    """What a scrape of a registry holding only ``stats`` says, parsed back."""
    registry = CollectorRegistry()
    registry.register(stats)
    text = generate_latest(registry).decode()
    return {
        _key(s.name, **s.labels): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _key(name: str, **labels: str) -> SampleKey:
    return name, tuple(sorted(labels.items()))


def test_counts_and_cumulative_buckets_per_route_template() -> None:
    stats = HttpRequestStats((0.001, 0.01))
    stats.record("/kv/{key}", "PUT", 200, 0.0005)
    stats.record("/kv/{key}", "PUT", 200, 0.001)  # on a bound: that bucket (le is <=)
    stats.record("/kv/{key}", "PUT", 503, 0.5)
    stats.record("/kv/{key}", "GET", 404, 0.002)
    samples = _samples(stats)
    put = {"endpoint": "/kv/{key}", "method": "PUT"}
    get = {"endpoint": "/kv/{key}", "method": "GET"}
    assert samples[_key(REQUESTS, **put, status="200")] == 2
    assert samples[_key(REQUESTS, **put, status="503")] == 1
    assert samples[_key(BUCKET, **put, le="0.001")] == 2
    assert samples[_key(BUCKET, **put, le="0.01")] == 2
    assert samples[_key(BUCKET, **put, le="+Inf")] == 3
    assert samples[_key("syncfab_http_request_seconds_count", **put)] == 3
    assert abs(samples[_key("syncfab_http_request_seconds_sum", **put)] - 0.5015) < 1e-9
    assert samples[_key(BUCKET, **get, le="0.001")] == 0
    assert samples[_key(BUCKET, **get, le="0.01")] == 1
    assert samples[_key(REQUESTS, **get, status="404")] == 1


def test_made_up_methods_share_one_label() -> None:
    stats = HttpRequestStats((0.001,))
    for i in range(50):
        stats.record("unmatched", f"BREW{i}", 405, 0.0001)
    stats.record("unmatched", "GET", 404, 0.0001)
    samples = _samples(stats)
    assert {dict(labels)["method"] for name, labels in samples if name == REQUESTS} == {"GET", "other"}
    assert samples[_key(REQUESTS, endpoint="unmatched", method="other", status="405")] == 50
