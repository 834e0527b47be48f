"""HTTP for the queues: produce, consume (long polling), ack/nack, inspect, configure.

A queue spans every shard; the fan-out (split a batch, visit shards in turn, sum stats) is
fabric/client/fanout.py, shared with the native client.
"""

from __future__ import annotations

from typing import Any

import msgspec

import syncfab.fabric.client.fanout as fanout
from syncfab.actors.queue_ops import Produce
from syncfab.actors.queues import ConfigureQueue, NewMessage
from syncfab.actors.results import Err, Ok, Result
from syncfab.gateway.responses import bad_request, int_param, json_response, read_body, result_error
from syncfab.gateway.router import Request, Response, Router


class ProduceBody(msgspec.Struct, forbid_unknown_fields=True):
    queue: str
    data: Any
    key: str | None = None
    headers: dict[str, str] | None = None
    dedup_id: str | None = None


class BatchMessage(msgspec.Struct, forbid_unknown_fields=True):
    data: Any
    key: str | None = None
    headers: dict[str, str] | None = None
    dedup_id: str | None = None


class ProduceBatchBody(msgspec.Struct, forbid_unknown_fields=True):
    queue: str
    messages: list[BatchMessage]


class SettleBody(msgspec.Struct, forbid_unknown_fields=True):
    queue: str
    message_ids: list[str]


class SettingsBody(msgspec.Struct, forbid_unknown_fields=True):
    """The settings to change; those left out keep their values."""

    visibility_ms: int | None = None
    max_deliveries: int | None = None
    retention_ms: int | None = None
    max_depth: int | None = None
    dedup_window_ms: int | None = None


def _answer(result: Result) -> Response:
    return json_response(result.value) if isinstance(result, Ok) else result_error(result)


def _shards(request: Request) -> int:
    return request.runtime.settings.core.shard_count


async def produce(request: Request) -> Response:
    body, bad = read_body(request, ProduceBody)
    if bad:
        return bad
    assert body is not None
    # Concurrent single produces share one request per shard (fabric/core/client_core.py).
    op = Produce(body.queue, body.data, body.key, body.headers, body.dedup_id)
    return _answer(await request.runtime.call(op))


async def produce_batch(request: Request) -> Response:
    body, bad = read_body(request, ProduceBatchBody)
    if bad:
        return bad
    assert body is not None
    if not body.messages:
        return bad_request("messages", "at least one message")
    messages = [NewMessage(m.data, m.key, m.headers, m.dedup_id) for m in body.messages]
    result = await fanout.produce_batch(request.runtime.call, _shards(request), body.queue, messages)
    return _answer(result)


async def consume(request: Request) -> Response:
    queue = request.query.get("queue")
    consumer = request.query.get("consumer")
    if not queue:
        return bad_request("queue", "queue is required")
    if not consumer:
        return bad_request("consumer", "consumer is required")
    max_messages, bad = int_param(request, "max", 1, 1, 1000)
    if bad:
        return bad
    visibility_ms, bad = int_param(request, "visibility_ms", None, 1, 12 * 3600 * 1000)
    if bad:
        return bad
    wait_ms, bad = int_param(request, "wait_ms", 0, 0, 60_000)
    if bad:
        return bad
    assert max_messages is not None and wait_ms is not None
    result = await fanout.consume(
        request.runtime.call, _shards(request), queue, consumer, max_messages, visibility_ms, wait_ms
    )
    return _answer(result)


async def ack(request: Request) -> Response:
    return await _settle(request, nack=False)


async def nack(request: Request) -> Response:
    return await _settle(request, nack=True)


async def _settle(request: Request, nack: bool) -> Response:
    body, bad = read_body(request, SettleBody)
    if bad:
        return bad
    assert body is not None
    if not body.message_ids:
        return bad_request("message_ids", "at least one message id")
    return _answer(await fanout.settle(request.runtime.call, body.queue, body.message_ids, nack))


# The verbs under /queue/: a queue of one of these names is reached at /queues/{name} only.
VERBS = ("produce", "produce_batch", "consume", "ack", "nack")


async def stats(request: Request) -> Response:
    """A queue's counters, summed and per shard, and its settings."""
    queue = request.match_info["queue"]
    if request.path.startswith("/queue/") and queue in VERBS:
        return result_error(
            Err("not_found", f"/queue/{queue} is a verb: a queue named {queue!r} is at /queues/{queue}")
        )
    return _answer(await fanout.stats(request.runtime.call, _shards(request), queue))


async def configure(request: Request) -> Response:
    body, bad = read_body(request, SettingsBody)
    if bad:
        return bad
    assert body is not None
    settings = ConfigureQueue(
        request.match_info["queue"],
        body.visibility_ms,
        body.max_deliveries,
        body.retention_ms,
        body.max_depth,
        body.dedup_window_ms,
    )
    return _answer(await fanout.configure(request.runtime.call, _shards(request), settings))


def add_routes(router: Router) -> None:
    router.add_post("/queue/produce", produce)
    router.add_post("/queue/produce_batch", produce_batch)
    router.add_get("/queue/consume", consume)
    router.add_post("/queue/ack", ack)
    router.add_post("/queue/nack", nack)
    router.add_get("/queues/{queue}", stats)
    router.add_put("/queues/{queue}", configure)
    router.add_patch("/queues/{queue}", configure)
    router.add_get("/queue/{queue}", stats)  # the older spelling, where no verb collides
    router.add_put("/queue/{queue}", configure)
