"""Lock acquires and releases, coalesced on the wire (what fabric/client/produce_batcher.py does for
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
from syncfab.fabric.client.produce_batcher import split

# A batch stays well under a node's 1 MiB request bound (names are at most 1 KiB each, and a
# character at most 4 bytes: the estimate below counts characters, so allow for that).
BATCH_BYTES_MAX = 128 * 1024
_FRAMING_BYTES = 32


def _op_bytes(item: tuple[Acquire | Release, asyncio.Future[Any]]) -> int:
    op = item[0]
    return len(op.resource) + len(op.owner) + _FRAMING_BYTES


class RequestSlots:
    """What the batcher needs of a client: request ids, and futures for replies to them."""

    def __init__(
        self,
        call: Callable[[Any, int], Awaitable[Any]],
        reserve: Callable[[int], int],
        expect: Callable[[int], asyncio.Future[Any]],
        forget: Callable[[int], None],
        wake: Callable[[], None],
        attempt_timeout_s: Callable[[], float],
    ) -> None:
        # (op, request id) -> its result, with the client's retries; the request is queued at
        # once, so a batch leaves with the client's next send, not a loop iteration later.
        self.call = call
        self.reserve = reserve  # n -> the first of n fresh consecutive ids
        self.expect = expect  # id -> a future its reply will resolve
        self.forget = forget  # id -> done with: its future, its hint, its place in ``acked``
        self.wake = wake  # have the client send soon: it calls ``flush`` first
        self.attempt_timeout_s = attempt_timeout_s


class Alone:
    """What a lone op's future resolves with: its request is already on its way (no batch);
    awaiting ``answer`` in the caller's own task gets its result with no task in between."""

    __slots__ = ("answer", "rid")

    def __init__(self, answer: Awaitable[Any], rid: int) -> None:
        self.answer, self.rid = answer, rid


class Waits:
    """What a batched op's future resolves with when the op was left waiting: its own reply
    (``reply``) will answer it, awaited in the caller's own task."""

    __slots__ = ("op", "reply", "rid")

    def __init__(self, op: Acquire | Release, rid: int, reply: asyncio.Future[Any]) -> None:
        self.op, self.rid, self.reply = op, rid, reply


class LockBatcher:
    """``call(op)`` answers like a lone acquire or release; concurrent calls share requests."""

    def __init__(self, slots: RequestSlots) -> None:
        self._slots = slots
        self._queued: list[tuple[Acquire | Release, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, op: Acquire | Release) -> Result:
        """The op's answer, as if it had been sent alone."""
        future = self.submit(op)
        try:
            outcome = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and isinstance(future.result(), Alone | Waits):
                self._slots.forget(future.result().rid)  # its answer will find nobody
            raise
        if isinstance(outcome, Alone):
            return await outcome.answer
        if isinstance(outcome, Waits):
            return await self._await_wait(outcome)
        return outcome

    async def _await_wait(self, waits: Waits) -> Result:
        """A waiting op's own reply; if none comes in time, or a leader change cuts the wait
        short, ask again alone under the same id (the session record gives back the wait, or
        its outcome; the call forgets the id when done)."""
        slots = self._slots
        timed_out = False

        def give_up() -> None:
            nonlocal timed_out
            timed_out = True
            waits.reply.cancel()

        timer = asyncio.get_running_loop().call_later(
            getattr(waits.op, "wait_ms", 0) / 1000 + slots.attempt_timeout_s(), give_up
        )
        try:
            result = await waits.reply
        except asyncio.CancelledError:
            if not timed_out:  # the caller itself was cancelled
                slots.forget(waits.rid)
                raise
            result = None
        finally:
            timer.cancel()
        if result is None or (isinstance(result, Err) and result.code in RETRYABLE):
            return await slots.call(waits.op, waits.rid)
        slots.forget(waits.rid)
        return result

    def submit(self, op: Acquire | Release) -> asyncio.Future[Result | Alone]:
        """Queue one op; the future resolves with its answer, or with ``Alone`` (see ``call``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result | Alone] = loop.create_future()
        if not self._queued:
            self._slots.wake()
        self._queued.append((op, future))
        return future

    def flush(self) -> None:
        """Send what was submitted (the client calls this right before it sends)."""
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        # A caller that gave up before its op left is dropped.
        live = [item for item in queued if not item[1].done()]
        for batch in split(live, _op_bytes, BATCH_OPS_MAX, BATCH_BYTES_MAX):
            self._send(batch)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, batch: list[tuple[Acquire | Release, asyncio.Future[Any]]]) -> None:
        slots = self._slots
        if len(batch) == 1:  # a lone op goes as it is, answered in its caller's task
            op, caller = batch[0]
            rid = slots.reserve(1)
            caller.set_result(Alone(slots.call(op, rid), rid))
            return
        first = slots.reserve(len(batch) + 1)  # the batch's id, then one per op
        # Expected before the batch leaves: a waiting op's own reply may follow the batch's at once.
        replies = [slots.expect(first + 1 + k) for k in range(len(batch))]
        answer = slots.call(LockBatch([op for op, _ in batch]), first)
        self._spawn(self._answer(batch, first, replies, answer))

    async def _answer(
        self,
        batch: list[tuple[Acquire | Release, asyncio.Future[Any]]],
        first: int,
        replies: list[asyncio.Future[Any]],
        call: Awaitable[Any],
    ) -> None:
        slots = self._slots
        try:
            result = await call
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
                    caller.set_result(
                        result
                        if isinstance(result, Err)
                        else Err("bad_reply", f"a batch of {len(batch)} answered {result!r}")
                    )
            return
        for k, ((op, caller), answer) in enumerate(zip(batch, result.results, strict=True)):
            rid = first + 1 + k
            if caller.done():  # its caller gave up
                slots.forget(rid)
            elif isinstance(answer, Waiting):
                caller.set_result(Waits(op, rid, replies[k]))
            else:
                slots.forget(rid)
                caller.set_result(answer)
