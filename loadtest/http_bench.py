"""syncfab's HTTP gateways beside etcd's JSON gateway, in one run on one machine:
``python -m loadtest.http_bench`` (``--systems syncfab`` where etcd is not installed;
Debian: ``apt-get install etcd-server wrk``).

Starts a syncfab cluster of ``--nodes`` (3) nodes (fsync on) and a 3-member etcd cluster (which fsyncs every
commit), both on loopback for the whole run, then runs each workload on each system in turn,
``--rounds`` times, alternating which goes first (this machine's speed drifts within minutes):
- ``kv-wrk``: KV puts from wrk, ``--connections`` (64) spread over the 3 members, one wrk
  process each;
- ``kv-aiohttp``: KV puts from one Python aiohttp client with ``--workers`` (64) loops;
- ``lock-aiohttp``: acquire+release cycles from the same client, each loop its own lock.
Prints every run (throughput, p50/p95/p99, the CPU seconds the servers and the client used per
operation) and the syncfab/etcd ratio of each pair, and writes the JSON result to
loadtest/results/http-<time>.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from typing import Any

from loadtest import http_load
from loadtest.bench import percentile, proc_cpu_s, write_result
from loadtest.etcd_cluster import EtcdCluster, etcd_version
from syncfab.fabric.server.local import LocalCluster

WORKLOADS = ("kv-wrk", "kv-aiohttp", "lock-aiohttp")


def _spread(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def run_wrk(system: str, urls: list[str], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    procs = [
        http_load.start_wrk(system, url, c, args.seconds, seed + i)
        for i, (url, c) in enumerate(zip(urls, _spread(args.connections, len(urls)), strict=True))
    ]
    runs = [http_load.wrk_result(p) for p in procs]
    requests = sum(r["requests"] for r in runs)
    duration_s = max(r["duration_us"] for r in runs) / 1e6
    return {
        "ops": requests,
        "ops_all": requests,
        "per_s": round(requests / duration_s),
        **http_load.pooled_quantiles_ms(runs),
        "errors": sum(r["errors"] + r["status_errors"] for r in runs),
        "client_cpu_s": None,  # wrk's own, not measured
    }


def run_aiohttp(system: str, workload: str, urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(
        target=http_load.aiohttp_worker,
        args=(system, workload, urls, args.workers, args.warmup, args.seconds, queue),
    )
    proc.start()
    r = queue.get()
    proc.join()
    values = sorted(r["latencies"])
    return {
        "ops": len(values),
        "ops_all": r["ops_all"],
        "per_s": round(len(values) / args.seconds),
        "p50_ms": round(percentile(values, 0.50) * 1e3, 2),
        "p95_ms": round(percentile(values, 0.95) * 1e3, 2),
        "p99_ms": round(percentile(values, 0.99) * 1e3, 2),
        "errors": r["errors"],
        "error_examples": r["error_examples"],
        "client_cpu_s": round(r["cpu_s"], 2),
    }


def one_run(
    system: str, workload: str, urls: list[str], pids: dict[str, int], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    before = {n: proc_cpu_s(p) for n, p in pids.items()}
    if workload == "kv-wrk":
        result = run_wrk(system, urls, args, seed)
    else:
        result = run_aiohttp(system, workload.split("-")[0], urls, args)
    server_cpu_s = sum(proc_cpu_s(p) - before[n] for n, p in pids.items())
    ops_all = max(1, result["ops_all"])
    result["server_cpu_s"] = round(server_cpu_s, 2)
    result["server_cpu_us_per_op"] = round(server_cpu_s / ops_all * 1e6, 1)
    if result["client_cpu_s"] is not None:
        result["client_cpu_us_per_op"] = round(result["client_cpu_s"] / ops_all * 1e6, 1)
    return {"system": system, "workload": workload, **result}


def describe(run: dict[str, Any]) -> str:
    client = f", client {run['client_cpu_us_per_op']} µs" if "client_cpu_us_per_op" in run else ""
    return (
        f"{run['workload']:>12} {run['system']:>7}: {run['per_s']:>7,}/s  p50 {run['p50_ms']} ms  "
        f"p95 {run['p95_ms']} ms  p99 {run['p99_ms']} ms  errors {run['errors']}  "
        f"CPU/op: servers {run['server_cpu_us_per_op']} µs{client}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.http_bench", description=__doc__)
    parser.add_argument("--systems", default="syncfab,etcd", help="comma-separated: syncfab, etcd")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated: {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="times each pair runs, first system alternating"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="aiohttp: seconds before measuring")
    parser.add_argument("--connections", type=int, default=64, help="wrk: connections over the members")
    parser.add_argument("--workers", type=int, default=64, help="aiohttp: concurrent loops")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=3, help="syncfab's cluster size")
    parser.add_argument("--out", help="JSON result path")
    args = parser.parse_args(argv)
    systems = args.systems.split(",")
    workloads = args.workloads.split(",")
    clusters: dict[str, Any] = {}
    try:
        if "syncfab" in systems:
            sf = LocalCluster(size=args.nodes, extra_args=["--fsync", "on", "--shards", str(args.shards)])
            sf.start()
            sf.wait_ready(balanced=True)
            clusters["syncfab"] = (sf, [sf.url(n) for n in sf.ids])
        if "etcd" in systems:
            etcd = EtcdCluster()
            etcd.start()
            etcd.wait_ready()
            clusters["etcd"] = (etcd, etcd.urls)
        runs: list[dict[str, Any]] = []
        for r in range(args.rounds):
            for workload in workloads:
                order = systems if r % 2 == 0 else systems[::-1]
                for system in order:
                    cluster, urls = clusters[system]
                    run = one_run(system, workload, urls, cluster.pids(), args, seed=r)
                    run["round"] = r
                    runs.append(run)
                    print(describe(run), flush=True)
    finally:
        for cluster, _ in clusters.values():
            cluster.stop()
    ratios: dict[str, list[float]] = {}
    if len(systems) == 2:
        for r in range(args.rounds):
            for workload in workloads:
                pair = {x["system"]: x for x in runs if x["round"] == r and x["workload"] == workload}
                ratios.setdefault(workload, []).append(
                    round(pair["syncfab"]["per_s"] / pair["etcd"]["per_s"], 2)
                )
        for workload, values in ratios.items():
            print(f"{workload:>12}: syncfab/etcd throughput {values} (median {statistics.median(values)})")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "etcd": etcd_version() if "etcd" in systems else None,
        "options": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": runs,
        "ratios": ratios,
    }
    write_result(report, "http", args.out)


if __name__ == "__main__":
    main()
