"""AsyncClient over real DEALERs, against one in-process stand-in node that answers the cluster
view and never anything else: what a caller that gives up leaves behind."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import msgspec
import pytest
import zmq

from syncfab.actors.kv import Get
from syncfab.actors.results import Ok
from syncfab.fabric.client import AsyncClient
from syncfab.fabric.core.codec import ClusterInfo, Reply, Request, Requests, encode

_decode = msgspec.msgpack.Decoder(Request | Requests).decode
_decode_request = msgspec.msgpack.Decoder(Request).decode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_node() -> Iterator[str]:
    """A node at the returned address that answers ClusterInfo (one shard, itself the leader)
    and leaves every other request unanswered."""
    address = f"127.0.0.1:{_free_port()}"
    view = {
        "node": "n1",
        "leader": "n1",
        "term": 1,
        "members": [{"id": "n1", "address": address, "pub_address": address, "alive": True}],
        "shards": [{"id": 1, "leader": "n1", "replicas": ["n1"], "preferred_leader": None}],
    }
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://{address}")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not sock.poll(50):
                continue
            identity, frame = sock.recv_multipart()
            msg = _decode(frame)
            requests = [msg] if isinstance(msg, Request) else [_decode_request(bytes(r)) for r in msg.items]
            for r in requests:
                if isinstance(r.op, ClusterInfo):
                    sock.send_multipart([identity, encode(Reply(r.id, Ok(view), None))])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield address
    stop.set()
    thread.join(2)
    sock.close()


def test_a_cancelled_call_is_dropped_by_the_core(silent_node: str) -> None:
    # put, get, delete, produce and the lock session await the driver's future in their own
    # frame: cancelled there, each must still tell the core, or it would retry the call until
    # its deadline (and a lock op in a batch would be answered to nobody).
    async def main() -> None:
        # One short attempt each: closing, the client's release-all (it acquired) goes unanswered.
        async with AsyncClient([silent_node], timeout_s=30, attempt_timeout_s=0.5, attempts_max=1) as client:
            core = client._core
            assert core.in_flight == 0
            calls = [
                client.put("k", "v"),
                client.get("k"),
                client.delete("k"),
                client.produce("q", "m"),
                client.call(Get("k2")),  # through CoreDriver.wait
                client.acquire("r"),  # these two leave as one LockBatch
                client.release("r"),
            ]
            tasks = [asyncio.ensure_future(c) for c in calls]
            for _ in range(3):
                await asyncio.sleep(0)  # every call started, its request sent (no answer comes)
            assert core.in_flight == 4 + 2  # four direct calls, the produce's batch, the locks'
            for task in tasks:
                task.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(d, asyncio.CancelledError) for d in done)
            assert core.in_flight == 2, core.describe_open()  # the batches: they may hold others
            # The produce's handle and the lock ops': dropped when their batches answer.
            assert len(core._cancelled) == 3
            assert not client._driver._futures  # type: ignore[union-attr]

    asyncio.run(main())
