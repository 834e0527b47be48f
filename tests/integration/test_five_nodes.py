"""Five nodes, three replicas per shard: a node forwards requests for shards it does not
replicate to the leaders it learns from the others' heartbeats."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from syncfab.fabric.client import AsyncClient
from syncfab.fabric.server.local import LocalCluster


def test_every_node_serves_every_shard_of_a_five_node_cluster() -> None:
    with LocalCluster(size=5) as c:
        view = c.get_json("n1", "/cluster")
        hosted = {n: {g["group"] for g in c.get_json(n, "/status")["groups"]} for n in c.ids}
        for shard in view["shards"]:
            assert len(set(shard["replicas"])) == 3
            assert {n for n in c.ids if shard["id"] in hosted[n]} == set(shard["replicas"])
        assert all(0 in groups for groups in hosted.values())
        assert any(len(groups) < 9 for groups in hosted.values()), "every node hosts every shard"
        for i in range(40):
            node = c.ids[i % 5]
            body = json.dumps(i).encode()
            put = urllib.request.Request(f"{c.url(node)}/kv/five-{i}", data=body, method="PUT")
            assert urllib.request.urlopen(put, timeout=10).status == 200
        for i in range(40):
            with urllib.request.urlopen(f"{c.url(c.ids[(i + 2) % 5])}/kv/five-{i}", timeout=10) as r:
                assert json.loads(r.read())["value"] == i

        async def native() -> list[int]:
            async with AsyncClient([c.address("n5")]) as client:  # learns the other members itself
                await asyncio.gather(*(client.put(f"native-{i}", i) for i in range(100)))
                return await asyncio.gather(*(client.get(f"native-{i}") for i in range(100)))

        assert asyncio.run(native()) == list(range(100))
