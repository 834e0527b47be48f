"""The cache over HTTP on a real 3-node cluster: each node's gateway served by its own lines.

Reads hit (no message) or miss (the home answers); a write at one node invalidates every other
copy before it returns, so the next read elsewhere is a miss with the new value, never stale;
write_back lines are M; compare-and-set, delete and re-create, invalidate, the counters, the
latency histograms; and every bad input is a 4xx JSON error naming its field.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncfab.actors.ring import shard_for_key
from syncfab.fabric.server.local import LocalCluster

from .helpers import http, wait_for

SHARDS = 8


def read(c: LocalCluster, node: str, key: str) -> tuple[int, Any]:
    return http(c, node, "GET", "/cache/read?key=" + urllib.parse.quote(key, safe=""))


def write(c: LocalCluster, node: str, key: str, value: Any, **options: Any) -> tuple[int, Any]:
    return http(c, node, "POST", "/cache/write", {"key": key, "value": value, **options})


def written(c: LocalCluster, node: str, key: str, value: Any, **options: Any) -> dict[str, Any]:
    status, body = write(c, node, key, value, **options)
    assert status == 200, body
    assert body["key"] == key and body["version"] > 0
    return body  # type: ignore[no-any-return]


def holders(c: LocalCluster, key: str, via: str = "n1") -> dict[str, str]:
    status, line = http(c, via, "GET", "/cache/line?key=" + urllib.parse.quote(key, safe=""))
    assert status == 200, line
    assert line["key"] == key and line["home"] in c.ids and line["epoch"] >= 1
    assert all(h["lease_ms"] >= 0 for h in line["holders"])
    return {h["node"]: h["state"] for h in line["holders"]}


def stats(c: LocalCluster, node: str) -> dict[str, Any]:
    status, body = http(c, node, "GET", "/cache/stats")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


WARM: list[tuple[str, dict[str, Any], float]] = []  # (key, what its write answered, seconds it took)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(size=3) as c:
        c.wait_ready(balanced=True)
        # A new home serves nothing for one lease after it takes over: one write per shard
        # (each waits out its home's takeover, the first one longest) and they all serve.
        for shard in range(1, SHARDS + 1):
            key = next(f"warm{i}" for i in range(1000) if shard_for_key(f"warm{i}", SHARDS) == shard)
            started = time.monotonic()

            def served(key: str = key, value: int = shard) -> Any:
                status, body = write(c, "n1", key, value, policy="write_back")
                return body if status == 200 else None

            WARM.append((key, wait_for(f"shard {shard}'s home to serve", served), time.monotonic() - started))
        yield c


def test_a_write_that_waits_out_a_new_home_is_applied_once(cluster: LocalCluster) -> None:
    """The fixture's first writes waited (up to a lease) for homes that had just taken over:
    longer than the gateway's attempt timeout, so a retry of the request queued behind the
    first would have been applied as a second, local write_back write (a version nobody was
    told, and a compare-and-set with the answered version failing)."""
    assert len(WARM) == SHARDS
    for shard, (key, answered, took_s) in enumerate(WARM, 1):
        assert answered["state"] == "M" and took_s < 5
        assert read(cluster, "n1", key) == (
            200,
            {"key": key, "value": shard, "version": answered["version"], "state": "M", "hit": True},
        )
        written(cluster, "n1", key, -shard, expected_version=answered["version"])


def test_a_read_hits_at_the_writer_and_misses_once_elsewhere(cluster: LocalCluster) -> None:
    value = {"name": "Ada", "langs": ["en", "fr"], "age": 36, "admin": False, "boss": None}
    w = written(cluster, "n1", "user/7", value)
    assert w["state"] == "E"
    assert read(cluster, "n1", "user/7") == (
        200,
        {"key": "user/7", "value": value, "version": w["version"], "state": "E", "hit": True},
    )
    status, first = read(cluster, "n2", "user/7")
    assert status == 200 and first["hit"] is False and first["state"] == "S"
    assert first["value"] == value and first["version"] == w["version"]
    status, again = read(cluster, "n2", "user/7")
    assert status == 200 and again["hit"] is True and again["state"] == "S" and again["value"] == value
    assert holders(cluster, "user/7", via="n3") == {"n1": "S", "n2": "S"}  # n1 was recalled to S


def test_a_write_invalidates_every_other_copy_before_it_returns(cluster: LocalCluster) -> None:
    key = "shared/list"
    old = written(cluster, "n1", key, [1, 2, 3])
    for node in ("n1", "n2", "n3"):
        assert read(cluster, node, key)[1]["value"] == [1, 2, 3]
    assert holders(cluster, key) == {"n1": "S", "n2": "S", "n3": "S"}
    coherence_before = stats(cluster, "n1")["misses_coherence"]

    new = written(cluster, "n2", key, "a string now")
    assert new["version"] > old["version"] and new["state"] == "E"
    assert holders(cluster, key) == {"n2": "E"}
    for node in ("n1", "n3"):  # their lines were invalidated: a miss with the new value
        status, got = read(cluster, node, key)
        assert status == 200, got
        assert (got["hit"], got["value"], got["version"], got["state"]) == (
            False,
            "a string now",
            new["version"],
            "S",
        )
    assert stats(cluster, "n1")["misses_coherence"] == coherence_before + 1
    assert holders(cluster, key) == {"n1": "S", "n2": "S", "n3": "S"}


def test_write_back_makes_the_line_m_and_others_still_read_the_newest(cluster: LocalCluster) -> None:
    key = "hot"
    first = written(cluster, "n3", key, 1, policy="write_back")
    assert first["state"] == "M"
    assert holders(cluster, key) == {"n3": "M"}
    local = written(cluster, "n3", key, 2.5, policy="write_back")  # n3 owns it: stays on n3
    assert (local["state"], local["version"]) == ("M", first["version"] + 1)
    assert read(cluster, "n3", key) == (
        200,
        {"key": key, "value": 2.5, "version": local["version"], "state": "M", "hit": True},
    )
    status, got = read(cluster, "n1", key)  # the owner is recalled: its value goes home first
    assert status == 200 and (got["value"], got["version"], got["hit"]) == (2.5, local["version"], False)
    assert holders(cluster, key) == {"n1": "S", "n3": "S"}
    nulled = written(cluster, "n1", key, None, policy="write_back")
    assert nulled["state"] == "M" and nulled["version"] > local["version"]
    status, got = read(cluster, "n3", key)
    assert status == 200 and got["value"] is None and got["version"] == nulled["version"]


def test_compare_and_set_answers_409_with_the_current_version(cluster: LocalCluster) -> None:
    key = "cas"
    assert written(cluster, "n1", key, {"n": 0}, expected_version=0)["version"] > 0  # must not exist
    current = written(cluster, "n1", key, {"n": 1})["version"]
    for stale in (0, current - 1, current + 1):
        status, body = write(cluster, "n2", key, {"n": 99}, expected_version=stale)
        assert status == 409, body
        assert (body["error"], body["version"], body["key"]) == ("version_mismatch", current, key)
    swapped = written(cluster, "n2", key, {"n": 2}, expected_version=current)
    assert swapped["version"] > current
    # A write_back compare-and-set goes home too, and the version it returns is the one to use.
    again = written(cluster, "n2", key, {"n": 3}, expected_version=swapped["version"], policy="write_back")
    last = written(cluster, "n3", key, {"n": 4}, expected_version=again["version"])
    assert last["version"] > again["version"]
    assert read(cluster, "n1", key)[1]["value"] == {"n": 4}


def test_delete_then_read_is_404_and_a_re_create_gets_a_higher_version(cluster: LocalCluster) -> None:
    key = "doomed"
    before = written(cluster, "n1", key, "here")["version"]
    assert read(cluster, "n2", key)[0] == 200
    assert http(cluster, "n1", "POST", "/cache/delete", {"key": key}) == (200, {"key": key, "deleted": True})
    for node in ("n1", "n2", "n3"):
        status, body = read(cluster, node, key)
        assert status == 404, body
        assert body["error"] == "not_found" and body["key"] == key and isinstance(body["hit"], bool)
    assert read(cluster, "n1", key)[1]["hit"] is True  # the absence is cached too
    assert http(cluster, "n3", "POST", "/cache/delete", {"key": key}) == (200, {"key": key, "deleted": False})
    status, body = http(cluster, "n2", "GET", "/cache/read?key=never-written")
    assert status == 404 and body["hit"] is False
    again = written(cluster, "n2", key, ["back"])
    assert again["version"] > before
    assert read(cluster, "n1", key)[1]["value"] == ["back"]


def test_invalidate_drops_every_copy_and_memory_keeps_the_value(cluster: LocalCluster) -> None:
    key = "copied"
    version = written(cluster, "n1", key, 42)["version"]
    for node in ("n2", "n3"):
        assert read(cluster, node, key)[0] == 200
    assert set(holders(cluster, key)) == {"n1", "n2", "n3"}
    assert http(cluster, "n2", "POST", "/cache/invalidate", {"key": key}) == (
        200,
        {"key": key, "invalidated": 3},
    )
    assert holders(cluster, key) == {}
    status, got = read(cluster, "n3", key)
    assert status == 200 and (got["value"], got["version"], got["hit"]) == (42, version, False)
    assert http(cluster, "n2", "POST", "/cache/invalidate", {"key": "nobody-has-it"}) == (
        200,
        {"key": "nobody-has-it", "invalidated": 0},
    )


def test_stats_and_latency_histograms_move(cluster: LocalCluster) -> None:
    key = "counted"
    written(cluster, "n1", key, "x")
    before = stats(cluster, "n2")
    assert read(cluster, "n2", key)[1]["hit"] is False
    for _ in range(3):
        assert read(cluster, "n2", key)[1]["hit"] is True
    after = stats(cluster, "n2")
    assert after["hits"] == before["hits"] + 3
    misses = ("misses_capacity", "misses_coherence")
    assert sum(after[m] for m in misses) == sum(before[m] for m in misses) + 1
    assert after["lines"] >= 1 and after["states"]["S"] >= 1 and 0 < after["hit_rate"] <= 1

    written(cluster, "n2", "timed", 1, policy="write_back")
    status, text = http(cluster, "n2", "GET", "/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("syncfab_cache_read_seconds_count", (("hit", "true"),))] >= 3
    assert samples[("syncfab_cache_read_seconds_count", (("hit", "false"),))] >= 1
    assert samples[("syncfab_cache_write_seconds_count", (("policy", "write_back"),))] >= 1
    assert ("syncfab_cache_write_seconds_bucket", (("le", "0.0005"), ("policy", "write_through"))) in samples


GOOD = {"key": "a", "value": 1}  # a good write body, to spoil one field of
# A value that MessagePack makes larger than its JSON: 0.5 is 4 bytes with its comma, 9 as a double.
WIDE = b'{"key": "wide", "value": [' + b",".join([b"0.5"] * 150_000) + b"]}"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("GET", "/cache/read", None, 400, "key"),
        ("GET", "/cache/read?key=", None, 400, "key"),
        ("GET", "/cache/read?key=" + "k" * 1025, None, 400, "key"),
        ("GET", "/cache/read?key=" + urllib.parse.quote("é" * 513), None, 400, "key"),  # 1026 bytes
        ("GET", "/cache/line", None, 400, "key"),
        ("GET", "/cache/line?key=" + "k" * 1025, None, 400, "key"),
        ("POST", "/cache/write", {"value": 1}, 400, "key"),
        ("POST", "/cache/write", {"key": "a"}, 400, "value"),
        ("POST", "/cache/write", {"key": "", "value": 1}, 400, "key"),
        ("POST", "/cache/write", {"key": "k" * 1025, "value": 1}, 400, "key"),
        ("POST", "/cache/write", {"key": 7, "value": 1}, 400, "key"),
        ("POST", "/cache/write", {**GOOD, "policy": "write_around"}, 400, "policy"),
        ("POST", "/cache/write", {**GOOD, "policy": None}, 400, "policy"),
        ("POST", "/cache/write", {**GOOD, "ttl_ms": 0}, 400, "ttl_ms"),
        ("POST", "/cache/write", {**GOOD, "ttl_ms": -5}, 400, "ttl_ms"),
        ("POST", "/cache/write", {**GOOD, "ttl_ms": 1 << 80}, 400, "ttl_ms"),
        ("POST", "/cache/write", {**GOOD, "ttl_ms": "10"}, 400, "ttl_ms"),
        ("POST", "/cache/write", {**GOOD, "ttl_ms": 1.5}, 400, "ttl_ms"),
        ("POST", "/cache/write", {**GOOD, "expected_version": -1}, 400, "expected_version"),
        ("POST", "/cache/write", {**GOOD, "expected_version": 1 << 70}, 400, "expected_version"),
        ("POST", "/cache/write", {**GOOD, "expected_version": True}, 400, "expected_version"),
        ("POST", "/cache/write", {**GOOD, "polcy": "write_back"}, 400, "polcy"),
        ("POST", "/cache/write", {"key": "a", "value": 10**30}, 400, "value"),
        ("POST", "/cache/write", [1], 400, "body"),
        ("POST", "/cache/write", b'{"key": "a", "value": ', 400, "body"),
        ("POST", "/cache/write", b"", 400, "body"),
        ("POST", "/cache/write", WIDE, 413, "value"),
        ("POST", "/cache/write", b'{"key": "a", "value": "' + b"x" * (1 << 20) + b'"}', 413, "body"),
        ("POST", "/cache/delete", {}, 400, "key"),
        ("POST", "/cache/delete", {"key": ""}, 400, "key"),
        ("POST", "/cache/delete", {"key": "a", "force": True}, 400, "force"),
        ("POST", "/cache/delete", b"{nope", 400, "body"),
        ("POST", "/cache/invalidate", {"key": 5}, 400, "key"),
        ("POST", "/cache/invalidate", {"key": "k" * 1025}, 400, "key"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    cluster: LocalCluster, method: str, path: str, body: Any, status: int, field: str
) -> None:
    raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    got_status, got = http(cluster, "n1", method, path, raw=raw)
    assert got_status == status, got
    assert got["error"] == ("payload_too_large" if status == 413 else "bad_request")
    assert got["field"] == field and got["message"]


def test_nothing_bad_was_stored_and_the_gateway_still_serves(cluster: LocalCluster) -> None:
    assert read(cluster, "n2", "a")[0] == 404  # no bad write above reached the cache
    assert read(cluster, "n2", "wide")[0] == 404
    assert http(cluster, "n1", "GET", "/cache/write")[0] == 405
    assert http(cluster, "n1", "GET", "/health")[0] == 200
