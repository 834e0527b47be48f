"""NodeConfig: what a node is tuned by — its share of the cluster's layout, its timers, its
bounds, and the Raft and cache settings it hands on."""

from __future__ import annotations

from dataclasses import dataclass, field

from syncfab.actors.cache_ops import CacheConfig
from syncfab.actors.raft import RaftConfig


@dataclass(frozen=True, slots=True)
class NodeConfig:
    shard_count: int = 8
    replication: int = 3
    vnodes: int = 64
    raft: RaftConfig = field(default_factory=RaftConfig)
    beat_ms: int = 100
    # Take a snapshot once this many entries were applied since the last one; keep some log
    # behind it so a follower that is only a little behind catches up without a snapshot.
    snapshot_entries: int = 20_000
    snapshot_keep_entries: int = 2_000
    client_inbox_max: int = 20_000
    client_requests_per_turn_max: int = 4_096
    # Raft timers have this resolution; ticking every group on every turn would cost more
    # than the rest of a busy turn.
    tick_ms: int = 10
    # A shard leader hands leadership to the shard's preferred leader once that node has been
    # alive and caught up; both waits keep a restarting node from causing churn.
    balance_interval_ms: int = 1_000
    balance_after_leading_ms: int = 2_000
    cache: CacheConfig = field(default_factory=CacheConfig)
    # How far a new leader's wall clock may run ahead of the log's clock (the stamps its
    # predecessors wrote, carried on by its monotonic clock) before it corrects its own stamps:
    # a lease lasts at least its ttl less this, whatever the nodes' wall clocks say. Larger
    # corrections slew away at 1% of the time since (fabric/core/log_clock.py), at most this much.
    clock_skew_max_ms: int = 100
    clock_correction_max_ms: int = 600_000
