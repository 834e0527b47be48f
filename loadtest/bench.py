"""Benchmarks over the native client: ``python -m loadtest.bench kv --clients 64 --seconds 10``.

Workloads: ``kv`` (replicated writes; ``--read-ratio`` mixes linearizable reads), ``lock``
(acquire+release cycles; ``--hot N`` for N contended resources), ``produce`` (``--batch B``
messages per call), ``consume`` (consume+ack from a prefilled queue), ``failover`` (kill -9 the
leaders and measure how long writes stall), ``cache`` (Zipf reads and writes through every
node's near cache; hit rate beside an ideal LRU's and a coherent LRU's: loadtest/cache_trace.py).

Starts a 3-node cluster of real processes (fsync on) unless ``--target`` names one, runs C
concurrent clients spread over P worker processes for T seconds after a warm-up, and prints
throughput, p50/p95/p99 latency and the CPU seconds the nodes and the clients used. The
result is also written as JSON (``--out``, default loadtest/results/<workload>-<time>.json).
``--curve`` runs the cluster and the clients over CURVE, with keys made for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import tempfile
import time
from typing import Any

from loadtest import cache_offline, cache_trace, failover, workloads
from syncfab.fabric.client import AsyncClient
from syncfab.fabric.server.curve import read_public_key, read_secret_key, write_keypair
from syncfab.fabric.server.local import LocalCluster


def _worker(
    addresses: list[str],
    clients: int,
    warmup_s: float,
    seconds: float,
    seed: int,
    workload: str,
    options: dict[str, Any],
    out: mp.Queue,
    client_keys: dict[str, bytes],
) -> None:
    import uvloop

    async def run() -> dict[str, Any]:
        client = AsyncClient(addresses, timeout_s=30, **client_keys)
        await client.connect()
        op = workloads.make(workload, options)
        begin = time.perf_counter() + warmup_s
        end = begin + seconds
        latencies: dict[str, list[float]] = {}
        units: dict[str, int] = {}
        errors = 0

        async def one(n: int) -> None:
            nonlocal errors
            rng = random.Random(seed * 1000 + n)
            who = f"{client.client_id}/{n}"
            while True:
                started = time.perf_counter()
                if started >= end:
                    return
                try:
                    kind, count = await op(client, rng, who)
                except Exception:
                    errors += 1
                    continue
                if started >= begin:
                    latencies.setdefault(kind, []).append(time.perf_counter() - started)
                    units[kind] = units.get(kind, 0) + count

        cpu0 = time.process_time()
        await asyncio.gather(*(one(n) for n in range(clients)))
        cpu = time.process_time() - cpu0
        await client.close()
        return {"latencies": latencies, "units": units, "errors": errors, "cpu_s": cpu}

    out.put(uvloop.run(run()))


def curve_keys(directory: str) -> tuple[list[str], dict[str, bytes]]:
    """Keys for a CURVE run, made in ``directory``: (every node's flags, the clients' keyword
    arguments). The nodes share one pair and accept the clients' one key."""
    cluster_secret, cluster_public = write_keypair(os.path.join(directory, "cluster"))
    accept = os.path.join(directory, "accept")
    client_secret, _ = write_keypair(os.path.join(accept, "client"))
    node_flags = ["--curve-secret-key", cluster_secret, "--curve-accept", accept]
    client_keys = {
        "curve_server_key": read_public_key(cluster_public),
        "curve_secret_key": read_secret_key(client_secret)[1],
    }
    return node_flags, client_keys


def prefill(addresses: list[str], queue: str, count: int, client_keys: dict[str, bytes]) -> None:
    """Fill the queue before a consume run, in big concurrent batches."""

    async def fill() -> None:
        async with AsyncClient(addresses, timeout_s=60, **client_keys) as client:
            sem = asyncio.Semaphore(8)

            async def batch(n: int) -> None:
                async with sem:
                    await client.produce_batch(queue, [workloads.PAYLOAD] * n)

            await asyncio.gather(*(batch(min(500, count - i)) for i in range(0, count, 500)))

    asyncio.run(fill())


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    cluster: LocalCluster | None = None
    keys_dir = tempfile.TemporaryDirectory(prefix="syncfab-keys-")
    node_flags: list[str] = []
    client_keys: dict[str, bytes] = {}
    if args.curve:
        node_flags, client_keys = curve_keys(keys_dir.name)
    if args.target:
        addresses = args.target.split(",")
        node_pids: dict[str, int] = {}
    else:
        extra = ["--fsync", args.fsync, "--shards", str(args.shards), *node_flags]
        cluster = LocalCluster(size=args.nodes, extra_args=extra)
        cluster.start()
        cluster.wait_ready(balanced=True)
        addresses = cluster.addresses
        node_pids = cluster.pids()
    try:
        options = {
            "read_ratio": args.read_ratio,
            "keys": args.keys,
            "hot": args.hot,
            "queue": args.queue,
            "batch": args.batch,
        }
        if args.workload == "consume":
            prefill(addresses, args.queue, args.prefill, client_keys)
        per_proc = [
            args.clients // args.processes + (i < args.clients % args.processes)
            for i in range(args.processes)
        ]
        ctx = mp.get_context("spawn")
        queue: mp.Queue = ctx.Queue()
        cpu_before = {n: proc_cpu_s(p) for n, p in node_pids.items()}
        procs = [
            ctx.Process(
                target=_worker,
                args=(addresses, c, args.warmup, args.seconds, i, args.workload, options, queue, client_keys),
            )
            for i, c in enumerate(per_proc)
            if c
        ]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        cpu_after = {n: proc_cpu_s(p) for n, p in node_pids.items()}
    finally:
        if cluster is not None:
            cluster.stop()
        keys_dir.cleanup()
    by_kind: dict[str, list[float]] = {}
    units: dict[str, int] = {}
    for r in results:
        for kind, values in r["latencies"].items():
            by_kind.setdefault(kind, []).extend(values)
        for kind, count in r["units"].items():
            units[kind] = units.get(kind, 0) + count
    report: dict[str, Any] = {
        "workload": args.workload,
        "nodes": args.nodes if not args.target else len(addresses),
        "clients": args.clients,
        "processes": args.processes,
        "seconds": args.seconds,
        "fsync": args.fsync,
        "shards": args.shards,
        "curve": args.curve,
        "options": {k: v for k, v in vars(args).items() if k in ("read_ratio", "hot", "batch", "queue")},
        "errors": sum(r["errors"] for r in results),
        "operations": {},
        "cpu_s": {
            "nodes": {n: round(cpu_after[n] - cpu_before[n], 2) for n in cpu_before},
            "clients": round(sum(r["cpu_s"] for r in results), 2),
        },
    }
    total = 0
    for kind, values in sorted(by_kind.items()):
        values.sort()
        total += len(values)
        report["operations"][kind] = {
            "count": len(values),
            "per_s": round(len(values) / args.seconds),
            "units_per_s": round(units.get(kind, 0) / args.seconds),
            "p50_ms": round(percentile(values, 0.50) * 1e3, 2),
            "p95_ms": round(percentile(values, 0.95) * 1e3, 2),
            "p99_ms": round(percentile(values, 0.99) * 1e3, 2),
        }
    report["total_per_s"] = round(total / args.seconds)
    return report


def write_result(report: dict[str, Any], name: str, out: str | None) -> None:
    """The JSON result at ``out``, by default loadtest/results/<name>-<time>.json."""
    out = out or os.path.join(
        os.path.dirname(__file__), "results", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"result: {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    parser.add_argument("workload", choices=["kv", "lock", "produce", "consume", "failover", "cache"])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before measuring (2; cache: at least 5, until hit rate is stable)",
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--fsync", choices=["on", "off"], default="on")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument(
        "--read-ratio",
        type=float,
        default=None,
        help="kv: share of linearizable reads (0); cache: share of reads (0.9)",
    )
    parser.add_argument("--keys", type=int, default=None, help="kv: 10,000; cache: 100,000")
    parser.add_argument(
        "--hot", type=int, default=0, help="lock: number of hot resources (0 = each client its own resource)"
    )
    parser.add_argument("--batch", type=int, default=1, help="produce/consume: messages per call")
    parser.add_argument("--queue", default="bench")
    parser.add_argument("--prefill", type=int, default=200_000, help="consume: messages produced first")
    parser.add_argument(
        "--rounds", type=int, default=3, help="failover: leader kills, alternating control and shard leaders"
    )
    parser.add_argument(
        "--attempt-timeout",
        type=float,
        default=failover.ATTEMPT_TIMEOUT_S,
        help="failover: seconds the writers' client waits for a node before asking another",
    )
    parser.add_argument("--zipf", type=float, default=0.99, help="cache: Zipf exponent of key popularity")
    parser.add_argument("--value-bytes", type=int, default=100, help="cache: bytes per value")
    parser.add_argument(
        "--cache-lines",
        type=int,
        default=25_000,
        help="cache: every node's --cache-lines, and the ideal LRUs' capacity",
    )
    parser.add_argument(
        "--policy",
        choices=["write_through", "write_back"],
        default="write_through",
        help="cache: write policy",
    )
    parser.add_argument(
        "--warmup-max", type=float, default=90.0, help="cache: longest warm-up waiting for a stable hit rate"
    )
    parser.add_argument("--seed", type=int, default=0, help="cache: client g's trace is Random(seed + g)")
    parser.add_argument(
        "--curve",
        action="store_true",
        help="kv/lock/produce/consume: the cluster and the clients over CURVE, keys made for the run",
    )
    parser.add_argument("--target", help="comma-separated node addresses of a running cluster")
    parser.add_argument("--metrics", help="cache with --target: comma-separated node HTTP URLs, same order")
    parser.add_argument("--out", help="JSON result path")
    args = parser.parse_args(argv)
    cache = args.workload == "cache"
    if args.curve and (args.target or cache or args.workload == "failover"):
        parser.error("--curve starts its own cluster: kv, lock, produce or consume, without --target")
    if args.warmup is None:
        args.warmup = 5.0 if cache else 2.0
    if args.read_ratio is None:
        args.read_ratio = 0.9 if cache else 0.0
    if args.keys is None:
        args.keys = 100_000 if cache else 10_000
    if args.workload == "failover":
        report = failover.run(args.rounds, args.fsync, args.nodes, args.shards, args.attempt_timeout)
        print(f"failover: {report['summary']}")
    elif cache:
        report = cache_trace.run(args)
        cache_offline.print_report(report)
    else:
        report = run(args)
        for kind, op in report["operations"].items():
            unit = f" = {op['units_per_s']:,} msg/s" if op["units_per_s"] != op["per_s"] else ""
            print(
                f"{kind:>13}: {op['per_s']:>8,}/s{unit}  p50 {op['p50_ms']} ms  p95 {op['p95_ms']} ms  "
                f"p99 {op['p99_ms']} ms  ({op['count']:,} ops)"
            )
        print(
            f"        total: {report['total_per_s']:,}/s, errors {report['errors']}, "
            f"cpu s nodes {report['cpu_s']['nodes']} clients {report['cpu_s']['clients']}"
        )
    write_result(report, args.workload, args.out)


if __name__ == "__main__":
    main()
