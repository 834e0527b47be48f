"""Lock acquires and releases, coalesced on the wire (what fabric/produce_batcher.py does for
produce).

Every ``Acquire`` and ``Release`` a process issues within one event-loop iteration leaves as one
``LockBatch``: one request, one decode on each replica, one reply, instead of one each. Nothing
waits for a batch to fill — a batch is what piled up while the loop was busy — so coalescing adds
no latency and grows with load; a lone op goes as it is.

The replicas still apply the ops one by one, each as its own request with its own id (the
batch's id + 1 + its position): its own session record, its own place in a lock's queue, its
own answer. Answers decided at once come back together (``Answers``). An acquire left waiting is
answered later by its own reply, under its own id, so it holds up nobody else in its batch;
whoever waits for it here waits on that id, and asks again under the same id (the session
record gives back the wait, or its outcome) if the reply does not come or a leader change
interrupts it. A batch that fails as a whole (a timeout, every retry spent) fails each of its
callers with that error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from syncfab.actors.locks import Acquire, LockBatch, Release
from syncfab.actors.machine import BATCH_OPS_MAX
from syncfab.actors.results import RETRYABLE, Answers, Err, Result, Waiting

# A batch stays well under a node's 1 MiB request bound (names are at most 1 KiB each, and a
# character at most 4 bytes: the estimate below counts characters, so allow for that).
BATCH_BYTES_MAX = 128 * 1024
_FRAMING_BYTES = 32


class RequestSlots:
    """What the batcher needs of a client: request ids, and futures for replies to them."""

    def __init__(self, call: Callable[[Any, int], Awaitable[Any]], reserve: Callable[[int], int],
                 expect: Callable[[int], asyncio.Future[Any]], forget: Callable[[int], None],
                 attempt_timeout_s: Callable[[], float]) -> None:
        self.call = call  # (op, request id) -> its result, with the client's retries
        self.reserve = reserve  # n -> the first of n fresh consecutive ids
        self.expect = expect  # id -> a future its reply will resolve
        self.forget = forget  # id -> done with: its future, its hint, its place in ``acked``
        self.attempt_timeout_s = attempt_timeout_s


class LockBatcher:
    def __init__(self, slots: RequestSlots) -> None:
        self._slots = slots
        self._queued: list[tuple[Acquire | Release, asyncio.Future[Result]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, op: Acquire | Release) -> asyncio.Future[Result]:
        """Queue one op; the future resolves with its answer, as if it had been sent alone."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append((op, future))
        return future

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        batch: list[tuple[Acquire | Release, asyncio.Future[Result]]] = []
        size = 0
        for item in queued:
            op = item[0]
            cost = len(op.resource) + len(op.owner) + _FRAMING_BYTES
            if batch and (len(batch) >= BATCH_OPS_MAX or size + cost > BATCH_BYTES_MAX):
                self._spawn(self._send(batch))
                batch, size = [], 0
            batch.append(item)
            size += cost
        if batch:
            self._spawn(self._send(batch))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Acquire | Release, asyncio.Future[Result]]]) -> None:
        slots = self._slots
        if len(batch) == 1:
            op, caller = batch[0]
            await self._settle(caller, slots.call(op, slots.reserve(1)))
            return
        first = slots.reserve(len(batch) + 1)  # the batch's id, then one per op
        # Expected before the batch leaves: a waiting op's own reply may follow the batch's at once.
        replies = [slots.expect(first + 1 + k) for k in range(len(batch))]
        try:
            result = await slots.call(LockBatch([op for op, _ in batch]), first)
        except Exception as e:  # every caller's await must end, whatever happens here
            for k, (_, caller) in enumerate(batch):
                slots.forget(first + 1 + k)
                if not caller.done():
                    caller.set_exception(e)
            return
        if not (isinstance(result, Answers) and len(result.results) == len(batch)):
            for k, (_, caller) in enumerate(batch):
                slots.forget(first + 1 + k)
                if not caller.done():
                    caller.set_result(result if isinstance(result, Err) else
                                      Err("bad_reply", f"a batch of {len(batch)} answered {result!r}"))
            return
        for k, ((op, caller), answer) in enumerate(zip(batch, result.results, strict=True)):
            rid = first + 1 + k
            if isinstance(answer, Waiting):
                self._spawn(self._await_wait(op, rid, replies[k], caller))
                continue
            slots.forget(rid)
            if not caller.done():
                caller.set_result(answer)

    async def _await_wait(self, op: Acquire | Release, rid: int, reply: asyncio.Future[Any],
                          caller: asyncio.Future[Result]) -> None:
        slots = self._slots
        wait_s = getattr(op, "wait_ms", 0) / 1000
        try:
            result: Any = await asyncio.wait_for(reply, wait_s + slots.attempt_timeout_s())
        except TimeoutError:
            result = None
        if result is None or (isinstance(result, Err) and result.code in RETRYABLE):
            # Ask again under the same id (the call forgets it when done).
            await self._settle(caller, slots.call(op, rid))
            return
        slots.forget(rid)
        if not caller.done():
            caller.set_result(result)

    @staticmethod
    async def _settle(caller: asyncio.Future[Result], call: Awaitable[Any]) -> None:
        try:
            result = await call
        except Exception as e:
            if not caller.done():
                caller.set_exception(e)
            return
        if not caller.done():
            caller.set_result(result)
