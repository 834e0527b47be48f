"""The cache benchmark's figures (loadtest/cache_trace.py): the recorded ops replayed through
ideal caches, what the nodes' /metrics say between two scrapes, the report and its printout."""

from __future__ import annotations

import argparse
import math
import urllib.request
from array import array
from collections import OrderedDict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loadtest.cache_workload import HIT, KINDS, MEASURED, STABLE_WINDOWS, WINDOW_S, WRITE, Zipf, np, stable

FANOUT_METRICS = (("syncfab_cache_fanout_ms", 1.0), ("syncfab_cache_fanout_seconds", 1000.0))


# -- the ideal caches ----------------------------------------------------------------------


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


# -- the report ---------------------------------------------------------------------------


def report(
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
            or stable(run["windows"], args.seconds),
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
