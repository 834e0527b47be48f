"""The cache benchmark: ``python -m loadtest.bench cache`` (run from loadtest/bench.py).

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
import bisect
import itertools
import math
import multiprocessing as mp
import random
import time
import urllib.request
from array import array
from collections import OrderedDict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from syncfab.fabric.client import AsyncClient, SyncfabError
from syncfab.fabric.server.local import LocalCluster

try:  # not a dependency: only makes the Zipf sampler and the offline sort faster
    import numpy as np
except ImportError:  # pragma: no cover - exercised where numpy is absent
    np = None

WRITE, HIT, MEASURED = 1, 2, 4  # flags of a recorded op
RECORD_MAX = 3_000_000  # recorded ops per worker process (22 bytes each)
WINDOW_S = 2.0  # warm-up: hit rate windows
STABLE_WINDOWS = 8
STABLE_POINTS = 1.0  # the most the trend may move the hit rate over the measured window
PREFILL_CONCURRENCY = 256  # writes in flight per worker process
FANOUT_METRICS = (("syncfab_cache_fanout_ms", 1.0), ("syncfab_cache_fanout_seconds", 1000.0))
KINDS = ("read_hit", "read_miss", "write")
# ctl: shared doubles set by the parent: go (prefill is over), start and end of the window.
GO, BEGIN, END = 0, 1, 2


def key_name(rank: int) -> str:
    return f"ck{rank}"


class Zipf:
    """Ranks 0..n-1, P(r) proportional to 1/(r+1)^s, drawn by inverting the CDF."""

    def __init__(self, n: int, s: float) -> None:
        self.n = n
        if np is not None:
            cdf = np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64) ** s)
            self._cdf: Any = cdf / cdf[-1]
        else:
            acc = list(itertools.accumulate(r**-s for r in range(1, n + 1)))
            self._cdf = [c / acc[-1] for c in acc]

    def ranks(self, uniforms: list[float]) -> list[int]:
        last = self.n - 1
        if np is not None:
            found = np.searchsorted(self._cdf, np.asarray(uniforms), side="right")
            return list(np.minimum(found, last).tolist())
        cdf = self._cdf
        return [min(bisect.bisect_right(cdf, u), last) for u in uniforms]

    def mass(self, top: int) -> float:
        """The share of draws that land on the ``top`` most popular keys."""
        return float(self._cdf[min(top, self.n) - 1]) if top > 0 else 0.0


class Trace:
    """One client's ops, (is_write, rank), from its own seeded generator, made in chunks."""

    CHUNK = 512

    def __init__(self, zipf: Zipf, read_ratio: float, seed: int) -> None:
        self._rng = random.Random(seed)
        self._zipf = zipf
        self._read_ratio = read_ratio
        self._ops: list[tuple[bool, int]] = []
        self._next = 0

    def next(self) -> tuple[bool, int]:
        if self._next == len(self._ops):
            draw = self._rng.random
            uniforms = [draw() for _ in range(2 * self.CHUNK)]
            ranks = self._zipf.ranks(uniforms[1::2])
            self._ops = [(u >= self._read_ratio, r) for u, r in zip(uniforms[0::2], ranks, strict=True)]
            self._next = 0
        op = self._ops[self._next]
        self._next += 1
        return op


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


# -- offline: the ideal caches -------------------------------------------------------------


def _lru_put(lru: OrderedDict[int, None], key: int, capacity: int) -> None:
    if key in lru:
        lru.move_to_end(key)
    else:
        lru[key] = None
        if len(lru) > capacity:
            lru.popitem(last=False)


def simulate(
    t0: array, t1: array, node: array, key: array, flags: array, nodes: int, capacity: int, t_go: float
) -> dict[str, Any]:
    """Both ideal caches on the recorded ops, counted per node over the measured reads, and a
    per-second timeline (from the warm-up's start) of the measured and coherent-ideal hit rates.

    The ops are merged by when they took effect at their best: a read when it was issued (an
    ideal cache answers at once), a write when it was acknowledged (a coherent cache must have
    invalidated the other copies by then, and need not sooner). Also counted: the measured
    misses that joined a miss of the same key at the same node still in flight (the real
    cache answers them with the first one's fetch; an ideal cache has no fetch time)."""
    if np is not None:
        when = np.where(
            np.frombuffer(flags, dtype=np.int8) & WRITE,
            np.frombuffer(t1, dtype=np.float64),
            np.frombuffer(t0, dtype=np.float64),
        )
        order: Any = np.argsort(when, kind="stable").tolist()
    else:
        order = sorted(range(len(t0)), key=lambda i: t1[i] if flags[i] & WRITE else t0[i])
    plain: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(nodes)]
    coherent: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(nodes)]
    seen: list[set[int]] = [set() for _ in range(nodes)]
    invalidated: list[set[int]] = [set() for _ in range(nodes)]
    fetching: list[dict[int, float]] = [{} for _ in range(nodes)]  # key -> when its real miss ended
    fields = (
        "reads",
        "writes",
        "hits",
        "joined",
        "lru_hits",
        "coherent_hits",
        "cold",
        "coherence",
        "capacity",
    )
    per_node = [dict.fromkeys(fields, 0) for _ in range(nodes)]
    timeline: dict[int, list[int]] = {}
    others = [[o for o in range(nodes) if o != j] for j in range(nodes)]
    for i in order:
        j, k, f = node[i], key[i], flags[i]
        p, c = plain[j], coherent[j]
        if f & WRITE:
            if f & MEASURED:
                per_node[j]["writes"] += 1
            _lru_put(p, k, capacity)
            _lru_put(c, k, capacity)
            seen[j].add(k)
            invalidated[j].discard(k)
            for o in others[j]:
                if k in coherent[o]:
                    del coherent[o][k]
                    invalidated[o].add(k)
            continue
        lru_hit = k in p
        _lru_put(p, k, capacity)
        coherent_hit = k in c
        if coherent_hit:
            c.move_to_end(k)
            miss = ""
        else:
            if k in invalidated[j]:
                invalidated[j].discard(k)
                miss = "coherence"
            elif k in seen[j]:
                miss = "capacity"
            else:
                miss = "cold"
            seen[j].add(k)
            _lru_put(c, k, capacity)
        joined = False
        if not f & HIT:
            ends = fetching[j]
            joined = ends.get(k, 0.0) > t0[i]
            if not joined:
                ends[k] = t1[i]
        if f & MEASURED:
            s = per_node[j]
            s["reads"] += 1
            s["hits"] += f & HIT and 1
            s["joined"] += joined
            s["lru_hits"] += lru_hit
            s["coherent_hits"] += coherent_hit
            if miss:
                s[miss] += 1
        second = int(t0[i] - t_go)
        if second >= 0:
            row = timeline.setdefault(second, [0, 0, 0])
            row[0] += 1
            row[1] += f & HIT and 1
            row[2] += coherent_hit
    return {"per_node": per_node, "timeline": [(s, *timeline[s]) for s in sorted(timeline)]}


# -- the nodes' /metrics ---------------------------------------------------------------------

Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Sample | None:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


Labels = tuple[tuple[str, str], ...]


def _delta(before: Sample | None, after: Sample | None, name: str) -> dict[Labels, float]:
    if after is None:
        return {}
    return {labels: v - (before or {}).get((n, labels), 0.0) for (n, labels), v in after.items() if n == name}


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> tuple[float, float] | None:
    """(interpolated value, upper bound of its bucket) from cumulative (le, count) pairs."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank and cumulative > below:
            if math.isinf(upper):
                return lower, upper
            return lower + (upper - lower) * (rank - below) / (cumulative - below), upper
        lower, below = upper, cumulative
    return None


def fanout(before: list[Sample | None], after: list[Sample | None]) -> dict[str, Any] | None:
    """Invalidation fan-out over the window from the first histogram family the nodes expose."""
    for name, to_ms in FANOUT_METRICS:
        if not any(a is not None and any(n == name + "_count" for n, _ in a) for a in after):
            continue
        by_le: dict[float, float] = {}
        count = total = 0.0
        for b, a in zip(before, after, strict=True):
            for labels, v in _delta(b, a, name + "_bucket").items():
                le = float(dict(labels)["le"])
                by_le[le] = by_le.get(le, 0.0) + v
            count += sum(_delta(b, a, name + "_count").values())
            total += sum(_delta(b, a, name + "_sum").values())
        buckets = [(le * to_ms, v) for le, v in sorted(by_le.items())]
        result: dict[str, Any] = {
            "metric": name,
            "count": int(count),
            "mean_ms": round(total * to_ms / count, 3) if count else None,
        }
        for label, q in (("p50", 0.50), ("p99", 0.99)):
            found = bucket_quantile(buckets, q)
            result[f"{label}_ms"] = round(found[0], 3) if found else None
            result[f"{label}_bucket_ms"] = found[1] if found else None
        return result
    return None


# -- the run -------------------------------------------------------------------------------


def _stable(windows: list[tuple[int, int]], seconds: float) -> bool:
    """The trend of the last windows' hit rates would move it by at most STABLE_POINTS over
    the measured window."""
    if len(windows) < STABLE_WINDOWS:
        return False
    last = windows[-STABLE_WINDOWS:]
    if any(reads == 0 for reads, _ in last):
        return False
    rates = [hits / reads for reads, hits in last]
    xs = [WINDOW_S * i for i in range(len(rates))]
    x_mean, y_mean = sum(xs) / len(xs), sum(rates) / len(rates)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, rates, strict=True)) / sum(
        (x - x_mean) ** 2 for x in xs
    )
    return abs(slope) * max(seconds, 10.0) <= STABLE_POINTS / 100


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
            if elapsed >= max_warmup or (elapsed >= min_warmup and _stable(windows, args.seconds)):
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
    return _report(
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


def _report(
    args: argparse.Namespace,
    names: list[str],
    results: list[dict[str, Any]],
    run: dict[str, Any],
    percentile: Any,
) -> dict[str, Any]:
    nodes = len(names)
    by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: dict[str, int] = {}
    t0, t1, node, key, flags = array("d"), array("d"), array("b"), array("i"), array("b")
    dropped = 0
    for r in results:
        for kind, values in r["latencies"].items():
            by_kind[kind].extend(values)
        for name, count in r["errors"].items():
            errors[name] = errors.get(name, 0) + count
        t0.extend(r["t0"])
        t1.extend(r["t1"])
        node.extend(r["node"])
        key.extend(r["key"])
        flags.extend(r["flags"])
        dropped += r["dropped"]
    sim = simulate(t0, t1, node, key, flags, nodes, args.cache_lines, run["t_go"])
    report: dict[str, Any] = {
        "workload": "cache",
        "nodes": nodes,
        "clients": args.clients,
        "processes": args.processes,
        "seconds": args.seconds,
        "fsync": args.fsync,
        "shards": args.shards,
        "options": {
            "keys": args.keys,
            "zipf": args.zipf,
            "read_ratio": args.read_ratio,
            "value_bytes": args.value_bytes,
            "cache_lines": args.cache_lines,
            "policy": args.policy,
            "seed": args.seed,
            "warmup_min_s": args.warmup,
            "warmup_max_s": args.warmup_max,
        },
        "prefill": {
            "keys": args.keys,
            "seconds": round(run["prefill_s"], 1),
            "failed": sum(r["prefill_failed"] for r in results),
        },
        "warmup": {
            "seconds": round(run["warmup_s"], 1),
            "window_s": WINDOW_S,
            "hit_rates": [round(h / r, 4) if r else None for r, h in run["windows"]],
            "stable": run["warmup_s"] < max(args.warmup_max, args.warmup) - 0.01
            or _stable(run["windows"], args.seconds),
        },
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "operations": {},
    }
    total = 0
    for kind in KINDS:
        values = sorted(by_kind[kind])
        total += len(values)
        report["operations"][kind] = {
            "count": len(values),
            "per_s": round(len(values) / args.seconds),
            "p50_ms": round(percentile(values, 0.50) * 1e3, 2),
            "p95_ms": round(percentile(values, 0.95) * 1e3, 2),
            "p99_ms": round(percentile(values, 0.99) * 1e3, 2),
        }
    report["total_per_s"] = round(total / args.seconds)
    every = sorted(v for values in by_kind.values() for v in values)
    report["all_ops"] = {
        "p50_ms": round(percentile(every, 0.50) * 1e3, 2),
        "p95_ms": round(percentile(every, 0.95) * 1e3, 2),
        "p99_ms": round(percentile(every, 0.99) * 1e3, 2),
    }

    def rates(s: dict[str, int]) -> dict[str, Any]:
        reads = s["reads"]
        misses = reads - s["coherent_hits"]
        return {
            "reads": reads,
            "writes": s["writes"],
            "measured": round(s["hits"] / reads, 4) if reads else None,
            "joined_in_flight_miss": round(s["joined"] / reads, 4) if reads else None,
            "ideal_lru": round(s["lru_hits"] / reads, 4) if reads else None,
            "coherent_lru": round(s["coherent_hits"] / reads, 4) if reads else None,
            "coherent_lru_misses": {
                m: round(s[m] / misses, 4) if misses else 0.0 for m in ("cold", "capacity", "coherence")
            },
        }

    summed = {f: sum(s[f] for s in sim["per_node"]) for f in sim["per_node"][0]}
    report["hit_rate"] = {
        **rates(summed),
        "per_node": {names[j]: rates(s) for j, s in enumerate(sim["per_node"])},
        "trace_ops": len(t0),
        "trace_dropped": dropped,
        "zipf_mass_of_top_lines": round(Zipf(args.keys, args.zipf).mass(args.cache_lines), 4),
    }
    report["hit_rate_timeline"] = [
        {"second": s, "reads": r, "measured": round(h / r, 4), "coherent_lru": round(c / r, 4)}
        for s, r, h, c in sim["timeline"]
        if r
    ]
    report["fanout"] = fanout(run["first"], run["last"]) if run["last"] else None
    report["node_cache_events"] = {
        names[j]: {
            dict(labels).get("event", ""): int(v)
            for labels, v in sorted(_delta(b, a, "syncfab_cache_events_total").items())
        }
        for j, (b, a) in enumerate(zip(run["first"], run["last"], strict=True))
    }
    cpu_nodes = {n: round(run["cpu_after"][n] - run["cpu_before"][n], 2) for n in run["cpu_before"]}
    report["cpu_s"] = {
        "nodes": cpu_nodes,
        "clients": round(sum(r["cpu_s"] for r in results), 2),
        "window": "measured",
    }
    if total and cpu_nodes:
        report["cpu_s"]["nodes_us_per_op"] = round(sum(cpu_nodes.values()) / total * 1e6, 1)
    return report


def print_report(report: dict[str, Any]) -> None:
    o = report["options"]
    print(
        f"cache: {o['keys']:,} keys, zipf {o['zipf']}, {o['read_ratio']:.0%} reads, "
        f"{o['value_bytes']} B values, {o['cache_lines']:,} lines per node, {o['policy']}, "
        f"{report['clients']} clients"
    )
    p, w = report["prefill"], report["warmup"]
    shown = [("-" if r is None else f"{r:.1%}") for r in w["hit_rates"]]
    rates = ", ".join(shown if len(shown) <= 10 else [*shown[:2], "...", *shown[-STABLE_WINDOWS:]])
    print(
        f"      prefill: {p['keys']:,} keys in {p['seconds']} s ({p['failed']} failed); warm-up "
        f"{w['seconds']} s, {'stable' if w['stable'] else 'NOT stable (hit --warmup-max)'}; "
        f"hit rate per {w['window_s']:g} s: {rates}"
    )
    for kind, op in report["operations"].items():
        print(
            f"{kind:>13}: {op['per_s']:>8,}/s  p50 {op['p50_ms']} ms  p95 {op['p95_ms']} ms  "
            f"p99 {op['p99_ms']} ms  ({op['count']:,} ops)"
        )
    cpu = report["cpu_s"]
    per_op = f" ({cpu['nodes_us_per_op']} us/op)" if "nodes_us_per_op" in cpu else ""
    errors = report["errors_by_kind"]
    print(
        f"        total: {report['total_per_s']:,}/s, errors {report['errors']}"
        f"{' ' + str(errors) if errors else ''}, cpu s nodes {cpu['nodes']}{per_op} "
        f"clients {cpu['clients']}"
    )

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    h = report["hit_rate"]
    m = h["coherent_lru_misses"]
    print(
        f"     hit rate: {pct(h['measured'])} measured (hits/reads)  ideal LRU {pct(h['ideal_lru'])}  "
        f"coherent LRU {pct(h['coherent_lru'])}  (its misses: cold {m['cold']:.0%}, capacity "
        f"{m['capacity']:.0%}, coherence {m['coherence']:.0%}; top {o['cache_lines']:,} keys draw "
        f"{h['zipf_mass_of_top_lines']:.1%})"
    )
    print(
        f"               {pct(h['joined_in_flight_miss'])} of reads were misses that joined a fetch in "
        "flight at their node"
    )
    print(
        "     per node: "
        + ", ".join(
            f"{n} {pct(r['measured'])} / {pct(r['ideal_lru'])} / {pct(r['coherent_lru'])}"
            for n, r in h["per_node"].items()
        )
        + "  (measured / LRU / coherent LRU)"
    )
    if h["trace_dropped"]:
        print(
            f"      WARNING: {h['trace_dropped']:,} ops not recorded (RECORD_MAX): the ideal figures are off"
        )
    events = report["node_cache_events"]
    if any(events.values()):
        parts = []
        for n, e in events.items():
            reads = e.get("hits", 0) + e.get("misses_capacity", 0) + e.get("misses_coherence", 0)
            parts.append(f"{n} {e.get('hits', 0) / reads:.1%}" if reads else f"{n} -")
        print(
            "  node counters: hit rate "
            + ", ".join(parts)
            + "; "
            + ", ".join(
                f"{k} {sum(e.get(k, 0) for e in events.values()):,}"
                for k in (
                    "misses_coherence",
                    "evictions",
                    "invalidations",
                    "lease_waits",
                    "timeouts",
                    "local_writes",
                    "write_backs",
                )
            )
        )
    f = report["fanout"]
    if f is None or not f["count"]:
        print("       fanout: n/a" + (f" ({f['metric']}: no samples)" if f else ""))
    else:
        print(
            f"       fanout: p50 {f['p50_ms']} ms (bucket <= {f['p50_bucket_ms']:g})  "
            f"p99 {f['p99_ms']} ms (bucket <= {f['p99_bucket_ms']:g})  mean {f['mean_ms']} ms  "
            f"({f['count']:,} writes, {f['metric']})"
        )
