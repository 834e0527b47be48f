"""Lock scenarios on the simulator: the faults and interleavings a random seed reaches only
sometimes, forced. The service invariants (exclusion, acyclic wait-for graph, replica agreement)
run after every turn here too, and ``finish`` still heals and checks liveness."""

from __future__ import annotations

from typing import Any

from sim_locks import FencedResource
from sim_scenario import Probe, RawProbe, answer, call, client, err, ok, quiet_simulation, start, wait_for
from simulator import Simulation

from syncfab.actors.locks import (
    EXCLUSIVE,
    Acquire,
    ExpireLocks,
    LockBatch,
    LockInfo,
    LockTable,
    Release,
    Renew,
)
from syncfab.actors.machine import ApplyContext, GroupMachine
from syncfab.actors.results import Answers, Ok, Waiting
from syncfab.actors.ring import CONTROL_GROUP
from syncfab.fabric.core.codec import Request, encode

LONG_MS = 10_000


def _tables(sim: Simulation) -> dict[str, LockTable]:
    return {
        n: c.groups[CONTROL_GROUP].machine.services["locks"]  # type: ignore[misc]
        for n, c in sim._live_replicas(CONTROL_GROUP)
    }


def _holders(table: LockTable, resource: str) -> dict[str, int]:
    res = table._resources.get(resource)
    return {} if res is None else {o: h.token for o, h in res.holders.items()}


def test_lock_survives_a_crash_of_the_group0_leader() -> None:
    sim = quiet_simulation(301)
    wait_for(sim, "a group 0 leader", lambda: sim.leader_of(CONTROL_GROUP) is not None)
    a, b = client(sim, "owner-a"), client(sim, "owner-b")
    resource = FencedResource("orders", sim)
    token = ok(call(sim, a, Acquire("orders", EXCLUSIVE, "owner-a", 0, LONG_MS)))["fencing_token"]
    assert resource.use("owner-a", token, EXCLUSIVE, "begin")

    old = sim.leader_of(CONTROL_GROUP)
    assert old is not None
    term = sim.core(old).groups[CONTROL_GROUP].raft.term
    sim.crash(old, "idle", down_ms=2_000)
    wait_for(sim, "a new group 0 leader", lambda: sim.leader_of(CONTROL_GROUP) not in (None, old))
    new = sim.leader_of(CONTROL_GROUP)
    assert new is not None and sim.core(new).groups[CONTROL_GROUP].raft.term > term

    # The new leader's table: same holder, same token; another client still only times out.
    holders = ok(call(sim, b, LockInfo("orders")))["holders"]
    assert [(h["owner"], h["fencing_token"]) for h in holders] == [("owner-a", token)]
    assert err(call(sim, b, Acquire("orders", EXCLUSIVE, "owner-b", 300, LONG_MS))) == "lock_timeout"
    ok(call(sim, a, Renew("owner-a", LONG_MS)))
    wait_for(sim, "the old leader back", lambda: sim.is_up(old), timeout_ms=3_000)
    sim.run_until(sim.now + 500)
    for node, table in _tables(sim).items():
        assert _holders(table, "orders") == {"owner-a": token}, node

    assert resource.use("owner-a", token, EXCLUSIVE, "end")
    assert ok(call(sim, a, Release("orders", "owner-a")))["released"]
    later = ok(call(sim, b, Acquire("orders", EXCLUSIVE, "owner-b", 0, LONG_MS)))["fencing_token"]
    assert later > token and resource.use("owner-b", later, EXCLUSIVE, "begin")
    ok(call(sim, b, Release("orders", "owner-b")))
    sim.finish()


def test_a_client_that_stops_renewing_loses_its_lock_after_its_ttl() -> None:
    sim = quiet_simulation(302)
    wait_for(sim, "a group 0 leader", lambda: sim.leader_of(CONTROL_GROUP) is not None)
    a, b = client(sim, "owner-a"), client(sim, "owner-b")
    resource = FencedResource("orders", sim)
    ttl_ms = 800
    asked_ms = sim.now
    token = ok(call(sim, a, Acquire("orders", EXCLUSIVE, "owner-a", 0, ttl_ms)))["fencing_token"]
    assert resource.use("owner-a", token, EXCLUSIVE, "begin")
    # owner-a now goes silent (a crashed process, a long GC pause): no renewal, no release.
    waiting = start(sim, b, Acquire("orders", EXCLUSIVE, "owner-b", 5_000, LONG_MS))
    later = ok(answer(sim, waiting, timeout_ms=3_000))["fencing_token"]
    # The lease ran from the leader's stamp on the acquire, which it took after it was asked.
    assert waiting.at_ms >= asked_ms + ttl_ms, (asked_ms, waiting.at_ms)
    assert later > token
    assert resource.use("owner-b", later, EXCLUSIVE, "begin")
    # The zombie comes back with its old token: the resource refuses it, the table forgot it.
    assert not resource.use("owner-a", token, EXCLUSIVE, "end") and resource.rejected == 1
    assert err(call(sim, a, Renew("owner-a", ttl_ms))) == "lease_expired"
    assert err(call(sim, a, Release("orders", "owner-a"))) == "not_held"
    assert resource.use("owner-b", later, EXCLUSIVE, "end")
    ok(call(sim, b, Release("orders", "owner-b")))
    sim.finish()


def test_a_three_way_deadlock_is_broken_and_the_survivors_proceed() -> None:
    sim = quiet_simulation(303)
    wait_for(sim, "a group 0 leader", lambda: sim.leader_of(CONTROL_GROUP) is not None)
    owners = ["owner-a", "owner-b", "owner-c"]
    a, b, c = (client(sim, o) for o in owners)
    for rpc, o, r in zip((a, b, c), owners, ("r0", "r1", "r2"), strict=True):
        ok(call(sim, rpc, Acquire(r, EXCLUSIVE, o, 0, LONG_MS)))
    # a waits for b's r1, b for c's r2; c asking for a's r0 closes the cycle a -> b -> c -> a.
    a_waits = start(sim, a, Acquire("r1", EXCLUSIVE, "owner-a", LONG_MS, LONG_MS))
    b_waits = start(sim, b, Acquire("r2", EXCLUSIVE, "owner-b", LONG_MS, LONG_MS))
    wait_for(sim, "two waits applied", lambda: all(len(t.graph.edges()) == 2 for t in _tables(sim).values()))
    refused = call(sim, c, Acquire("r0", EXCLUSIVE, "owner-c", LONG_MS, LONG_MS))
    assert err(refused) == "deadlock"
    cycle = refused.detail["cycle"]  # type: ignore[union-attr]
    assert cycle == ["owner-c", "owner-a", "owner-b"], cycle  # the youngest request is the victim
    for table in _tables(sim).values():
        assert table.graph.is_acyclic() and ("owner-c", "owner-a") not in table.graph
    assert not a_waits.answered and not b_waits.answered

    # The victim backs off: b gets r2, finishes and lets go, then a gets r1.
    ok(call(sim, c, Release("r2", "owner-c")))
    assert ok(answer(sim, b_waits))["resource"] == "r2"
    assert not a_waits.answered
    for r in ("r1", "r2"):
        ok(call(sim, b, Release(r, "owner-b")))
    assert ok(answer(sim, a_waits))["resource"] == "r1"
    for r in ("r0", "r1"):
        ok(call(sim, a, Release(r, "owner-a")))
    sim.finish()


def test_a_lease_ending_mid_queue_leaves_the_same_wait_for_graph_as_a_snapshot() -> None:
    """Found by the simulator (replica agreement, then the wait-for graph check): when an owner's
    lease ended (or it closed) while it waited in the middle of a queue, the waiter behind it kept
    an edge to it on replicas that applied the log, but not on replicas restored from a snapshot
    — two wait-for graphs, two different deadlock verdicts."""
    machine = GroupMachine({"locks": LockTable()})
    index = 0

    def apply(now_ms: int, client: str, op: Any) -> None:
        nonlocal index
        index += 1
        machine.apply(ApplyContext(index, now_ms, client, index), index, op)

    apply(0, "h", Acquire("r", EXCLUSIVE, "h", 0, LONG_MS))
    apply(0, "a", Acquire("r", EXCLUSIVE, "a", LONG_MS, LONG_MS))
    apply(0, "b", Acquire("r", EXCLUSIVE, "b", LONG_MS, 100))  # its lease ends while it waits
    apply(0, "c", Acquire("r", EXCLUSIVE, "c", LONG_MS, LONG_MS))
    apply(200, "", ExpireLocks())
    table: LockTable = machine.services["locks"]  # type: ignore[assignment]
    restored = LockTable()
    restored.restore(table.snapshot())
    assert [w.owner for w in table._resources["r"].queue] == ["a", "c"]
    assert table.graph.edges() == restored.graph.edges() == [("a", "h"), ("c", "a")]
    assert table.snapshot() == restored.snapshot()


def test_a_batched_acquire_waits_and_is_answered_under_its_own_id() -> None:
    """The batch is answered as soon as it commits; its waiting op later, on its own; and a
    leader that loses leadership fails a waiting op under that op's id, so it can be asked again.
    (The replicas' side of the protocol, with ids the test picks: ``b`` is a ``RawProbe``.)"""
    sim = quiet_simulation(307)
    wait_for(sim, "a group 0 leader", lambda: sim.leader_of(CONTROL_GROUP) is not None)
    leader = sim.leader_of(CONTROL_GROUP)
    assert leader is not None
    a, b = Probe(sim, "probe-a"), RawProbe(sim, "probe-b")
    held = ok(a.call(leader, Acquire("x", EXCLUSIVE, "owner-a", 0, LONG_MS)))["fencing_token"]

    rid = b.send(
        leader,
        LockBatch(
            [
                Acquire("x", EXCLUSIVE, "owner-b", LONG_MS, LONG_MS),
                Acquire("y", EXCLUSIVE, "owner-c", 0, LONG_MS),
            ]
        ),
        ids=3,
    )
    sim.run_until(sim.now + 2_000, stop=lambda: bool(b.results(rid)))
    [answers] = b.results(rid)
    assert isinstance(answers, Answers), answers
    waiting, granted = answers.results
    assert isinstance(waiting, Waiting) and isinstance(granted, Ok), answers
    assert not b.results(rid + 1)

    ok(a.call(leader, Release("x", "owner-a")))
    sim.run_until(sim.now + 2_000, stop=lambda: bool(b.results(rid + 1)))
    [grant] = b.results(rid + 1)
    assert ok(grant)["fencing_token"] > held

    # owner-b holds x now; owner-d's batched wait is cut short by a leadership transfer.
    rid = b.send(leader, LockBatch([Acquire("x", EXCLUSIVE, "owner-d", LONG_MS, LONG_MS)]), ids=2)
    sim.run_until(sim.now + 2_000, stop=lambda: bool(b.results(rid)))
    assert isinstance(b.results(rid)[0], Answers)
    other = next(n for n in sim.node_ids if n != leader)
    assert sim.core(leader).groups[CONTROL_GROUP].raft.transfer_leadership(other)
    sim.run_until(sim.now + 3_000, stop=lambda: bool(b.results(rid + 1)))
    [cut] = b.results(rid + 1)
    assert err(cut) == "leader_changed"
    # Asked again alone, under the same id, at the new leader: still waiting behind owner-b.
    wait_for(sim, "the new leader", lambda: sim.leader_of(CONTROL_GROUP) == other)
    b.replies.clear()
    sim.send_request(
        b,
        other,
        encode(Request("probe-b", rid + 1, rid, Acquire("x", EXCLUSIVE, "owner-d", LONG_MS, LONG_MS))),
    )
    sim.run_until(sim.now + 1_000)
    assert not b.results(rid + 1)  # parked again, not applied twice
    ok(a.call(other, Release("x", "owner-b")))  # any client may carry owner-b's release
    sim.run_until(sim.now + 2_000, stop=lambda: bool(b.results(rid + 1)))
    assert ok(b.results(rid + 1)[0])["granted"]
