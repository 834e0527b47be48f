"""Targeted scenarios on the simulator: the faults a random seed hits only sometimes, forced.

Each one drives a fault-free ``Simulation`` by hand (``start``, ``run_until``, a precise fault,
``finish``), so the invariants, the liveness phase and the linearizability check all still run.
"""

from __future__ import annotations

import pytest
from sim_config import SimConfig
from sim_scenario import Probe, quiet_simulation, wait_for
from simulator import Simulation

from syncfab.actors.kv import Get, Put
from syncfab.actors.lock_ops import Acquire
from syncfab.actors.raft import Role
from syncfab.actors.results import RETRYABLE, Err, Ok
from syncfab.actors.ring import shard_for_key
from syncfab.fabric.core.codec import decode_batch


def _replica_not_leading(sim: Simulation, gid: int) -> str:
    leader = sim.leader_of(gid)
    return next(n for n in sim.placement.replicas(gid) if n != leader)


def test_leader_crash_mid_write_burst_loses_no_acknowledged_write() -> None:
    cfg = SimConfig(
        client_count=5,
        key_count=4,
        ops_per_client=1_000,
        read_probability=0.2,
        delete_probability=0.0,
        think_time_ms_max=5,
        safety_duration_ms=4_000,
        crash_drops_sent_probability=0.0,  # the crashed leader's last AppendEntries arrive
    )
    sim = Simulation(101, config=cfg)
    sim.start()
    gid = shard_for_key("k0", cfg.shard_count)
    wait_for(sim, "a leader", lambda: sim.leader_of(gid) is not None)
    sim.run_until(1_500)
    leader = sim.leader_of(gid)
    assert leader is not None
    term = sim.core(leader).groups[gid].raft.term
    applied_before = sim.core(leader).groups[gid].raft.applying_index
    # The dangerous window: this turn's AppendEntries are out, its own write never happens.
    sim.crash(leader, "before_write", down_ms=800, when_writing=True)
    wait_for(sim, "the crash", lambda: not sim.is_up(leader), timeout_ms=200)
    wait_for(sim, "a new leader", lambda: sim.leader_of(gid) not in (None, leader), timeout_ms=3_000)
    new_leader = sim.leader_of(gid)
    assert new_leader is not None and sim.core(new_leader).groups[gid].raft.term > term
    sim.run_until(cfg.safety_duration_ms)
    report = sim.finish()

    applied_puts = set()
    for g in sim.placement.shards:
        for _, data in sim.checker.applied_entries(g):
            for request in decode_batch(data)[1] if data else ():
                if isinstance(request.op, Put):
                    applied_puts.add(request.op.value)
    acked = [op.value for op in report.history if op.kind == "put" and op.ret is not None]
    assert applied_before > 0 and len(acked) > 50, "the burst was too small to mean anything"
    lost = [v for v in acked if v not in applied_puts]
    assert not lost, f"seed=101: acknowledged writes lost: {lost}"


def test_follower_behind_compaction_gets_install_snapshot_and_converges() -> None:
    cfg = SimConfig(
        snapshot_entries=20,
        snapshot_keep_entries=3,
        client_count=4,
        key_count=4,
        ops_per_client=1_000,
        read_probability=0.0,
        delete_probability=0.0,
        think_time_ms_max=5,
        safety_duration_ms=5_000,
    )
    sim = Simulation(102, config=cfg)
    sim.start()
    gid = shard_for_key("k1", cfg.shard_count)
    wait_for(sim, "a leader", lambda: sim.leader_of(gid) is not None)
    sim.run_until(800)
    follower = _replica_not_leading(sim, gid)
    follower_last = sim.core(follower).groups[gid].raft.log.last_index
    sim.crash(follower, "idle", down_ms=3_000)
    sim.run_until(3_700)  # just before it comes back
    leader = sim.leader_of(gid)
    assert leader is not None
    base = sim.core(leader).groups[gid].raft.log.base_index
    assert base > follower_last, f"the leader's log still reaches {follower_last}: nothing forces a snapshot"
    sim.run_until(cfg.safety_duration_ms)
    sim.finish()  # converges: every replica applied the same index, with the same data
    assert sim.checker.snapshots_installed.get(follower, 0) >= 1, f"{follower} never installed a snapshot"
    raft = sim.core(follower).groups[gid].raft
    assert raft.snapshot is not None and raft.snapshot.index >= base


@pytest.mark.parametrize("check_quorum", [False, True], ids=["no-check-quorum", "check-quorum"])
def test_partitioned_old_leader_serves_no_stale_read(check_quorum: bool) -> None:
    cfg = SimConfig(client_count=0, check_quorum=check_quorum, safety_duration_ms=0)
    sim = Simulation(103, config=cfg)
    sim.start()
    gid = shard_for_key("k0", cfg.shard_count)
    wait_for(sim, "a leader", lambda: sim.leader_of(gid) is not None)
    sim.run_until(sim.now + 500)  # past the new leader's no-op: reads no longer wait for it
    probe = Probe(sim, "probe")
    old = sim.leader_of(gid)
    assert old is not None
    old_raft = sim.core(old).groups[gid].raft
    old_term = old_raft.term
    assert isinstance(probe.call(old, Put("k0", "v1")), Ok)
    assert probe.call(old, Get("k0")) == Ok("v1")

    others = [n for n in sim.node_ids if n != old]
    links = [(old, n) for n in others] + [(n, old) for n in others]
    sim.network.cut(links)
    wait_for(
        sim,
        "a leader on the majority side",
        lambda: any(sim.core(n).groups[gid].raft.role is Role.LEADER for n in others),
    )
    new = next(n for n in others if sim.core(n).groups[gid].raft.role is Role.LEADER)
    assert sim.core(new).groups[gid].raft.term > old_term
    assert isinstance(probe.call(new, Put("k0", "v2")), Ok)  # acknowledged: the majority moved on

    rid = probe.send(old, Get("k0"))
    sim.run_until(sim.now + 2_000)
    answers = probe.results(rid)
    assert not any(isinstance(a, Ok) for a in answers), f"seed=103: stale read from the old leader: {answers}"
    if not check_quorum:
        # Nothing tells the old leader it was deposed, and still its ReadIndex never confirms.
        assert old_raft.role is Role.LEADER and old_raft.term == old_term
        assert answers == []
    else:
        # Check-quorum made it step down; the read was failed in a way a client retries.
        assert all(isinstance(a, Err) and a.code in RETRYABLE for a in answers), answers

    sim.network.heal(links)
    sim.run_until(sim.now + 1_000)
    assert old_raft.role is not Role.LEADER
    answers = probe.results(rid)
    assert answers and all(isinstance(a, Err) and a.code in RETRYABLE for a in answers), answers
    assert probe.call(new, Get("k0")) == Ok("v2")
    sim.finish()


def test_follower_crashing_before_its_sync_has_acknowledged_nothing() -> None:
    """The ack that lets a leader commit leaves only after the follower's fsync. Here the only
    follower that can hear the leader crashes with the entry unsynced, then the leader dies: had
    that follower acknowledged early, the write would be committed, answered — and lost."""
    cfg = SimConfig(
        client_count=0,
        safety_duration_ms=0,
        disk_write_ms_min=2,
        disk_write_ms_max=2,
        crash_drops_sent_probability=0.0,  # whatever the follower sent does arrive
    )
    sim = Simulation(104, config=cfg)
    sim.start()
    gid = shard_for_key("k0", cfg.shard_count)
    sim.run_until(3_000)  # elections and leadership balancing are over: the log is quiet
    probe = Probe(sim, "probe")
    leader = sim.leader_of(gid)
    assert leader is not None
    assert isinstance(probe.call(leader, Put("k0", "v0")), Ok)
    follower, cut_off = [n for n in sim.placement.replicas(gid) if n != leader]
    links = [(leader, cut_off), (cut_off, leader)]
    sim.network.cut(links)
    sim.crash(follower, "before_write", down_ms=300, when_writing=True)
    rid = probe.send(leader, Put("k0", "v1"))
    wait_for(sim, "the follower's crash", lambda: not sim.is_up(follower), timeout_ms=500)
    sim.run_until(sim.now + 100)
    acknowledged = any(isinstance(r, Ok) for r in probe.results(rid))
    sim.crash(leader, "idle", down_ms=60_000)
    sim.network.heal(links)
    wait_for(
        sim,
        "a leader without the old one",
        lambda: sim.leader_of(gid) not in (None, leader),
        timeout_ms=5_000,
    )
    read = probe.call(sim.leader_of(gid) or "", Get("k0"))
    assert not acknowledged, "seed=104: v1 was acknowledged with one durable copy"
    assert read == Ok("v0"), read
    sim.finish()


def test_a_lock_leader_whose_wall_clock_is_ahead_expires_no_lease_early() -> None:
    """Leases are deadlines in the leader's stamps. A node whose wall clock is 8 s ahead (an NTP
    step, a bad host clock) that takes over group 0 must not read a lease its predecessor
    granted as 8 s over: the chaos suite's clock-skew nemesis found a second owner granted 1 s
    into a 3 s lease while the first still held it. The lease must last ttl, less the skew a
    leader's stamps may have over the log's clock (``clock_skew_max_ms``)."""
    sim = quiet_simulation(105, wall_skew_ms_max=0)
    wait_for(sim, "a control leader", lambda: sim.leader_of(0) is not None)
    sim.run_until(sim.now + 1_000)
    old = sim.leader_of(0)
    assert old is not None
    ahead = next(n for n in sim.node_ids if n != old)
    sim.nodes[ahead].wall_skew_ms = 8_000
    probe = Probe(sim, "probe")
    asked_ms = sim.now
    assert isinstance(probe.call(old, Acquire("r", "exclusive", "a", 0, 3_000)), Ok)
    assert sim.core(old).groups[0].raft.transfer_leadership(ahead)
    wait_for(sim, "the node ahead to lead group 0", lambda: sim.leader_of(0) == ahead, timeout_ms=2_000)
    moved_ms = sim.now
    result = probe.call(ahead, Acquire("r", "exclusive", "b", 6_000, 3_000), timeout_ms=7_000)
    assert isinstance(result, Ok), result
    lease_ms = sim.now - asked_ms
    skew_max = getattr(sim.config.node_config(), "clock_skew_max_ms", 0)
    assert lease_ms >= 3_000 - skew_max, (
        f"seed=105: b got the lock {lease_ms} ms after a asked for its 3 s lease "
        f"({sim.now - moved_ms} ms after {ahead}, 8 s ahead, took over)"
    )
    sim.finish()
