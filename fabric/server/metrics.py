"""Prometheus metrics for one node: a private registry, so several nodes can share a process.

Raft, lock, queue and cache state is read at scrape time from the core (no bookkeeping on the
hot path); HTTP requests are counted in plain ints by the gateway (gateway/http_server.py)
and rendered at scrape time too (fabric/server/http_metrics.py). The README's "Monitoring"
lists what is here and docker/grafana-dashboard.json draws it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from syncfab.actors.ring import CONTROL_GROUP
from syncfab.fabric.server.http_metrics import HttpRequestStats

if TYPE_CHECKING:
    from syncfab.fabric.server.runtime import NodeRuntime

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class NodeMetrics:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http = HttpRequestStats(LATENCY_BUCKETS_S)
        r.register(self.http)
        self.bad_frames = Counter(
            "syncfab_bad_frames", "Frames on a ZeroMQ socket that were not our protocol", registry=r
        )
        # A thread-safe Counter: the fabric's refusals are counted on the ZAP handler's thread.
        self.auth_refused = Counter(
            "syncfab_auth_refused",
            "Connections and requests refused for want of credentials: via http (a 401 at the "
            "gateway) or fabric (a CURVE handshake with a key this node does not accept)",
            labelnames=["via"],
            registry=r,
        )
        for via in ("http", "fabric"):
            self.auth_refused.labels(via)  # both series from the start, at 0
        self.disk_write_seconds = Histogram(
            "syncfab_disk_write_seconds",
            "One group commit to the WAL: its append and fdatasync (no sync with fsync off)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.wal_fold_seconds = Histogram(
            "syncfab_wal_fold_seconds",
            "One fold of the WAL into the LMDB store (its own thread)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        # Fed at scrape time from what the homes measured (fabric/core/node_cache.py), so it is not
        # in the registry: the core collector yields it after draining them.
        self.cache_fanout_seconds = Histogram(
            "syncfab_cache_fanout_seconds",
            "A cache write accepted at its home until the last holder acknowledged its invalidation "
            "(milliseconds resolution)",
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self._core_collector = _CoreCollector(runtime)
        r.register(self._core_collector)

    def core_started(self) -> None:
        """Once the runtime has its core: Raft's entry counters count from here."""
        self._core_collector.core_started(self.runtime.core)


class _CoreCollector(Collector):
    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        # Per group: its commit and applied index when the core started, and when. The entry
        # counters count from there, so a restarted replica replaying its log from a snapshot
        # counts what it really applies, not a jump from zero to its whole log.
        self._first_seen: dict[int, tuple[int, int, float]] = {}

    def core_started(self, core: Any) -> None:
        now_s = time.time()
        for g in core.group_status():
            self._first_seen[g["group"]] = (g["commit_index"], g["applied_index"], now_s)

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        # Counted in a plain int: a prometheus Counter takes a lock on every turn.
        yield CounterMetricFamily("syncfab_turns", "Runtime loop turns", value=rt.turns, created=rt.created_s)
        core = getattr(rt, "core", None)
        if core is None:
            return
        term = GaugeMetricFamily("syncfab_raft_term", "Current Raft term", labels=["group"])
        commit = GaugeMetricFamily("syncfab_raft_commit_index", "Raft commit index", labels=["group"])
        applied = GaugeMetricFamily("syncfab_raft_applied_index", "Raft applied index", labels=["group"])
        last = GaugeMetricFamily("syncfab_raft_last_index", "Last log index", labels=["group"])
        leader = GaugeMetricFamily(
            "syncfab_raft_leader",
            "1 for the node this node believes leads the group",
            labels=["group", "leader"],
        )
        is_leader = GaugeMetricFamily(
            "syncfab_raft_is_leader", "1 if this node leads the group", labels=["group"]
        )
        committed = CounterMetricFamily(
            "syncfab_raft_committed_entries",
            "Entries this node learned committed in the group (its rate is the commit rate)",
            labels=["group"],
        )
        applied_entries = CounterMetricFamily(
            "syncfab_raft_applied_entries",
            "Entries this replica handed to the group's state machine",
            labels=["group"],
        )
        elections = CounterMetricFamily(
            "syncfab_raft_elections",
            "Elections this replica started: cause=timeout (no leader heard) or transfer (handed over)",
            labels=["group", "cause"],
        )
        voters = GaugeMetricFamily(
            "syncfab_raft_voters", "Voters of the group, as this replica has them", labels=["group"]
        )
        learners = GaugeMetricFamily(
            "syncfab_raft_learners", "Learners (catching up, no vote) of the group, as here", labels=["group"]
        )
        removed = GaugeMetricFamily(
            "syncfab_raft_removed", "1 if this replica was moved off this node (kept inert)", labels=["group"]
        )
        first_seen = self._first_seen
        for g in core.group_status():
            voters.add_metric([str(g["group"])], len(g["voters"]))
            learners.add_metric([str(g["group"])], len(g["learners"]))
            removed.add_metric([str(g["group"])], 1 if g["removed"] else 0)
            elections.add_metric([str(g["group"]), "timeout"], g["elections_on_timeout"])
            elections.add_metric([str(g["group"]), "transfer"], g["elections_on_transfer"])
            gid = str(g["group"])
            term.add_metric([gid], g["term"])
            commit.add_metric([gid], g["commit_index"])
            applied.add_metric([gid], g["applied_index"])
            last.add_metric([gid], g["last_index"])
            leader.add_metric([gid, g["leader"] or ""], 1)
            is_leader.add_metric([gid], 1 if g["role"] == "leader" else 0)
            base = first_seen.get(g["group"])
            if base is None:  # a core not started by a runtime (tests): count from now
                base = first_seen[g["group"]] = (g["commit_index"], g["applied_index"], time.time())
            committed.add_metric([gid], g["commit_index"] - base[0], created=base[2])
            applied_entries.add_metric([gid], g["applied_index"] - base[1], created=base[2])
        yield from (term, commit, applied, last, leader, is_leader, committed, applied_entries, elections)
        yield from (voters, learners, removed)

        alive = GaugeMetricFamily("syncfab_member_alive", "Phi-accrual verdict per member", labels=["member"])
        for member in core.cluster_view()["members"]:
            alive.add_metric([member["id"]], 1 if member["alive"] else 0)
        yield alive

        counters = CounterMetricFamily("syncfab_node_events", "Node core events", labels=["event"])
        for name, value in sorted(core.counters.items()):
            counters.add_metric([name], value)
        counters.add_metric(["dropped_sends"], rt.dropped_sends)
        counters.add_metric(["pubsub_gaps"], rt.streams.gaps)
        yield counters

        yield from _lock_metrics(core)
        yield from _queue_metrics(core)
        yield from _cache_metrics(core, rt.metrics.cache_fanout_seconds)

        size = GaugeMetricFamily(
            "syncfab_storage_bytes", "bytes of durable log in use: LMDB pages plus unfolded WAL records"
        )
        size.add_metric([], rt.store.size_bytes())
        yield size
        yield GaugeMetricFamily(
            "syncfab_wal_records",
            "WAL records not folded into the LMDB store yet",
            value=rt.store.wal_records(),
        )
        yield GaugeMetricFamily(
            "syncfab_wal_bytes", "Bytes of WAL records not folded yet", value=rt.store.wal_bytes()
        )


_LOCK_COUNTERS = ("grants", "waits", "timeouts", "deadlocks", "expiries", "releases")
_LOCK_GAUGES = ("locks_held", "waiters", "owners")
_QUEUE_COUNTERS = ("produced", "acked", "redelivered", "dead_lettered", "expired", "deduplicated")


def _lock_metrics(core: Any) -> Iterator[Metric]:
    """The lock table as this node's replica of group 0 has applied it (replicas agree)."""
    control = core.groups.get(CONTROL_GROUP)
    if control is None:
        return
    stats = control.machine.services["locks"].stats()
    for name in _LOCK_COUNTERS:
        yield CounterMetricFamily(f"syncfab_lock_{name}", f"Lock table {name}", value=stats[name])
    for name in _LOCK_GAUGES:
        yield GaugeMetricFamily(f"syncfab_lock_{name}", f"Lock table {name} now", value=stats[name])


def _queue_metrics(core: Any) -> Iterator[Metric]:
    """Per queue, summed over the shards this node replicates (all of them on 3 nodes)."""
    totals: dict[str, dict[str, int]] = {}
    delivered: dict[str, int] = {}
    for gid, g in core.groups.items():
        if gid == CONTROL_GROUP:
            continue
        partitions = g.machine.services["queues"]
        for queue, stats in partitions.stats().items():
            total = totals.setdefault(queue, dict.fromkeys(("depth", *_QUEUE_COUNTERS), 0))
            for k in total:
                total[k] += stats.get(k, 0)
        for queue, count in partitions.delivered().items():
            delivered[queue] = delivered.get(queue, 0) + count
    depth = GaugeMetricFamily(
        "syncfab_queue_depth", "Messages stored (visible or in flight)", labels=["queue"]
    )
    counters = {
        name: CounterMetricFamily(f"syncfab_queue_{name}", f"Queue messages {name}", labels=["queue"])
        for name in _QUEUE_COUNTERS
    }
    for queue in sorted(totals):
        depth.add_metric([queue], totals[queue]["depth"])
        for name, family in counters.items():
            family.add_metric([queue], totals[queue][name])
    # Consumes are not replicated: each node counts what it handed out while leading a shard.
    handed = CounterMetricFamily(
        "syncfab_queue_delivered", "Messages this node delivered as a shard leader", labels=["queue"]
    )
    for queue in sorted(delivered):
        handed.add_metric([queue], delivered[queue])
    yield depth
    yield from counters.values()
    yield handed


def _cache_metrics(core: Any, fanout: Histogram) -> Iterator[Metric]:
    """This node's near cache, and the homes of the shards it leads."""
    near = core.cache.near
    stats = near.stats()
    events = CounterMetricFamily("syncfab_cache_events", "Near-cache events on this node", labels=["event"])
    for name, value in sorted(near.counters.items()):
        events.add_metric([name], value)
    events.add_metric(["undeliverable"], core.cache.undeliverable)  # no known leader for the shard
    yield events
    lines = GaugeMetricFamily(
        "syncfab_cache_lines", "Cache lines on this node by MESI state", labels=["state"]
    )
    for state, count in sorted(stats["states"].items()):
        lines.add_metric([state], count)
    yield lines
    yield GaugeMetricFamily(
        "syncfab_cache_bytes", "Bytes of keys and values in this node's cache lines", value=stats["bytes"]
    )
    yield GaugeMetricFamily("syncfab_cache_dirty_lines", "M lines not yet written back", value=stats["dirty"])
    home_events = CounterMetricFamily(
        "syncfab_cache_home_events", "Directory events at the homes this node has been", labels=["event"]
    )
    totals: dict[str, int] = {}
    entries = 0
    for gid in sorted(core.groups):
        home = core.cache.home(gid)
        if home is None:
            continue
        for name, value in home.counters.items():
            totals[name] = totals.get(name, 0) + value
        entries += len(home.directory.entries)
        samples, home.fanout_ms = home.fanout_ms, []
        for ms in samples:
            fanout.observe(ms / 1000)
    for name, value in sorted(totals.items()):
        home_events.add_metric([name], value)
    yield home_events
    yield GaugeMetricFamily(
        "syncfab_cache_directory_entries", "Directory entries at this node's homes", value=entries
    )
    yield from fanout.collect()
