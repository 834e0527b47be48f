"""Failover: how long do writes stall when a leader is killed with SIGKILL?

A 3-node cluster, one writer per shard (8 keys chosen to cover every shard) writing back to
back. Each round kills the node that leads the control group (it also leads some shards), and
records: the time until a survivor names a new control leader, and for every shard the longest
gap between two acknowledged writes around the kill — how long that shard was unavailable to a
client that retries. The node is restarted between rounds.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from typing import Any

from syncfab.actors.ring import shard_for_key
from syncfab.fabric.client import AsyncClient
from syncfab.fabric.server.local import LocalCluster

SHARDS = 8


def shard_keys(shards: int) -> dict[int, str]:
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < shards:
        keys.setdefault(shard_for_key(f"failover-{n}", shards), f"failover-{n}")
        n += 1
    return keys


async def _rounds(cluster: LocalCluster, rounds: int) -> list[dict[str, Any]]:
    done_at: dict[int, list[float]] = {s: [] for s in range(1, SHARDS + 1)}
    stop = asyncio.Event()

    async def writer(client: AsyncClient, shard: int, key: str) -> None:
        n = 0
        while not stop.is_set():
            try:
                await client.put(key, n)
            except Exception:
                continue
            done_at[shard].append(time.monotonic())
            n += 1

    results = []
    async with AsyncClient(cluster.addresses, timeout_s=30, attempt_timeout_s=0.3) as client:
        tasks = [asyncio.ensure_future(writer(client, s, k)) for s, k in shard_keys(SHARDS).items()]
        for _ in range(rounds):
            await asyncio.sleep(2)
            view = await asyncio.to_thread(cluster.get_json, cluster.ids[0], "/cluster")
            victim = view["leader"]
            survivors = [n for n in cluster.ids if n != victim]
            killed_at = time.monotonic()
            await asyncio.to_thread(cluster.kill, victim)
            elected_at = None
            while elected_at is None:
                try:
                    lead = (await asyncio.to_thread(cluster.get_json, survivors[0], "/cluster"))["leader"]
                    if lead in survivors:
                        elected_at = time.monotonic()
                except OSError:
                    pass
                await asyncio.sleep(0.005)
            await asyncio.sleep(3)  # let every shard's writes resume before measuring gaps
            stalls = {}
            for shard, times in done_at.items():
                around = [t for t in times if killed_at - 5 <= t <= killed_at + 30]
                gaps = [b - a for a, b in itertools.pairwise(around) if b > killed_at]
                stalls[shard] = max(gaps, default=0.0)
            results.append(
                {
                    "victim": victim,
                    "election_s": round(elected_at - killed_at, 3),
                    "max_write_stall_s": round(max(stalls.values()), 3),
                    "median_write_stall_s": round(statistics.median(stalls.values()), 3),
                }
            )
            last = results[-1]
            print(
                f"round {len(results)}: killed {victim}; new control leader after "
                f"{last['election_s']} s; writes stalled at most {last['max_write_stall_s']} s",
                flush=True,
            )
            await asyncio.to_thread(cluster.start, victim)
            await asyncio.to_thread(cluster.wait_ready)
        stop.set()
        await asyncio.gather(*tasks)
    return results


def run(rounds: int, fsync: str) -> dict[str, Any]:
    cluster = LocalCluster(size=3, extra_args=["--fsync", fsync])
    cluster.start()
    try:
        cluster.wait_ready()
        results = asyncio.run(_rounds(cluster, rounds))
    finally:
        cluster.stop()
    return {
        "workload": "failover",
        "rounds": results,
        "worst_election_s": max(r["election_s"] for r in results),
        "worst_write_stall_s": max(r["max_write_stall_s"] for r in results),
    }
