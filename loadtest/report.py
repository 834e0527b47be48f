"""The benchmark report: ``python -m loadtest.report`` runs the native benchmarks of every
service (loadtest/bench.py: KV, locks uncontended and on one hot resource, produce single and
batched, consume, cache) and the HTTP ones (loadtest/http_bench.py: KV through wrk, lock
cycles through aiohttp) on clusters of 1, 3 and 5 nodes, then the failover rounds (kills of a
control leader and a shard leader, alternating), and writes ``loadtest/REPORT.md`` with PNG
plots in ``loadtest/report/`` (matplotlib: ``pip install -e '.[report]'``).

Each benchmark runs as its own subprocess writing its JSON result (kept in
``loadtest/results/report-<time>/``); the machine's load average and busy cores are taken
around each. Everything gathered is written to ``report/report.json`` too, so
``--render report/report.json`` redraws the plots and the page without running anything
(with ``--chaos-dir``, adding the chaos suite's availability from recorded histories).
``--quick`` is for development and the test: 2 s per workload, 1 and 3 nodes, 2 failover rounds,
small prefills.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from loadtest import availability, machine

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    unit: str  # of its throughput
    interface: str  # native or http
    kind: str  # which of the result's operations is the figure (bench.py's names)


WORKLOADS = (
    Workload("kv", "KV writes", "writes/s", "native", "write"),
    Workload("lock", "lock cycles, uncontended", "cycles/s", "native", "cycle"),
    Workload("lock-hot", "lock handoffs, 1 hot lock", "handoffs/s", "native", "handoff"),
    Workload("produce", "produce, 1 msg a call", "msg/s", "native", "produce"),
    Workload("produce-batch", "produce, 1,000-msg batches", "msg/s", "native", "produce_batch"),
    Workload("consume", "consume + ack, batches of 50", "msg/s", "native", "consume_ack"),
    Workload("cache", "cache, Zipf 90% reads", "ops/s", "native", "all"),
    Workload("http-kv", "HTTP KV puts (wrk)", "req/s", "http", "kv-wrk"),
    Workload("http-lock", "HTTP lock cycles (aiohttp)", "cycles/s", "http", "lock-aiohttp"),
)
BY_NAME = {w.name: w for w in WORKLOADS}
FAILOVER = "failover"
CONSUME_RATE_MAX = 60_000  # msg/s: the prefill must outlast the run at this pace


def bench_args(w: Workload, nodes: int, args: argparse.Namespace, out: str) -> list[str]:
    """The command line of one benchmark run."""
    common = ["--nodes", str(nodes), "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    common += ["--out", out]
    procs = ["--processes", str(args.processes)]
    bench = [sys.executable, "-m", "loadtest.bench"]
    if w.name == "kv":
        return [*bench, "kv", "--clients", "64", *procs, *common]
    if w.name == "lock":
        return [*bench, "lock", "--clients", "64", *procs, *common]
    if w.name == "lock-hot":
        return [*bench, "lock", "--clients", "64", "--hot", "1", *procs, *common]
    if w.name == "produce":
        return [*bench, "produce", "--clients", "192", *procs, *common]
    if w.name == "produce-batch":
        return [*bench, "produce", "--clients", "16", "--batch", "1000", *procs, *common]
    if w.name == "consume":
        prefill = args.prefill or int(CONSUME_RATE_MAX * (args.seconds + args.warmup + 1))
        return [*bench, "consume", "--batch", "50", "--prefill", str(prefill), *procs, *common]
    if w.name == "cache":
        cache = ["--keys", str(args.cache_keys), "--cache-lines", str(args.cache_keys // 4)]
        cache += ["--warmup-max", str(args.cache_warmup_max)]
        return [*bench, "cache", "--clients", "64", *procs, *cache, *common]
    http = [sys.executable, "-m", "loadtest.http_bench", "--systems", "syncfab", "--rounds", "1"]
    http += [
        "--nodes",
        str(nodes),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--out",
        out,
    ]
    if w.name == "http-kv":
        # wrk runs whole seconds; without wrk, the same puts from aiohttp
        workload = "kv-wrk" if shutil.which("wrk") and args.seconds >= 1 else "kv-aiohttp"
        return [*http, "--workloads", workload]
    return [*http, "--workloads", "lock-aiohttp"]


def figure(w: Workload, result: dict[str, Any]) -> dict[str, Any]:
    """Throughput, p50/p95/p99 and errors of one run's JSON result."""
    if w.interface == "http":
        run = result["runs"][0]
        return {
            "per_s": run["per_s"],
            **{q: run[q] for q in ("p50_ms", "p95_ms", "p99_ms")},
            "errors": run["errors"],
            "client": run["workload"],
        }
    if w.name == "cache":
        hit = result.get("hit_rate", {}).get("measured")
        return {
            "per_s": result["total_per_s"],
            **result["all_ops"],
            "errors": result["errors"],
            "hit_rate": hit,
        }
    op = result["operations"].get(w.kind)
    if op is None:
        return {"per_s": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "errors": result["errors"]}
    return {
        "per_s": op["units_per_s"],
        **{q: op[q] for q in ("p50_ms", "p95_ms", "p99_ms")},
        "errors": result["errors"],
    }


def run_one(
    command: list[str], out: str, log: str, timeout_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a benchmark subprocess; (its JSON result or {"failed": why}, the machine's usage)."""
    usage = machine.Usage.begin()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(
                command, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s, cwd=HERE + "/.."
            )
            failed = None if proc.returncode == 0 else f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            failed = f"timed out after {timeout_s:.0f} s"
    used = usage.end()
    if failed is None and os.path.exists(out):
        with open(out) as f:
            return json.load(f), used
    with open(log) as f:
        tail = f.read()[-600:]
    return {"failed": f"{failed or 'no result'}; log {log}: ...{tail}"}, used


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw_dir = args.results_dir or os.path.join(HERE, "results", f"report-{stamp}")
    os.makedirs(raw_dir, exist_ok=True)
    started = time.monotonic()
    gathered: dict[str, Any] = {
        "machine": machine.machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("render", "chaos_dir")},
        "command": " ".join(["python -m loadtest.report", *sys.argv[1:]]),
        "raw_results": os.path.relpath(raw_dir, os.path.join(HERE, "..")),
        "runs": [],
        "failover": None,
    }
    print(machine.describe(gathered["machine"]), flush=True)
    names = args.workloads.split(",")
    for w in (BY_NAME[n] for n in names if n != FAILOVER):
        for nodes in args.nodes:
            out = os.path.join(raw_dir, f"{w.name}-{nodes}n.json")
            command = bench_args(w, nodes, args, out)
            result, used = run_one(command, out, out[: -len(".json")] + ".log", args.run_timeout)
            row: dict[str, Any] = {"workload": w.name, "nodes": nodes, "usage": used}
            row["command"] = " ".join(["python", *command[1:]]).replace(out, "<result.json>")
            row.update({"failed": result["failed"]} if "failed" in result else figure(w, result))
            gathered["runs"].append(row)
            shown = row.get("failed") or f"{row['per_s']:,} {w.unit}, p99 {row['p99_ms']} ms"
            print(
                f"{w.name:>13} {nodes} nodes: {shown}  (load {used['load_start']} -> {used['load_end']}, "
                f"others {used['others_cores']} cores)",
                flush=True,
            )
    if FAILOVER in names:
        out = os.path.join(raw_dir, "failover.json")
        command = [sys.executable, "-m", "loadtest.bench", "failover", "--rounds", str(args.failover_rounds)]
        command += ["--nodes", str(args.failover_nodes), "--out", out]
        timeout_s = args.run_timeout + 30 * args.failover_rounds
        result, used = run_one(command, out, os.path.join(raw_dir, "failover.log"), timeout_s)
        gathered["failover"] = {**result, "usage": used}
        gathered["failover"]["command"] = " ".join(["python", *command[1:]]).replace(out, "<result.json>")
        summary = result.get("summary", result.get("failed"))
        print(f"     failover: {summary}", flush=True)
    gathered["total_s"] = round(time.monotonic() - started)
    return gathered


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, 1 and 3 nodes, 2 failover rounds")
    parser.add_argument("--seconds", type=float, help="measured seconds per workload (10; quick 2)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (2; quick 0.5)")
    parser.add_argument("--nodes", help="comma-separated cluster sizes (1,3,5; quick 1,3)")
    parser.add_argument(
        "--workloads",
        default=",".join([*(w.name for w in WORKLOADS), FAILOVER]),
        help="comma-separated, of: " + ", ".join([*BY_NAME, FAILOVER]),
    )
    parser.add_argument("--failover-rounds", type=int, help="leader kills (20; quick 2)")
    parser.add_argument("--failover-nodes", type=int, default=3)
    parser.add_argument("--processes", type=int, help="client processes per native run (2; quick 1)")
    parser.add_argument("--prefill", type=int, help="consume: messages produced first (enough for the run)")
    parser.add_argument(
        "--cache-keys", type=int, help="cache: keys (100,000; quick 2,000); lines a node: 1/4"
    )
    parser.add_argument("--cache-warmup-max", type=float, help="cache: longest warm-up (30 s; quick 3)")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds before a run is abandoned")
    parser.add_argument("--out-dir", default=HERE, help="REPORT.md here, plots in <out-dir>/report/")
    parser.add_argument("--results-dir", help="the runs' JSON results (loadtest/results/report-<time>)")
    parser.add_argument("--render", help="a report.json from an earlier run: draw it again, run nothing")
    parser.add_argument(
        "--chaos-dir",
        help="the chaos suite's recorded round files (SYNCFAB_CHAOS_DIR): availability per nemesis",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "seconds": 2.0 if quick else 10.0,
        "warmup": 0.5 if quick else 2.0,
        "nodes": "1,3" if quick else "1,3,5",
        "failover_rounds": 2 if quick else 20,
        "processes": 1 if quick else 2,
        "cache_keys": 2_000 if quick else 100_000,
        "cache_warmup_max": 3.0 if quick else 30.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.nodes = [int(n) for n in str(args.nodes).split(",")]
    unknown = set(args.workloads.split(",")) - {*BY_NAME, FAILOVER}
    if unknown:
        parser.error(f"--workloads: unknown {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    from loadtest import report_markdown  # matplotlib is imported only here: the report extra

    if args.render:
        with open(args.render) as f:
            gathered = json.load(f)
    else:
        gathered = run_all(args)
    if args.chaos_dir:
        gathered["availability"] = availability.from_dir(args.chaos_dir)
    plots_dir = os.path.join(args.out_dir, "report")
    os.makedirs(plots_dir, exist_ok=True)
    with open(os.path.join(plots_dir, "report.json"), "w") as f:
        json.dump(gathered, f, indent=1)
    path = report_markdown.write(gathered, args.out_dir, BY_NAME)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
