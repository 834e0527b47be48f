"""The chaos checkers on histories written by hand: each passes a valid one and names the
violation in one that breaks its rule (these need no namespaces, so they always run)."""

from __future__ import annotations

from typing import Any

from .checkers import check_cache, check_kv, check_locks, check_queue
from .workloads import Event, FencedResource, History


def ev(
    kind: str, key: str, call: int, ret: int | None, value: Any = None, output: Any = None, p: str = "a"
) -> Event:
    return Event(p, kind, key, call, "native", "n1", value, ret, output)


def history(*events: Event) -> History:
    return History(list(events))


def test_kv_a_stale_read_is_named() -> None:
    ok = history(ev("put", "k", 0, 1, "x"), ev("get", "k", 2, 3, output="x", p="b"))
    assert check_kv(ok) == []
    stale = history(
        ev("put", "k", 0, 1, "x"), ev("put", "k", 2, 3, "y"), ev("get", "k", 4, 5, output="x", p="b")
    )
    [violation] = check_kv(stale)
    assert "KV not linearizable on key 'k'" in violation and "stale read" in violation


def test_cache_cas_versions_and_directory() -> None:
    ok = history(
        ev("write", "c", 0, 1, "x", {"version": 1000, "state": "E"}),
        ev(
            "read",
            "c",
            2,
            3,
            output={"found": True, "value": "x", "version": 1000, "state": "S", "hit": False},
        ),
        ev("cas", "c", 4, 5, "y", {"expected_version": 1000, "expected_value": "x", "version": 2000}),
        ev("cas", "c", 6, 7, "z", {"expected_version": 1000, "expected_value": "x", "current_version": 2000}),
        ev("line", "c", 8, 9, output={"home": "n1", "holders": [{"node": "n2", "state": "E"}]}),
    )
    assert check_cache(ok) == []
    # A CAS that succeeded although the key had moved on.
    lost_update = history(
        ev("write", "c", 0, 1, "x", {"version": 1000}),
        ev("write", "c", 2, 3, "w", {"version": 1500}),
        ev("cas", "c", 4, 5, "y", {"expected_version": 1000, "expected_value": "x", "version": 2000}),
    )
    assert any("cache not linearizable" in v for v in check_cache(lost_update))
    # A failed CAS that found a version whose value contradicts a later read.
    two_values = history(
        ev("write", "c", 0, 1, "x", {"version": 1000}),
        ev(
            "read",
            "c",
            2,
            3,
            output={"found": True, "value": "q", "version": 1000, "state": "S", "hit": True},
        ),
    )
    assert any("version 1000 has two values" in v for v in check_cache(two_values))
    two_owners = history(
        ev(
            "line",
            "c",
            0,
            1,
            output={"home": "n1", "holders": [{"node": "n2", "state": "E"}, {"node": "n3", "state": "M"}]},
        )
    )
    [violation] = check_cache(two_owners)
    assert "2 E/M holders" in violation


def test_locks_overlap_token_order_and_reuse() -> None:
    grants = [
        ev("acquire", "r", 0, 1, "o1", 5),
        ev("release", "r", 2, 3, "o1", 5),
        ev("acquire", "r", 4, 5, "o2", 6, p="b"),
    ]
    resource = FencedResource("r")
    assert resource.access(5, "a") and resource.access(6, "b")
    assert check_locks(history(*grants), {"r": resource}) == []
    assert not resource.access(5, "a")  # the old holder, after the new one wrote
    [violation] = check_locks(history(*grants), {"r": resource})
    assert "two holders of 'r'" in violation
    went_back = history(ev("acquire", "r", 0, 1, "o1", 9), ev("acquire", "r", 4, 5, "o2", 6, p="b"))
    assert any("token went back" in v for v in check_locks(went_back, {}))
    reused = history(ev("acquire", "r", 0, 1, "o1", 7), ev("acquire", "s", 0, 1, "o2", 7, p="b"))
    assert any("granted to" in v for v in check_locks(reused, {}))
    # The same owner re-granted the lock it holds gets its own token again.
    reentrant = history(ev("acquire", "r", 0, 1, "o1", 7), ev("acquire", "r", 4, 5, "o1", 7))
    assert check_locks(reentrant, {}) == []


def test_queue_loss_phantoms_and_acked_messages_coming_back() -> None:
    ok = history(
        ev("produce", "q", 0, 1, "p:0", "1:1"),
        ev("produce", "q", 0, None, "p:1"),  # unknown: may never be delivered
        ev("consume", "q", 2, 3, output=[("1:1", "p:0")]),
        ev("ack", "q", 4, 5, ["1:1"], []),
        ev("consume", "q", 4, 6, output=[("1:1", "p:0")]),  # began before the ack returned
    )
    assert check_queue(ok) == []
    lost = history(ev("produce", "q", 0, 1, "p:0", "1:1"))
    assert "never delivered" in check_queue(lost)[0]
    phantom = history(ev("consume", "q", 2, 3, output=[("1:9", "nobody")]))
    assert "nobody produced" in check_queue(phantom)[0]
    back = history(
        ev("produce", "q", 0, 1, "p:0", "1:1"),
        ev("consume", "q", 2, 3, output=[("1:1", "p:0")]),
        ev("ack", "q", 4, 5, ["1:1"], []),
        ev("consume", "q", 6, 7, output=[("1:1", "p:0")]),
    )
    assert "came back" in check_queue(back)[0]
    # An ack that named the id as not found acknowledged nothing for it.
    not_found = history(*back.events[:2], ev("ack", "q", 4, 5, ["1:1"], ["1:1"]), back.events[3])
    assert check_queue(not_found) == []
