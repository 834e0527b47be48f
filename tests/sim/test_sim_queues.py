"""Queue scenarios on the simulator: a shard leader lost with messages in flight, a poison message
on its way to the dead-letter queue, and a deposed leader asked for messages acked elsewhere.
``QueueModel`` checks every delivery as the random workload does (payloads, ids, nothing back after
an acknowledged ack)."""

from __future__ import annotations

from typing import Any

import pytest
from sim_queues import DLQ, ORIGINAL, QUEUE, QueueModel
from sim_rpc import RpcClient
from sim_scenario import Probe, call, client, ok, quiet_simulation, wait_for
from simulator import Simulation

from syncfab.actors.queues import (
    Ack,
    ConfigureQueue,
    Consume,
    Nack,
    NewMessage,
    Produce,
    ProduceBatch,
    QueueStats,
)
from syncfab.actors.raft import Role
from syncfab.actors.results import RETRYABLE, Err, Ok
from syncfab.fabric.core.codec import OnShard
from syncfab.fabric.core.routing import queue_key_shard

LONG_MS = 60_000  # no visibility deadline passes during a scenario: only a leader change redelivers


def _consume(
    sim: Simulation,
    model: QueueModel,
    consumer: RpcClient,
    shard: int,
    queue: str = QUEUE,
    max_messages: int = 16,
) -> list[dict[str, Any]]:
    asked_ms = sim.now
    messages = ok(call(sim, consumer, OnShard(shard, Consume(queue, consumer.name, max_messages, LONG_MS))))
    for m in messages["messages"]:
        model.delivered.add(model.delivery(m, asked_ms, consumer.name))
    return messages["messages"]


def _stats(sim: Simulation, rpc: RpcClient, shard: int) -> dict[str, Any]:
    return ok(call(sim, rpc, OnShard(shard, QueueStats(QUEUE))))


def test_shard_leader_crash_with_messages_in_flight_loses_nothing() -> None:
    sim = quiet_simulation(401)
    shard = 1
    wait_for(sim, "a shard leader", lambda: sim.leader_of(shard) is not None)
    model = QueueModel(sim)
    producer, consumer = client(sim, "producer"), client(sim, "consumer")
    payloads = [f"job-{i}" for i in range(10)]
    model.attempted.update(payloads)
    batch = ProduceBatch(QUEUE, [NewMessage(p) for p in payloads])
    ids = ok(call(sim, producer, OnShard(shard, batch)))["message_ids"]
    for mid, payload in zip(ids, payloads, strict=True):
        model.produce_acknowledged(mid, payload)

    first = _consume(sim, model, consumer, shard)
    assert [m["message_id"] for m in first] == ids
    assert _stats(sim, consumer, shard)["in_flight"] == len(ids)
    leader = sim.leader_of(shard)
    assert leader is not None
    # The in-flight marks live in the leader's memory only: they die with it.
    sim.crash(leader, "idle", down_ms=2_000)
    wait_for(sim, "a new shard leader", lambda: sim.leader_of(shard) not in (None, leader))

    again = _consume(sim, model, consumer, shard)
    assert [m["message_id"] for m in again] == ids, "the new leader must hand every message out again"
    assert [m["data"] for m in again] == payloads
    assert all(m["delivery_count"] == 1 for m in again)  # a lost lease is not a failed delivery
    acked = ok(call(sim, consumer, Ack(QUEUE, ids)))["acked"]
    assert acked == len(ids)
    model.ack_acknowledged(QUEUE, ids, acked)
    assert _consume(sim, model, consumer, shard) == []
    stats = _stats(sim, consumer, shard)
    assert (stats["depth"], stats["in_flight"], stats["acked"]) == (0, 0, len(ids))
    model.check_final()
    sim.finish()


def test_a_poison_message_ends_in_the_dead_letter_queue_after_max_deliveries() -> None:
    sim = quiet_simulation(402)
    max_deliveries = 3
    shard = queue_key_shard(QUEUE, "poison", sim.config.shard_count)
    wait_for(sim, "a shard leader", lambda: sim.leader_of(shard) is not None)
    model = QueueModel(sim)
    producer, consumer = client(sim, "producer"), client(sim, "consumer")
    ok(call(sim, producer, OnShard(shard, ConfigureQueue(QUEUE, LONG_MS, max_deliveries))))
    model.attempted.add("poison-pill")
    mid = ok(call(sim, producer, Produce(QUEUE, "poison-pill", key="poison")))["message_id"]
    model.produce_acknowledged(mid, "poison-pill")

    deliveries = 0
    while got := _consume(sim, model, consumer, shard):
        assert [m["message_id"] for m in got] == [mid]
        deliveries += 1
        assert got[0]["delivery_count"] == deliveries
        nacked = ok(call(sim, consumer, Nack(QUEUE, [mid])))
        assert nacked["nacked"] == 1
        assert nacked["dead_lettered"] == (1 if deliveries == max_deliveries else 0), (deliveries, nacked)
        assert deliveries <= max_deliveries
    assert deliveries == max_deliveries
    stats = _stats(sim, consumer, shard)
    assert (stats["depth"], stats["dead_lettered"], stats["dlq_depth"]) == (0, 1, 1)

    (dead,) = _consume(sim, model, consumer, shard, DLQ)
    assert dead["data"] == "poison-pill" and dead["headers"][ORIGINAL] == mid
    assert dead["headers"]["x-dead-letter-reason"] == "max_deliveries"
    assert ok(call(sim, consumer, Ack(DLQ, [dead["message_id"]])))["acked"] == 1
    assert _stats(sim, consumer, shard)["dlq_depth"] == 0
    model.check_final()
    sim.finish()


@pytest.mark.parametrize("check_quorum", [False, True], ids=["no-check-quorum", "check-quorum"])
def test_a_deposed_shard_leader_hands_out_no_message_acked_elsewhere(check_quorum: bool) -> None:
    """A consume runs on the leader, from its memory — but only after a ReadIndex round: the old
    leader, cut off, would otherwise hand out a message whose ack the new one acknowledged."""
    sim = quiet_simulation(404, check_quorum=check_quorum)
    shard = 1
    wait_for(sim, "a shard leader", lambda: sim.leader_of(shard) is not None)
    sim.run_until(sim.now + 500)  # past the leader's no-op
    probe = Probe(sim, "probe")
    producer = client(sim, "producer")
    (mid,) = ok(call(sim, producer, OnShard(shard, ProduceBatch(QUEUE, [NewMessage("job")]))))["message_ids"]
    old = sim.leader_of(shard)
    assert old is not None
    old_raft = sim.core(old).groups[shard].raft
    others = [n for n in sim.node_ids if n != old]
    links = [(old, n) for n in others] + [(n, old) for n in others]
    sim.network.cut(links)
    wait_for(
        sim,
        "a leader on the majority side",
        lambda: any(sim.core(n).groups[shard].raft.role is Role.LEADER for n in others),
    )
    new = next(n for n in others if sim.core(n).groups[shard].raft.role is Role.LEADER)
    new_raft = sim.core(new).groups[shard].raft
    # Let it commit its own no-op and apply everything: what is left to test is the old leader.
    wait_for(
        sim,
        "the new leader caught up",
        lambda: (
            new_raft.log.term(new_raft.commit_index) == new_raft.term
            and new_raft.applying_index == new_raft.commit_index
        ),
    )

    def ask(node: str, op: Any) -> Any:
        rid = probe.send(node, op)
        wait_for(sim, f"an answer from {node}", lambda: bool(probe.results(rid)))
        return ok(probe.results(rid)[0])

    consume = OnShard(shard, Consume(QUEUE, "probe", 10, LONG_MS))
    assert [m["message_id"] for m in ask(new, consume)["messages"]] == [mid]
    assert ask(new, Ack(QUEUE, [mid])) == {"acked": 1}  # acknowledged: the majority moved on

    rid = probe.send(old, consume)
    sim.run_until(sim.now + 2_000)
    answers = probe.results(rid)
    assert not any(isinstance(a, Ok) for a in answers), f"seed=404: the deposed leader handed out {answers}"
    if not check_quorum:
        assert old_raft.role is Role.LEADER and answers == []  # it still leads, as far as it knows
    sim.network.heal(links)
    sim.run_until(sim.now + 1_000)
    answers = probe.results(rid)
    assert answers and all(isinstance(a, Err) and a.code in RETRYABLE for a in answers), answers
    sim.finish()


def test_a_new_shard_leader_serves_no_consume_before_applying_its_predecessors_acks() -> None:
    """A new leader knows its predecessor's last entries but not that they committed until an
    entry of its own term commits; run at once, a consume saw the state before the last acks."""
    sim = quiet_simulation(405, delay_ms_min=1, delay_ms_max=1)
    shard = 1
    wait_for(sim, "a shard leader", lambda: sim.leader_of(shard) is not None)
    sim.run_until(sim.now + 500)
    probe = Probe(sim, "probe")
    producer = client(sim, "producer")
    (mid,) = ok(call(sim, producer, OnShard(shard, ProduceBatch(QUEUE, [NewMessage("job")]))))["message_ids"]
    old = sim.leader_of(shard)
    assert old is not None
    heir, bystander = (n for n in sim.placement.replicas(shard) if n != old)
    sim.network.cut([(old, bystander), (bystander, old)])  # the ack will commit on old + heir only
    consume = OnShard(shard, Consume(QUEUE, "probe", 10, LONG_MS))
    rid = probe.send(old, consume)
    wait_for(sim, "the first delivery", lambda: bool(probe.results(rid)))
    assert [m["message_id"] for m in ok(probe.results(rid)[0])["messages"]] == [mid]
    rid = probe.send(old, Ack(QUEUE, [mid]))
    old_queue = sim.core(old).groups[shard].machine.services["queues"]._queues[QUEUE]  # type: ignore[attr-defined]
    wait_for(sim, "the ack applied on the old leader", lambda: not old_queue.depth)
    # Committed, and answered — but the heir has not heard so: the next heartbeat never comes.
    sim.network.cut([(old, heir)])
    heir_raft = sim.core(heir).groups[shard].raft
    assert heir_raft.applying_index < sim.core(old).groups[shard].raft.applying_index
    wait_for(sim, "the ack acknowledged", lambda: bool(probe.results(rid)))
    assert ok(probe.results(rid)[0]) == {"acked": 1}
    sim.crash(old, "idle", down_ms=60_000)
    wait_for(sim, "the heir leading", lambda: heir_raft.role is Role.LEADER)
    rid = probe.send(heir, consume)  # at once: before its own no-op commits
    wait_for(sim, "an answer from the heir", lambda: bool(probe.results(rid)))
    answer = ok(probe.results(rid)[0])
    assert answer == {"messages": []}, f"seed=405: the new leader handed out an acked message: {answer}"
    sim.network.heal_all()
    sim.finish()
