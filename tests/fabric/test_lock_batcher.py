"""LockBatcher: acquires and releases issued in one loop iteration leave as one LockBatch, each
caller gets its own answer, and an op left waiting is answered by its own reply (or asked again
under its own id). ``Cluster`` stands in for the client's request slots; the real path is
covered by tests/integration/test_locks.py and the simulator (tests/sim/test_sim_locks.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from syncfab.actors.locks import EXCLUSIVE, Acquire, LockBatch, Release
from syncfab.actors.machine import BATCH_OPS_MAX
from syncfab.actors.results import WAITING, Answers, Err, Ok, Result, Waiting
from syncfab.fabric.client.lock_batcher import BATCH_BYTES_MAX, LockBatcher, RequestSlots

Decide = Callable[[Any, int], Result | Waiting]


class Cluster:
    """Request ids, reply futures and a call that answers each op with ``decide(op, rid)``
    (a LockBatch op by op); records every call as (op, request id)."""

    def __init__(self, decide: Decide | None = None, batch_error: Exception | Err | None = None) -> None:
        self.decide: Decide = decide or (lambda op, rid: Ok({"rid": rid}))
        self.batch_error = batch_error
        self.calls: list[tuple[Any, int]] = []
        self.futures: dict[int, asyncio.Future[Any]] = {}
        self.open: set[int] = set()
        self.next = 1
        self.on_batch: Callable[[int], None] = lambda first: None
        self.batcher: LockBatcher | None = None

    def attach(self, attempt_timeout_s: float = 1.0) -> LockBatcher:
        """A batcher whose ``wake`` has the loop flush it soon, as the client's send does."""
        slots = RequestSlots(
            self.call, self.reserve, self.expect, self.forget, self.wake, lambda: attempt_timeout_s
        )
        self.batcher = LockBatcher(slots)
        return self.batcher

    def wake(self) -> None:
        assert self.batcher is not None
        asyncio.get_running_loop().call_soon(self.batcher.flush)

    def reserve(self, count: int) -> int:
        first = self.next
        self.next += count
        self.open.update(range(first, self.next))
        return first

    def expect(self, rid: int) -> asyncio.Future[Any]:
        fut = self.futures[rid] = asyncio.get_running_loop().create_future()
        return fut

    def forget(self, rid: int) -> None:
        self.futures.pop(rid, None)
        self.open.discard(rid)

    async def call(self, op: Any, rid: int) -> Any:
        self.calls.append((op, rid))
        await asyncio.sleep(0)
        try:
            if not isinstance(op, LockBatch):
                result = self.decide(op, rid)
                assert not isinstance(result, Waiting), "a lone op's waits end inside call"
                return result
            if isinstance(self.batch_error, Exception):
                raise self.batch_error
            if self.batch_error is not None:
                return self.batch_error
            self.on_batch(rid)
            return Answers([self.decide(sub, rid + 1 + k) for k, sub in enumerate(op.ops)])
        finally:
            self.open.discard(rid)  # the real call forgets its id when done


def acquire(owner: str, wait_ms: int = 5_000) -> Acquire:
    return Acquire(f"res-{owner}", EXCLUSIVE, owner, wait_ms, 30_000)


def run(
    cluster: Cluster, ops: list[Any], attempt_timeout_s: float = 1.0, during: Callable[[], Any] | None = None
) -> list[Any]:
    async def go() -> list[Any]:
        batcher = cluster.attach(attempt_timeout_s)
        futures = [asyncio.ensure_future(batcher.call(op)) for op in ops]
        if during is not None:
            await during()
        return list(await asyncio.gather(*futures, return_exceptions=True))

    return asyncio.run(go())


def test_ops_of_one_iteration_leave_as_one_batch_and_each_gets_its_own_answer() -> None:
    cluster = Cluster()
    ops = [acquire("a"), Release("res-b", "b"), acquire("c")]
    results = run(cluster, ops)
    [(batch, first)] = cluster.calls
    assert batch == LockBatch(ops)
    assert results == [Ok({"rid": first + 1}), Ok({"rid": first + 2}), Ok({"rid": first + 3})]
    assert not cluster.open and not cluster.futures  # every id given back


def test_a_lone_op_goes_as_itself() -> None:
    cluster = Cluster()
    assert run(cluster, [acquire("a")]) == [Ok({"rid": 1})]
    assert cluster.calls == [(acquire("a"), 1)]


def test_a_waiting_op_is_answered_by_its_own_reply() -> None:
    cluster = Cluster(lambda op, rid: WAITING if op.owner == "b" else Ok({"rid": rid}))

    async def grant_later() -> None:
        while not cluster.calls:
            await asyncio.sleep(0)
        first = cluster.calls[0][1]
        # Once the batch's answer is taken apart ("a" answered, its id given back), "b" waits
        # on its own reply, which comes now.
        while first + 1 in cluster.futures:
            await asyncio.sleep(0)
        cluster.futures[first + 2].set_result(Ok({"granted": True}))

    results = run(cluster, [acquire("a"), acquire("b")], during=grant_later)
    assert results[1] == Ok({"granted": True})
    assert len(cluster.calls) == 1 and not cluster.open


def test_a_reply_that_beats_the_batch_answer_is_kept() -> None:
    cluster = Cluster(lambda op, rid: WAITING if op.owner == "b" else Ok({"rid": rid}))
    cluster.on_batch = lambda first: cluster.futures[first + 2].set_result(Ok({"granted": "early"}))
    assert run(cluster, [acquire("a"), acquire("b")])[1] == Ok({"granted": "early"})
    assert len(cluster.calls) == 1


@pytest.mark.parametrize("reply", [Err("leader_changed", "moved"), None])
def test_a_wait_cut_short_or_unanswered_is_asked_again_under_its_own_id(reply: Err | None) -> None:
    asked_alone: list[int] = []

    def decide(op: Any, rid: int) -> Result | Waiting:
        if op.owner != "b":
            return Ok({"rid": rid})
        if cluster.calls[-1][0] == op:  # asked alone: the wait's outcome this time
            asked_alone.append(rid)
            return Ok({"granted": "on retry"})
        return WAITING

    cluster = Cluster(decide)
    if reply is not None:
        cluster.on_batch = lambda first: cluster.futures[first + 2].set_result(reply)
    results = run(cluster, [acquire("a"), acquire("b", wait_ms=0)], attempt_timeout_s=0.01)
    assert results[1] == Ok({"granted": "on retry"})
    first = cluster.calls[0][1]
    assert asked_alone == [first + 2] and not cluster.open


@pytest.mark.parametrize("error", [Err("timeout", "no answer"), RuntimeError("socket closed")])
def test_a_batch_that_fails_whole_fails_every_caller(error: Exception | Err) -> None:
    cluster = Cluster(batch_error=error)
    results = run(cluster, [acquire("a"), acquire("b")])
    assert results == [error, error]
    assert not cluster.futures


def test_big_piles_are_split_by_count_and_by_bytes() -> None:
    def sizes(cluster: Cluster) -> list[int]:
        return [len(op.ops) if isinstance(op, LockBatch) else 1 for op, _ in cluster.calls]

    cluster = Cluster()
    run(cluster, [Release(f"r{i}", "o") for i in range(BATCH_OPS_MAX + 1)])
    assert sizes(cluster) == [BATCH_OPS_MAX, 1]  # the one left over goes as itself

    cluster = Cluster()
    big = "x" * 1000
    count = BATCH_BYTES_MAX // 1000 + 10
    results = run(cluster, [Release(f"{big}{i}", "o") for i in range(count)])
    assert len(sizes(cluster)) == 2 and sum(sizes(cluster)) == count
    assert all(isinstance(r, Ok) for r in results)
