"""A real 3-node cluster (processes, ZeroMQ, LMDB, HTTP): the API a newcomer meets first."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from syncfab.actors.kv import Get, Put
from syncfab.actors.results import Err, Ok
from syncfab.fabric.client import AsyncClient, Client, NotFound
from syncfab.fabric.core.codec import Request, Requests, decode_reply, encode, frame_of, replies_in
from syncfab.fabric.server.local import LocalCluster

from .helpers import http, wait_for


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(size=3) as c:
        yield c


def test_health_and_cluster_view(cluster: LocalCluster) -> None:
    assert http(cluster, "n2", "GET", "/health") == (200, {"status": "ok", "node": "n2"})
    status, view = http(cluster, "n1", "GET", "/cluster")
    assert status == 200
    assert view["node"] == "n1"
    assert view["leader"] in cluster.ids and view["term"] >= 1
    assert [m["id"] for m in view["members"]] == cluster.ids
    assert all(m["alive"] for m in view["members"])
    assert {m["address"] for m in view["members"]} == set(cluster.addresses)
    assert [s["id"] for s in view["shards"]] == list(range(1, 9))
    for shard in view["shards"]:
        assert sorted(shard["replicas"]) == cluster.ids
        assert shard["leader"] in cluster.ids


def test_kv_through_any_node(cluster: LocalCluster) -> None:
    status, body = http(cluster, "n1", "PUT", "/kv/orders/42", raw=b'{"qty": 3, "tags": ["a"]}')
    assert status == 200 and body["key"] == "orders/42" and body["index"] > 0
    for node in cluster.ids:
        assert http(cluster, node, "GET", "/kv/orders/42") == (
            200,
            {"key": "orders/42", "value": {"qty": 3, "tags": ["a"]}},
        )
    assert http(cluster, "n3", "PUT", "/kv/orders/42", raw=b"null")[0] == 200
    assert http(cluster, "n2", "GET", "/kv/orders/42")[1]["value"] is None
    assert http(cluster, "n3", "DELETE", "/kv/orders/42") == (200, {"key": "orders/42", "deleted": True})
    assert http(cluster, "n1", "DELETE", "/kv/orders/42") == (200, {"key": "orders/42", "deleted": False})
    status, body = http(cluster, "n2", "GET", "/kv/orders/42")
    assert status == 404 and body["error"] == "not_found" and body["key"] == "orders/42"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error", "field"),
    [
        ("PUT", "/kv/k", b"{not json", 400, "bad_request", "body"),
        ("PUT", "/kv/k", b"", 400, "bad_request", "body"),
        ("PUT", "/kv/" + "k" * 2000, b"1", 400, "bad_request", "key"),
        ("PUT", "/kv/k", b'"' + b"x" * (2 << 20) + b'"', 413, "payload_too_large", "body"),
        ("GET", "/nowhere", None, 404, "not_found", None),
        ("POST", "/kv/k", b"1", 405, "method_not_allowed", None),
    ],
)
def test_bad_http_input_gets_a_json_error(
    cluster: LocalCluster,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    error: str,
    field: str | None,
) -> None:
    got_status, got = http(cluster, "n1", method, path, raw=body)
    assert got_status == status
    assert got["error"] == error
    if field:
        assert got["field"] == field
    assert http(cluster, "n1", "GET", "/health")[0] == 200


@contextlib.contextmanager
def raw_dealer(c: LocalCluster, node: str) -> Iterator[zmq.Socket]:
    """A bare DEALER to ``node``'s ROUTER, for speaking the native protocol by hand."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(f"tcp://{c.address(node)}")
    try:
        yield dealer
    finally:
        dealer.close()


def test_several_requests_in_one_frame_get_their_replies(cluster: LocalCluster) -> None:
    """A native client packs what it has for a node into one ``Requests`` frame; an item that
    is MessagePack but no request fails alone (bytes that are not MessagePack at all make the
    frame unreadable, and it is refused whole, with one error reply), and the replies come
    back in as few frames as the node's turns allow."""
    with raw_dealer(cluster, "n1") as dealer:
        items = [
            encode(Request("packer", 1, 1, Put("packed-a", 1))),
            encode({"not": "a request"}),
            encode(Request("packer", 2, 1, Put("packed-b", 2))),
        ]
        dealer.send(frame_of(Requests, items))
        replies: dict[int, Any] = {}
        while len(replies) < 3:
            for reply in replies_in(dealer.recv()):
                replies[reply.id] = reply.result
        assert isinstance(replies[0], Err) and replies[0].code == "bad_request"
        assert isinstance(replies[1], Ok) and isinstance(replies[2], Ok)
    assert http(cluster, "n3", "GET", "/kv/packed-b") == (200, {"key": "packed-b", "value": 2})


def test_garbage_on_the_router_socket_gets_an_error_reply(cluster: LocalCluster) -> None:
    with raw_dealer(cluster, "n2") as dealer:
        wrong_types = encode(["rq", "c", "one", 0, ["get", "k"]])
        for junk in (b"\x00garbage", encode({"not": "a request"}), wrong_types):
            dealer.send(junk)
            reply = decode_reply(dealer.recv())
            assert isinstance(reply.result, Err) and reply.result.code == "bad_request"
        dealer.send(encode(Request("probe", 1, 1, Put("big", "x" * (2 << 20)))))
        reply = decode_reply(dealer.recv())
        assert isinstance(reply.result, Err) and reply.result.code == "payload_too_large"
        # The same socket still works for real requests afterwards.
        dealer.send(encode(Request("probe", 1, 1, Put("probe-key", 7))))
        put = decode_reply(dealer.recv()).result
        assert isinstance(put, Ok) and isinstance(put.value, int)
        dealer.send(encode(Request("probe", 2, 2, Get("probe-key"))))
        assert decode_reply(dealer.recv()).result == Ok(7)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(f"tcp://{cluster.address('n3')}")
    try:
        req.send(b"hello")
        reply = decode_reply(req.recv())
        assert isinstance(reply.result, Err) and "DEALER" in reply.result.message
    finally:
        req.close()
    metrics = http(cluster, "n2", "GET", "/metrics")[1]
    bad = [
        s.value
        for f in text_string_to_metric_families(metrics)
        if f.name == "syncfab_bad_frames"
        for s in f.samples
        if s.name == "syncfab_bad_frames_total"
    ]
    assert bad and bad[0] >= 3


def test_openapi_document_is_served(cluster: LocalCluster) -> None:
    status, text = http(cluster, "n1", "GET", "/openapi.yaml")
    assert status == 200 and text.startswith("openapi: 3") and "/kv/{key}" in text


def test_metrics_are_prometheus_text(cluster: LocalCluster) -> None:
    http(cluster, "n3", "PUT", "/kv/metric-probe", raw=b"1")
    status, text = http(cluster, "n3", "GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    terms = {s.labels["group"]: s.value for s in families["syncfab_raft_term"].samples}
    assert set(terms) == {str(g) for g in range(9)} and all(t >= 1 for t in terms.values())
    assert {s.labels["group"] for s in families["syncfab_raft_commit_index"].samples} == set(terms)
    leaders = {s.labels["group"]: s.labels["leader"] for s in families["syncfab_raft_leader"].samples}
    assert set(leaders.values()) <= set(cluster.ids)
    puts = [
        s
        for s in families["syncfab_http_requests"].samples
        if s.labels.get("endpoint") == "/kv/{key}" and s.labels.get("method") == "PUT"
    ]
    assert puts and puts[0].value >= 1
    assert "syncfab_http_request_seconds" in families
    assert "syncfab_disk_write_seconds" in families
    assert families["syncfab_wal_records"].samples[0].value >= 0
    assert "syncfab_wal_fold_seconds" in families


def test_native_blocking_client(cluster: LocalCluster) -> None:
    with Client([cluster.address("n1")]) as client:
        index = client.put("native/a", {"x": 1})
        assert index > 0
        assert client.get("native/a") == {"x": 1}
        assert client.delete("native/a") is True
        with pytest.raises(NotFound):
            client.get("native/a")
        assert client.get("native/a", default="absent") == "absent"
        assert set(client.cluster()["members"][i]["id"] for i in range(3)) == set(cluster.ids)


def test_native_async_client_many_concurrent(cluster: LocalCluster) -> None:
    async def run() -> list[int]:
        async with AsyncClient(cluster.addresses) as client:
            await asyncio.gather(*(client.put(f"many/{i}", i) for i in range(300)))
            return await asyncio.gather(*(client.get(f"many/{i}") for i in range(300)))

    assert asyncio.run(run()) == list(range(300))


def _raw_http(cluster: LocalCluster, node: str, head: bytes) -> socket.socket:
    host, port = cluster.url(node).removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(head)
    return sock


def test_a_body_announced_over_the_limit_is_refused_before_it_is_sent(cluster: LocalCluster) -> None:
    head = b"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"  # and no body
    with _raw_http(cluster, "n1", head) as sock:
        answer = sock.recv(4096)  # within the socket's 5 s, or it raises
    assert answer.startswith(b"HTTP/1.1 413") and b'"payload_too_large"' in answer


def test_a_client_leaving_mid_body_is_one_info_line(cluster: LocalCluster) -> None:
    def left() -> float:  # PUTs the gateway has finished with, the client gone
        _, text = http(cluster, "n2", "GET", "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return sum(
            s.value
            for s in families["syncfab_http_requests"].samples
            if s.labels.get("endpoint") == "/kv/{key}" and s.labels.get("status") == "400"
        )

    before = left()
    head = b'PUT /kv/left HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"a": '
    _raw_http(cluster, "n2", head).close()
    wait_for("the gateway to finish with the client that left", lambda: left() > before)
    assert cluster.data_dir is not None
    with open(os.path.join(cluster.data_dir, "n2.log")) as f:
        text = f.read()
    assert "Traceback" not in text and "ERROR" not in text, text[-2000:]
