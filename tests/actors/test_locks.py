"""The lock table as the log drives it: modes, fairness, upgrades, leases, deadlocks, snapshots."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from syncfab.actors.locks import (
    COMPATIBLE,
    EXCLUSIVE,
    SHARED,
    Acquire,
    ExpireLocks,
    LockInfo,
    LockTable,
    OwnerInfo,
    Release,
    ReleaseAll,
    Renew,
)
from syncfab.actors.machine import ApplyContext, GroupMachine
from syncfab.actors.results import WAITING, Err, Ok, Result, Waiting

S, X = SHARED, EXCLUSIVE
LONG_MS = 60_000


class Log:
    """Applies commands as replicas do: one log index and request id each, the leader's time.
    Notices are kept per request id; ``outputs`` records everything the table said."""

    def __init__(self, table: LockTable | None = None) -> None:
        self.table = table or LockTable()
        self.now = 0
        self.index = 0
        self.notices: dict[int, list[Result]] = {}
        self.outputs: list[Any] = []

    def apply(self, op: Any) -> Result | Waiting:
        self.index += 1
        ctx = ApplyContext(self.index, self.now, f"client-{self.index % 3}", self.index)
        result = self.table.apply(ctx, op)
        for notice in ctx.notices:
            self.notices.setdefault(notice.request_id, []).append(notice.result)
        self.outputs.append((self.index, result, [(n.client, n.request_id, n.result) for n in ctx.notices]))
        return result

    def acquire(
        self, owner: str, resource: str, mode: str = X, wait_ms: int = LONG_MS, ttl_ms: int = LONG_MS
    ) -> tuple[int, Result | Waiting]:
        result = self.apply(Acquire(resource, mode, owner, wait_ms, ttl_ms))
        return self.index, result

    def granted(self, owner: str, resource: str, mode: str = X, **kw: int) -> int:
        """Acquire that must be granted at once; returns the fencing token."""
        _, result = self.acquire(owner, resource, mode, **kw)
        assert isinstance(result, Ok) and result.value["granted"], result
        return result.value["fencing_token"]

    def waits(self, owner: str, resource: str, mode: str = X, **kw: int) -> int:
        """Acquire that must wait; returns its request id."""
        rid, result = self.acquire(owner, resource, mode, **kw)
        assert result is WAITING, result
        return rid

    def answer(self, rid: int) -> Result | None:
        """The one notice a waiting request got, or None yet."""
        got = self.notices.get(rid, [])
        assert len(got) <= 1, f"request {rid} answered {len(got)} times: {got}"
        return got[0] if got else None

    def expire(self, now: int) -> Result | Waiting:
        self.now = now
        return self.apply(ExpireLocks())

    def info(self, resource: str) -> dict[str, Any]:
        result = self.table.query(LockInfo(resource))
        assert isinstance(result, Ok)
        return result.value

    def holders(self, resource: str) -> dict[str, str]:
        return {h["owner"]: h["mode"] for h in self.info(resource)["holders"]}

    def waiters(self, resource: str) -> list[str]:
        return [w["owner"] for w in self.info(resource)["waiters"]]


def token_of(result: Result | Waiting | None) -> int:
    assert isinstance(result, Ok) and result.value["granted"], result
    return result.value["fencing_token"]


def code_of(result: Result | Waiting | None) -> str:
    assert isinstance(result, Err), result
    return result.code


# --- every mode pair -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "asked", "granted"),
    [(S, S, True), (S, X, False), (X, S, False), (X, X, False)],
)
def test_mode_pairs_between_owners(held: str, asked: str, granted: bool) -> None:
    log = Log()
    first = log.granted("a", "r", held)
    _, result = log.acquire("b", "r", asked, wait_ms=0)
    assert granted == COMPATIBLE[held, asked]
    if granted:
        assert token_of(result) > first
        assert log.holders("r") == {"a": held, "b": asked}
    else:
        assert result == Err("lock_timeout", "lock is held", {"resource": "r"})
        assert log.holders("r") == {"a": held} and log.waiters("r") == []  # a try-lock never queues


@pytest.mark.parametrize(
    ("held", "asked", "mode_after", "same_token"),
    [(S, S, S, True), (S, X, X, False), (X, S, X, True), (X, X, X, True)],
)
def test_mode_pairs_for_one_owner(held: str, asked: str, mode_after: str, same_token: bool) -> None:
    log = Log()
    first = log.granted("a", "r", held)
    _, result = log.acquire("a", "r", asked, wait_ms=0)
    assert isinstance(result, Ok)
    assert result.value == {
        "granted": True,
        "fencing_token": result.value["fencing_token"],
        "resource": "r",
        "mode": mode_after,
    }
    # Re-entrant: the same grant. Upgrade (sole holder): a new grant, so a new token.
    assert (result.value["fencing_token"] == first) == same_token
    assert result.value["fencing_token"] >= first
    assert log.holders("r") == {"a": mode_after}


def test_reentrant_acquire_extends_the_lease_and_counts_no_grant() -> None:
    log = Log()
    token = log.granted("a", "r", ttl_ms=1_000)
    log.now = 800
    assert log.granted("a", "r", S, ttl_ms=1_000) == token
    assert log.table.query(OwnerInfo("a")).value["lease_expires_at_ms"] == 1_800
    assert log.table.stats()["grants"] == 1


# --- fairness ----------------------------------------------------------------------------------------


def test_readers_queue_behind_a_waiting_writer() -> None:
    log = Log()
    log.granted("a", "r", S)
    w = log.waits("w", "r", X)
    _, tried = log.acquire("b", "r", S, wait_ms=0)  # compatible with the holder, but w is first
    assert code_of(tried) == "lock_timeout"
    b = log.waits("b", "r", S)
    assert log.waiters("r") == ["w", "b"]
    log.apply(Release("r", "a"))
    assert token_of(log.answer(w)) and log.answer(b) is None
    log.apply(Release("r", "w"))
    assert token_of(log.answer(b))


def test_grants_follow_the_queue_and_compatible_waiters_go_together() -> None:
    log = Log()
    log.granted("h", "r", X)
    rids = {o: log.waits(o, "r", m) for o, m in [("s1", S), ("s2", S), ("x1", X), ("s3", S), ("x2", X)]}
    log.apply(Release("r", "h"))
    assert {o for o, rid in rids.items() if log.answer(rid)} == {"s1", "s2"}
    assert token_of(log.answer(rids["s1"])) < token_of(log.answer(rids["s2"]))
    log.apply(Release("r", "s1"))
    assert log.answer(rids["x1"]) is None  # s2 still reads
    log.apply(Release("r", "s2"))
    assert token_of(log.answer(rids["x1"]))
    log.apply(Release("r", "x1"))
    assert token_of(log.answer(rids["s3"])) and log.answer(rids["x2"]) is None
    log.apply(Release("r", "s3"))
    assert token_of(log.answer(rids["x2"]))
    assert log.waiters("r") == []


def test_fencing_tokens_strictly_increase_across_grants_and_resources() -> None:
    log = Log()
    tokens = [log.granted("a", "r1"), log.granted("b", "r2", S), log.granted("c", "r2", S)]
    rid = log.waits("d", "r1")
    log.apply(Release("r1", "a"))
    tokens.append(token_of(log.answer(rid)))
    tokens.append(log.granted("a", "r3"))
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


def test_the_queue_is_bounded() -> None:
    log = Log(LockTable(waiters_max=2))
    log.granted("a", "r")
    log.waits("b", "r")
    log.waits("c", "r")
    _, result = log.acquire("d", "r")
    assert code_of(result) == "busy" and log.waiters("r") == ["b", "c"]


def test_a_second_wait_for_the_same_resource_is_refused() -> None:
    log = Log()
    log.granted("a", "r")
    log.waits("b", "r", S)
    _, result = log.acquire("b", "r", X)
    assert result == Err("already_waiting", "'b' already waits for 'r'", {"resource": "r"})


# --- upgrades -----------------------------------------------------------------------------------


def test_a_sole_reader_upgrades_at_once_even_past_a_queued_writer() -> None:
    log = Log()
    first = log.granted("a", "r", S)
    w = log.waits("w", "r", X)
    assert log.granted("a", "r", X) > first
    assert log.holders("r") == {"a": X} and log.waiters("r") == ["w"]
    log.apply(Release("r", "a"))
    assert token_of(log.answer(w))


def test_an_upgrade_waits_for_other_readers_only_ahead_of_the_queue() -> None:
    log = Log()
    log.granted("a", "r", S)
    log.granted("b", "r", S)
    w = log.waits("w", "r", X)  # a queued writer: an upgrade behind it would deadlock
    up = log.waits("a", "r", X)
    assert log.waiters("r") == ["a", "w"]
    assert log.table.graph.find_cycle("a") is None
    log.apply(Release("r", "b"))
    assert log.answer(up).value["mode"] == X and log.answer(w) is None
    assert log.holders("r") == {"a": X}


def test_two_upgraders_deadlock_and_the_younger_keeps_its_shared_hold() -> None:
    log = Log()
    log.granted("a", "r", S)
    log.granted("b", "r", S)
    up_a = log.waits("a", "r", X)
    _, up_b = log.acquire("b", "r", X)
    cycle = {"cycle": ["b", "a"], "resource": "r"}
    assert up_b == Err("deadlock", "aborted to break the cycle b -> a", cycle)
    assert log.holders("r") == {"a": S, "b": S} and log.waiters("r") == ["a"]
    assert log.answer(up_a) is None  # b still reads, so a still waits
    log.apply(Release("r", "b"))
    assert log.answer(up_a).value["mode"] == X


def test_releasing_a_hold_cancels_its_pending_upgrade() -> None:
    log = Log()
    log.granted("a", "r", S)
    log.granted("b", "r", S)
    up = log.waits("a", "r", X)
    assert log.apply(Release("r", "a")) == Ok({"released": True})
    assert code_of(log.answer(up)) == "cancelled"
    assert log.holders("r") == {"b": S} and log.waiters("r") == []


# --- deadlocks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [2, 3, 4, 5])
def test_a_cycle_aborts_the_request_that_closed_it(length: int) -> None:
    log = Log()
    owners = [f"o{i}" for i in range(length)]
    for i, o in enumerate(owners):
        log.granted(o, f"r{i}")
    rids = [log.waits(o, f"r{i + 1}") for i, o in enumerate(owners[:-1])]  # o_i waits for o_i+1
    _, result = log.acquire(owners[-1], "r0")
    cycle = [owners[-1], *owners[:-1]]
    assert result == Err(
        "deadlock", "aborted to break the cycle " + " -> ".join(cycle), {"cycle": cycle, "resource": "r0"}
    )
    assert log.table.graph.is_acyclic()
    assert all(log.answer(rid) is None for rid in rids)
    assert log.table.stats()["deadlocks"] == 1
    # The chain unwinds once the victim's owner lets go.
    log.apply(ReleaseAll(owners[-1]))
    assert token_of(log.answer(rids[-1]))


def test_a_cycle_through_readers_and_a_queued_writer_is_found() -> None:
    # a reads r1 and waits for r2; b writes r2; w queues to write r1 (behind a); b asks r1 shared:
    # b is behind w, w waits for a, a waits for b.
    log = Log()
    log.granted("a", "r1", S)
    log.granted("b", "r2", X)
    a = log.waits("a", "r2", S)
    w = log.waits("w", "r1", X)
    _, result = log.acquire("b", "r1", S)
    assert isinstance(result, Err) and result.detail["cycle"] == ["b", "w", "a"]
    assert log.answer(a) is None and log.answer(w) is None


def test_waits_on_two_resources_by_one_owner_are_both_edges() -> None:
    log = Log()
    for o, r in [("a", "r1"), ("b", "r2"), ("c", "r3")]:
        log.granted(o, r)
    on_r2 = log.waits("a", "r2")
    on_r3 = log.waits("a", "r3")
    assert log.table.graph.successors("a") == ["b", "c"]
    _, result = log.acquire("c", "r1")
    assert isinstance(result, Err) and result.detail["cycle"] == ["c", "a"]
    _, result = log.acquire("b", "r1")
    assert isinstance(result, Err) and result.detail["cycle"] == ["b", "a"]
    log.apply(Release("r3", "c"))
    assert token_of(log.answer(on_r3)) and log.answer(on_r2) is None
    assert log.table.graph.successors("a") == ["b"]


# --- leases and deadlines -----------------------------------------------------------------------


def test_a_wait_times_out_when_expire_locks_is_applied() -> None:
    log = Log()
    log.granted("a", "r")
    rid = log.waits("b", "r", wait_ms=100)
    assert log.table.due(99) == []
    assert log.table.due(100) == [ExpireLocks()]
    assert log.answer(rid) is None  # due() decides nothing: only the applied entry does
    assert log.expire(100) == Ok({"leases_expired": 0, "waits_timed_out": 1})
    assert log.answer(rid) == Err("lock_timeout", "waited 100 ms", {"resource": "r"})
    assert log.waiters("r") == [] and log.table.due(100) == []


def test_an_expired_lease_releases_locks_cancels_waits_and_grants_the_next() -> None:
    log = Log()
    log.granted("a", "r1", ttl_ms=1_000)
    log.granted("c", "r2", ttl_ms=LONG_MS)
    a_waits = log.waits("a", "r2", ttl_ms=1_000)
    b_waits = log.waits("b", "r1")
    assert log.table.due(999) == [] and log.table.due(1_000) == [ExpireLocks()]
    assert log.expire(1_000) == Ok({"leases_expired": 1, "waits_timed_out": 0})
    assert log.answer(a_waits) == Err("lease_expired", "the lease of 'a' expired", {"owner": "a"})
    assert token_of(log.answer(b_waits))
    assert code_of(log.table.query(OwnerInfo("a"))) == "not_found"
    assert log.holders("r1") == {"b": X} and log.waiters("r2") == []
    assert log.table.stats()["expiries"] == 1


def test_a_waiter_granted_after_its_wait_keeps_its_ttl() -> None:
    log = Log()
    log.granted("a", "r", ttl_ms=500)
    rid = log.waits("b", "r", ttl_ms=1_000, wait_ms=5_000)
    log.now = 900
    log.apply(Release("r", "a"))
    assert token_of(log.answer(rid))
    assert log.table.query(OwnerInfo("b")).value["lease_expires_at_ms"] == 1_900


def test_expiry_takes_deadlines_in_order_so_an_earlier_lease_end_grants_first() -> None:
    log = Log()
    log.granted("a", "r", ttl_ms=90)
    rid = log.waits("b", "r", wait_ms=100)
    log.expire(150)  # both passed: a's lease ended at 90, before b's wait ran out at 100
    assert token_of(log.answer(rid))


def test_renew_extends_and_an_unknown_or_expired_owner_cannot_renew() -> None:
    log = Log()
    log.granted("a", "r", ttl_ms=1_000)
    log.now = 500
    assert log.apply(Renew("a", 1_000)) == Ok({"lease_expires_at_ms": 1_500})
    assert log.apply(Renew("a", 10)) == Ok({"lease_expires_at_ms": 1_500})  # never shortened
    assert log.table.due(1_000) == []
    assert log.expire(1_000) == Ok({"leases_expired": 0, "waits_timed_out": 0})
    assert log.holders("r") == {"a": X}
    assert log.expire(1_500) == Ok({"leases_expired": 1, "waits_timed_out": 0})
    assert log.holders("r") == {}
    assert log.apply(Renew("a", 1_000)) == Err("lease_expired", "'a' has no lease", {"owner": "a"})
    assert code_of(log.apply(Renew("nobody", 1_000))) == "lease_expired"


def test_due_only_when_a_live_deadline_has_passed() -> None:
    log = Log()
    assert log.table.due(10**12) == []
    log.granted("a", "r", ttl_ms=100)
    log.apply(Renew("a", 1_000))  # the 100 ms deadline is dead now
    assert log.table.due(999) == []
    assert log.table.due(1_000) == [ExpireLocks()]
    log.apply(ReleaseAll("a"))
    assert log.table.due(10**12) == []


def test_renewals_do_not_grow_the_deadline_heap_without_bound() -> None:
    log = Log()
    log.granted("a", "r", ttl_ms=LONG_MS)
    for now in range(1, 5_000):
        log.now = now
        log.apply(Renew("a", LONG_MS))
    assert len(log.table._deadlines) <= 2 * 1 + 64 + 1
    assert log.table.due(LONG_MS + 4_998) == [] and log.table.due(LONG_MS + 4_999) == [ExpireLocks()]


def test_a_lease_keeps_one_heap_entry_however_often_acquires_extend_it() -> None:
    """Each acquire moves the lease's end; the heap entry is moved on only when it comes up."""
    log = Log()
    for now in range(0, 5_000, 2):
        log.now = now
        log.granted("a", f"r{now % 7}", ttl_ms=1_000)
        log.now = now + 1
        assert log.apply(Release(f"r{now % 7}", "a")) == Ok({"released": True})
    assert len(log.table._deadlines) == 1
    last_end = 4_998 + 1_000
    assert log.table.due(last_end - 1) == [] and len(log.table._deadlines) == 1
    assert log.table.due(last_end) == [ExpireLocks()]
    assert log.expire(last_end - 1) == Ok({"leases_expired": 0, "waits_timed_out": 0})
    assert log.expire(last_end) == Ok({"leases_expired": 1, "waits_timed_out": 0})
    assert log.table.due(10**12) == []


def test_an_owner_dropped_and_back_is_expired_by_its_new_lease_only() -> None:
    log = Log()
    log.granted("a", "r", ttl_ms=100)
    assert log.apply(ReleaseAll("a")) == Ok({"released": 1})
    log.now = 50
    log.granted("a", "r", ttl_ms=1_000)  # the entry at 100 belongs to the dropped lease
    assert log.table.due(999) == []
    assert log.expire(999) == Ok({"leases_expired": 0, "waits_timed_out": 0})
    assert log.table.due(1_050) == [ExpireLocks()]
    assert log.expire(1_050) == Ok({"leases_expired": 1, "waits_timed_out": 0})


def test_leases_extended_past_others_still_expire_in_deadline_order() -> None:
    """A's lease ends last although its first entry comes first: B's end frees r for a waiter
    before A's does, as if every extension had its own entry."""
    log = Log()
    log.granted("a", "ra", ttl_ms=100)
    log.granted("b", "rb", ttl_ms=200)
    log.now = 150
    log.granted("a", "ra", ttl_ms=150)  # re-entrant: a's lease now ends at 300
    c = log.waits("c", "rb", wait_ms=10_000, ttl_ms=10_000)
    d = log.waits("d", "ra", wait_ms=10_000, ttl_ms=10_000)
    assert log.expire(250) == Ok({"leases_expired": 1, "waits_timed_out": 0})
    assert token_of(log.answer(c)) and log.answer(d) is None
    assert log.expire(300) == Ok({"leases_expired": 1, "waits_timed_out": 0})
    assert token_of(log.answer(d))
    restored = LockTable()
    restored.restore(log.table.snapshot())
    assert restored.snapshot() == log.table.snapshot()
    assert restored.due(10_249) == log.table.due(10_249) == []
    assert restored.due(10_250) == log.table.due(10_250) == [ExpireLocks()]


# --- releasing ------------------------------------------------------------------------------------


def test_release_of_what_is_not_held() -> None:
    log = Log()
    log.granted("a", "r")
    not_held = Err("not_held", "'b' neither holds nor waits for 'r'", {"resource": "r"})
    assert log.apply(Release("r", "b")) == not_held
    assert code_of(log.apply(Release("other", "a"))) == "not_held"
    assert log.apply(Release("r", "a")) == Ok({"released": True})
    assert code_of(log.apply(Release("r", "a"))) == "not_held"


def test_release_of_a_wait_cancels_it() -> None:
    log = Log()
    log.granted("a", "r")
    rid = log.waits("b", "r")
    assert log.apply(Release("r", "b")) == Ok({"released": False, "cancelled": True})
    assert log.answer(rid) == Err("cancelled", "released while waiting", {"resource": "r"})
    assert log.waiters("r") == []


def test_release_all_releases_holds_cancels_waits_and_drops_the_lease() -> None:
    log = Log()
    log.granted("a", "r1")
    log.granted("a", "r2", S)
    log.granted("c", "r3")
    own_wait = log.waits("a", "r3")
    behind = log.waits("b", "r1")
    assert log.apply(ReleaseAll("a")) == Ok({"released": 2})
    assert code_of(log.answer(own_wait)) == "cancelled"
    assert token_of(log.answer(behind))
    assert code_of(log.table.query(OwnerInfo("a"))) == "not_found"
    assert log.apply(ReleaseAll("a")) == Ok({"released": 0})


# --- validation, queries, the Service protocol -----------------------------------------------------


@pytest.mark.parametrize(
    ("op", "field"),
    [
        (Acquire("", X, "a", 0, 1_000), "resource"),
        (Acquire("é" * 513, X, "a", 0, 1_000), "resource"),  # 1026 bytes, 513 characters
        (Acquire("r", X, "\U0001f512" * 257, 0, 1_000), "owner"),  # 1028 bytes, 257 characters
        (Acquire("r", "write", "a", 0, 1_000), "mode"),
        (Acquire("r", X, "", 0, 1_000), "owner"),
        (Acquire("r", X, "a" * 1_025, 0, 1_000), "owner"),
        (Acquire("r", X, "a", -1, 1_000), "wait_ms"),
        (Acquire("r", X, "a", 3_600_001, 1_000), "wait_ms"),
        (Acquire("r", X, "a", 2**64 - 1, 1_000), "wait_ms"),  # a deadline past int64 would break snapshots
        (Acquire("r", X, "a", 0, 0), "ttl_ms"),
        (Acquire("r", X, "a", 0, 3_600_001), "ttl_ms"),
        (Release("", "a"), "resource"),
        (Release("r", ""), "owner"),
        (ReleaseAll(""), "owner"),
        (Renew("a", -5), "ttl_ms"),
    ],
)
def test_bad_requests_name_the_field_and_change_nothing(op: Any, field: str) -> None:
    log = Log()
    before = log.table.snapshot()
    result = log.apply(op)
    assert isinstance(result, Err) and result.code == "bad_request" and result.detail == {"field": field}
    assert log.table.snapshot() == before


@pytest.mark.parametrize(
    ("op", "message", "field"),
    [
        (Acquire("", "write", "", -1, 0), "resource must be 1..1024 bytes", "resource"),
        (Acquire("r", "write", "", -1, 0), "mode must be one of shared, exclusive", "mode"),
        (Acquire("r", X, "", -1, 0), "owner must be 1..1024 bytes", "owner"),
        (Acquire("r", X, "a", -1, 0), "wait_ms must be 0..3600000", "wait_ms"),
        (Acquire("r", X, "a", 0, 0), "ttl_ms must be 1..3600000", "ttl_ms"),
        (Release("", ""), "resource must be 1..1024 bytes", "resource"),
        (Renew("", 0), "owner must be 1..1024 bytes", "owner"),
        (Renew("a", 3_600_001), "ttl_ms must be 1..3600000", "ttl_ms"),
    ],
)
def test_the_first_bad_field_in_declaration_order_is_the_one_named(op: Any, message: str, field: str) -> None:
    assert Log().apply(op) == Err("bad_request", message, {"field": field})


def test_names_up_to_the_limit_are_fine() -> None:
    log = Log()
    log.granted("a" * 1_024, "é" * 512)
    log.granted("\U0001f512" * 256, "b")  # 1024 bytes in 256 characters


def test_queries_describe_holders_waiters_and_owners() -> None:
    log = Log()
    log.now = 10
    t_a = log.granted("a", "r", S, ttl_ms=1_000)
    t_b = log.granted("b", "r", S)
    log.now = 20
    log.waits("c", "r", X)
    log.waits("a", "r", X)  # an upgrade: listed first
    assert log.info("r") == {
        "resource": "r",
        "holders": [
            {"owner": "a", "mode": S, "fencing_token": t_a},
            {"owner": "b", "mode": S, "fencing_token": t_b},
        ],
        "waiters": [{"owner": "a", "mode": X, "since_ms": 20}, {"owner": "c", "mode": X, "since_ms": 20}],
    }
    assert log.table.query(OwnerInfo("a")) == Ok(
        {
            "owner": "a",
            "lease_expires_at_ms": 60_020,
            "held": [{"resource": "r", "mode": S, "fencing_token": t_a}],
            "waiting": [{"resource": "r", "mode": X, "since_ms": 20}],
        }
    )
    assert log.info("nothing") == {"resource": "nothing", "holders": [], "waiters": []}


def test_stats_count_what_happened() -> None:
    log = Log()
    log.granted("a", "r")
    log.acquire("b", "r", wait_ms=0)  # timeout
    log.waits("b", "r", wait_ms=10)
    log.granted("c", "r2")
    log.expire(10)  # b times out
    log.apply(Release("r", "a"))
    assert log.table.stats() == {
        "grants": 2,
        "waits": 1,
        "timeouts": 2,
        "deadlocks": 0,
        "expiries": 0,
        "releases": 1,
        "locks_held": 1,
        "waiters": 0,
        "owners": 3,
    }


def test_the_service_protocol() -> None:
    table = LockTable()
    assert table.locals == () and Acquire in table.commands and LockInfo in table.queries
    with pytest.raises(TypeError):
        table.local(0, LockInfo("r"))
    with pytest.raises(TypeError):
        table.apply(ApplyContext(1, 0), LockInfo("r"))
    with pytest.raises(TypeError):
        table.query(Release("r", "a"))
    table.reset_local(True)
    ops = [
        Acquire("r", X, "a", 5, 10),
        Release("r", "a"),
        ReleaseAll("a"),
        Renew("a", 5),
        ExpireLocks(),
        LockInfo("r"),
        OwnerInfo("a"),
    ]
    tags = [msgspec.msgpack.decode(msgspec.msgpack.encode(op))[0] for op in ops]
    assert all(t.startswith("lk") for t in tags) and len(set(tags)) == len(tags)


def test_a_group_machine_records_the_wait_then_the_answer() -> None:
    machine = GroupMachine({"locks": LockTable()})
    machine.apply(ApplyContext(1, 0, "c1", 1), 0, Acquire("r", X, "a", LONG_MS, LONG_MS))
    assert machine.apply(ApplyContext(2, 0, "c2", 1), 0, Acquire("r", X, "b", LONG_MS, LONG_MS)) is WAITING
    ctx = ApplyContext(3, 0, "c1", 2)
    assert machine.apply(ctx, 0, Release("r", "a")) == Ok({"released": True})
    assert [(n.client, n.request_id) for n in ctx.notices] == [("c2", 1)]
    retried = machine.apply(ApplyContext(4, 0, "c2", 1), 0, Acquire("r", X, "b", LONG_MS, LONG_MS))
    assert retried == ctx.notices[0].result and token_of(retried) == 2


def test_a_long_queue_keeps_the_graph_linear() -> None:
    log = Log()
    log.granted("h1", "r", S)
    log.granted("h2", "r", S)
    n = 2_000
    for i in range(n):
        log.waits(f"w{i}", "r", S if i % 3 else X)
    assert len(log.table.graph) <= 2 * n + 4
    log.apply(Release("r", "h1"))
    log.apply(Release("r", "h2"))
    assert log.holders("r") == {"w0": X} and len(log.waiters("r")) == n - 1


# --- randomized: invariants after every step, then every wait answered ---------------------------

OWNERS = [f"o{i}" for i in range(9)]
RESOURCES = [f"r{i}" for i in range(4)]


def random_op(rng: random.Random, log: Log) -> Any:
    """A command, or None for "time passes and the leader proposes what is due"."""
    owner, resource = rng.choice(OWNERS), rng.choice(RESOURCES)
    roll = rng.random()
    if roll < 0.45:
        wait_ms, ttl_ms = rng.choice([0, 50, 500, 5_000]), rng.choice([300, 3_000, 60_000])
        return Acquire(resource, rng.choice([S, S, X]), owner, wait_ms, ttl_ms)
    if roll < 0.65:
        held = [(r, h) for r in RESOURCES for h in log.holders(r)]
        if held and rng.random() < 0.8:
            resource, owner = rng.choice(held)
        return Release(resource, owner)
    if roll < 0.68:
        return ReleaseAll(owner)
    if roll < 0.76:
        return Renew(owner, rng.choice([300, 3_000]))
    if roll < 0.78:
        return Acquire(resource, "write", owner, 0, 100)
    return None


def step(rng: random.Random, log: Log, op: Any) -> Result | Waiting | None:
    if op is not None:
        return log.apply(op)
    log.now += rng.randrange(0, 400)
    if log.table.due(log.now):
        return log.apply(ExpireLocks())
    return None


def reachable(edges: set[tuple[str, str]], src: str) -> set[str]:
    out: dict[str, list[str]] = {}
    for a, b in edges:
        out.setdefault(a, []).append(b)
    seen: set[str] = set()
    todo = [src]
    while todo:
        for b in out.get(todo.pop(), []):
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def check_invariants(
    log: Log, where: str, owners: list[str] = OWNERS, resources: list[str] = RESOURCES
) -> None:
    """No conflicting holders; every waiter blocked by a conflict (the front by a holder); the
    table's graph acyclic, made of real conflicts, reaching what the full wait-for relation does."""
    full: set[tuple[str, str]] = set()
    held = waiting = 0
    for r in resources:
        info = log.info(r)
        holders = {h["owner"]: h["mode"] for h in info["holders"]}
        held += len(holders)
        waiting += len(info["waiters"])
        for a in holders:
            for b in holders:
                assert a == b or COMPATIBLE[holders[a], holders[b]], f"{where}: {r} held by {holders}"
        for i, w in enumerate(info["waiters"]):
            upgrade = w["owner"] in holders
            blockers = {h for h, m in holders.items() if h != w["owner"] and not COMPATIBLE[m, w["mode"]]}
            if not upgrade:
                blockers |= {e["owner"] for e in info["waiters"][:i] if not COMPATIBLE[e["mode"], w["mode"]]}
            assert blockers, f"{where}: {w} waits on {r} for nobody ({info})"
            front_blocked = any(h != w["owner"] and not COMPATIBLE[m, w["mode"]] for h, m in holders.items())
            assert i > 0 or front_blocked, f"{where}: the front of {r} could be granted ({info})"
            full |= {(w["owner"], b) for b in blockers}
    stats = log.table.stats()
    assert (stats["locks_held"], stats["waiters"]) == (held, waiting), where
    edges = set(log.table.graph.edges())
    assert edges <= full, f"{where}: edges that are no conflict: {edges - full}"
    for owner in owners:
        mine = reachable(edges, owner)
        assert owner not in mine, f"{where}: {owner} is on a cycle"
        assert mine == reachable(full, owner), f"{where}: the reduced graph reaches differently from {owner}"
    # The edges kept up incrementally are the ones a restore computes from scratch.
    fresh = LockTable()
    fresh.restore(log.table.snapshot())
    assert fresh.graph.edges() == log.table.graph.edges(), f"{where}: incremental edges drifted"


@pytest.mark.parametrize("seed", range(6))
def test_random_runs_keep_the_invariants_and_answer_every_wait(seed: int) -> None:
    rng = random.Random(seed)
    log = Log()
    pending: set[int] = set()
    newest = 0

    def account(result: Result | Waiting | None, notices_before: int, where: str) -> None:
        nonlocal newest
        if result is WAITING:
            pending.add(log.index)
        elif isinstance(result, Ok) and isinstance(result.value, dict) and result.value.get("granted"):
            token = result.value["fencing_token"]
            holders = {h["owner"]: h["fencing_token"] for h in log.info(result.value["resource"])["holders"]}
            assert token > newest or token in holders.values(), f"{where}: token {token} after {newest}"
            newest = max(newest, token)
        for _, _, notices in log.outputs[notices_before:]:
            for _, rid, answer in notices:
                assert rid in pending, f"{where}: notice for {rid}, which is not waiting (or was answered)"
                pending.discard(rid)
                if isinstance(answer, Ok):
                    assert answer.value["fencing_token"] > newest, f"{where}: stale token in {answer}"
                    newest = answer.value["fencing_token"]

    for i in range(600):
        where = f"seed={seed} step={i}"
        before = len(log.outputs)
        op = random_op(rng, log)
        account(step(rng, log, op), before, where + f" op={op}")
        check_invariants(log, where + f" op={op}")
    # Liveness: once every holder lets go, every wait still pending is granted, and so on.
    for rnd in range(100):
        holds = [(r, o) for r in RESOURCES for o in log.holders(r)]
        if not holds:
            break
        for r, o in holds:
            before = len(log.outputs)
            account(log.apply(Release(r, o)), before, f"seed={seed} drain={rnd}")
        check_invariants(log, f"seed={seed} drain={rnd}")
    assert not pending, f"seed={seed}: never answered: {sorted(pending)}"
    assert log.table.stats()["waiters"] == 0 and log.table.stats()["locks_held"] == 0, f"seed={seed}"
    assert log.table.graph.edges() == [], f"seed={seed}"
    log.expire(log.now + 10 * LONG_MS)
    assert log.table.stats()["owners"] == 0 and log.table.due(10**15) == [], f"seed={seed}"


@pytest.mark.parametrize("seed", range(4))
def test_a_restored_snapshot_behaves_identically(seed: int) -> None:
    rng = random.Random(1_000 + seed)
    one = Log()
    for _ in range(250):
        step(rng, one, random_op(rng, one))
    image = one.table.snapshot()
    two = Log(LockTable())
    two.table.restore(image)
    two.now, two.index = one.now, one.index
    assert two.table.snapshot() == image, f"seed={seed}"
    assert two.table.stats() == one.table.stats(), f"seed={seed}"
    mark = len(one.outputs)
    for i in range(400):
        op = random_op(rng, one)
        delta = rng.randrange(0, 400)
        for log in (one, two):
            if op is None:
                log.now += delta
                if log.table.due(log.now):
                    log.apply(ExpireLocks())
            else:
                log.apply(op)
        where = f"seed={seed} step={i} op={op}"
        assert one.outputs[mark:] == two.outputs, where
        assert one.table.due(one.now) == two.table.due(two.now), where
        for r in RESOURCES:
            assert one.table.query(LockInfo(r)) == two.table.query(LockInfo(r)), where
        for o in OWNERS:
            assert one.table.query(OwnerInfo(o)) == two.table.query(OwnerInfo(o)), where
        assert one.table.graph.edges() == two.table.graph.edges(), where
    assert one.table.stats() == two.table.stats(), f"seed={seed}"
    assert one.table.snapshot() == two.table.snapshot(), f"seed={seed}"


def test_long_queues_under_churn_keep_the_invariants() -> None:
    # Many owners on two resources: long queues of mixed modes, waiters leaving from the middle
    # (cancels, timeouts, deadlocks) and holders leaving at the front.
    owners, resources = [f"p{i:02}" for i in range(40)], ["q0", "q1"]
    for seed in range(3):
        rng = random.Random(seed)
        log = Log()
        for i in range(400):
            owner, resource = rng.choice(owners), rng.choice(resources)
            roll = rng.random()
            if roll < 0.6:
                mode = X if rng.random() < 0.3 else S
                log.apply(Acquire(resource, mode, owner, rng.choice([200, 2_000, 20_000]), LONG_MS))
            elif roll < 0.75:
                log.apply(Release(resource, owner))  # mostly cancels a wait somewhere in the queue
            elif roll < 0.85:
                holders = sorted(log.holders(resource))
                if holders:
                    log.apply(Release(resource, rng.choice(holders)))
            else:
                log.now += rng.randrange(0, 300)
                if log.table.due(log.now):
                    log.apply(ExpireLocks())
            check_invariants(log, f"seed={seed} step={i}", owners, resources)


def test_mass_timeouts_from_one_long_queue_stay_cheap() -> None:
    log = Log()
    log.granted("h", "r")
    for i in range(5_000):
        log.waits(f"w{i}", "r", X if i % 2 else S, wait_ms=100)
    assert log.expire(100) == Ok({"leases_expired": 0, "waits_timed_out": 5_000})
    assert log.waiters("r") == [] and log.table.graph.edges() == []
