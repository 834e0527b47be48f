"""The knobs of one simulation run, and how a seed picks them.

Every knob is named plainly with its unit last. ``choose_config`` draws them from ranges with the
seed's own RNG, so different seeds explore different regimes (calm, lossy, crash-heavy, split-brain,
tiny snapshots...) while one seed always picks the same ones. ``run_simulation(seed, **overrides)``
replaces any of them by name, which is how a failing regime is narrowed down from a REPL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from syncfab.actors.cache_ops import CacheConfig
from syncfab.actors.raft import RaftConfig
from syncfab.fabric.core.node_config import NodeConfig


@dataclass(frozen=True, slots=True)
class SimConfig:
    # -- the cluster ------------------------------------------------------------------------
    node_count: int = 3
    # The last ``joining`` nodes start empty, with --join, and are added during the run
    # (sim_members.py: each added, then the first node removed).
    joining: int = 0
    member_change_at_ms: int = 1_500
    shard_count: int = 2
    replication: int = 3
    vnodes: int = 16  # placement quality does not matter here; building the ring is per restart
    snapshot_entries: int = 50
    snapshot_keep_entries: int = 10
    heartbeat_ms: int = 50
    election_timeout_ms: int = 300
    check_quorum: bool = True
    append_entries_max: int = 1024
    inflight_messages_max: int = 64
    beat_ms: int = 100
    balance_interval_ms: int = 1_000
    balance_after_leading_ms: int = 2_000
    # A node runs a turn on this timer even when idle (Raft's clocks only move in turns), and
    # this long after a message or request arrives (time spent in the socket / event loop).
    tick_interval_ms_min: int = 5
    tick_interval_ms_max: int = 20
    processing_delay_ms_max: int = 2
    # Each node's clock runs at 1 +/- up to this (a fraction): timers fire early or late.
    clock_drift_max: float = 0.0

    # -- the disk ---------------------------------------------------------------------------
    # One batched write + fsync takes this long; turns go on meanwhile and queue behind it.
    disk_write_ms_min: int = 0
    disk_write_ms_max: int = 3
    # Now and then one takes far longer (a stalled device, a checkpoint, a noisy neighbour).
    disk_stall_probability: float = 0.0
    disk_stall_ms_max: int = 400

    # -- the network ------------------------------------------------------------------------
    delay_ms_min: int = 1
    delay_ms_max: int = 20
    # A few messages take far longer than the rest (a retransmit, a GC pause in the sender).
    delay_spike_probability: float = 0.0
    delay_spike_ms_max: int = 300
    packet_loss_probability: float = 0.0
    duplicate_probability: float = 0.0

    # -- the nemesis (rates are for the whole cluster) --------------------------------------
    crash_probability_per_s: float = 0.0
    restart_delay_ms_min: int = 100
    restart_delay_ms_max: int = 2_000
    # A crash that would leave some group without a live majority happens only this often;
    # when it does, the node comes back quickly (safety must hold anyway, liveness cannot).
    majority_loss_probability: float = 0.2
    majority_loss_restart_ms_max: int = 800
    # When a node crashes, messages it already put on the wire are lost too with this chance;
    # otherwise they still arrive, which is what makes "sent, then crashed before the write" bite.
    crash_drops_sent_probability: float = 0.5
    # A node stops for a while (GC, SIGSTOP) with its state intact, then resumes as if nothing
    # happened — a leader that slept through its own deposition.
    pause_probability_per_s: float = 0.0
    pause_ms_min: int = 50
    pause_ms_max: int = 1_500
    partition_probability_per_s: float = 0.0
    partition_duration_ms_min: int = 200
    partition_duration_ms_max: int = 2_000
    # Swizzle-clog: links stop one by one (messages are held, not lost) and restart in another order.
    clog_probability_per_s: float = 0.0
    clog_links_max: int = 4
    clog_step_ms_max: int = 200

    # -- the clients ------------------------------------------------------------------------
    client_count: int = 4
    key_count: int = 4
    ops_per_client: int = 20  # during the safety phase
    liveness_ops_per_client: int = 3
    read_probability: float = 0.4
    delete_probability: float = 0.1
    think_time_ms_max: int = 150
    sticky_client_probability: float = 0.7  # go first to the leader the last reply named
    attempt_timeout_ms: int = 400
    retry_backoff_ms_max: int = 60
    op_deadline_ms: int = 2_500  # give up (outcome unknown) after this long, safety phase only

    # -- the workloads (sim_workloads.choose_workloads picks them per seed) -----------------
    workloads: tuple[str, ...] = ("kv",)  # any of "kv", "locks", "queues"
    # Each node's wall clock (what a leader stamps into entries: the only clock leases and
    # visibility deadlines see) is off real time by a constant up to this, either way.
    wall_skew_ms_max: int = 50
    lock_client_count: int = 4
    lock_resource_count: int = 3
    lock_plans_per_client: int = 12  # during the safety phase
    liveness_lock_plans: int = 2
    lock_ttl_ms_min: int = 600
    lock_ttl_ms_max: int = 1_500
    lock_wait_ms_max: int = 800
    lock_hold_ms_max: int = 200
    lock_pair_probability: float = 0.4  # two resources in ring order either way: deadlocks
    lock_upgrade_probability: float = 0.1  # shared, then exclusive: upgrades (and their deadlocks)
    lock_abandon_probability: float = 0.1  # wait, then close the session (ReleaseAll) mid-wait
    lock_die_probability: float = 0.1  # stop renewing past the ttl, then use the old token
    lock_shared_probability: float = 0.3
    # Lockers' acquires and releases go through one coalescing ClientCore (as a process's callers
    # share AsyncClient's): ops within a few milliseconds leave as one LockBatch.
    lock_batching: bool = False
    queue_producer_count: int = 2
    queue_consumer_count: int = 2
    queue_produces_per_producer: int = 25
    liveness_produces: int = 3
    liveness_produce_gap_ms: int = 0  # a liveness-phase produce waits up to twice this first
    queue_batch_probability: float = 0.2
    queue_key_probability: float = 0.3
    queue_dedup_probability: float = 0.3
    queue_poison_probability: float = 0.05  # always nacked: ends in the dead-letter queue
    queue_visibility_ms: int = 300
    queue_max_deliveries: int = 3
    queue_nack_probability: float = 0.1
    queue_lapse_probability: float = 0.1  # neither acked nor nacked: the deadline passes
    queue_return_probability: float = 0.05  # given back uncounted (Return)
    queue_long_poll_probability: float = 0.2
    cache_client_count: int = 4
    cache_key_count: int = 3
    cache_ops_per_client: int = 30
    liveness_cache_ops: int = 3
    cache_write_back_keys: int = 0  # the first this many keys are written write_back
    cache_lease_ms: int = 600
    cache_flush_ms: int = 100
    cache_lines_max: int = 100  # small: LRU evictions (of M lines too)
    cache_directory_entries_max: int = 100  # small: directory evictions

    # -- the phases -------------------------------------------------------------------------
    safety_duration_ms: int = 5_000
    liveness_budget_ms: int = 20_000

    def node_config(self) -> NodeConfig:
        raft = RaftConfig(
            heartbeat_ms=self.heartbeat_ms,
            election_timeout_ms=self.election_timeout_ms,
            check_quorum=self.check_quorum,
            append_entries_max=self.append_entries_max,
            inflight_messages_max=self.inflight_messages_max,
        )
        return NodeConfig(
            shard_count=self.shard_count,
            replication=self.replication,
            vnodes=self.vnodes,
            raft=raft,
            beat_ms=self.beat_ms,
            snapshot_entries=self.snapshot_entries,
            snapshot_keep_entries=self.snapshot_keep_entries,
            balance_interval_ms=self.balance_interval_ms,
            balance_after_leading_ms=self.balance_after_leading_ms,
            cache=CacheConfig(
                lines_max=self.cache_lines_max,
                lease_ms=self.cache_lease_ms,
                flush_ms=self.cache_flush_ms,
                # Leases hold only while clocks keep to the drift they allow for: the drift the
                # seed gives its clocks (tests/sim/test_sim_cache.py shows what less would cost).
                clock_drift_max=self.clock_drift_max,
                directory_entries_max=self.cache_directory_entries_max,
                op_retry_ms=self.attempt_timeout_ms,
                op_deadline_ms=self.op_deadline_ms,
            ),
        )


def choose_config(rng: random.Random) -> SimConfig:
    """Pick a regime. Each knob is drawn independently, so regimes mix (lossy *and* crashy)."""
    heartbeat_ms = rng.choice((40, 50, 75, 100))
    calm = rng.random() < 0.1  # some seeds run with no faults at all: the happy path must work too
    return SimConfig(
        node_count=5 if rng.random() < 0.25 else 3,
        shard_count=rng.randint(2, 3),
        snapshot_entries=rng.randint(20, 60),
        snapshot_keep_entries=rng.randint(3, 12),
        heartbeat_ms=heartbeat_ms,
        election_timeout_ms=heartbeat_ms * rng.choice((5, 6, 8)),
        # Without check-quorum a deposed leader keeps its role until it hears a higher term:
        # the regime where only ReadIndex's confirmation round stands between a client and a stale read.
        check_quorum=rng.random() < 0.5,
        append_entries_max=rng.choice((4, 16, 1024)),
        inflight_messages_max=rng.choice((2, 8, 64)),
        beat_ms=rng.choice((50, 100)),
        balance_interval_ms=rng.choice((500, 1_000)),
        balance_after_leading_ms=rng.choice((1_000, 2_000)),
        tick_interval_ms_min=rng.randint(4, 8),
        tick_interval_ms_max=rng.randint(12, 20),
        processing_delay_ms_max=rng.randint(0, 3),
        clock_drift_max=rng.choice((0.0, 0.0, 0.05, 0.2)),
        disk_write_ms_max=rng.choice((0, 2, 5, 20, 60)),
        disk_stall_probability=0.0 if calm else rng.choice((0.0, 0.01, 0.05)),
        delay_ms_min=rng.randint(0, 2),
        delay_ms_max=rng.choice((5, 10, 20, 50)),
        delay_spike_probability=0.0 if calm else rng.choice((0.0, 0.01, 0.05)),
        packet_loss_probability=0.0 if calm else rng.choice((0.0, 0.01, 0.05, 0.15)),
        duplicate_probability=0.0 if calm else rng.choice((0.0, 0.01, 0.05)),
        crash_probability_per_s=0.0 if calm else rng.choice((0.0, 0.2, 0.5, 1.0)),
        crash_drops_sent_probability=rng.choice((0.0, 0.5, 1.0)),
        majority_loss_probability=rng.choice((0.0, 0.2, 0.5)),
        pause_probability_per_s=0.0 if calm else rng.choice((0.0, 0.0, 0.2, 0.5)),
        partition_probability_per_s=0.0 if calm else rng.choice((0.0, 0.2, 0.5)),
        partition_duration_ms_max=rng.choice((1_000, 3_000)),
        clog_probability_per_s=0.0 if calm else rng.choice((0.0, 0.1, 0.3)),
        client_count=rng.randint(3, 6),
        key_count=rng.randint(3, 5),
        ops_per_client=rng.randint(30, 70),
        restart_delay_ms_max=rng.choice((1_500, 3_000)),
        read_probability=rng.choice((0.2, 0.3, 0.5)),
        delete_probability=rng.choice((0.0, 0.1, 0.2)),
        think_time_ms_max=rng.choice((10, 40, 120)),
        sticky_client_probability=rng.choice((0.0, 0.5, 0.9)),
        attempt_timeout_ms=rng.choice((250, 400, 800)),
        op_deadline_ms=rng.choice((1_500, 3_000)),
        safety_duration_ms=rng.randint(3_000, 6_000),
    )
