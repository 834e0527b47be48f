"""A planned leadership transfer hands the queue leader's in-flight marks to the next leader
(actors/queue_handover.py): driven op by op as the log would drive two replicas."""

from __future__ import annotations

from typing import Any

from test_queues import Shard, datas, field_of

from syncfab.actors.queue_handover import HANDOVER_MARKS_MAX
from syncfab.actors.queue_ops import IDS_MAX, Ack, ConfigureQueue, HandOver, Nack
from syncfab.actors.results import Err
from syncfab.fabric.core.codec import OnShard
from syncfab.fabric.core.routing import group_for


def pair() -> tuple[Shard, Shard]:
    """A leader and a follower of one shard with the same three messages applied."""
    leader, follower = Shard(), Shard()
    for i in range(3):
        for s in (leader, follower):
            s.produce(i)
    return leader, follower


def both(replicas: tuple[Shard, Shard], op: Any) -> Any:
    results = [s.apply(op) for s in replicas]
    assert results[0] == results[1], op
    return results[0]


def test_the_next_leader_keeps_a_consumer_s_messages_until_their_deadlines() -> None:
    leader, follower = pair()
    held = leader.consume(consumer="worker-1", max=2, visibility_ms=30_000)
    ops = leader.p.hand_over()
    assert [(op.message_ids, op.consumers, op.delivery_counts) for op in ops] == [
        (["2:1", "2:2"], ["worker-1", "worker-1"], [0, 0])
    ]
    for op in ops:
        assert both((leader, follower), op).value == {"handed": 2}
    leader.p.reset_local(False)  # the old leader: deposed by the transfer
    follower.p.reset_local(True)  # the target: elected
    follower.now = leader.now + 1_000
    assert datas(follower.consume(consumer="worker-2", max=3)) == [2]  # not the held ones
    assert follower.stats()["in_flight"] == 3
    # worker-1's ack of what it held still lands on a message that was never handed out again.
    assert follower.ok(Ack("q", [m["message_id"] for m in held[:1]])) == {"acked": 1}
    # The other one's deadline passes unacked: redelivered then, counted once.
    follower.now = leader.now + 30_000
    follower.housekeep()
    again = follower.consume(consumer="worker-2", max=3)
    assert datas(again) == [1] and again[0]["delivery_count"] == 2
    assert leader.stats()["in_flight"] == 0  # the deposed leader holds none


def test_marks_of_messages_acked_nacked_or_redelivered_since_are_left_alone() -> None:
    leader, follower = pair()
    leader.consume(max=3, visibility_ms=30_000)
    for op in leader.p.hand_over():
        both((leader, follower), op)
    both((leader, follower), Ack("q", ["2:1"]))  # acked after the hand-over
    both((leader, follower), Nack("q", ["2:2"]))  # nacked: its count moved on
    follower.p.reset_local(True)
    got = follower.consume(max=3)
    assert datas(got) == [1] and got[0]["delivery_count"] == 2  # the nacked one, visible again
    assert follower.stats()["in_flight"] == 2  # it, and 2:3, still its first consumer's


def test_a_replica_that_does_not_lead_next_forgets_the_marks() -> None:
    leader, follower = pair()
    leader.consume(max=3)
    for op in leader.p.hand_over():
        both((leader, follower), op)
    follower.p.reset_local(False)
    follower.p.reset_local(True)
    assert datas(follower.consume(max=3)) == [0, 1, 2]


def test_marks_whose_deadline_passed_before_the_hand_over_applied_are_dropped() -> None:
    leader, follower = pair()
    leader.consume(max=1, visibility_ms=100)
    ops = leader.p.hand_over()
    follower.now += 5_000  # the entry's stamp is past the deadline
    for op in ops:
        follower.ok(op)
    follower.p.reset_local(True)
    assert datas(follower.consume(max=3)) == [0, 1, 2]


def test_a_hand_over_is_split_by_ids_max_and_bounded() -> None:
    s = Shard()
    s.ok(ConfigureQueue("q"))
    for i in range(IDS_MAX + 5):
        s.produce(i)
    s.consume(max=1000)
    s.consume(max=5)
    ops = s.p.hand_over()
    assert [len(op.message_ids) for op in ops] == [IDS_MAX, 5]
    assert HANDOVER_MARKS_MAX >= IDS_MAX  # the bound is whole commands


def test_a_malformed_hand_over_is_refused_alike_on_every_replica() -> None:
    replicas = pair()
    for bad, field in [
        (HandOver("q", ["2:1"], ["c", "d"], [1], [0]), "message_ids"),
        (HandOver("q", ["2:1", "2:1"], ["c", "c"], [1, 1], [0, 0]), "message_ids"),
        (HandOver("q", ["2:1"], [7], [1], [0]), "consumers"),  # type: ignore[list-item]
        (HandOver("q", ["3:1"], ["c"], [1], [0]), "message_ids"),
        (HandOver("", ["2:1"], ["c"], [1], [0]), "queue"),
    ]:
        assert field_of(both(replicas, bad)) == field, bad


def test_a_client_cannot_send_one() -> None:
    op = OnShard(2, HandOver("q", ["2:1"], ["c"], [10**12], [0]))
    result = group_for(op, 8)
    assert isinstance(result, Err) and result.detail["field"] == "op"


def test_a_leader_elected_before_the_hand_over_applies_takes_the_marks_on_as_it_applies() -> None:
    # The target campaigns as soon as it holds the entry, usually before it learns the entry
    # committed: it leads first and applies the hand-over after.
    leader, follower = pair()
    leader.consume(consumer="worker-1", max=2)
    ops = leader.p.hand_over()
    follower.p.reset_local(True)
    for op in ops:
        follower.ok(op)
    assert datas(follower.consume(consumer="worker-2", max=3)) == [2]
