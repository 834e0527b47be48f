"""Single-message produce calls, coalesced on the wire (what Kafka's producer does with
``linger.ms=0``).

Every ``produce`` a process issues within one event-loop iteration leaves as one
``ProduceBatch`` per (queue, shard): one request, one log entry slot, one session record and one
reply for all of them, instead of one each. Nothing waits for a batch to fill — a batch is what
had piled up while the previous ones were in flight — so coalescing adds no latency and grows
with load.

Each caller still gets its own answer: its message id once the batch is durable on a majority
of the shard, or the batch's error. Messages are checked one by one before they are queued, so
bad input fails only its own call; what a batch can still fail with as a whole is a shard-level
condition (``queue_full``, a timeout), which is also all a single produce could have met there.

Placement is the single produce's: a key's shard, a dedup id's shard; messages with neither
stick to one shard per batch (Kafka's sticky partitioner), the next batch goes to the next
shard, so keyless load still spreads over every shard. One big batch beats several small
ones: splitting a pile over shards was measured slower (each entry and round trip has a
fixed cost).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from syncfab.actors.queue_ops import BATCH_MAX, check_message, check_queue
from syncfab.actors.queues import NewMessage, ProduceBatch
from syncfab.actors.results import Err, Ok, Result
from syncfab.fabric.core.codec import OnShard, encode
from syncfab.fabric.core.routing import queue_key_shard

Call = Callable[[Any], Awaitable[Result]]
T = TypeVar("T")
# A batch stays well under a node's 1 MiB request bound; a message bigger than this goes alone
# (and meets that bound by itself).
BATCH_BYTES_MAX = 256 * 1024
# Per-message overhead assumed on top of its data when sizing a batch.
_FRAMING_BYTES = 16
GOOD_QUEUES_MAX = 1024


class _Pending:
    __slots__ = ("future", "message", "size")

    def __init__(self, message: NewMessage, size: int, future: asyncio.Future[Result]) -> None:
        self.message = message
        self.size = size
        self.future = future


class ProduceBatcher:
    """``submit(queue, message)`` answers like a single produce; ``call`` routes one op to its
    group's leader with retries (the native client's or the gateway's)."""

    def __init__(self, call: Call, shard_count: Callable[[], int]) -> None:
        self._call = call
        self._shard_count = shard_count
        self._queued: dict[tuple[str, int | None], list[_Pending]] = {}
        self._flush_scheduled = False
        # Each process starts somewhere else, so producers' batches do not all land on the
        # same shard leader at once.
        self._sticky = itertools.count(random.randrange(1 << 16))
        self._tasks: set[asyncio.Task[None]] = set()
        self._good_queues: set[str] = set()  # names check_queue accepted (a pure check)

    def submit(self, queue: str, message: NewMessage) -> asyncio.Future[Result]:
        """Queue one message; the future resolves with the single produce's answer."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        plain = message.key is None and message.dedup_id is None and message.headers is None
        err = None if queue in self._good_queues else check_queue(queue)
        if err is None and not plain:
            err = check_message(message)
        if err is not None:
            future.set_result(err)
            return future
        if len(self._good_queues) < GOOD_QUEUES_MAX:
            self._good_queues.add(queue)
        shard: int | None = None  # None: any shard (sticky per batch)
        if message.key is not None:
            shard = queue_key_shard(queue, message.key, self._shard_count())
        elif message.dedup_id is not None:
            shard = queue_key_shard(queue, f"\x00dedup\x00{message.dedup_id}", self._shard_count())
        data = message.data
        size = len(data) if plain and isinstance(data, bytes | str) else len(encode(message))
        pending = self._queued.get((queue, shard))
        if pending is None:
            pending = self._queued[queue, shard] = []
        pending.append(_Pending(message, size, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, {}
        try:
            shards = self._shard_count()
        except Exception as e:  # e.g. the client has not learnt the cluster: no caller may hang
            for pending in queued.values():
                for p in pending:
                    p.future.set_exception(e)
            return
        for (queue, shard), pending in queued.items():
            for batch in split(pending, _message_bytes, BATCH_MAX, BATCH_BYTES_MAX):
                target = shard if shard is not None else next(self._sticky) % shards + 1
                task = asyncio.ensure_future(self._send(queue, target, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, queue: str, shard: int, batch: list[_Pending]) -> None:
        try:
            result = await self._call(OnShard(shard, ProduceBatch(queue, [p.message for p in batch])))
        except Exception as e:  # every caller's await must end, whatever happens here
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        if isinstance(result, Err):
            for p in batch:
                if not p.future.done():
                    p.future.set_result(result)
            return
        ids: list[str] = result.value["message_ids"]
        duplicates = set(result.value.get("duplicates", ()))
        for n, (p, message_id) in enumerate(zip(batch, ids, strict=True)):
            if not p.future.done():
                value = (
                    {"message_id": message_id, "duplicate": True}
                    if n in duplicates
                    else {"message_id": message_id}
                )
                p.future.set_result(Ok(value))


def _message_bytes(p: _Pending) -> int:
    return p.size + _FRAMING_BYTES


def split(items: list[T], cost: Callable[[T], int], count_max: int, bytes_max: int) -> list[list[T]]:
    """Batches of at most ``count_max`` items and about ``bytes_max`` bytes by ``cost``, in order
    (an item bigger than that goes alone)."""
    batches: list[list[T]] = []
    current: list[T] = []
    size = 0
    for item in items:
        weight = cost(item)
        if current and (len(current) >= count_max or size + weight > bytes_max):
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += weight
    if current:
        batches.append(current)
    return batches
