"""The cache on real processes through the native client: coherence under concurrent readers,
an M owner and a home killed with kill -9, LRU eviction of a dirty line, the counters.

Staleness is judged in real time, in one event loop: a read that starts after a write has
returned must see that write or a later one, and a reader never sees a key go back in time.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from syncfab.actors.ring import shard_for_key
from syncfab.fabric.client import AsyncClient
from syncfab.fabric.server.local import LocalCluster

from .helpers import wait_for

SHARDS = 8
FLUSH_MS = 100


def home_of(c: LocalCluster, key: str, via: str = "n1") -> str:
    shard = shard_for_key(key, SHARDS)
    return next(s["leader"] for s in c.get_json(via, "/cluster")["shards"] if s["id"] == shard)


def key_homed(c: LocalCluster, *, at: str | None = None, not_at: str | None = None, prefix: str = "k") -> str:
    for i in range(1000):
        key = f"{prefix}{i}"
        home = home_of(c, key)
        if (at is None or home == at) and home != not_at:
            return key
    raise AssertionError("no such key")


async def clients_for(c: LocalCluster, nodes: list[str]) -> list[AsyncClient]:
    out = [AsyncClient(c.addresses, cache_node=c.address(n), timeout_s=20) for n in nodes]
    for client in out:
        await client.connect()
    return out


class Watch:
    """Real-time order of one key's writes (values are increasing ints) against its reads."""

    def __init__(self) -> None:
        self.returned: list[tuple[float, int]] = []  # (when a write returned, its value)
        self.reads = 0

    def wrote(self, value: int) -> None:
        self.returned.append((time.monotonic(), value))

    def floor_at(self, t: float) -> int:
        """The newest value whose write had returned by ``t``."""
        return max((v for when, v in self.returned if when <= t), default=0)

    async def reader(self, client: AsyncClient, key: str, stop: asyncio.Event) -> None:
        last = 0
        while not stop.is_set():
            started = time.monotonic()
            got = (await client.cache.read(key)).value
            floor = self.floor_at(started)
            assert got >= floor, f"stale read of {key!r}: {got} after {floor} had returned"
            assert got >= last, f"{key!r} went back in time for one reader: {last} then {got}"
            last, self.reads = got, self.reads + 1


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(size=3, extra_args=["--cache-lines", "3", "--cache-flush-ms", str(FLUSH_MS)]) as c:
        c.wait_ready(balanced=True)
        yield c


@pytest.mark.parametrize("policy", ["write_through", "write_back"])
def test_writes_at_one_node_are_never_read_stale_at_the_others(cluster: LocalCluster, policy: str) -> None:
    key = f"watched-{policy}"

    async def run() -> Watch:
        writer, r2, r3 = await clients_for(cluster, ["n1", "n2", "n3"])
        watch, stop = Watch(), asyncio.Event()
        await writer.cache.write(key, 0, policy=policy)
        readers = [asyncio.create_task(watch.reader(r, key, stop)) for r in (r2, r3)]
        for value in range(1, 41):
            await writer.cache.write(key, value, policy=policy)
            watch.wrote(value)
            await asyncio.sleep(0.005)
        stop.set()
        await asyncio.gather(*readers)
        for client in (writer, r2, r3):
            await client.close()
        return watch

    watch = asyncio.run(run())
    assert watch.reads > 40


def test_lru_eviction_of_an_m_line_writes_it_back(cluster: LocalCluster) -> None:
    async def run() -> tuple[Any, dict[str, Any]]:
        n2, n1 = await clients_for(cluster, ["n2", "n1"])
        await n2.cache.write("evicted", "first", policy="write_back")
        await n2.cache.write("evicted", "dirty", policy="write_back")  # local: only n2 has it
        for i in range(4):  # three lines per node: "evicted" goes, dirty, so home first
            await n2.cache.write(f"filler{i}", i)
        stats = await n2.cache.stats()
        got = (await n1.cache.read("evicted")).value
        await n1.close()
        await n2.close()
        return got, stats

    got, stats = asyncio.run(run())
    assert got == "dirty"
    assert stats["evictions"] >= 1 and stats["write_backs"] >= 1 and stats["lines"] <= 3


def test_counters_move_with_the_operations(cluster: LocalCluster) -> None:
    def events() -> dict[str, float]:
        with urllib.request.urlopen(cluster.url("n3") + "/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("syncfab_cache_events_total{"):
                name = line.split('event="')[1].split('"')[0]
                out[name] = float(line.rsplit(" ", 1)[1])
        return out

    before = events()

    async def run() -> None:
        (n3,) = await clients_for(cluster, ["n3"])
        await n3.cache.write("counted", 1)
        for _ in range(5):
            await n3.cache.read("counted")
        await n3.close()

    asyncio.run(run())
    after = events()
    assert after["hits"] - before.get("hits", 0) >= 5
    assert after["remote_writes"] - before.get("remote_writes", 0) >= 1


def test_an_m_owner_killed_loses_at_most_its_write_back_window() -> None:
    with LocalCluster(size=3, extra_args=["--cache-flush-ms", str(FLUSH_MS)]) as c:
        c.wait_ready(balanced=True)
        back = key_homed(c, not_at="n2", prefix="back")
        through = key_homed(c, not_at="n2", prefix="through")

        async def write() -> tuple[Watch, int]:
            (n2,) = await clients_for(c, ["n2"])
            watch = Watch()
            await n2.cache.write(through, 0)
            for value in range(1, 301):
                await n2.cache.write(back, value, policy="write_back")
                watch.wrote(value)
            last_through = 7
            await n2.cache.write(through, last_through)  # acknowledged once durable on a majority
            return watch, last_through

        watch, last_through = asyncio.run(write())
        killed_at = time.monotonic()
        c.kill("n2")

        async def read() -> tuple[int, int]:
            (n1,) = await clients_for(c, ["n1"])
            got = (await n1.cache.read(back)).value, (await n1.cache.read(through)).value
            await n1.close()
            return got

        got_back, got_through = asyncio.run(read())
        assert got_through == last_through  # write_through loses nothing
        # write_back loses at most what the owner wrote since its last write-back went home:
        # a flush every FLUSH_MS, plus the time one takes to commit (generously, a second).
        assert 1 <= got_back <= 300
        assert got_back >= watch.floor_at(killed_at - FLUSH_MS / 1000 - 1.0), (got_back, watch.returned[-1])


def test_a_home_killed_mid_traffic_is_never_stale_and_traffic_resumes() -> None:
    with LocalCluster(size=3) as c:
        c.wait_ready(balanced=True)
        key = key_homed(c, at="n3")

        async def run() -> tuple[Watch, int]:
            writer, reader = await clients_for(c, ["n1", "n2"])
            watch, stop = Watch(), asyncio.Event()
            await writer.cache.write(key, 0)
            reading = asyncio.create_task(watch.reader(reader, key, stop))
            value = 0
            started = time.monotonic()
            while time.monotonic() - started < 8:
                value += 1
                await writer.cache.write(key, value)
                watch.wrote(value)
                if value == 20:
                    c.kill("n3")  # the key's home, mid-traffic
                await asyncio.sleep(0.01)
            stop.set()
            await reading
            await writer.close()
            await reader.close()
            return watch, value

        watch, last = asyncio.run(run())
        assert last > 25  # writes went on after the new home's wait
        assert watch.reads > 20
        wait_for("the new home", lambda: home_of(c, key) in ("n1", "n2"))
