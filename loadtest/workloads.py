"""What one benchmark client does, once per loop: each function performs one measured operation
and says what it counted (its kind and how many units, e.g. a batch of 100 messages)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

from syncfab.actors.locks import Acquire, Release
from syncfab.actors.results import Err
from syncfab.fabric.client import AsyncClient

Op = Callable[[AsyncClient, random.Random, str], Awaitable[tuple[str, int]]]
PAYLOAD = b"x" * 100


def kv(read_ratio: float, keys: int) -> Op:
    async def op(client: AsyncClient, rng: random.Random, who: str) -> tuple[str, int]:
        key = f"k{rng.randrange(keys)}"
        if rng.random() < read_ratio:
            await client.get(key, None)
            return "read", 1
        await client.put(key, who)
        return "write", 1

    return op


def lock(hot_resources: int) -> Op:
    """An acquire+release cycle. Uncontended (hot_resources = 0): each client its own resource.
    Contended: a few hot resources, so cycles are handoffs between clients. Each simulated
    client is its own lock owner (one AsyncClient serves many of them)."""

    async def op(client: AsyncClient, rng: random.Random, who: str) -> tuple[str, int]:
        resource = f"hot-{rng.randrange(hot_resources)}" if hot_resources else f"res-{who}"
        granted = await client.call(Acquire(resource, "exclusive", who, 10_000, 30_000))
        if isinstance(granted, Err):
            raise RuntimeError(granted.code)
        released = await client.call(Release(resource, who))
        if isinstance(released, Err):
            raise RuntimeError(released.code)
        return ("handoff" if hot_resources else "cycle"), 1

    return op


def produce(queue: str, batch: int) -> Op:
    async def op(client: AsyncClient, rng: random.Random, who: str) -> tuple[str, int]:
        if batch <= 1:
            await client.produce(queue, PAYLOAD)
            return "produce", 1
        await client.produce_batch(queue, [PAYLOAD] * batch)
        return "produce_batch", batch

    return op


def consume_ack(queue: str, batch: int) -> Op:
    async def op(client: AsyncClient, rng: random.Random, who: str) -> tuple[str, int]:
        messages = await client.consume(queue, who, max=batch, wait_ms=200)
        if messages:
            await client.ack(queue, [m["message_id"] for m in messages])
        return "consume_ack", len(messages)

    return op


def make(workload: str, options: dict[str, Any]) -> Op:
    if workload == "kv":
        return kv(options["read_ratio"], options["keys"])
    if workload == "lock":
        return lock(options["hot"])
    if workload == "produce":
        return produce(options["queue"], options["batch"])
    if workload == "consume":
        return consume_ack(options["queue"], options["batch"])
    raise ValueError(workload)
