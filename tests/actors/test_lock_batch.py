"""A LockBatch through the group machine: each op applied as its own request (id = batch id +
1 + position), with its own session record, wait and notice; the batch recorded nowhere."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from syncfab.actors.lock_ops import Granted
from syncfab.actors.locks import EXCLUSIVE, Acquire, LockBatch, LockTable, Release
from syncfab.actors.machine import BATCH_OPS_MAX, ApplyContext, GroupMachine
from syncfab.actors.results import Answers, Err, Ok, Waiting

LONG_MS = 60_000


class Replica:
    def __init__(self) -> None:
        self.machine = GroupMachine({"locks": LockTable()})
        self.index = 0

    def apply(self, client: str, request_id: int, op: Any, acked: int = 1) -> tuple[Any, list[Any]]:
        """(the answer, the notices as (client, request id, result))."""
        self.index += 1
        ctx = ApplyContext(self.index, 1_000, client, request_id)
        result = self.machine.apply(ctx, acked, op)
        return result, [(n.client, n.request_id, n.result) for n in ctx.notices]


def acquire(owner: str, resource: str, wait_ms: int = LONG_MS) -> Acquire:
    return Acquire(resource, EXCLUSIVE, owner, wait_ms, LONG_MS)


def token(result: Any) -> int:
    assert isinstance(result, Ok) and result.value["granted"], result
    return int(result.value["fencing_token"])


def test_each_op_is_answered_in_order_and_recorded_under_its_own_id() -> None:
    r = Replica()
    answers, _ = r.apply("c", 10, LockBatch([acquire("a", "x"), acquire("b", "y"), Release("x", "a")]))
    assert isinstance(answers, Answers) and len(answers.results) == 3
    first, second = token(answers.results[0]), token(answers.results[1])
    assert second > first
    assert answers.results[2] == Ok({"released": True})
    # Asked alone under the ids the batch gave them, the ops get their recorded answers back.
    assert r.apply("c", 11, acquire("a", "x"))[0] == answers.results[0]
    assert r.apply("c", 13, Release("x", "a"))[0] == answers.results[2]
    # The batch's own id is recorded nowhere: a different op under it is simply applied.
    assert token(r.apply("c", 10, acquire("d", "z"))[0]) > second


def test_a_retried_batch_gets_every_recorded_answer_and_applies_nothing_again() -> None:
    r = Replica()
    batch = LockBatch([acquire("a", "x"), acquire("b", "x", wait_ms=0)])
    answers, _ = r.apply("c", 5, batch)
    again, _ = r.apply("c", 5, batch)
    assert again == answers
    assert isinstance(answers, Answers)
    assert isinstance(answers.results[1], Err) and answers.results[1].code == "lock_timeout"
    assert r.machine.services["locks"].stats()["grants"] == 1  # type: ignore[attr-defined]


def test_a_waiting_op_is_answered_later_under_its_own_id() -> None:
    r = Replica()
    held = token(r.apply("c", 1, acquire("a", "x"))[0])
    answers, _ = r.apply("c", 2, LockBatch([acquire("b", "x"), acquire("e", "y")]))
    assert isinstance(answers, Answers)
    assert isinstance(answers.results[0], Waiting)
    token(answers.results[1])
    _, notices = r.apply("c", 5, Release("x", "a"))
    [(client, request_id, result)] = notices
    assert (client, request_id) == ("c", 3) and token(result) > held
    # The session record now holds the grant: a retry of that op alone gets it.
    assert r.apply("c", 3, acquire("b", "x"))[0] == result


def test_a_release_later_in_the_same_batch_decides_an_earlier_wait() -> None:
    r = Replica()
    token(r.apply("c", 1, acquire("a", "x"))[0])
    answers, notices = r.apply("c", 2, LockBatch([acquire("b", "x"), Release("x", "a")]))
    assert isinstance(answers, Answers)
    assert isinstance(answers.results[0], Waiting)
    assert answers.results[1] == Ok({"released": True})
    [(client, request_id, result)] = notices
    assert (client, request_id) == ("c", 3) and token(result)


@pytest.mark.parametrize(
    ("client", "request_id", "ops", "problem"),
    [
        ("c", 1, [], "1..1024 ops"),
        ("c", 1, [Release("x", "a")] * (BATCH_OPS_MAX + 1), "1..1024 ops"),
        ("", 0, [Release("x", "a")], "from a client"),
    ],
)
def test_bad_batches_are_refused_whole(client: str, request_id: int, ops: list[Any], problem: str) -> None:
    result, _ = Replica().apply(client, request_id, LockBatch(ops))
    assert isinstance(result, Err) and result.code == "bad_request" and problem in result.message


def test_a_bad_op_fails_alone() -> None:
    r = Replica()
    answers, _ = r.apply(
        "c",
        1,
        LockBatch(
            [Acquire("x", "sideways", "a", 0, LONG_MS), acquire("b", "y"), LockBatch([acquire("a", "z")])]  # type: ignore[list-item]
        ),
    )
    assert isinstance(answers, Answers)
    bad, good, nested = answers.results
    assert isinstance(bad, Err) and bad.detail == {"field": "mode"}
    token(good)
    assert isinstance(nested, Err) and nested.code == "bad_request"


def test_a_batch_raises_its_clients_floor_before_its_ops_are_looked_up() -> None:
    """A client's ops all lie above what it acknowledged; one that claims otherwise gets every op
    below its ``acked`` refused as stale, and nothing of them applied."""
    r = Replica()
    answers, _ = r.apply("c", 10, LockBatch([acquire("a", "x"), acquire("b", "y")]), acked=12)
    assert isinstance(answers, Answers)
    stale, applied = answers.results
    assert isinstance(stale, Err) and stale.code == "stale_request"
    token(applied)
    assert r.machine.services["locks"].stats()["grants"] == 1  # type: ignore[attr-defined]


def test_a_grant_is_what_clients_read_it_as() -> None:
    """The lock table's answer converts, field by field, into the Struct clients read it as."""
    result, _ = Replica().apply("c", 1, Acquire("r", EXCLUSIVE, "o", 0, LONG_MS))
    assert isinstance(result, Ok)
    granted = msgspec.convert(result.value, Granted)
    assert (granted.granted, granted.resource, granted.mode) == (True, "r", "exclusive")
