"""Queue operations that span shards, built from single-group calls.

A queue's messages live in every shard (by key), so a client-level operation fans out: a batch
is split by shard, a consume visits the shards in a rotating order so every shard is served,
acks go to the shard their ids name, stats are summed. The gateway and the native client both
use these with their own ``call`` (which routes one op to its group's leader and retries).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from typing import Any, Protocol

import msgspec

from syncfab.actors.queue_ops import Produced, check_batch_size, check_message, check_queue
from syncfab.actors.queues import (
    Ack,
    ConfigureQueue,
    Consume,
    Nack,
    NewMessage,
    ProduceBatch,
    QueueStats,
    Return,
)
from syncfab.actors.results import Err, Ok, Result, bad_request
from syncfab.fabric.core.codec import OnShard
from syncfab.fabric.core.routing import message_shard, produce_shard


class Call(Protocol):
    """Route one op to its group's leader and retry it (see fabric/core/routing.py wait_of)."""

    def __call__(self, op: Any) -> Awaitable[Result]: ...


_rotation = itertools.count()
_background: set[asyncio.Future[Result]] = set()  # returns in flight (the loop holds weak refs)


def shard_order(shard_count: int) -> list[int]:
    """All shards, starting somewhere new each time so no shard is always served first."""
    start = next(_rotation) % shard_count
    return [(start + i) % shard_count + 1 for i in range(shard_count)]


async def produce_batch(call: Call, shard_count: int, queue: str, messages: list[NewMessage]) -> Result:
    """One ProduceBatch per shard, concurrently; ids come back in the caller's order.

    The whole batch is checked first, naming each message by its place in *this* batch: a
    batch refused for bad input stores nothing. (A shard that is full or unreachable fails
    only its part; what the others stored stays — at-least-once, never lost.)"""
    err = check_queue(queue) or check_batch_size(messages)
    if err is not None:
        return err
    for n, message in enumerate(messages):
        err = check_message(message, f"messages[{n}].")
        if err is not None:
            return err
    by_shard: dict[int, list[int]] = {}
    spread = shard_order(shard_count)
    for n, m in enumerate(messages):
        shard = produce_shard(queue, m.key, m.dedup_id, shard_count)
        by_shard.setdefault(spread[n % shard_count] if shard is None else shard, []).append(n)
    shards = sorted(by_shard)
    results = await asyncio.gather(
        *(call(OnShard(s, ProduceBatch(queue, [messages[n] for n in by_shard[s]]))) for s in shards)
    )
    ids: list[str | None] = [None] * len(messages)
    for shard, result in zip(shards, results, strict=True):
        if isinstance(result, Err):
            return result  # what other shards stored stays stored: at-least-once, never lost
        for n, message_id in zip(
            by_shard[shard], msgspec.convert(result.value, Produced).message_ids, strict=True
        ):
            ids[n] = message_id
    return Ok({"message_ids": ids})


async def consume(
    call: Call,
    shard_count: int,
    queue: str,
    consumer: str,
    max_messages: int,
    visibility_ms: int | None,
    wait_ms: int,
) -> Result:
    """Up to ``max_messages``: first from the next shard in rotation (a busy queue is served
    in one round trip), then, if it had too few, from all the others at once (an empty queue
    costs two round trips, not one per shard), what they hand out beyond ``max_messages``
    given straight back. If all are empty and ``wait_ms`` > 0, long-poll every shard and take
    the first that has something."""
    order = shard_order(shard_count)
    first = await call(OnShard(order[0], Consume(queue, consumer, max_messages, visibility_ms)))
    if isinstance(first, Err):
        return first
    got: list[Any] = first.value["messages"]
    if len(got) < max_messages and shard_count > 1:
        need = max_messages - len(got)
        rest = order[1:]
        results = await asyncio.gather(
            *(call(OnShard(s, Consume(queue, consumer, need, visibility_ms))) for s in rest)
        )
        failed: Err | None = None
        for result in results:
            if isinstance(result, Err):
                failed = failed or result
                continue
            got += _take(call, queue, result.value["messages"], max_messages - len(got))
        if not got and failed is not None:
            return failed  # nothing taken anywhere, and a shard could not say
    if got or wait_ms <= 0:
        return Ok({"messages": got})
    poll = Consume(queue, consumer, max_messages, visibility_ms, wait_ms)
    polls = [asyncio.ensure_future(call(OnShard(s, poll))) for s in order]
    pending = set(polls)
    while pending and not got:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for fut in done:
            result = fut.result()
            if isinstance(result, Ok):
                got += _take(call, queue, result.value["messages"], max_messages - len(got))
    for fut in pending:
        # Those shards may still hand out messages nobody will read: give them straight back.
        fut.add_done_callback(lambda f: _return_unwanted(call, queue, f))
    return Ok({"messages": got})


def _take(call: Call, queue: str, messages: list[Any], room: int) -> list[Any]:
    """The first ``room`` of a shard's messages; the rest go straight back to it."""
    if len(messages) > room:
        _give_back(call, queue, [m["message_id"] for m in messages[room:]])
    return messages[:room]


def _give_back(call: Call, queue: str, ids: list[str]) -> None:
    shard = message_shard(ids[0])
    if shard is not None:
        task = asyncio.ensure_future(call(OnShard(shard, Return(queue, ids))))
        _background.add(task)
        task.add_done_callback(_background.discard)


def _return_unwanted(call: Call, queue: str, fut: asyncio.Future[Result]) -> None:
    if fut.cancelled():  # the client closed first: what it took comes back after its visibility
        return
    result = fut.result()
    if isinstance(result, Ok) and result.value["messages"]:
        _give_back(call, queue, [m["message_id"] for m in result.value["messages"]])


async def settle(call: Call, queue: str, message_ids: list[str], nack: bool = False) -> Result:
    """Ack (or nack) ids of any shards: one call per shard, counts summed."""
    by_shard: dict[int | None, list[str]] = {}
    for message_id in message_ids:
        by_shard.setdefault(message_shard(message_id), []).append(message_id)
    if None in by_shard:
        return bad_request("message_ids", f"not a message id: {by_shard[None][0]!r}")
    op = Nack if nack else Ack
    shards = sorted(s for s in by_shard if s is not None)
    results = await asyncio.gather(*(call(op(queue, by_shard[s])) for s in shards))
    key = "nacked" if nack else "acked"
    total = {key: 0, "dead_lettered": 0} if nack else {key: 0}
    missing: list[str] = []
    for result in results:
        if isinstance(result, Err):
            return result
        for k in total:
            total[k] += result.value.get(k, 0)
        missing += result.value.get("not_found", [])
    if missing:
        total["not_found"] = missing  # the ids no shard holds: acked before, expired, or unknown
    return Ok(total)


_SUMMED = (
    "depth",
    "visible",
    "in_flight",
    "dlq_depth",
    "produced",
    "delivered",
    "acked",
    "redelivered",
    "dead_lettered",
    "expired",
)


async def stats(call: Call, shard_count: int, queue: str) -> Result:
    results = await asyncio.gather(*(call(OnShard(s, QueueStats(queue))) for s in range(1, shard_count + 1)))
    shards: list[dict[str, Any]] = []
    total: dict[str, Any] = {"queue": queue, **dict.fromkeys(_SUMMED, 0)}
    for result in results:
        if isinstance(result, Err):
            return result
        shards.append(result.value)
        for k in _SUMMED:
            total[k] += result.value.get(k, 0)
    total["shards"] = shards
    total["settings"] = shards[0].get("settings") if shards else None  # set on every shard at once
    return Ok(total)


async def configure(call: Call, shard_count: int, settings: ConfigureQueue) -> Result:
    results = await asyncio.gather(*(call(OnShard(s, settings)) for s in range(1, shard_count + 1)))
    for result in results:
        if isinstance(result, Err):
            return result
    return results[0]
