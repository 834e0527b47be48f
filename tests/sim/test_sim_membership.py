"""Membership changes in the simulator: a node joins a running 3-node cluster and the first
node is then removed (sim_members.py), every group moving its replicas one voter at a time
(fabric/core/reconfigure.py) while the workloads run.

Under faults every seed must keep every invariant (Raft safety, linearizable KV and cache
histories, locks and queues) and converge: after healing, each group's Raft membership is its
placement over the final members. Quietly, the removed node must also learn that it was
removed from every group.
"""

from __future__ import annotations

import os

import pytest
from sim_scenario import call, client, ok, quiet_simulation, wait_for
from simulator import Simulation, run_simulation

from syncfab.actors.kv import Get, Put
from syncfab.actors.members import MemberAdd, MemberRemove
from syncfab.actors.raft import Role
from syncfab.actors.raft_conf import membership
from syncfab.actors.results import Ok
from syncfab.actors.ring import ShardPlacement

SEEDS = int(os.environ.get("SYNCFAB_SIM_MEMBER_SEEDS", "30"))
MEMBERSHIP = {"node_count": 4, "joining": 1}


@pytest.mark.parametrize("chunk", [range(k, min(k + 10, SEEDS + 1)) for k in range(1, SEEDS + 1, 10)])
def test_membership_changes_under_faults(chunk: range) -> None:
    failures = []
    for seed in chunk:
        try:
            run_simulation(seed, **MEMBERSHIP)
        except Exception as e:  # SimulationFailure: names the seed and how to replay it
            failures.append(f"{e} (with {MEMBERSHIP})")
    assert not failures, "\n\n".join(failures)


def test_a_node_joins_and_another_leaves_with_every_write_kept() -> None:
    sim = quiet_simulation(5, member_change_at_ms=10**9, **MEMBERSHIP)
    rpc = client(sim, "c")
    keys = [f"k{i}" for i in range(20)]
    for k in keys:
        ok(call(sim, rpc, Put(k, k.upper())))
    assert sim.membership is not None
    sim.membership.start_now()
    wait_for(sim, "n4 added and n1 removed", lambda: sim.membership.done, 10_000)
    wait_for(sim, "every group on its new replicas", lambda: sim.convergence_gap() is None, 20_000)
    n4 = sim.nodes["n4"].core
    assert n4 is not None and set(n4.groups) == {0, *sim.placement.groups_of("n4")}
    # the balancer hands n4 the shards it is now preferred for
    preferred = [g for g in sim.placement.shards if sim.placement.preferred_leader(g) == "n4"]
    wait_for(
        sim,
        "n4 leads its shards",
        lambda: all(n4.groups[g].raft.role is Role.LEADER for g in preferred),
        10_000,
    )
    wait_for(sim, "n1 learns it was removed", lambda: sim.membership.still_counted() == {"n1": []}, 10_000)
    for k in keys:
        assert call(sim, rpc, Get(k)) == Ok(k.upper())
    ok(call(sim, rpc, Put("after", 1)))


def test_a_member_that_never_answers_stays_a_learner_and_can_be_removed() -> None:
    """Added at an address no one answers (a typo, a node not started): every group takes it
    as a learner, none makes it a voter (it would only weaken the quorum), and removing it
    puts every group back as it was."""
    sim = quiet_simulation(8)
    rpc = client(sim, "c")
    ok(call(sim, rpc, Put("k", 1)))
    ok(call(sim, rpc, MemberAdd("ghost", "ghost:7101")))
    sim.run_until(sim.now + 5_000)
    for n in sim.node_ids:
        for g in sim.core(n).groups.values():
            assert "ghost" not in g.raft.conf.voters, (n, g.id, g.raft.conf)
    assert "ghost" in sim.core("n1").groups[0].raft.conf.learners
    ok(call(sim, rpc, MemberRemove("ghost")))

    def back() -> bool:
        cores = [sim.nodes[n].core for n in sim.node_ids]
        return all(
            c is not None and all("ghost" not in g.raft.conf.learners for g in c.groups.values())
            for c in cores
        )

    wait_for(sim, "every group without the ghost", back, 10_000)
    ok(call(sim, rpc, Put("k", 2)))


def placed(sim: Simulation, nodes: list[str]) -> bool:
    """Every group's leader has the placement over ``nodes`` as its voters, and no learner."""
    cfg = sim.config
    target = ShardPlacement.build(nodes, cfg.shard_count, cfg.replication, cfg.vnodes)
    for gid in range(cfg.shard_count + 1):
        leader = sim.leader_of(gid)
        if leader is None:
            return False
        conf = sim.core(leader).groups[gid].raft.conf
        if conf != membership(target.replicas(gid)):
            return False
    return True


def test_a_node_removed_while_down_is_told_when_it_comes_back() -> None:
    """Removed while it was down, n1 never heard it from its groups; started again on its old
    disk it campaigns with its old memberships. It is told — by a member it asks (Removed), or
    by a group's leader sending it the log with its removal — and is evicted: it stops
    campaigning, and nothing it does reaches the cluster. (Which way comes first depends on the
    schedule; tests/fabric/test_node_membership.py pins the Removed one.)"""
    sim = quiet_simulation(6, member_change_at_ms=10**9, **MEMBERSHIP)
    rpc = client(sim, "c")
    ok(call(sim, rpc, MemberAdd("n4", sim.members["n4"])))
    wait_for(sim, "four nodes' placement", lambda: placed(sim, ["n1", "n2", "n3", "n4"]), 20_000)
    sim.crash("n1", "idle", 60_000)
    ok(call(sim, rpc, MemberRemove("n1")))
    wait_for(sim, "every group off n1", lambda: placed(sim, ["n2", "n3", "n4"]), 20_000)
    # Long enough for every leader to have given up telling it (removed_heartbeats_max).
    sim.run_until(sim.now + 200 * sim.config.heartbeat_ms)
    assert all("n1" not in g.raft.progress for n in ("n2", "n3", "n4") for g in sim.core(n).groups.values())
    sim.heal()  # n1 starts again on its disk
    n1 = sim.core("n1")
    assert not n1.evicted
    wait_for(sim, "n1 told it was removed", lambda: sim.core("n1").evicted, 10_000)
    n1 = sim.core("n1")
    sim.run_until(sim.now + 3_000)
    assert all(g.raft.role is Role.FOLLOWER for g in n1.groups.values())
    assert placed(sim, ["n2", "n3", "n4"])
    ok(call(sim, rpc, Put("after", 1)))
