"""kill -9, restart, catch-up: real processes, real fsyncs, real lost state."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.request
from typing import Any

from syncfab.fabric.client import AsyncClient
from syncfab.fabric.server.local import LocalCluster, free_ports

from .helpers import http, wait_for


def status(c: LocalCluster, node: str) -> dict[str, Any]:
    return c.get_json(node, "/status")


def control_leader(c: LocalCluster, node: str) -> str | None:
    return c.get_json(node, "/cluster")["leader"]


async def write_keys(addresses: list[str], prefix: str, count: int, concurrency: int = 16) -> set[str]:
    """Write keys concurrently; return those acknowledged (a write that errors is not)."""
    acked: set[str] = set()
    async with AsyncClient(addresses, timeout_s=15) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            key = f"{prefix}/{i}"
            async with sem:
                try:
                    await client.put(key, i)
                except Exception:
                    return
                acked.add(key)

        await asyncio.gather(*(one(i) for i in range(count)))
    return acked


async def read_keys(addresses: list[str], keys: set[str]) -> dict[str, Any]:
    async with AsyncClient(addresses, timeout_s=15) as client:
        ordered = sorted(keys)
        values = await asyncio.gather(*(client.get(k, None) for k in ordered))
    return dict(zip(ordered, values, strict=True))


def test_kill_the_leader_loses_no_acknowledged_write() -> None:
    with LocalCluster(size=3) as c:
        before = asyncio.run(write_keys(c.addresses, "before", 300))
        assert len(before) == 300
        victim = control_leader(c, "n1")
        assert victim is not None
        c.kill(victim)
        survivors = [n for n in c.ids if n != victim]
        # Writes during the failover: the client retries across nodes with the same ids.
        during = asyncio.run(write_keys([c.address(n) for n in survivors], "during", 300))
        new_leader = wait_for(
            "a new control leader", lambda: (lead := control_leader(c, survivors[0])) in survivors and lead
        )
        assert new_leader != victim
        c.wait_ready(nodes=survivors)
        values = asyncio.run(read_keys([c.address(n) for n in survivors], before | during))
        lost = sorted(k for k, v in values.items() if v != int(k.rsplit("/", 1)[1]))
        assert not lost, f"acknowledged writes lost after kill -9 of {victim}: {lost[:10]}"
        assert len(during) >= 290  # retries ride out the failover

        # The killed node comes back on its own data dir and catches up.
        c.start(victim)
        c.wait_ready()
        leader_commits = {g["group"]: g["commit_index"] for g in status(c, new_leader)["groups"]}

        def caught_up() -> bool:
            mine = {g["group"]: g["applied_index"] for g in status(c, victim)["groups"]}
            return all(mine[g] >= commit for g, commit in leader_commits.items())

        wait_for(f"{victim} to catch up", caught_up)
        values = asyncio.run(read_keys([c.address(victim)], before | during))
        assert all(v == int(k.rsplit("/", 1)[1]) for k, v in values.items())


def test_a_node_behind_the_compaction_point_catches_up_by_snapshot() -> None:
    args = ["--shards", "2", "--snapshot-entries", "40"]
    with LocalCluster(size=3, extra_args=args) as c:
        asyncio.run(write_keys(c.addresses, "warm", 50))
        victim = "n3"
        c.kill(victim)
        others = ["n1", "n2"]
        c.wait_ready(nodes=others)
        acked = asyncio.run(write_keys([c.address(n) for n in others], "gap", 1500, concurrency=4))
        assert len(acked) == 1500
        taken = sum(status(c, n)["counters"]["snapshots_taken"] for n in others)
        assert taken > 0, "the survivors never compacted: the test would not exercise InstallSnapshot"
        c.start(victim)
        c.wait_ready()
        wait_for(
            "an InstallSnapshot on the restarted node",
            lambda: status(c, victim)["counters"]["snapshots_installed"] > 0,
        )
        leader_commits = {g["group"]: g["commit_index"] for g in status(c, "n1")["groups"]}
        wait_for(
            f"{victim} to catch up",
            lambda: all(
                g["applied_index"] >= leader_commits[g["group"]] for g in status(c, victim)["groups"]
            ),
        )
        # Make the restored node serve: stop another so it must be part of every majority.
        c.kill("n2")
        c.wait_ready(nodes=["n1", victim])
        values = asyncio.run(read_keys([c.address(victim)], acked))
        assert all(v == int(k.rsplit("/", 1)[1]) for k, v in values.items())


def test_clean_restart_keeps_the_log() -> None:
    with LocalCluster(size=3) as c:
        acked = asyncio.run(write_keys(c.addresses, "kept", 100))
        for node in c.ids:
            assert c.terminate(node) == 0
        c.start()
        c.wait_ready()
        values = asyncio.run(read_keys(c.addresses, acked))
        assert all(v == int(k.rsplit("/", 1)[1]) for k, v in values.items())


def test_a_clean_stop_hands_every_group_over_before_it_exits() -> None:
    """SIGTERM of the node leading the most groups: every group it led gets its next leader by a
    handover (TimeoutNow), not by a survivor's election timer running out, and writes on the
    survivors go on. The proof is in the survivors' election counters, not in a stopwatch."""
    with LocalCluster(size=3) as c:
        c.wait_ready(balanced=True)
        view = c.get_json("n1", "/cluster")
        led = {n: sum(s["leader"] == n for s in view["shards"]) + (view["leader"] == n) for n in c.ids}
        victim = max(sorted(led), key=led.get)
        survivors = [n for n in c.ids if n != victim]
        victim_groups = {g["group"] for g in status(c, victim)["groups"] if g["role"] == "leader"}
        assert victim_groups

        def elections(cause: str) -> dict[int, int]:
            counts: dict[int, int] = {}
            for node in survivors:
                for g in status(c, node)["groups"]:
                    counts[g["group"]] = counts.get(g["group"], 0) + g[f"elections_on_{cause}"]
            return counts

        timeouts_before, transfers_before = elections("timeout"), elections("transfer")
        assert c.terminate(victim) == 0

        def survivors_lead_everything() -> bool:
            for node in survivors:
                v = c.get_json(node, "/cluster")
                if v["leader"] not in survivors or any(s["leader"] not in survivors for s in v["shards"]):
                    return False
            return True

        wait_for("every group led by a survivor", survivors_lead_everything)
        timeouts, transfers = elections("timeout"), elections("transfer")
        assert {g: timeouts[g] - timeouts_before[g] for g in victim_groups} == dict.fromkeys(victim_groups, 0)
        assert all(transfers[g] > transfers_before[g] for g in victim_groups), (transfers_before, transfers)
        statuses = [http(c, survivors[i % 2], "PUT", f"/kv/after-stop/{i}", i)[0] for i in range(24)]
        assert statuses == [200] * 24


def test_kill_9_of_every_node_mid_write_loses_no_acknowledged_write() -> None:
    # Every node dies with writes in flight and WAL records not yet folded into LMDB; on
    # restart each replays its WAL, and everything any client was told is durable is there.
    with LocalCluster(size=3) as c:
        acked: dict[str, int] = {}
        stop = threading.Event()

        async def write_until_stopped() -> None:
            async with AsyncClient(c.addresses, timeout_s=3) as client:

                async def one(worker: int) -> None:
                    i = 0
                    while not stop.is_set():
                        key = f"crash/{worker}/{i}"
                        try:
                            await client.put(key, i)
                        except Exception:
                            continue  # not acknowledged: may or may not be there
                        acked[key] = i
                        i += 1

                await asyncio.gather(*(one(w) for w in range(32)))

        writer = threading.Thread(target=asyncio.run, args=(write_until_stopped(),))
        writer.start()
        try:
            wait_for("writes to be acknowledged", lambda: len(acked) >= 600)
            for node in c.ids:
                c.kill(node)
        finally:
            stop.set()
            writer.join(timeout=60)
        assert not writer.is_alive()
        c.start()
        c.wait_ready()
        values = asyncio.run(read_keys(c.addresses, set(acked)))
        lost = sorted(k for k, v in values.items() if v != acked[k])
        assert not lost, f"acknowledged writes lost after kill -9 of every node: {lost[:10]}"


def test_a_data_dir_refuses_a_different_cluster_shape(tmp_path: Any) -> None:
    c = LocalCluster(size=1, data_dir=str(tmp_path))
    c.start()
    c.wait_ready()
    c.terminate("n1")
    c.extra_args = ["--shards", "4"]
    c.start("n1")
    assert c.procs["n1"].wait(timeout=20) != 0
    log = (tmp_path / "n1.log").read_text()
    assert "cluster.json" in log and "shards" in log


def test_node_configured_from_environment(tmp_path: Any) -> None:
    peer, http = free_ports(2)
    env = {
        **os.environ,
        "SYNCFAB_ID": "solo",
        "SYNCFAB_PEERS": f"solo=127.0.0.1:{peer}",
        "SYNCFAB_HTTP": f"127.0.0.1:{http}",
        "SYNCFAB_DATA_DIR": str(tmp_path / "solo"),
        "SYNCFAB_SHARDS": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncfab.fabric.server.cli", "node"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{http}"
        wait_for("the solo node", lambda: json.loads(urllib.request.urlopen(url + "/health").read()))
        put = urllib.request.Request(url + "/kv/env", data=b"[1,2]", method="PUT")
        wait_for("a write on the solo node", lambda: urllib.request.urlopen(put).status == 200)
        assert json.loads(urllib.request.urlopen(url + "/kv/env").read())["value"] == [1, 2]
        view = json.loads(urllib.request.urlopen(url + "/cluster").read())
        assert view["node"] == "solo" and len(view["shards"]) == 2
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_bad_configuration_is_refused_with_a_message() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "syncfab.fabric.server.cli", "node", "--id", "x", "--peers", "a=127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "not one of --peers" in out.stderr
