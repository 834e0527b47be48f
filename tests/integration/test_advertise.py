"""``--advertise``: nodes that peers reach at one address and clients at another, as in a
compose cluster whose ports are published on the host. Real processes; the published ports
are real TCP forwards (tests/integration/port_forward.py)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import zmq

from syncfab.actors.messages import Beat
from syncfab.actors.ring import shard_for_key
from syncfab.fabric.client import AsyncClient
from syncfab.fabric.server.local import LocalCluster, free_ports
from syncfab.fabric.server.transport import decode_publication

from .helpers import wait_for
from .port_forward import PortForward

# The nodes listen and dial each other on 127.0.0.2 (the "container network"); clients are
# given only 127.0.0.1 ports, each forwarded to its node's ROUTER or PUB.
NODE_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def published() -> Iterator[tuple[LocalCluster, dict[str, str], dict[str, PortForward]]]:
    ids = ["n1", "n2", "n3"]
    client_ports = dict(zip(ids, free_ports(3), strict=True))
    advertised = {n: f"127.0.0.1:{client_ports[n]}" for n in ids}
    cluster = LocalCluster(size=3, host=NODE_HOST, node_args={n: ["--advertise", advertised[n]] for n in ids})
    with contextlib.ExitStack() as stack:
        routers = {}
        for n in ids:
            peer_port = cluster.peer_ports[n]
            routers[n] = stack.enter_context(PortForward(client_ports[n], NODE_HOST, peer_port))
            stack.enter_context(PortForward(client_ports[n] + 1, NODE_HOST, peer_port + 1))
        stack.enter_context(cluster)
        cluster.wait_ready(balanced=True)
        yield cluster, advertised, routers


def test_every_node_hands_out_the_advertised_addresses(published) -> None:
    cluster, advertised, _ = published

    def views_advertise() -> bool:
        for node in cluster.ids:
            members = {m["id"]: m for m in cluster.get_json(node, "/cluster")["members"]}
            for m, address in advertised.items():
                host, port = address.rsplit(":", 1)
                if members[m]["address"] != address or members[m]["pub_address"] != f"{host}:{int(port) + 1}":
                    return False
        return True

    # Each node knows its own at once and each peer's from that peer's first beat.
    wait_for("every view to show the advertised addresses", views_advertise, timeout_s=10)


def test_a_client_given_only_advertised_addresses_reaches_every_node_fast(published) -> None:
    cluster, advertised, routers = published
    before = {n: f.connections for n, f in routers.items()}

    async def run() -> tuple[AsyncClient, set[str]]:
        async with AsyncClient(list(advertised.values()), timeout_s=5.0) as client:
            leaders = set()
            # A key in every shard: the writes go straight to each shard's leader, all three nodes.
            keys = {shard_for_key(f"k{i}", client.shard_count): f"k{i}" for i in range(200)}
            assert len(keys) == client.shard_count
            for shard, key in sorted(keys.items()):
                await client.put(key, shard)
                assert await client.get(key) == shard
                leaders.add(client.leaders[shard])
            async with client.lock("advertise/lock") as grant:
                assert grant.fencing_token > 0
            await client.produce("advertise-q", {"n": 1})
            messages = await client.consume("advertise-q", "w1", max=1, wait_ms=2000)
            assert [m["data"] for m in messages] == [{"n": 1}]
            assert await client.ack("advertise-q", [messages[0]["message_id"]]) == 1
            return client, leaders

    client, leaders = asyncio.run(run())
    assert client.members == advertised
    assert leaders == set(cluster.ids), "shard leaders should be spread over every node"
    # No call waited out an attempt (1 s each) on an address it could not use.
    assert client.stats["retries"] == 0 and client.stats["timeouts"] == 0, client.stats
    # Every node was dialled through its published (advertised) port.
    assert all(routers[n].connections > before[n] for n in cluster.ids), {
        n: f.connections for n, f in routers.items()
    }


def test_the_advertised_pub_address_publishes(published) -> None:
    cluster, advertised, _ = published
    view = cluster.get_json("n1", "/cluster")
    pub = next(m["pub_address"] for m in view["members"] if m["id"] == "n3")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"beat")
    sub.connect(f"tcp://{pub}")
    try:
        deadline = time.monotonic() + 5
        beat = None
        while beat is None and time.monotonic() < deadline:
            if sub.poll(timeout=int((deadline - time.monotonic()) * 1000) + 1):
                publication = decode_publication(sub.recv_multipart()[-1])
                if isinstance(publication.msg, Beat):
                    beat = publication
        assert beat is not None, f"no beat on {pub} within 5 s"
        assert beat.src == "n3" and beat.msg.advertise == advertised["n3"]
    finally:
        sub.close()


def test_a_bad_advertise_address_is_refused() -> None:
    node = [sys.executable, "-m", "syncfab.fabric.server.cli", "node", "--id", "n1"]
    result = subprocess.run(
        [*node, "--peers", "n1=127.0.0.1:7101", "--advertise", "no-port"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "bad address 'no-port'" in result.stderr
