"""The cache benchmark: ``python -m loadtest.bench cache`` (run from loadtest/bench.py). This
module runs it; the keys and traces are loadtest/cache_workload.py's, the ideal caches, the
metrics read and the report loadtest/cache_offline.py's.

A 3-node cluster (every node ``--cache-lines N``) and C native clients over P worker processes;
client g's cache node is node g % 3, so the clients are spread evenly over the nodes' caches.
Each client runs its own op sequence, drawn from ``random.Random(seed + g)``: a read with
probability ``--read-ratio``, else a write (``--policy``) of a ``--value-bytes`` value, of the
key of rank r (0 the most popular) with probability proportional to 1/(r+1)^s over ``--keys``
keys (Zipf ``--zipf``), by inverting a precomputed CDF (numpy when it is installed, else
bisect over a list; the same draws either way, up to the last bit of a float).

Phases:

1. **Prefill**: every key is written once (write_through), concurrently from all workers, key
   r through node r % 3, coldest rank first: each node then holds the hottest of its third.
2. **Warm-up**: the clients run their traces. It lasts at least ``--warmup`` (5 s) and until
   the read hit rate is stable: the least-squares slope of the last eight 2-s windows' hit
   rates, carried over the measured window (``--seconds``, at least 10 s), moves it by at most
   1 point; at most ``--warmup-max`` (90 s). An LRU of 25,000 lines fed this trace needs about
   100,000 ops per node from cold to settle within a point; the prefill's order halves that.
3. **Measure** for ``--seconds``: latencies per kind (read_hit, read_miss as told by
   ``CachedValue.hit``, write) of the ops started in the window; the nodes' CPU over the window;
   the nodes' /metrics at its start, every second (a home keeps only its last 4,096 fan-out
   samples until a scrape drains them) and at its end.

Every op's start and completion time, node, key and kind is recorded in the workers (prefill and
warm-up included, so the ideal caches see the same history; bounded, see RECORD_MAX).
Afterwards the ops are merged in time — a read at its start, a write at its acknowledgement —
and fed to two ideal caches per node of the same capacity, counted over the measured reads:

- **LRU**: the node's reads and writes in order; a write puts the key in (the writer's node
  holds the line E afterwards); other nodes' writes do nothing to it.
- **Coherent LRU**: the same, and a write by another node's client also evicts the key
  (invalidation): the best any coherent cache can do on this trace. Its misses are split into
  cold (the node never had the key), coherence (invalidated since the node last had it) and
  capacity. Also counted: the real misses that joined a fetch of the same key in flight at
  their node (a latency effect no ideal cache has).

Invalidation fan-out: p50/p99 from the nodes' ``syncfab_cache_fanout_ms`` histogram (else
``syncfab_cache_fanout_seconds``, in ms), the difference of its buckets between the window's
first and last scrapes summed over the nodes, interpolated within a bucket as Prometheus'
histogram_quantile does (the bucket's bound is reported too); "n/a" when neither is exposed.
A home counts only writes that had other holders to wait for.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from array import array
from typing import Any

from loadtest.cache_offline import report, scrape
from loadtest.cache_workload import HIT, KINDS, MEASURED, WINDOW_S, WRITE, Trace, Zipf, key_name, stable
from syncfab.fabric.client import AsyncClient, SyncfabError
from syncfab.fabric.server.local import LocalCluster

RECORD_MAX = 3_000_000  # recorded ops per worker process (22 bytes each)
PREFILL_CONCURRENCY = 256  # writes in flight per worker process
# ctl: shared doubles set by the parent: go (prefill is over), start and end of the window.
GO, BEGIN, END = 0, 1, 2


class Recorder:
    """Per op: start and completion time (perf_counter, one clock for every process on Linux),
    node index, key rank and flags. At most ``limit`` ops; the rest are counted in ``dropped``."""

    def __init__(self, limit: int = RECORD_MAX) -> None:
        self.t0 = array("d")
        self.t1 = array("d")
        self.node = array("b")
        self.key = array("i")
        self.flags = array("b")
        self.limit = limit
        self.dropped = 0

    def add(self, t0: float, t1: float, node: int, key: int, flags: int) -> None:
        if len(self.t0) >= self.limit:
            self.dropped += 1
            return
        self.t0.append(t0)
        self.t1.append(t1)
        self.node.append(node)
        self.key.append(key)
        self.flags.append(flags)


def _error_name(e: Exception) -> str:
    return e.code if isinstance(e, SyncfabError) else type(e).__name__


def worker(
    addresses: list[str],
    first: int,
    clients: int,
    index: int,
    workers: int,
    opts: dict[str, Any],
    ctl: Any,
    counters: Any,
    out: mp.Queue,
) -> None:
    """One client process: its share of the prefill, then ``clients`` clients (global numbers
    first, first + 1, ...) until the parent's window ends. ``counters[3 * index ...]``: reads,
    hits (both live, for the warm-up's verdict), prefill done."""
    import uvloop

    keys, policy, seed = opts["keys"], opts["policy"], opts["seed"]
    pad = b"x" * opts["value_bytes"]
    nodes = len(addresses)

    def value(a: int, b: int) -> bytes:
        return (b"%d/%d " % (a, b) + pad)[: len(pad)]

    async def run() -> dict[str, Any]:
        conns = [AsyncClient(addresses, timeout_s=30, cache_node=a) for a in addresses]
        for c in conns:
            await c.connect()
        zipf = Zipf(keys, opts["zipf"])
        names = [key_name(r) for r in range(keys)]
        rec = Recorder()
        errors: dict[str, int] = {}
        perf = time.perf_counter

        todo = iter([r for r in range(keys - 1, -1, -1) if r % workers == index])
        prefill_failed = 0

        async def fill() -> None:
            nonlocal prefill_failed
            for r in todo:
                node = r % nodes
                started = perf()
                for _ in range(5):
                    try:
                        await conns[node].cache.write(names[r], value(r, 0))
                        break
                    except Exception as e:
                        name = "prefill_" + _error_name(e)
                        errors[name] = errors.get(name, 0) + 1
                else:
                    prefill_failed += 1
                    continue
                rec.add(started, perf(), node, r, WRITE)

        await asyncio.gather(*(fill() for _ in range(PREFILL_CONCURRENCY)))
        counters[3 * index + 2] = 1
        while not ctl[GO]:
            await asyncio.sleep(0.005)

        latencies: dict[str, list[float]] = {k: [] for k in KINDS}
        cpu = [0.0, 0.0]
        slot = 3 * index

        async def one(n: int) -> None:
            g = first + n
            node = g % nodes
            cache = conns[node].cache
            trace = Trace(zipf, opts["read_ratio"], seed + g)
            writes = 0
            while True:
                started = perf()
                end = ctl[END]
                if end and started >= end:
                    return
                is_write, r = trace.next()
                try:
                    if is_write:
                        writes += 1
                        await cache.write(names[r], value(g, writes), policy=policy)
                        flags = WRITE
                    else:
                        flags = HIT if (await cache.read(names[r])).hit else 0
                except Exception as e:
                    name = _error_name(e)
                    errors[name] = errors.get(name, 0) + 1
                    continue
                done = perf()
                begin = ctl[BEGIN]
                if begin and started >= begin:
                    flags |= MEASURED
                    kind = "write" if is_write else ("read_hit" if flags & HIT else "read_miss")
                    latencies[kind].append(done - started)
                if not is_write:
                    counters[slot] += 1
                    if flags & HIT:
                        counters[slot + 1] += 1
                rec.add(started, done, node, r, flags)

        async def window_cpu() -> None:
            while not ctl[BEGIN]:
                await asyncio.sleep(0.005)
            cpu[0] = time.process_time()

        watcher = asyncio.ensure_future(window_cpu())
        await asyncio.gather(*(one(n) for n in range(clients)))
        cpu[1] = time.process_time()
        watcher.cancel()
        for c in conns:
            await c.close()
        return {
            "latencies": latencies,
            "errors": errors,
            "cpu_s": cpu[1] - cpu[0] if cpu[0] else 0.0,
            "prefill_failed": prefill_failed,
            "t0": rec.t0,
            "t1": rec.t1,
            "node": rec.node,
            "key": rec.key,
            "flags": rec.flags,
            "dropped": rec.dropped,
        }

    out.put(uvloop.run(run()))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loadtest.bench import percentile, proc_cpu_s

    cluster: LocalCluster | None = None
    if args.target:
        addresses = args.target.split(",")
        names = list(addresses)
        urls = args.metrics.split(",") if args.metrics else []
        node_pids: dict[str, int] = {}
    else:
        extra = ["--fsync", args.fsync, "--shards", str(args.shards), "--cache-lines", str(args.cache_lines)]
        cluster = LocalCluster(size=args.nodes, extra_args=extra)
        cluster.start()
        cluster.wait_ready(balanced=True)
        addresses, names = cluster.addresses, list(cluster.ids)
        urls = [cluster.url(n) for n in cluster.ids]
        node_pids = cluster.pids()
    opts = {
        "keys": args.keys,
        "zipf": args.zipf,
        "read_ratio": args.read_ratio,
        "value_bytes": args.value_bytes,
        "policy": args.policy,
        "seed": args.seed,
    }
    per_proc = [
        args.clients // args.processes + (i < args.clients % args.processes) for i in range(args.processes)
    ]
    firsts = [sum(per_proc[:i]) for i in range(len(per_proc))]
    shares = [(f, c) for f, c in zip(firsts, per_proc, strict=True) if c]
    ctx = mp.get_context("spawn")
    ctl = ctx.RawArray("d", 3)
    counters = ctx.RawArray("q", 3 * len(shares))
    queue: mp.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(addresses, f, c, i, len(shares), opts, ctl, counters, queue))
        for i, (f, c) in enumerate(shares)
    ]
    min_warmup = args.warmup
    max_warmup = max(args.warmup_max, min_warmup)
    try:
        started = time.perf_counter()
        for p in procs:
            p.start()

        def check() -> None:
            dead = [p.exitcode for p in procs if p.exitcode is not None]
            if dead:
                raise RuntimeError(f"a worker process exited with {dead[0]}")

        while not all(counters[3 * i + 2] for i in range(len(procs))):
            check()
            time.sleep(0.05)
        prefill_s = time.perf_counter() - started
        t_go = time.perf_counter()
        ctl[GO] = t_go
        windows: list[tuple[int, int]] = []
        seen = (0, 0)
        while True:
            time.sleep(max(0.0, t_go + WINDOW_S * (len(windows) + 1) - time.perf_counter()))
            check()
            now = (
                sum(counters[3 * i] for i in range(len(procs))),
                sum(counters[3 * i + 1] for i in range(len(procs))),
            )
            windows.append((now[0] - seen[0], now[1] - seen[1]))
            seen = now
            elapsed = time.perf_counter() - t_go
            if elapsed >= max_warmup or (elapsed >= min_warmup and stable(windows, args.seconds)):
                break
        warmup_s = time.perf_counter() - t_go
        begin = time.perf_counter()
        ctl[END] = begin + args.seconds
        ctl[BEGIN] = begin
        cpu_before = {n: proc_cpu_s(p) for n, p in node_pids.items()}
        first = [scrape(u) for u in urls]
        last = first
        while time.perf_counter() < begin + args.seconds:
            time.sleep(max(0.0, min(1.0, begin + args.seconds - time.perf_counter())))
            last = [scrape(u) for u in urls]  # drains the homes' fan-out samples into the histograms
        cpu_after = {n: proc_cpu_s(p) for n, p in node_pids.items()}
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
    finally:
        if not ctl[END]:  # aborted: the workers stop at once (after their prefill)
            ctl[END] = time.perf_counter()
            ctl[GO] = ctl[GO] or 1.0
        for p in procs:
            if p.is_alive():
                p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        if cluster is not None:
            cluster.stop()
    return report(
        args,
        names,
        results,
        {
            "prefill_s": prefill_s,
            "warmup_s": warmup_s,
            "windows": windows,
            "t_go": t_go,
            "cpu_before": cpu_before,
            "cpu_after": cpu_after,
            "first": first,
            "last": last,
        },
        percentile,
    )
