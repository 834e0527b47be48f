"""ProduceBatcher: concurrent single produces leave as one ProduceBatch per (queue, shard), and
every caller still gets its own answer. ``call`` here is a recording stand-in for the cluster
route (the real path is covered by tests/integration/test_queues.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from syncfab.actors.queue_ops import BATCH_MAX
from syncfab.actors.queues import NewMessage, ProduceBatch
from syncfab.actors.results import Err, Ok, Result
from syncfab.fabric.client.produce_batcher import BATCH_BYTES_MAX, ProduceBatcher
from syncfab.fabric.core.codec import OnShard
from syncfab.fabric.core.routing import queue_key_shard

SHARDS = 8


class Shards:
    """Answers each ProduceBatch with ids "<shard>:<n>" (or a set error) and records it."""

    def __init__(self, error: Err | None = None, duplicates: list[int] | None = None) -> None:
        self.calls: list[OnShard] = []
        self.error = error
        self.duplicates = duplicates
        self.seq = 0

    async def __call__(self, op: Any) -> Result:
        assert isinstance(op, OnShard) and isinstance(op.op, ProduceBatch)
        self.calls.append(op)
        await asyncio.sleep(0)
        if self.error is not None:
            return self.error
        ids = []
        for _ in op.op.messages:
            self.seq += 1
            ids.append(f"{op.shard}:{self.seq}")
        value: dict[str, Any] = {"message_ids": ids}
        if self.duplicates:
            value["duplicates"] = self.duplicates
        return Ok(value)


def run(shards: Shards, produce: list[tuple[str, NewMessage]]) -> list[Result]:
    async def go() -> list[Result]:
        batcher = ProduceBatcher(shards, lambda: SHARDS)
        return list(await asyncio.gather(*(batcher.submit(q, m) for q, m in produce)))

    return asyncio.run(go())


def test_concurrent_keyless_produces_share_one_batch_and_get_their_own_ids() -> None:
    shards = Shards()
    results = run(shards, [("q", NewMessage(f"m{i}")) for i in range(10)])
    assert len(shards.calls) == 1
    (call,) = shards.calls
    assert [m.data for m in call.op.messages] == [f"m{i}" for i in range(10)]
    ids = [r.value["message_id"] for r in results if isinstance(r, Ok)]
    assert ids == [f"{call.shard}:{n}" for n in range(1, 11)]


def test_keyless_batches_rotate_over_the_shards() -> None:
    shards = Shards()

    async def go() -> None:
        batcher = ProduceBatcher(shards, lambda: SHARDS)
        for _ in range(SHARDS):
            await batcher.submit("q", NewMessage("x"))

    asyncio.run(go())
    assert sorted(c.shard for c in shards.calls) == list(range(1, SHARDS + 1))


def test_keyed_messages_go_to_their_keys_shard_in_order() -> None:
    shards = Shards()
    produce = [("q", NewMessage(i, key=f"k{i % 3}")) for i in range(9)]
    results = run(shards, produce)
    assert all(isinstance(r, Ok) for r in results)
    for call in shards.calls:
        keys = {m.key for m in call.op.messages}
        assert {queue_key_shard("q", k, SHARDS) for k in keys} == {call.shard}
        data = [m.data for m in call.op.messages]
        assert data == sorted(data)  # each key's messages keep the order they were produced in
    assert sum(len(c.op.messages) for c in shards.calls) == 9


def test_queues_are_batched_apart() -> None:
    shards = Shards()
    run(shards, [("a", NewMessage(1)), ("b", NewMessage(2)), ("a", NewMessage(3))])
    by_queue = {c.op.queue: [m.data for m in c.op.messages] for c in shards.calls}
    assert by_queue == {"a": [1, 3], "b": [2]}


def test_a_bad_message_fails_alone() -> None:
    shards = Shards()
    results = run(
        shards,
        [
            ("q", NewMessage("ok")),
            ("q", NewMessage("bad", key="")),
            ("", NewMessage("no queue")),
            ("q", NewMessage("ok too")),
        ],
    )
    assert isinstance(results[1], Err) and results[1].detail == {"field": "key"}
    assert isinstance(results[2], Err) and results[2].detail == {"field": "queue"}
    assert isinstance(results[0], Ok) and isinstance(results[3], Ok)
    assert [m.data for c in shards.calls for m in c.op.messages] == ["ok", "ok too"]


def test_a_shard_error_answers_every_message_of_the_batch() -> None:
    full = Err("queue_full", "queue 'q' is at its max_depth of 5", {"queue": "q", "max_depth": 5})
    results = run(Shards(error=full), [("q", NewMessage(i)) for i in range(4)])
    assert results == [full] * 4


def test_duplicates_are_reported_per_message() -> None:
    shards = Shards(duplicates=[1])
    results = run(shards, [("q", NewMessage(0, dedup_id="d")), ("q", NewMessage(1, dedup_id="d"))])
    assert [r.value.get("duplicate", False) for r in results if isinstance(r, Ok)] == [False, True]


def test_batches_are_bounded_in_count_and_bytes() -> None:
    shards = Shards()
    run(shards, [("q", NewMessage(b"x", key="k")) for _ in range(BATCH_MAX + 5)])
    assert [len(c.op.messages) for c in shards.calls] == [BATCH_MAX, 5]

    shards = Shards()
    big = b"y" * (BATCH_BYTES_MAX // 3)
    results = run(shards, [("q", NewMessage(big, key="k")) for _ in range(4)])
    assert all(isinstance(r, Ok) for r in results)
    assert [len(c.op.messages) for c in shards.calls] == [2, 2]


def test_callers_get_the_error_when_the_shard_count_is_unknown() -> None:
    def unknown() -> int:
        raise RuntimeError("the client has not learnt the cluster yet")

    async def go() -> None:
        batcher = ProduceBatcher(Shards(), unknown)
        await batcher.submit("q", NewMessage("x"))

    with pytest.raises(RuntimeError, match="not learnt"):
        asyncio.run(go())
