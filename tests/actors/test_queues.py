"""QueuePartitions: one shard's slice of every queue, driven op by op as the log would drive it."""

from __future__ import annotations

import gc
import random
from collections import Counter
from typing import Any

import msgspec
import pytest

from syncfab.actors.limits import NAME_BYTES_MAX
from syncfab.actors.machine import ApplyContext
from syncfab.actors.queue_ops import Produced
from syncfab.actors.queue_state import StoredMessage
from syncfab.actors.queues import (
    Ack,
    ConfigureQueue,
    Consume,
    ExpireMessages,
    Nack,
    NewMessage,
    Produce,
    ProduceBatch,
    QueuePartitions,
    QueueStats,
    Redeliver,
    Return,
)
from syncfab.actors.results import WAITING, Err, Ok, Result, Waiting

SHARD = 2


class Shard:
    """One replica of the shard: the log index and the leader's clock are the test's to move."""

    def __init__(self, shard: int = SHARD, **options: Any) -> None:
        self.p = QueuePartitions(shard, **options)
        self.index = 0
        self.now = 1_000

    def apply(self, op: Any) -> Result | Waiting:
        self.index += 1
        return self.p.apply(ApplyContext(self.index, self.now), op)

    def ok(self, op: Any) -> Any:
        result = self.apply(op)
        assert isinstance(result, Ok), result
        return result.value

    def produce(self, data: Any, queue: str = "q", **fields: Any) -> str:
        return self.ok(Produce(queue, data, **fields))["message_id"]

    def consume(self, queue: str = "q", consumer: str = "c", **fields: Any) -> list[dict[str, Any]]:
        result = self.p.local(self.now, Consume(queue, consumer, **fields))
        assert isinstance(result, Ok), result
        return result.value["messages"]

    def housekeep(self) -> list[Any]:
        """Propose what is due and apply it, as the leader would."""
        ops = self.p.due(self.now)
        for op in ops:
            self.ok(op)
        return ops

    def stats(self, queue: str = "q") -> dict[str, Any]:
        result = self.p.query(QueueStats(queue))
        assert isinstance(result, Ok), result
        return result.value


def datas(messages: list[dict[str, Any]]) -> list[Any]:
    return [m["data"] for m in messages]


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["message_id"] for m in messages]


def field_of(result: Result | Waiting) -> str:
    assert isinstance(result, Err) and result.code == "bad_request", result
    return result.detail["field"]


# ---- order ----------------------------------------------------------------------------------


def test_ids_name_the_shard_and_count_per_partition() -> None:
    s = Shard(shard=7)
    assert [s.produce(1, "a"), s.produce(2, "b"), s.produce(3, "a")] == ["7:1", "7:2", "7:3"]


def test_consume_hands_out_oldest_first_and_keeps_per_key_order() -> None:
    s = Shard()
    produced = [(f"k{i % 3}", i) for i in range(12)]
    for key, data in produced:
        s.produce(data, key=key)
    got = s.consume(max=5) + s.consume(max=5) + s.consume(max=5)
    assert datas(got) == list(range(12))
    for key in ("k0", "k1", "k2"):
        assert [m["data"] for m in got if m["key"] == key] == [d for k, d in produced if k == key]
    first = got[0]
    assert first == {
        "message_id": "2:1",
        "queue": "q",
        "key": "k0",
        "data": 0,
        "headers": {},
        "enqueued_at": 1_000,
        "delivery_count": 1,
    }


def test_in_flight_messages_are_not_handed_out_twice() -> None:
    s = Shard()
    for i in range(3):
        s.produce(i)
    assert datas(s.consume(consumer="c1", max=2)) == [0, 1]
    assert datas(s.consume(consumer="c2", max=5)) == [2]
    assert s.consume(consumer="c3") == []
    stats = s.stats()
    assert (stats["depth"], stats["visible"], stats["in_flight"], stats["delivered"]) == (3, 0, 3, 3)


def test_a_message_visible_again_goes_back_before_younger_ones() -> None:
    s = Shard()
    first, _ = s.produce("m1"), s.produce("m2")
    assert datas(s.consume()) == ["m1"]
    assert s.ok(Nack("q", [first])) == {"nacked": 1, "dead_lettered": 0}
    got = s.consume(max=2)
    assert datas(got) == ["m1", "m2"]
    assert [m["delivery_count"] for m in got] == [2, 1]


# ---- visibility deadlines -------------------------------------------------------------------


def test_passed_deadline_is_proposed_once_then_redelivered_with_a_count() -> None:
    s = Shard()
    mid = s.produce("m")
    s.consume(visibility_ms=1_000)
    assert s.p.due(1_999) == []
    assert s.p.due(2_000) == [Redeliver("q", [mid], [0])]
    # Not again while the entry commits, however often the leader asks.
    assert s.p.due(2_000) == [] and s.p.due(2_010) == [] and s.p.due(5_000) == []
    s.now = 2_010
    assert s.consume() == []  # still in flight until the Redeliver applies
    assert s.ok(Redeliver("q", [mid], [0])) == {"redelivered": 1, "dead_lettered": 0}
    got = s.consume()
    assert ids(got) == [mid] and got[0]["delivery_count"] == 2
    assert s.stats()["redelivered"] == 1


def test_a_lost_redelivery_is_proposed_again_and_copies_count_once() -> None:
    s = Shard(redelivery_retry_ms=5_000)
    mid = s.produce("m")
    s.consume(visibility_ms=0)
    op = s.p.due(1_000)
    assert op == [Redeliver("q", [mid], [0])]
    assert s.p.due(5_999) == []
    assert s.p.due(6_000) == op  # the first proposal never applied
    assert s.ok(op[0]) == {"redelivered": 1, "dead_lettered": 0}
    assert s.ok(op[0]) == {"redelivered": 0, "dead_lettered": 0}
    assert s.p.browse("q")[0]["delivery_count"] == 1
    assert s.p.due(100_000) == []


def test_a_stale_redeliver_leaves_a_newer_delivery_alone() -> None:
    s = Shard()
    mid = s.produce("m")
    s.consume(consumer="c1", visibility_ms=100)
    stale = s.p.due(1_100)
    s.ok(Nack("q", [mid]))  # c1 gave up before the Redeliver committed
    s.now = 1_200
    assert ids(s.consume(consumer="c2")) == [mid]
    assert s.ok(stale[0]) == {"redelivered": 0, "dead_lettered": 0}
    assert s.p.browse("q")[0]["consumer"] == "c2"
    assert s.consume(consumer="c3") == []


def test_redelivery_proposals_are_split_and_sorted() -> None:
    s = Shard()
    for i in range(1_500):
        s.produce(i, "b" if i % 2 else "a")
    s.consume("a", max=750, visibility_ms=10)
    s.consume("b", max=750, visibility_ms=5)
    ops = s.p.due(2_000)
    assert [(op.queue, len(op.message_ids)) for op in ops] == [("a", 750), ("b", 750)]
    assert ops[0].message_ids == sorted(ops[0].message_ids, key=lambda m: int(m.split(":")[1]))
    s2 = Shard(due_ids_max=100)
    for i in range(250):
        s2.produce(i)
    s2.consume(max=250, visibility_ms=0)
    assert [len(s2.p.due(1_000)[0].message_ids) for _ in range(3)] == [100, 100, 50]


# ---- ack, nack, return ----------------------------------------------------------------------


def test_ack_deletes_visible_and_in_flight_messages_and_is_idempotent() -> None:
    s = Shard()
    m1, m2, m3 = s.produce(1), s.produce(2), s.produce(3)
    s.consume(visibility_ms=100)
    assert s.ok(Ack("q", [m1, m2])) == {"acked": 2}  # m1 in flight, m2 visible
    retried = s.ok(Ack("q", [m1, m2, "2:999"]))  # retried acks, an unknown id: named
    assert retried == {"acked": 0, "not_found": [m1, m2, "2:999"]}
    assert s.ok(Ack("other", [m3])) == {"acked": 0, "not_found": [m3]}  # wrong queue
    assert datas(s.consume()) == [3]
    assert s.p.due(10**6) == [Redeliver("q", [m3], [0])]  # m1's deadline went with it
    stats = s.stats()
    assert (stats["depth"], stats["acked"], stats["produced"]) == (1, 2, 3)


@pytest.mark.parametrize("bad_id", ["1:1", "2:x", "2:01", "2:-1", "2:+1", "2:1_0", "2:", "x", "2:\u0661", 5])
def test_ids_of_other_shards_or_malformed_are_rejected(bad_id: Any) -> None:
    s = Shard()
    s.produce(1)
    for op in (Ack("q", [bad_id]), Nack("q", [bad_id]), Redeliver("q", [bad_id])):
        assert field_of(s.apply(op)) == "message_ids"
    assert field_of(s.p.local(s.now, Return("q", [bad_id]))) == "message_ids"
    assert s.stats()["depth"] == 1


def test_return_gives_messages_back_without_counting_a_delivery() -> None:
    s = Shard()
    m1, m2 = s.produce(1), s.produce(2)
    s.consume(max=2, visibility_ms=100)
    assert s.p.local(s.now, Return("q", [m1, m1, "2:77"])) == Ok({"returned": 1})
    got = s.consume(visibility_ms=100)
    assert ids(got) == [m1] and got[0]["delivery_count"] == 1
    # Past its deadline a message belongs to the Redeliver in flight: Return leaves it there.
    (op,) = s.p.due(1_100)
    assert op.message_ids == [m1, m2]
    assert s.p.local(1_100, Return("q", [m2])) == Ok({"returned": 0})
    assert s.consume() == []
    s.ok(op)
    assert [m["delivery_count"] for m in s.consume(max=2)] == [2, 2]


def test_max_deliveries_moves_a_message_to_the_dead_letter_queue() -> None:
    s = Shard()
    s.ok(ConfigureQueue("q", max_deliveries=2))
    mid = s.produce({"order": 7}, key="k", headers={"trace": "t1"})
    assert ids(s.consume()) == [mid]
    assert s.ok(Nack("q", [mid])) == {"nacked": 1, "dead_lettered": 0}
    # max_deliveries=2: handed out at most twice (SQS's maxReceiveCount), then dead-lettered.
    assert s.consume()[0]["delivery_count"] == 2
    assert s.ok(Nack("q", [mid])) == {"nacked": 1, "dead_lettered": 1}
    assert s.consume() == []
    stats = s.stats()
    assert (stats["depth"], stats["dead_lettered"], stats["dlq_depth"]) == (0, 1, 1)
    (dead,) = s.consume("q.dlq")
    assert dead["message_id"] != mid and dead["queue"] == "q.dlq"
    assert (dead["data"], dead["key"], dead["delivery_count"]) == ({"order": 7}, "k", 1)
    assert dead["headers"] == {
        "trace": "t1",
        "x-dead-letter-reason": "max_deliveries",
        "x-original-message-id": mid,
        "x-original-enqueued-at": "1000",
    }
    assert s.ok(Ack("q.dlq", [dead["message_id"]])) == {"acked": 1}
    assert s.ok(Ack("q", [mid])) == {"acked": 0, "not_found": [mid]}  # the old id is gone with the move


def test_passed_deadlines_count_towards_dead_lettering() -> None:
    s = Shard()
    s.ok(ConfigureQueue("q", max_deliveries=1))
    s.produce("poison")
    for _ in range(2):
        s.consume(visibility_ms=0)
        s.housekeep()
    assert s.consume() == []
    assert datas(s.consume("q.dlq")) == ["poison"]
    assert s.p.stats()["q"]["dead_lettered"] == 1


# ---- dedup, backpressure, batches -----------------------------------------------------------


def test_a_duplicate_within_the_window_returns_the_original_id() -> None:
    s = Shard()
    mid = s.produce(1, dedup_id="d")
    assert s.ok(Produce("q", 2, dedup_id="d")) == {"message_id": mid, "duplicate": True}
    assert s.produce(3, "other", dedup_id="d") != mid  # windows are per queue
    s.ok(Ack("q", [mid]))
    s.now += 299_999
    assert s.ok(Produce("q", 4, dedup_id="d")) == {"message_id": mid, "duplicate": True}
    s.now += 1
    fresh = s.produce(5, dedup_id="d")
    assert fresh != mid
    assert s.ok(Produce("q", 6, dedup_id="d"))["message_id"] == fresh
    assert datas(s.consume(max=10)) == [5]
    assert s.p.stats()["q"]["deduplicated"] == 3


def test_dedup_forgets_the_oldest_ids_past_its_bound() -> None:
    s = Shard(dedup_ids_max=2)
    first = [s.produce(i, dedup_id=f"d{i}") for i in range(3)]
    assert s.produce(9, dedup_id="d0") != first[0]  # forgotten: stored again
    assert s.ok(Produce("q", 9, dedup_id="d2"))["message_id"] == first[2]


def test_dedup_is_off_with_a_zero_window() -> None:
    s = Shard()
    s.ok(ConfigureQueue("q", dedup_window_ms=0))
    assert s.produce(1, dedup_id="d") != s.produce(2, dedup_id="d")


def test_a_full_queue_pushes_back_and_drops_nothing() -> None:
    s = Shard()
    s.ok(ConfigureQueue("q", max_depth=2))
    m1 = s.produce(1, dedup_id="a")
    s.produce(2)
    full = s.apply(Produce("q", 3))
    assert full == Err("queue_full", full.message, {"queue": "q", "max_depth": 2})
    assert s.ok(Produce("q", 1, dedup_id="a")) == {"message_id": m1, "duplicate": True}
    s.consume()  # in flight still counts: the depth is what is stored
    assert isinstance(s.apply(Produce("q", 3)), Err)
    s.ok(Ack("q", [m1]))
    s.produce(3)
    assert datas(s.consume(max=5)) == [2, 3]


def test_a_batch_is_stored_whole_or_not_at_all() -> None:
    s = Shard()
    s.ok(ConfigureQueue("q", max_depth=3))
    s.produce(0, dedup_id="old")
    too_many = ProduceBatch("q", [NewMessage(i) for i in range(3)])
    assert s.apply(too_many).code == "queue_full"
    bad = ProduceBatch("q", [NewMessage(1), NewMessage(2, key="k" * (NAME_BYTES_MAX + 1))])
    assert field_of(s.apply(bad)) == "messages[1].key"
    bad_headers = ProduceBatch("q", [NewMessage(1, headers={"h": 5})])  # type: ignore[dict-item]
    assert field_of(s.apply(bad_headers)) == "messages[0].headers"
    assert s.stats()["depth"] == 1
    batch = ProduceBatch(
        "q",
        [
            NewMessage(1, dedup_id="x"),
            NewMessage(2, key="k", headers={"h": "v"}),
            NewMessage(3, dedup_id="x"),
            NewMessage(4, dedup_id="old"),
        ],
    )
    answer = s.ok(batch)
    assert answer == {"message_ids": ["2:2", "2:3", "2:2", "2:1"], "duplicates": [2, 3]}
    assert msgspec.convert(answer, Produced) == Produced(message_ids=answer["message_ids"], duplicates=[2, 3])
    assert datas(s.consume(max=10)) == [0, 1, 2]
    huge = ProduceBatch("big", [NewMessage(i) for i in range(1_001)])
    assert field_of(s.apply(huge)) == "messages"
    assert s.ok(ProduceBatch("q2", [])) == {"message_ids": []}


# ---- settings and retention -----------------------------------------------------------------


def test_configure_replaces_the_settings_and_returns_them() -> None:
    s = Shard()
    assert s.ok(ConfigureQueue("q")) == {
        "queue": "q",
        "visibility_ms": 30_000,
        "max_deliveries": 10,
        "retention_ms": 0,
        "max_depth": 0,
        "dedup_window_ms": 300_000,
    }
    assert s.ok(ConfigureQueue("q", visibility_ms=5_000))["visibility_ms"] == 5_000
    mid = s.produce(1)
    s.consume()
    assert s.p.due(5_999) == []
    assert s.p.due(6_000) == [Redeliver("q", [mid], [0])]


def test_default_visibility_applies_to_queues_never_configured() -> None:
    s = Shard()
    s.produce(1)
    s.consume()
    assert s.p.due(30_999) == [] and len(s.p.due(31_000)) == 1


def test_retention_expires_old_messages_through_due() -> None:
    s = Shard(redelivery_retry_ms=3_000)
    s.ok(ConfigureQueue("q", retention_ms=10_000))
    s.produce("old")
    s.now = 6_000
    s.produce("young")
    s.consume()  # "old" in flight: expiry takes it anyway
    assert s.p.due(10_999) == []
    assert s.p.due(11_000) == [ExpireMessages("q")]
    assert s.p.due(11_000) == [] and s.p.due(13_999) == []
    assert s.p.due(14_000) == [ExpireMessages("q")]  # the first one was lost
    s.now = 14_000
    assert s.ok(ExpireMessages("q")) == {"expired": 1}
    assert s.ok(ExpireMessages("q")) == {"expired": 0}  # a copy changes nothing
    assert s.p.due(15_999) == []
    assert s.p.due(16_000) == [ExpireMessages("q")]
    # Offered again (it never applied), and no Redeliver: "old"'s lease went with "old".
    assert s.p.due(40_000) == [ExpireMessages("q")]
    assert datas(s.consume()) == ["young"]
    assert s.p.stats()["q"] == {
        "depth": 1,
        "produced": 2,
        "acked": 0,
        "redelivered": 0,
        "dead_lettered": 0,
        "expired": 1,
        "deduplicated": 0,
    }


def test_retention_set_later_and_queues_without_retention() -> None:
    s = Shard()
    s.produce(1)
    s.produce(2, "forever")
    assert s.p.due(10**9) == []
    s.now = 5_000
    s.ok(ConfigureQueue("q", retention_ms=1_000))
    assert s.p.due(5_000) == [ExpireMessages("q")]
    assert s.ok(ExpireMessages("q")) == {"expired": 1}
    assert s.ok(ExpireMessages("forever")) == {"expired": 0}


# ---- consume options and leader changes -----------------------------------------------------


def test_consume_max_visibility_and_wait() -> None:
    s = Shard()
    assert s.p.local(s.now, Consume("q", "c", wait_ms=500)) is WAITING
    assert s.p.local(s.now, Consume("q", "c", wait_ms=0)) == Ok({"messages": []})
    for i in range(5):
        s.produce(i)
    assert datas(s.consume(max=3, visibility_ms=200)) == [0, 1, 2]
    assert datas(s.consume(max=3, wait_ms=500)) == [3, 4]  # some is enough: no waiting
    assert s.p.local(s.now, Consume("q", "c", wait_ms=500)) is WAITING
    assert [len(op.message_ids) for op in s.p.due(1_200)] == [3]  # only the 200 ms ones


def test_reset_local_makes_in_flight_messages_visible_uncounted() -> None:
    s = Shard()
    for i in range(3):
        s.produce(i)
    s.consume(max=2)
    s.p.reset_local(True)
    assert s.stats()["in_flight"] == 0
    assert s.p.due(10**9) == []
    got = s.consume(max=3)
    assert datas(got) == [0, 1, 2] and {m["delivery_count"] for m in got} == {1}


def test_leader_memory_never_reaches_replicated_state() -> None:
    leader, follower = Shard(), Shard()
    script: list[Any] = [Produce("q", i, key=str(i % 2)) for i in range(6)]
    script += [ConfigureQueue("q", max_deliveries=1), Nack("q", ["2:1"]), Nack("q", ["2:1"])]
    script += [Ack("q", ["2:2"])]
    for step, op in enumerate(script):
        if step == 4:
            leader.consume(max=4)
        assert leader.apply(op) == follower.apply(op), op
    assert leader.p.snapshot() == follower.p.snapshot()
    assert leader.p.stats() == follower.p.stats()
    assert leader.stats()["in_flight"] == 2 and follower.stats()["in_flight"] == 0


# ---- snapshots ------------------------------------------------------------------------------


def build(s: Shard) -> None:
    s.ok(ConfigureQueue("q", max_deliveries=1, retention_ms=50_000))
    for i in range(8):
        s.produce({"n": i}, key=f"k{i % 3}", headers={"i": str(i)}, dedup_id=f"d{i}")
        s.now += 1_000
    s.ok(ProduceBatch("r", [NewMessage([i, "x"]) for i in range(4)]))
    s.consume(max=2, visibility_ms=0)
    s.housekeep()  # two counted deliveries
    s.consume(max=2, visibility_ms=0)
    s.housekeep()  # dead letters
    s.ok(Ack("q", ["2:5"]))
    s.consume("r", max=3)  # in flight at snapshot time


def test_snapshot_restore_continues_identically_without_leases() -> None:
    a = Shard()
    build(a)
    b = Shard()
    b.now, b.index = a.now, a.index
    b.p.restore(a.p.snapshot())
    assert b.p.snapshot() == a.p.snapshot()
    assert b.stats("r")["in_flight"] == 0 and a.stats("r")["in_flight"] == 3
    assert all(m["consumer"] is None for m in b.p.browse("r"))
    a.p.reset_local(True)  # what a restored replica has: nothing in flight
    script: list[Any] = [
        Produce("q", "dup", dedup_id="d3"),
        Produce("q", "new", dedup_id="d9"),
        ("consume", "q", 3),
        ("consume", "q.dlq", 5),
        ("consume", "r", 10),
        ("due", 60_000),
        Nack("r", ["2:9"]),
        Ack("q.dlq", ["2:13"]),
        ("due", 200_000),
        ("consume", "q", 10),
    ]
    for step in script:
        outs = []
        for s in (a, b):
            match step:
                case ("consume", queue, n):
                    outs.append(s.p.local(s.now, Consume(queue, "c", max=n, visibility_ms=1_000)))
                case ("due", now):
                    s.now = now
                    outs.append([(op, s.apply(op)) for op in s.p.due(now)])
                case op:
                    outs.append(s.apply(op))
        assert outs[0] == outs[1], step
    assert a.p.snapshot() == b.p.snapshot()
    assert a.p.stats() == b.p.stats()


def test_restore_refuses_another_shards_snapshot() -> None:
    with pytest.raises(ValueError):
        QueuePartitions(3).restore(QueuePartitions(2).snapshot())


# ---- validation -----------------------------------------------------------------------------

LONG = "x" * (NAME_BYTES_MAX + 1)
BAD_COMMANDS = [
    (Produce("", 1), "queue"),
    (Produce(LONG, 1), "queue"),
    (Produce("é" * (NAME_BYTES_MAX // 2 + 1), 1), "queue"),  # one character is 2 bytes
    (Produce(".dlq", 1), "queue"),
    (Produce("q", 1, key=""), "key"),
    (Produce("q", 1, dedup_id=LONG), "dedup_id"),
    (Produce("q", 1, headers={str(i): "" for i in range(65)}), "headers"),
    (Ack("q", ["2:1"] * 1_001), "message_ids"),
    (Nack("q", ["2:1"] * 1_001), "message_ids"),
    (Redeliver("q", ["2:1"], [0, 1]), "delivery_counts"),
    (ConfigureQueue("q", visibility_ms=-1), "visibility_ms"),
    (ConfigureQueue("q", max_deliveries=0), "max_deliveries"),
    (ConfigureQueue("q", retention_ms=-5), "retention_ms"),
    (ConfigureQueue("q", max_depth=-1), "max_depth"),
    (ConfigureQueue("q", dedup_window_ms=-1), "dedup_window_ms"),
    (ExpireMessages(""), "queue"),
]
BAD_LOCALS = [
    (Consume("q", "c", max=0), "max"),
    (Consume("q", "c", max=1_001), "max"),
    (Consume("q", "c", wait_ms=-1), "wait_ms"),
    (Consume("q", "c", visibility_ms=-1), "visibility_ms"),
    (Consume("q", ""), "consumer"),
    (Consume(LONG, "c"), "queue"),
    (Return("q", ["2:1"] * 1_001), "message_ids"),
]


def case_id(value: Any) -> str:
    return value if isinstance(value, str) else type(value).__name__


@pytest.mark.parametrize(("op", "field"), BAD_COMMANDS, ids=case_id)
def test_bad_commands_name_their_field_and_change_nothing(op: Any, field: str) -> None:
    s, twin = Shard(), Shard()
    assert field_of(s.apply(op)) == field
    twin.ok(ExpireMessages("q"))  # a no-op at the same time: only the clock moved
    assert s.p.snapshot() == twin.p.snapshot()


@pytest.mark.parametrize(("op", "field"), BAD_LOCALS, ids=case_id)
def test_bad_leader_operations_name_their_field(op: Any, field: str) -> None:
    assert field_of(Shard().p.local(1_000, op)) == field


def test_dead_letter_queues_are_ordinary_queues() -> None:
    s = Shard()
    assert s.ok(ConfigureQueue("q.dlq", max_deliveries=1))["queue"] == "q.dlq"
    assert s.produce(1, "q.dlq.dlq") == "2:1"
    assert field_of(s.p.query(QueueStats(""))) == "queue"
    assert s.stats("never")["depth"] == 0 and "never" not in s.p.stats()  # queries create nothing


def test_indexes_stay_bounded_under_churn() -> None:
    follower, leader = Shard(), Shard()
    for i in range(5_000):
        mid = follower.produce(i)
        follower.ok(Ack("q", [mid]))  # a follower never pops its visible heap
        leader.produce(i)
        (m,) = leader.consume(visibility_ms=10**9)  # deadline entries outlive their leases
        leader.ok(Ack("q", [m["message_id"]]))
    assert len(follower.p._queues["q"]._visible) <= 128
    assert len(leader.p._deadlines) <= 2_048
    # A leader with far more in flight than visible: acking visible messages stays cheap and small.
    for i in range(3_000):
        leader.produce(i, "busy")
    leader.consume("busy", max=1_000)
    leader.consume("busy", max=1_000)
    for i in range(5_000):
        leader.ok(Ack("busy", [leader.produce(i, "busy")]))
    assert len(leader.p._queues["busy"]._visible) <= 2_048


# ---- a seeded model -------------------------------------------------------------------------


class Model:
    """Two replicas driven by one seed, with the bookkeeping a producer and consumers keep."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.replicas = [QueuePartitions(SHARD, redelivery_retry_ms=2_000) for _ in range(2)]
        self.leader = 0
        self.index = 0
        self.now = 1_000
        self.next_token = 0
        self.alive: set[int] = set()  # produced (acknowledged to the producer), not acked or expired
        self.acked: set[int] = set()
        self.expired: set[int] = set()
        self.dedup: dict[str, tuple[int, int]] = {}  # dedup id -> (token, produced at)
        self.seen_ids: list[str] = []
        # What consumers believe they hold: message id -> visibility deadline. Until then only
        # an ack, nack or return of that id, or a leader change, may let it go to anyone else.
        self.holding: dict[str, int] = {}
        self.pending: list[Any] = []  # housekeeping proposed but not committed yet
        self.retention_ms = 0

    @property
    def p(self) -> QueuePartitions:
        return self.replicas[self.leader]

    def say(self, what: str) -> str:
        return f"seed {self.seed}, t={self.now}: {what}"

    def apply(self, op: Any) -> Result | Waiting:
        self.index += 1
        results = [r.apply(ApplyContext(self.index, self.now), op) for r in self.replicas]
        assert results[0] == results[1], self.say(f"replicas disagree on {op}")
        return results[0]

    def stored(self) -> dict[str, list[dict[str, Any]]]:
        return {name: self.p.browse(name) for name in self.p.stats()}

    def where(self) -> dict[str, dict[str, Any]]:
        return {m["message_id"]: m for messages in self.stored().values() for m in messages}

    def step(self) -> None:
        action = self.rng.choices(
            ["produce", "batch", "consume", "ack", "nack", "return", "time", "leader", "configure"],
            [30, 8, 30, 15, 8, 5, 20, 3, 2],
        )[0]
        getattr(self, f"do_{action}")()
        self.check(action)

    def new_message(self) -> NewMessage:
        self.next_token += 1
        did = f"d{self.rng.randrange(40)}" if self.rng.random() < 0.3 else None
        return NewMessage(self.next_token, self.rng.choice(["a", "b", None]), None, did)

    def expect_duplicate(self, did: str | None) -> int | None:
        if did is None or did not in self.dedup:
            return None
        token, at = self.dedup[did]
        return token if self.now < at + 300_000 else None

    def record(self, message: NewMessage, duplicate: bool, batch_dups: dict[str, int]) -> None:
        did = message.dedup_id
        expected = batch_dups.get(did) if did is not None else None
        expected = expected if expected is not None else self.expect_duplicate(did)
        assert duplicate == (expected is not None), self.say(f"dedup of {did}")
        if not duplicate:
            self.alive.add(message.data)
            if did is not None:
                self.dedup[did] = (message.data, self.now)
                batch_dups[did] = message.data

    def do_produce(self) -> None:
        m = self.new_message()
        result = self.apply(Produce("q", m.data, m.key, m.headers, m.dedup_id))
        if isinstance(result, Ok):
            self.record(m, result.value.get("duplicate", False), {})
            self.seen_ids.append(result.value["message_id"])
        else:
            assert result.code == "queue_full", self.say(str(result))

    def do_batch(self) -> None:
        batch = [self.new_message() for _ in range(self.rng.randint(1, 5))]
        result = self.apply(ProduceBatch("q", batch))
        if isinstance(result, Ok):
            dups = set(result.value.get("duplicates", []))
            batch_dups: dict[str, int] = {}
            for i, m in enumerate(batch):
                self.record(m, i in dups, batch_dups)
            self.seen_ids += result.value["message_ids"]
        else:
            assert result.code == "queue_full", self.say(str(result))

    def pick_queue(self) -> str:
        return self.rng.choice(sorted(self.p.stats()) or ["q"])

    def do_consume(self) -> None:
        queue = self.pick_queue()
        visible = [m["message_id"] for m in self.p.browse(queue) if m["consumer"] is None]
        n = self.rng.randint(1, 4)
        visibility_ms = self.rng.randint(0, 6_000)
        op = Consume(queue, self.rng.choice(["c1", "c2", "c3"]), n, visibility_ms)
        result = self.p.local(self.now, op)
        assert isinstance(result, Ok), self.say(str(result))
        got = result.value["messages"]
        # Oldest visible first, and nothing that was in flight already.
        assert ids(got) == visible[:n], self.say(f"consume {queue}: {ids(got)} vs visible {visible}")
        for m in got:
            assert m["data"] in self.alive, self.say(f"consume returned {m}")
            held_until = self.holding.get(m["message_id"], self.now)
            assert held_until <= self.now, self.say(f"{m} handed out while held until {held_until}")
            self.holding[m["message_id"]] = self.now + visibility_ms

    def let_go(self, chosen: list[str]) -> None:
        for mid in chosen:
            self.holding.pop(mid, None)

    def some_ids(self, queue: str) -> list[str]:
        present = [m["message_id"] for m in self.p.browse(queue)]
        picked = self.rng.sample(present, min(len(present), self.rng.randint(0, 3)))
        if self.seen_ids and self.rng.random() < 0.3:
            picked.append(self.rng.choice(self.seen_ids))  # often acked or moved already
        return list(dict.fromkeys(picked))

    def do_ack(self) -> None:
        queue = self.pick_queue()
        chosen = self.some_ids(queue)
        here = {m["message_id"]: m["data"] for m in self.p.browse(queue)}
        result = self.apply(Ack(queue, chosen))
        self.let_go(chosen)
        gone = [here[mid] for mid in chosen if mid in here]
        missing = [mid for mid in chosen if mid not in here]
        expected = {"acked": len(gone), "not_found": missing} if missing else {"acked": len(gone)}
        assert result == Ok(expected), self.say(f"ack {chosen}: {result}")
        self.alive.difference_update(gone)
        self.acked.update(gone)

    def do_nack(self) -> None:
        queue = self.pick_queue()
        chosen = self.some_ids(queue)
        result = self.apply(Nack(queue, chosen))
        assert isinstance(result, Ok), self.say(str(result))
        self.let_go(chosen)

    def do_return(self) -> None:
        queue = self.pick_queue()
        chosen = self.some_ids(queue)
        assert isinstance(self.p.local(self.now, Return(queue, chosen)), Ok)
        self.let_go(chosen)

    def do_time(self) -> None:
        self.now += self.rng.randint(0, 3_000)
        committing, self.pending = (self.pending, []) if self.rng.random() < 0.5 else ([], self.pending)
        for op in self.p.due(self.now):
            fate = self.rng.random()
            if fate < 0.15:
                continue  # the proposal was lost; due() must offer it again later
            if fate < 0.35:
                self.pending.append(op)  # commits later, after other commands
            else:
                committing += [op, op] if fate > 0.95 else [op]
        for op in committing:
            before = self.where()
            result = self.apply(op)
            assert isinstance(result, Ok), self.say(f"{op}: {result}")
            if isinstance(op, ExpireMessages):
                self.check_expiry(op.queue, before)

    def check_expiry(self, queue: str, before: dict[str, dict[str, Any]]) -> None:
        after = self.where()
        retention = self.retention_ms if queue == "q" else 0
        for mid, m in before.items():
            if mid not in after:
                assert retention and m["queue"] == queue, self.say(f"{m} expired")
                assert m["enqueued_at"] + retention <= self.now, self.say(f"{m} expired young")
                self.alive.discard(m["data"])
                self.expired.add(m["data"])
        for m in self.p.browse(queue) if retention else ():
            assert m["enqueued_at"] + retention > self.now, self.say(f"{m} outlived its retention")

    def do_leader(self) -> None:
        self.leader = self.rng.randrange(2)
        self.p.reset_local(True)
        self.holding.clear()  # at-least-once: a new leader hands everything out again

    def do_configure(self) -> None:
        self.retention_ms = self.rng.choice([0, 0, 20_000])
        max_depth = self.rng.choice([0, 0, 40])
        self.apply(ConfigureQueue("q", max_deliveries=3, retention_ms=self.retention_ms, max_depth=max_depth))

    def check(self, action: str) -> None:
        where = f"after {action}"
        same = self.replicas[0].snapshot() == self.replicas[1].snapshot()
        assert same, self.say(f"replicas diverged {where}")
        stored = self.stored()
        tokens = Counter(m["data"] for messages in stored.values() for m in messages)
        assert all(n == 1 for n in tokens.values()), self.say(f"a message stored twice {where}")
        assert set(tokens) == self.alive, self.say(f"lost {self.alive - set(tokens)} {where}")
        assert not (self.alive & (self.acked | self.expired)), self.say(f"an acked message came back {where}")
        for name, counters in self.p.stats().items():
            assert counters["depth"] == (
                counters["produced"] - counters["acked"] - counters["dead_lettered"] - counters["expired"]
            ), self.say(f"{name} counters {counters} {where}")
            stats = self.p.query(QueueStats(name)).value
            holders = sum(1 for m in stored[name] if m["consumer"] is not None)
            assert stats["depth"] == stats["visible"] + stats["in_flight"] == len(stored[name])
            assert stats["in_flight"] == holders, self.say(f"{name} in flight {where}")


@pytest.mark.parametrize("seed", range(25))
def test_seeded_model_never_loses_or_resurrects_a_message(seed: int) -> None:
    model = Model(seed)
    for _ in range(300):
        model.step()
    # Heal: every message can still be consumed and acked, in whichever queue it ended up.
    model.p.reset_local(True)
    for name in sorted(model.p.stats()):
        while got := model.p.local(model.now, Consume(name, "drain", max=1_000)).value["messages"]:
            model.apply(Ack(name, ids(got)))
    assert all(c["depth"] == 0 for c in model.p.stats().values()), model.say("undrainable messages")


def test_stored_messages_are_invisible_to_the_cycle_collector() -> None:
    """A deep queue must not lengthen every full collection, whatever its payloads hold."""
    message = StoredMessage(1, "k", {"nested": [1, {"x": 2}]}, {"h": "v"}, 0)
    assert not gc.is_tracked(message)
    restored = msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=StoredMessage)
    assert not gc.is_tracked(restored)
