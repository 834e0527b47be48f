"""Queues end to end on real processes: produce/consume/ack over HTTP, ordering per key,
redelivery, dead letters, dedup, backpressure, long polling, and no acknowledged message lost
when a shard leader is killed mid-stream."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import pytest

from syncfab.fabric.client import AsyncClient, SyncfabError
from syncfab.fabric.server.local import LocalCluster

from .helpers import http, wait_caught_up, wait_for


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(size=3) as c:
        yield c


def produce(c: LocalCluster, node: str, queue: str, data: Any, **extra: Any) -> tuple[int, Any]:
    return http(c, node, "POST", "/queue/produce", {"queue": queue, "data": data, **extra})


def produced_id(c: LocalCluster, node: str, queue: str, data: Any, **extra: Any) -> str:
    status, body = produce(c, node, queue, data, **extra)
    assert status == 200, body
    return body["message_id"]


def consume(c: LocalCluster, node: str, queue: str, consumer: str = "worker", **params: Any) -> list[Any]:
    query = urlencode({"queue": queue, "consumer": consumer, **params})
    status, body = http(c, node, "GET", f"/queue/consume?{query}")
    assert status == 200, body
    return body["messages"]


def settle(c: LocalCluster, node: str, verb: str, queue: str, ids: list[str]) -> dict[str, Any]:
    status, body = http(c, node, "POST", f"/queue/{verb}", {"queue": queue, "message_ids": ids})
    assert status == 200, body
    return body


def stats(c: LocalCluster, node: str, queue: str) -> dict[str, Any]:
    status, body = http(c, node, "GET", f"/queue/{queue}")
    assert status == 200, body
    return body


def drain(c: LocalCluster, queue: str, count: int, node: str = "n1") -> list[dict[str, Any]]:
    """Consume (and ack) until ``count`` messages came, in the order they were handed out."""
    got: list[dict[str, Any]] = []

    def more() -> bool:
        batch = consume(c, node, queue, max=count - len(got), wait_ms=1000)
        if batch:
            settle(c, node, "ack", queue, [m["message_id"] for m in batch])
        got.extend(batch)
        return len(got) >= count

    wait_for(f"{count} messages from {queue}", more)
    return got


def shard_of(message_id: str) -> int:
    return int(message_id.split(":")[0])


# ---- produce, consume, ack ------------------------------------------------------------------


def test_produce_consume_ack_through_different_nodes(cluster: LocalCluster) -> None:
    q = "happy"
    mid = produced_id(cluster, "n1", q, {"order": 42}, key="customer-7", headers={"trace": "t-1"})
    assert shard_of(mid) >= 1
    (msg,) = consume(cluster, "n2", q, max=10)
    assert msg["message_id"] == mid and msg["queue"] == q
    assert (msg["data"], msg["key"], msg["headers"], msg["delivery_count"]) == (
        {"order": 42},
        "customer-7",
        {"trace": "t-1"},
        1,
    )
    assert consume(cluster, "n3", q) == []  # in flight: nobody else gets it
    assert settle(cluster, "n3", "ack", q, [mid]) == {"acked": 1}
    assert settle(cluster, "n1", "ack", q, [mid]) == {
        "acked": 0,
        "not_found": [mid],
    }  # twice: harmless, named
    assert consume(cluster, "n1", q, wait_ms=200) == []
    after = stats(cluster, "n2", q)
    assert (after["depth"], after["in_flight"], after["produced"], after["acked"]) == (0, 0, 1, 1)


def test_batch_produce_returns_ids_in_order(cluster: LocalCluster) -> None:
    q = "batch"
    messages = [{"data": {"n": i}} for i in range(12)] + [{"data": "keyed", "key": "k"}]
    status, body = http(cluster, "n2", "POST", "/queue/produce_batch", {"queue": q, "messages": messages})
    assert status == 200
    ids = body["message_ids"]
    assert len(ids) == len(messages) == len(set(ids))
    assert len({shard_of(i) for i in ids}) > 1  # spread over the shards
    got = {m["message_id"]: m["data"] for m in drain(cluster, q, len(messages))}
    assert [got[i] for i in ids] == [m["data"] for m in messages]


def test_one_key_keeps_its_order_for_one_consumer(cluster: LocalCluster) -> None:
    q = "ordered"
    sent: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for i in range(30):
        key = "abc"[i % 3]
        produced_id(cluster, f"n{i % 3 + 1}", q, {"key": key, "i": i}, key=key)
        sent[key].append(i)
    for i in range(5):  # unkeyed ones in between, on any shard
        produced_id(cluster, "n1", q, {"key": None, "i": 100 + i})
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for m in drain(cluster, q, 35):
        if m["key"] is not None:
            assert m["data"]["key"] == m["key"]
            seen[m["key"]].append(m["data"]["i"])
    assert seen == sent


# ---- redelivery and dead letters ------------------------------------------------------------


def test_an_unacked_message_comes_back_after_its_visibility_timeout(cluster: LocalCluster) -> None:
    q = "visibility"
    mid = produced_id(cluster, "n1", q, "slow job")
    (first,) = consume(cluster, "n2", q, visibility_ms=500)
    assert (first["message_id"], first["delivery_count"]) == (mid, 1)
    # Not acked: the long poll gets it again once the deadline has passed and the redelivery applied.
    again = consume(cluster, "n3", q, wait_ms=10_000)
    assert [(m["message_id"], m["data"], m["delivery_count"]) for m in again] == [(mid, "slow job", 2)]
    assert stats(cluster, "n1", q)["redelivered"] == 1
    assert settle(cluster, "n1", "ack", q, [mid]) == {"acked": 1}
    assert stats(cluster, "n1", q)["depth"] == 0


def test_nack_makes_a_message_visible_again(cluster: LocalCluster) -> None:
    q = "nacked"
    mid = produced_id(cluster, "n2", q, {"try": "again"})
    (first,) = consume(cluster, "n1", q, visibility_ms=60_000)
    assert first["message_id"] == mid
    assert settle(cluster, "n3", "nack", q, [mid]) == {"nacked": 1, "dead_lettered": 0}
    (second,) = consume(cluster, "n2", q, wait_ms=5000)
    assert (second["message_id"], second["data"], second["delivery_count"]) == (mid, {"try": "again"}, 2)
    assert settle(cluster, "n2", "ack", q, [mid]) == {"acked": 1}


def test_settings_change_field_by_field(cluster: LocalCluster) -> None:
    q = "settings"
    status, first = http(cluster, "n1", "PUT", f"/queue/{q}", {"max_depth": 7, "visibility_ms": 900})
    assert status == 200 and (first["max_depth"], first["visibility_ms"]) == (7, 900)
    status, second = http(cluster, "n2", "PUT", f"/queue/{q}", {"max_deliveries": 4})
    assert status == 200
    assert (second["max_depth"], second["visibility_ms"], second["max_deliveries"]) == (7, 900, 4)
    assert second["retention_ms"] == 0 and second["dedup_window_ms"] == 300_000  # the defaults


def test_a_poison_message_ends_in_the_dead_letter_queue(cluster: LocalCluster) -> None:
    q = "poison"
    status, settings = http(cluster, "n1", "PUT", f"/queue/{q}", {"max_deliveries": 3})
    assert status == 200 and settings["max_deliveries"] == 3 and settings["queue"] == q
    mid = produced_id(cluster, "n2", q, {"bad": True}, key="k", headers={"origin": "test"})
    counts = []
    for _ in range(10):
        (m,) = consume(cluster, "n3", q, wait_ms=5000)
        assert m["message_id"] == mid
        counts.append(m["delivery_count"])
        if settle(cluster, "n1", "nack", q, [mid])["dead_lettered"]:
            break
    # max_deliveries=3: handed out at most three times (SQS's maxReceiveCount); the third
    # failed delivery moves it.
    assert counts == [1, 2, 3]
    after = stats(cluster, "n2", q)
    assert (after["depth"], after["dlq_depth"], after["dead_lettered"]) == (0, 1, 1)
    assert [s["dlq_depth"] for s in after["shards"] if s["shard"] == shard_of(mid)] == [1]
    assert consume(cluster, "n2", q) == []
    (dead,) = consume(cluster, "n1", f"{q}.dlq", wait_ms=2000)
    assert dead["queue"] == f"{q}.dlq" and dead["message_id"] != mid
    assert (dead["data"], dead["key"], dead["delivery_count"]) == ({"bad": True}, "k", 1)
    assert dead["headers"]["x-dead-letter-reason"] == "max_deliveries"
    assert dead["headers"]["x-original-message-id"] == mid
    assert dead["headers"]["origin"] == "test"
    assert settle(cluster, "n3", "ack", f"{q}.dlq", [dead["message_id"]]) == {"acked": 1}
    assert stats(cluster, "n3", q)["dlq_depth"] == 0


# ---- dedup, backpressure, stats -------------------------------------------------------------


def test_a_dedup_id_produces_once(cluster: LocalCluster) -> None:
    q = "dedup"
    status, first = produce(cluster, "n1", q, {"v": 1}, dedup_id="order-42")
    assert status == 200 and "duplicate" not in first
    status, second = produce(cluster, "n3", q, {"v": 2}, dedup_id="order-42")
    assert status == 200 and second == {"message_id": first["message_id"], "duplicate": True}
    other = produced_id(cluster, "n2", q, {"v": 3}, dedup_id="order-43")
    assert other != first["message_id"]
    assert stats(cluster, "n1", q)["depth"] == 2
    got = {m["message_id"]: m["data"] for m in drain(cluster, q, 2)}
    assert got == {first["message_id"]: {"v": 1}, other: {"v": 3}}


def test_max_depth_pushes_back_with_429_and_drops_nothing(cluster: LocalCluster) -> None:
    q = "bounded"
    # max_depth bounds each shard's slice of the queue: one key keeps everything on one shard.
    status, _ = http(cluster, "n1", "PUT", f"/queue/{q}", {"max_depth": 3})
    assert status == 200
    ids = [produced_id(cluster, "n2", q, i, key="k") for i in range(3)]
    status, body = produce(cluster, "n3", q, 3, key="k")
    assert status == 429 and body["error"] == "queue_full" and body["max_depth"] == 3
    batch = {"queue": q, "messages": [{"data": 4, "key": "k"}]}
    status, body = http(cluster, "n1", "POST", "/queue/produce_batch", batch)
    assert status == 429 and body["error"] == "queue_full"
    assert stats(cluster, "n2", q)["depth"] == 3
    (oldest,) = consume(cluster, "n1", q)
    assert (oldest["message_id"], oldest["data"]) == (ids[0], 0)
    settle(cluster, "n1", "ack", q, [oldest["message_id"]])
    ids.append(produced_id(cluster, "n3", q, 5, key="k"))  # room again
    rest = drain(cluster, q, 3)
    assert [(m["message_id"], m["data"]) for m in rest] == list(zip(ids[1:], [1, 2, 5], strict=True))


def test_queue_stats_count_depth_in_flight_and_shards(cluster: LocalCluster) -> None:
    q = "counted"
    status, body = http(
        cluster,
        "n1",
        "POST",
        "/queue/produce_batch",
        {"queue": q, "messages": [{"data": i} for i in range(10)]},
    )
    assert status == 200
    ids = body["message_ids"]
    taken = consume(cluster, "n2", q, max=4, visibility_ms=60_000)
    assert len(taken) == 4
    acked = taken[0]["message_id"]
    settle(cluster, "n3", "ack", q, [acked])
    view = stats(cluster, "n3", q)
    expected = {
        "queue": q,
        "depth": 9,
        "in_flight": 3,
        "visible": 6,
        "produced": 10,
        "acked": 1,
        "dlq_depth": 0,
    }
    assert {k: view[k] for k in expected} == expected
    shards = {s["shard"]: s for s in view["shards"]}
    assert sorted(shards) == list(range(1, 9))
    depth = Counter(shard_of(i) for i in ids if i != acked)
    in_flight = Counter(shard_of(m["message_id"]) for m in taken[1:])
    for shard, s in shards.items():
        assert (s["depth"], s["in_flight"]) == (depth[shard], in_flight[shard]), s
    assert sum(s["produced"] for s in shards.values()) == 10
    drain(cluster, q, 6)
    settle(cluster, "n1", "ack", q, [m["message_id"] for m in taken[1:]])
    assert stats(cluster, "n2", q)["depth"] == 0


def test_a_long_poll_returns_the_message_produced_while_it_waits(cluster: LocalCluster) -> None:
    q = "longpoll"
    assert consume(cluster, "n1", q, wait_ms=200) == []  # nothing there: the wait ends empty
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(consume, cluster, "n2", q, "poller", wait_ms=10_000)
        mid = produced_id(cluster, "n3", q, {"hello": "poller"}, key="greeting")
        got = polling.result(timeout=30)
    assert [(m["message_id"], m["data"]) for m in got] == [(mid, {"hello": "poller"})]
    settle(cluster, "n2", "ack", q, [mid])


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/queue/consume?consumer=c", None, "queue"),
        ("GET", "/queue/consume?queue=", None, "queue"),
        ("GET", "/queue/consume?queue=q", None, "consumer"),
        ("GET", "/queue/consume?queue=q&consumer=c&max=abc", None, "max"),
        ("GET", "/queue/consume?queue=q&consumer=c&max=0", None, "max"),
        ("GET", "/queue/consume?queue=q&consumer=c&max=100000", None, "max"),
        ("GET", "/queue/consume?queue=q&consumer=c&wait_ms=-1", None, "wait_ms"),
        ("GET", "/queue/consume?queue=q&consumer=c&visibility_ms=soon", None, "visibility_ms"),
        ("POST", "/queue/produce", {"data": 1}, "queue"),
        ("POST", "/queue/produce", {"queue": "q"}, "data"),
        ("POST", "/queue/produce", {"queue": 7, "data": 1}, "queue"),
        ("POST", "/queue/produce", {"queue": "", "data": 1}, "queue"),
        ("POST", "/queue/produce", {"queue": "q", "data": 1, "key": 5}, "key"),
        ("POST", "/queue/produce", {"queue": "q", "data": 1, "headers": {"h": 1}}, "headers"),
        ("POST", "/queue/produce", {"queue": "q", "data": 1, "dedup_id": ""}, "dedup_id"),
        ("POST", "/queue/produce", ["q", 1], "body"),
        ("POST", "/queue/produce_batch", {"queue": "q", "messages": []}, "messages"),
        (
            "POST",
            "/queue/produce_batch",
            {"queue": "q", "messages": [{"data": 1, "key": 5}]},
            "messages[0].key",
        ),
        (
            "POST",
            "/queue/produce_batch",
            {"queue": "q", "messages": [{"data": 2, "key": ""}]},
            "messages[0].key",
        ),
        ("POST", "/queue/produce_batch", {"queue": "q", "messages": "m"}, "messages"),
        ("POST", "/queue/ack", {"queue": "q", "message_ids": []}, "message_ids"),
        ("POST", "/queue/ack", {"queue": "q", "message_ids": "1:1"}, "message_ids"),
        ("POST", "/queue/ack", {"queue": "q", "message_ids": ["not-an-id"]}, "message_ids"),
        ("POST", "/queue/ack", {"queue": "q", "message_ids": ["99:1"]}, "message_ids"),
        ("POST", "/queue/ack", {"message_ids": ["1:1"]}, "queue"),
        ("POST", "/queue/nack", {"queue": "q", "message_ids": [1]}, "message_ids[0]"),
        ("POST", "/queue/nack", {"queue": "q", "message_ids": []}, "message_ids"),
        ("PUT", "/queue/q", {"max_deliveries": 0}, "max_deliveries"),
        ("PUT", "/queue/q", {"visibility_ms": "long"}, "visibility_ms"),
        ("PUT", "/queue/q", {"max_depth": -1}, "max_depth"),
        ("PUT", "/queue/q", {"visibilty_ms": 5}, "visibilty_ms"),  # a typo is not ignored
        ("POST", "/queue/produce", {"queue": "q", "data": 1, "priority": 9}, "priority"),
        ("POST", "/lock/acquire", {"resource": "r", "client_id": "c", "ttl": 5}, "ttl"),
    ],
)
def test_bad_queue_input_names_the_field(
    cluster: LocalCluster, method: str, path: str, body: Any, field: str
) -> None:
    if body is None:
        status, got = http(cluster, "n3", method, path)
    else:
        status, got = http(cluster, "n3", method, path, body)
    assert status == 400, got
    assert got["error"] == "bad_request" and got["field"] == field, got


def test_a_batch_refused_as_bad_input_stores_nothing(cluster: LocalCluster) -> None:
    q = "badbatch"
    # Eight unkeyed messages reach every shard; the ninth is invalid.
    messages: list[dict[str, Any]] = [{"data": i} for i in range(8)] + [{"data": 8, "key": ""}]
    status, got = http(cluster, "n1", "POST", "/queue/produce_batch", {"queue": q, "messages": messages})
    assert status == 400 and got["error"] == "bad_request"
    assert got["field"] == "messages[8].key", got
    assert stats(cluster, "n2", q)["depth"] == 0


@pytest.mark.parametrize("path", ["/queue/produce", "/queue/produce_batch", "/queue/ack"])
def test_malformed_and_oversized_queue_bodies(cluster: LocalCluster, path: str) -> None:
    deep = b"[" * 1_000 + b"]" * 1_000  # nested past what a decoder may recurse
    for raw in (b"{", b"", b"[}", deep):
        status, got = http(cluster, "n1", "POST", path, raw=raw)
        assert (status, got["error"], got["field"]) == (400, "bad_request", "body")
    big = b'{"queue": "oversize", "data": "' + b"x" * (1 << 20) + b'"}'
    status, got = http(cluster, "n1", "POST", path, raw=big)
    assert (status, got["error"], got["field"]) == (413, "payload_too_large", "body")
    assert stats(cluster, "n1", "oversize")["produced"] == 0


def test_concurrent_native_produces_are_coalesced_and_answered_one_by_one(cluster: LocalCluster) -> None:
    """Single produces issued together share requests on the wire (fabric/core/client_core.py):
    each still gets its own id, a bad one fails alone, and every message is stored once."""
    q = "coalesced"

    async def go() -> list[Any]:
        async with AsyncClient(cluster.addresses) as client:
            calls = [client.produce(q, {"i": i}, key="k" if i % 4 == 0 else None) for i in range(200)]
            calls.append(client.produce(q, "bad", headers={"h": 1}))  # type: ignore[dict-item]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(go())
    ids, bad = results[:-1], results[-1]
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 200
    assert isinstance(bad, SyncfabError) and bad.code == "bad_request" and bad.detail == {"field": "headers"}
    got = drain(cluster, q, 200)
    assert sorted(m["data"]["i"] for m in got) == list(range(200))
    keyed = [m["data"]["i"] for m in got if m["data"]["i"] % 4 == 0]
    assert keyed == sorted(keyed)  # one key, one shard, produce order (drain consumes in shard order)


# ---- failures (their own cluster) -----------------------------------------------------------


async def produce_while_killing(
    c: LocalCluster, victim: str, queue: str, count: int, kill_after: int
) -> tuple[dict[str, int], int, int]:
    """Produce ``count`` messages concurrently; ``kill -9`` ``victim`` once ``kill_after`` are
    acknowledged. Returns {message id: i} of the acknowledged ones, how many failed, and how
    many were acknowledged when the kill happened."""
    acked: dict[str, int] = {}
    failed = 0
    half_way = asyncio.Event()
    async with AsyncClient(c.addresses, timeout_s=20) as client:
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            nonlocal failed
            async with sem:
                try:
                    mid = await client.produce(queue, {"i": i})
                except Exception:
                    failed += 1
                    return
            acked[mid] = i
            if len(acked) >= kill_after:
                half_way.set()

        async def killer() -> int:
            await half_way.wait()
            at_kill = len(acked)
            await asyncio.to_thread(c.kill, victim)
            return at_kill

        killing = asyncio.ensure_future(killer())
        await asyncio.gather(*(one(i) for i in range(count)))
        half_way.set()  # never hang, even if too few were acknowledged
        at_kill = await killing
    return acked, failed, at_kill


async def consume_everything(addresses: list[str], queue: str, expected: set[int]) -> dict[int, int]:
    """Consume and ack until every expected message came and the queue is empty; returns how
    many times each message was delivered."""
    deliveries: Counter[int] = Counter()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    async with AsyncClient(addresses, timeout_s=20) as client:
        while loop.time() < deadline:
            batch = await client.consume(queue, "drainer", max=500, wait_ms=500)
            if batch:
                await client.ack(queue, [m["message_id"] for m in batch])
                deliveries.update(m["data"]["i"] for m in batch)
            elif expected <= deliveries.keys() and (await client.queue_stats(queue))["depth"] == 0:
                return dict(deliveries)
    missing = sorted(expected - deliveries.keys())
    raise AssertionError(f"{len(missing)} acknowledged messages never delivered: {missing[:20]}")


def test_no_acknowledged_message_is_lost_when_a_shard_leader_is_killed() -> None:
    q = "durable"
    with LocalCluster(size=3) as c:
        view = c.get_json("n1", "/cluster")
        victim = view["shards"][0]["leader"]
        assert victim in c.ids
        led = [s["id"] for s in view["shards"] if s["leader"] == victim]
        survivors = [n for n in c.ids if n != victim]

        acked, failed, at_kill = asyncio.run(produce_while_killing(c, victim, q, 3000, kill_after=1000))
        assert len(acked) + failed == 3000
        assert at_kill < 2000, "the kill did not happen mid-stream"
        assert len(acked) >= 2900, f"only {len(acked)} produces acknowledged ({failed} failed)"
        assert len(set(acked.values())) == len(acked)
        # The killed node's shards moved on: their leaders are now survivors.
        c.wait_ready(nodes=survivors)
        now = c.get_json(survivors[0], "/cluster")["shards"]
        assert all(s["leader"] in survivors for s in now if s["id"] in led)

        delivered = asyncio.run(consume_everything([c.address(n) for n in survivors], q, set(acked.values())))
        assert set(acked.values()) <= delivered.keys()
        assert delivered.keys() <= set(range(3000))

        c.start(victim)
        c.wait_ready()
        wait_caught_up(c, victim, survivors[0])
        assert {g["group"] for g in c.get_json(victim, "/status")["groups"]} == set(range(9))

        # Once it leads a shard again (leaders go back to their preferred node), it answers
        # from the state it missed: everything produced there, all of it acked.
        def shards_led() -> list[int]:
            groups = c.get_json(victim, "/status")["groups"]
            return [g["group"] for g in groups if g["group"] != 0 and g["role"] == "leader"]

        shard = wait_for(f"{victim} to lead a shard again", shards_led)[0]
        per_shard = Counter(shard_of(mid) for mid in acked)
        view = {s["shard"]: s for s in stats(c, victim, q)["shards"]}[shard]
        assert view["produced"] >= per_shard[shard] > 0
        assert (view["depth"], view["acked"]) == (0, view["produced"])


def requests_in_progress(c: LocalCluster, node: str) -> float:
    """What the node's gateway is answering now: this scrape and whatever else is open."""
    _, text = http(c, node, "GET", "/metrics")
    line = next(x for x in text.splitlines() if x.startswith("syncfab_http_requests_in_progress "))
    return float(line.split()[1])


def test_a_stopping_node_answers_its_open_long_polls_at_once() -> None:
    """SIGTERM with a long-poll open: the poll is answered (empty) and the node is gone in well
    under its 10 s of patience, not after the poll's 20 s."""
    with LocalCluster(size=3) as c:
        c.wait_ready()
        with ThreadPoolExecutor(1) as pool:
            query = urlencode({"queue": "stopping", "consumer": "c", "wait_ms": 20_000})
            poll = pool.submit(http, c, "n1", "GET", f"/queue/consume?{query}")
            open_at_n1 = lambda: requests_in_progress(c, "n1") >= 2 and not poll.done()  # noqa: E731
            wait_for("the long-poll to reach n1", open_at_n1)
            assert c.terminate("n1") == 0  # within LocalCluster's 10 s, or it raises
            status, body = poll.result(timeout=5)
    # Empty if it was parked at the leaders, refused if it was still visiting the shards.
    assert (status, body) == (200, {"messages": []}) or (status, body["error"]) == (503, "shutting_down")


def test_queues_are_served_at_queues_and_a_verb_name_does_not_collide(cluster: LocalCluster) -> None:
    status, changed = http(cluster, "n1", "PATCH", "/queues/produce", {"max_deliveries": 5})
    assert status == 200 and changed["max_deliveries"] == 5
    status, got = http(cluster, "n2", "GET", "/queues/produce")
    assert status == 200 and got["queue"] == "produce" and got["settings"]["max_deliveries"] == 5
    status, got = http(cluster, "n2", "GET", "/queue/produce")  # a verb, not a queue
    assert status == 404 and "/queues/produce" in got["message"]
    status, got = http(cluster, "n3", "GET", "/queue/produce-not-a-verb")
    assert status == 200 and got["settings"]["max_deliveries"] == 10  # the alias, the defaults


def test_a_clean_stop_hands_in_flight_messages_over_and_delivers_none_twice() -> None:
    """A stopping node hands its groups over with their in-flight marks (actors/queue_handover.py):
    what a consumer holds stays its own on the new leaders until its visibility deadline, and
    its acks land; without the hand-over the new leaders handed those messages out again at once."""
    q = "handed"
    with LocalCluster(size=3) as c:
        c.wait_ready()
        ids = {produced_id(c, "n1", q, i) for i in range(24)}
        held: list[dict[str, Any]] = []
        wait_for(
            "every message consumed",
            lambda: (
                held.extend(consume(c, "n1", q, consumer="first", max=24, visibility_ms=120_000))
                or {m["message_id"] for m in held} == ids
            ),
        )
        leaders = {s["id"]: s["leader"] for s in c.get_json("n1", "/cluster")["shards"]}
        victim = leaders[shard_of(held[0]["message_id"])]
        on_victim = {m["message_id"] for m in held if leaders[shard_of(m["message_id"])] == victim}
        survivors = [n for n in c.ids if n != victim]
        assert c.terminate(victim) == 0
        c.wait_ready(nodes=survivors)
        moved = c.get_json(survivors[0], "/cluster")["shards"]
        assert all(s["leader"] in survivors for s in moved if s["id"] in {shard_of(m) for m in on_victim})
        assert consume(c, survivors[0], q, consumer="second", max=24) == []
        assert sum(s["in_flight"] for s in stats(c, survivors[0], q)["shards"]) == len(ids)
        assert settle(c, survivors[1], "ack", q, sorted(ids)) == {"acked": len(ids)}
