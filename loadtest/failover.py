"""Failover: how long are writes unavailable when a leader is killed with SIGKILL?

A cluster of ``nodes`` (3) nodes, one writer per shard (keys chosen to cover every shard)
writing back to back through one native client that retries. Rounds alternate the victim: odd
rounds kill the node that leads the control group (it leads some shards too), even rounds a
node that leads shards but not the control group. Each round records:
- ``election_s`` (control kills): until a survivor names a control leader among the survivors;
- ``shard_elected_s`` per shard the victim led: until that survivor's view names a new leader
  for it (the cluster's side of the recovery, polled every ~10 ms);
- ``recovery_s`` per shard the victim led: from the SIGKILL to the first acknowledged write on
  that shard, and the round's ``recovery_s``, the worst of them (every shard it led writable);
- ``max_write_stall_s``: the longest gap between two acknowledged writes of any shard;
- for the first round of each kind, a trace: every write's start (s from the kill), latency
  and shard, for the plot of latency through a kill (loadtest/report_plots.py).
The node is restarted between rounds, and the next round waits for the balancer to hand its
shards back, so every round kills a node leading shards.
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
SETTLE_S = 1.5  # writes flowing on every shard before a kill
# An ack read this soon after the victim was reaped is a reply it sent before dying; no
# election (timeout 500 ms and up) finishes this fast, so none is a new leader's.
REPLY_IN_FLIGHT_S = 0.05
RECOVERY_TIMEOUT_S = 30.0
TRACE_BEFORE_S = 1.0
TRACE_AFTER_S = 1.5  # after the last led shard recovered
# The writers' client gives up on a silent node after this and asks another (the client's
# default is 1 s; a recovery waits out such attempts on the dead leader, see the README).
ATTEMPT_TIMEOUT_S = 0.3
TARGET_MEDIAN_S = 1.5  # issue 15's targets for the time until every led shard takes writes
TARGET_MAX_S = 3.0


def shard_keys(shards: int) -> dict[int, str]:
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < shards:
        keys.setdefault(shard_for_key(f"failover-{n}", shards), f"failover-{n}")
        n += 1
    return keys


def pick_victim(view: dict[str, Any], kind: str) -> str:
    """The control leader, or (kind "shard") the node leading most shards among the others."""
    control = view["leader"]
    if kind == "control":
        return control
    led: dict[str, int] = {}
    for s in view["shards"]:
        if s["leader"] != control:
            led[s["leader"]] = led.get(s["leader"], 0) + 1
    return max(sorted(led), key=lambda n: led[n]) if led else control


async def _view(cluster: LocalCluster, nodes: list[str]) -> dict[str, Any]:
    for node in itertools.cycle(nodes):
        try:
            return await asyncio.to_thread(cluster.get_json, node, "/cluster")
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


async def _rounds(
    cluster: LocalCluster, rounds: int, shards: int, attempt_timeout_s: float
) -> dict[str, Any]:
    # per shard: (started, acknowledged) of every write this round, monotonic seconds
    writes: dict[int, list[tuple[float, float]]] = {s: [] for s in range(1, shards + 1)}
    stop = asyncio.Event()

    async def writer(client: AsyncClient, shard: int, key: str) -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await client.put(key, n)
            except Exception:
                continue
            writes[shard].append((started, time.monotonic()))
            n += 1

    results: list[dict[str, Any]] = []
    traces: list[dict[str, Any]] = []
    async with AsyncClient(cluster.addresses, timeout_s=30, attempt_timeout_s=attempt_timeout_s) as client:
        tasks = [asyncio.ensure_future(writer(client, s, k)) for s, k in shard_keys(shards).items()]
        for r in range(rounds):
            kind = "control" if r % 2 == 0 else "shard"
            for values in writes.values():
                values.clear()
            await asyncio.sleep(SETTLE_S)
            view = await _view(cluster, list(cluster.procs))
            victim = pick_victim(view, kind)
            kind = "control" if victim == view["leader"] else "shard"  # what was killed, in the end
            led = [s["id"] for s in view["shards"] if s["leader"] == victim]
            survivors = [n for n in cluster.ids if n != victim]
            killed_at = time.monotonic()
            await asyncio.to_thread(cluster.kill, victim)
            fresh_after = time.monotonic() + REPLY_IN_FLIGHT_S
            elected_at = None if kind == "control" else killed_at
            deadline = killed_at + RECOVERY_TIMEOUT_S
            recovered: dict[int, float] = {}
            shard_elected: dict[int, float] = {}  # a survivor leads it, as survivors[0] sees
            while time.monotonic() < deadline and (
                elected_at is None or len(recovered) < len(led) or len(shard_elected) < len(led)
            ):
                if elected_at is None or len(shard_elected) < len(led):
                    try:
                        seen = await asyncio.to_thread(cluster.get_json, survivors[0], "/cluster", 0.5)
                    except OSError:
                        seen = {"leader": None, "shards": []}
                    now = time.monotonic()
                    if elected_at is None and seen["leader"] in survivors:
                        elected_at = now
                    for s in seen["shards"]:
                        if s["id"] in led and s["id"] not in shard_elected and s["leader"] in survivors:
                            shard_elected[s["id"]] = now - killed_at
                for shard in led:
                    if shard not in recovered:
                        acked = [done for _, done in writes[shard] if done > fresh_after]
                        if acked:
                            recovered[shard] = min(acked) - killed_at
                await asyncio.sleep(0.01)
            await asyncio.sleep(TRACE_AFTER_S)
            stalls = {}
            for shard, done in writes.items():
                acks = sorted(t for _, t in done)
                gaps = [b - a for a, b in itertools.pairwise(acks) if b > killed_at]
                stalls[shard] = max(gaps, default=0.0)
            worst = max(recovered.values()) if len(recovered) == len(led) and led else None
            result = {
                "round": r + 1,
                "kind": kind,
                "victim": victim,
                "led_shards": led,
                # the control group's new leader (control kills only: else it had one all along)
                "election_s": round(elected_at - killed_at, 3) if elected_at and kind == "control" else None,
                "shard_elected_s": {str(s): round(t, 3) for s, t in sorted(shard_elected.items())},
                "recovery_s": round(worst, 3) if worst is not None else None,
                "shard_recovery_s": {str(s): round(t, 3) for s, t in sorted(recovered.items())},
                "unrecovered_shards": [s for s in led if s not in recovered],
                "max_write_stall_s": round(max(stalls.values()), 3),
            }
            results.append(result)
            if not any(t["kind"] == kind for t in traces):
                traces.append(_trace(result, writes, killed_at))
            print(
                f"round {r + 1} ({kind} leader): killed {victim} leading shards {led}; control leader "
                f"after {result['election_s']} s; every shard it led took a write after "
                f"{result['recovery_s']} s",
                flush=True,
            )
            await asyncio.to_thread(cluster.start, victim)
            try:
                await asyncio.to_thread(cluster.wait_ready, 30.0, None, balanced=True)
            except TimeoutError:  # the next round then kills whoever leads most
                await asyncio.to_thread(cluster.wait_ready)
        stop.set()
        await asyncio.gather(*tasks)
    return {"rounds": results, "traces": traces}


def _trace(
    result: dict[str, Any], writes: dict[int, list[tuple[float, float]]], killed_at: float
) -> dict[str, Any]:
    begin = killed_at - TRACE_BEFORE_S
    points = [
        [shard, round(started - killed_at, 4), round((done - started) * 1e3, 2)]
        for shard, values in writes.items()
        for started, done in values
        if started >= begin
    ]
    points.sort(key=lambda p: p[1])
    keep = ("round", "kind", "victim", "led_shards", "recovery_s")
    return {**{k: result[k] for k in keep}, "writes": points}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and max over rounds of the time until every led shard took a write."""
    recoveries = [r["recovery_s"] for r in results if r["recovery_s"] is not None]
    per_shard = [t for r in results for t in r["shard_recovery_s"].values()]
    shard_elections = [t for r in results for t in r["shard_elected_s"].values()]
    # what the client adds: from a survivor naming the shard's leader to its first write there
    client_lags = [
        r["shard_recovery_s"][s] - t
        for r in results
        for s, t in r["shard_elected_s"].items()
        if s in r["shard_recovery_s"]
    ]
    elections = [r["election_s"] for r in results if r["election_s"] is not None]
    summary: dict[str, Any] = {
        "rounds": len(results),
        "unrecovered_rounds": sum(1 for r in results if r["recovery_s"] is None),
        "target_median_s": TARGET_MEDIAN_S,
        "target_max_s": TARGET_MAX_S,
    }
    for name, values in (
        ("recovery", recoveries),
        ("each_shard_recovery", per_shard),
        ("each_shard_elected", shard_elections),
        ("client_lag", client_lags),
        ("election", elections),
    ):
        summary[f"{name}_median_s"] = round(statistics.median(values), 3) if values else None
        summary[f"{name}_max_s"] = round(max(values), 3) if values else None
    for kind in ("control", "shard"):
        values = [r["recovery_s"] for r in results if r["kind"] == kind and r["recovery_s"] is not None]
        summary[f"{kind}_recovery_median_s"] = round(statistics.median(values), 3) if values else None
        summary[f"{kind}_recovery_max_s"] = round(max(values), 3) if values else None
    summary["meets_targets"] = (
        not summary["unrecovered_rounds"]
        and summary["recovery_median_s"] is not None
        and summary["recovery_median_s"] < TARGET_MEDIAN_S
        and summary["recovery_max_s"] < TARGET_MAX_S
    )
    return summary


def run(
    rounds: int,
    fsync: str,
    nodes: int = 3,
    shards: int = SHARDS,
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
) -> dict[str, Any]:
    if nodes < 3:
        raise ValueError("failover needs at least 3 nodes (a majority must survive a kill)")
    cluster = LocalCluster(size=nodes, extra_args=["--fsync", fsync, "--shards", str(shards)])
    cluster.start()
    try:
        cluster.wait_ready(balanced=True)
        measured = asyncio.run(_rounds(cluster, rounds, shards, attempt_timeout_s))
    finally:
        cluster.stop()
    results = measured["rounds"]
    stalls = [r["max_write_stall_s"] for r in results]
    return {
        "workload": "failover",
        "nodes": nodes,
        "shards": shards,
        "fsync": fsync,
        "attempt_timeout_s": attempt_timeout_s,
        "rounds": results,
        "summary": summarize(results),
        "traces": measured["traces"],
        "worst_election_s": max(
            (r["election_s"] for r in results if r["election_s"] is not None), default=None
        ),
        "worst_write_stall_s": max(stalls),
    }
