"""Prometheus metrics for one node: a private registry, so several nodes can share a process.

Raft state is read at scrape time from the core (no bookkeeping on the hot path); request
counters and latency histograms are kept by the gateway middleware.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from syncfab.fabric.runtime import NodeRuntime

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class NodeMetrics:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "syncfab_http_requests", "HTTP requests by endpoint and status",
            ["endpoint", "method", "status"], registry=r,
        )
        self.http_latency = Histogram(
            "syncfab_http_request_seconds", "HTTP request latency", ["endpoint", "method"],
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.turns = Counter("syncfab_turns", "Runtime loop turns", registry=r)
        self.bad_frames = Counter(
            "syncfab_bad_frames", "Frames on a ZeroMQ socket that were not our protocol", registry=r
        )
        self.disk_write_seconds = Histogram(
            "syncfab_disk_write_seconds", "One turn's group-commit write, fsync included",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        r.register(_CoreCollector(runtime))


class _CoreCollector(Collector):
    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        core = getattr(rt, "core", None)
        if core is None:
            return
        term = GaugeMetricFamily("syncfab_raft_term", "Current Raft term", labels=["group"])
        commit = GaugeMetricFamily("syncfab_raft_commit_index", "Raft commit index", labels=["group"])
        applied = GaugeMetricFamily("syncfab_raft_applied_index", "Raft applied index", labels=["group"])
        last = GaugeMetricFamily("syncfab_raft_last_index", "Last log index", labels=["group"])
        leader = GaugeMetricFamily(
            "syncfab_raft_leader", "1 for the node this node believes leads the group",
            labels=["group", "leader"],
        )
        is_leader = GaugeMetricFamily("syncfab_raft_is_leader", "1 if this node leads the group",
                                      labels=["group"])
        for g in core.group_status():
            gid = str(g["group"])
            term.add_metric([gid], g["term"])
            commit.add_metric([gid], g["commit_index"])
            applied.add_metric([gid], g["applied_index"])
            last.add_metric([gid], g["last_index"])
            leader.add_metric([gid, g["leader"] or ""], 1)
            is_leader.add_metric([gid], 1 if g["role"] == "leader" else 0)
        yield from (term, commit, applied, last, leader, is_leader)

        alive = GaugeMetricFamily("syncfab_member_alive", "Phi-accrual verdict per member",
                                  labels=["member"])
        for member in core.cluster_view()["members"]:
            alive.add_metric([member["id"]], 1 if member["alive"] else 0)
        yield alive

        counters = CounterMetricFamily("syncfab_node_events", "Node core events", labels=["event"])
        for name, value in sorted(core.counters.items()):
            counters.add_metric([name], value)
        counters.add_metric(["dropped_sends"], rt.transport.dropped_sends)
        counters.add_metric(["pubsub_gaps"], rt.streams.gaps)
        yield counters

        size = GaugeMetricFamily("syncfab_storage_bytes", "LMDB data file bytes in use")
        size.add_metric([], rt.store.size_bytes())
        yield size
