"""HTTP load against syncfab's gateways or etcd's JSON gateway: the same operation, spelled in
each system's API, from wrk or from one Python aiohttp client.

An operation for syncfab and for etcd:
- ``kv``: put a 64-byte value under one of 1,000 keys (syncfab ``PUT /kv/{key}``; etcd
  ``POST /v3/kv/put``).
- ``lock``: acquire and release, each worker its own resource (syncfab ``POST /lock/acquire``
  and ``/lock/release``; etcd ``POST /v3/lock/lock`` on a lease the worker granted first, then
  ``/v3/lock/unlock``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

KEYS = 1_000
VALUE = "v" * 64
QUANTILE_STEPS = 999  # wrk reports its latency as quantiles 0.1%, 0.2% ... 99.9%


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def etcd_put_body(key: str) -> str:
    return json.dumps({"key": _b64(key), "value": _b64(VALUE)})


# -- wrk ------------------------------------------------------------------------------------


def wrk_script(system: str, seed: int) -> str:
    """A wrk Lua script putting random keys; ``done`` prints one JSON line of the run."""
    if system == "syncfab":
        requests = [("PUT", f"/kv/k{i}", json.dumps(VALUE)) for i in range(KEYS)]
    else:
        requests = [("POST", "/v3/kv/put", etcd_put_body(f"k{i}")) for i in range(KEYS)]
    table = ",\n".join("{{{}, {}, {}}}".format(*tuple(json.dumps(x) for x in r)) for r in requests)
    return f"""
math.randomseed({seed})
local reqs = {{
{table}
}}
local headers = {{["Content-Type"] = "application/json"}}
request = function()
  local r = reqs[math.random(1, #reqs)]
  return wrk.format(r[1], r[2], headers, r[3])
end
done = function(summary, latency, requests)
  local e = summary.errors
  local q = {{}}
  for i = 1, {QUANTILE_STEPS} do q[i] = latency:percentile(i / 10) end
  io.write(string.format('WRKJSON {{"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, ',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status))
  io.write('"quantiles_us": [' .. table.concat(q, ",") .. ']}}\\n')
end
"""


def start_wrk(system: str, url: str, connections: int, seconds: float, seed: int) -> subprocess.Popen[str]:
    fd, path = tempfile.mkstemp(suffix=".lua", prefix="wrk-")
    with os.fdopen(fd, "w") as f:
        f.write(wrk_script(system, seed))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "10s", "-s", path, url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate()
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON ") :])
    raise RuntimeError(f"wrk printed no result:\n{out}")


def pooled_quantiles_ms(runs: list[dict[str, Any]]) -> dict[str, float]:
    """p50/p95/p99 of several wrk processes together: each run's quantile function, sampled
    at 999 points and weighted by its request count, pooled. (wrk keeps its histogram to
    itself; this is exact to within a 0.1% step of each run.)"""
    samples: list[tuple[float, float]] = []
    for r in runs:
        weight = r["requests"] / QUANTILE_STEPS
        samples.extend((q, weight) for q in r["quantiles_us"])
    samples.sort()
    total = sum(w for _, w in samples)
    found: dict[str, float] = {}
    acc = 0.0
    marks = [("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99)]
    for value, weight in samples:
        acc += weight
        while marks and acc >= marks[0][1] * total:
            found[marks.pop(0)[0]] = round(value / 1000, 2)
    for name, _ in marks:
        found[name] = round(samples[-1][0] / 1000, 2)
    return found


# -- one aiohttp client ---------------------------------------------------------------------

Op = Callable[[Any, str, int, random.Random], Awaitable[None]]


class CallFailed(Exception):
    pass


async def _post(session: Any, url: str, body: Any) -> Any:
    async with session.post(url, json=body) as r:
        data = await r.read()
        if r.status != 200:
            raise CallFailed(f"{r.status} {data[:200]!r}")
        return json.loads(data)


async def syncfab_kv(session: Any, url: str, n: int, rng: random.Random) -> None:
    async with session.put(f"{url}/kv/k{rng.randrange(KEYS)}", json=VALUE) as r:
        data = await r.read()
        if r.status != 200:
            raise CallFailed(f"{r.status} {data[:200]!r}")


async def etcd_kv(session: Any, url: str, n: int, rng: random.Random) -> None:
    await _post(session, f"{url}/v3/kv/put", {"key": _b64(f"k{rng.randrange(KEYS)}"), "value": _b64(VALUE)})


def syncfab_lock(prefix: str) -> Op:
    async def op(session: Any, url: str, n: int, rng: random.Random) -> None:
        body = {"resource": f"{prefix}/r{n}", "client_id": f"{prefix}/w{n}"}
        granted = await _post(session, f"{url}/lock/acquire", body)
        if not granted.get("granted"):
            raise CallFailed(f"not granted: {granted}")
        await _post(session, f"{url}/lock/release", body)

    return op


def etcd_lock(prefix: str) -> Op:
    leases: dict[int, str] = {}

    async def op(session: Any, url: str, n: int, rng: random.Random) -> None:
        if n not in leases:
            leases[n] = (await _post(session, f"{url}/v3/lease/grant", {"TTL": 60}))["ID"]
        body = {"name": _b64(f"{prefix}/r{n}"), "lease": leases[n]}
        held = await _post(session, f"{url}/v3/lock/lock", body)
        await _post(session, f"{url}/v3/lock/unlock", {"key": held["key"]})

    return op


def make_op(system: str, workload: str) -> Op:
    prefix = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    if workload == "kv":
        return syncfab_kv if system == "syncfab" else etcd_kv
    return syncfab_lock(prefix) if system == "syncfab" else etcd_lock(prefix)


def aiohttp_worker(
    system: str, workload: str, urls: list[str], workers: int, warmup_s: float, seconds: float, out: Any
) -> None:
    """In a process of its own: ``workers`` concurrent loops over one aiohttp session, worker
    n on member n mod len(urls). Puts latencies (s), errors and the process's CPU seconds."""
    import aiohttp
    import uvloop

    async def run() -> dict[str, Any]:
        op = make_op(system, workload)
        connector = aiohttp.TCPConnector(limit=workers, limit_per_host=workers)
        latencies: list[float] = []
        errors: list[str] = []
        done = 0  # warm-up included, for CPU per operation
        async with aiohttp.ClientSession(connector=connector) as session:
            begin = time.perf_counter() + warmup_s
            end = begin + seconds

            async def loop(n: int) -> None:
                nonlocal done
                rng = random.Random(n)
                url = urls[n % len(urls)]
                while (started := time.perf_counter()) < end:
                    try:
                        await op(session, url, n, rng)
                    except (TimeoutError, CallFailed, aiohttp.ClientError) as e:
                        errors.append(repr(e)[:200])
                        continue
                    done += 1
                    if started >= begin:
                        latencies.append(time.perf_counter() - started)

            cpu0 = time.process_time()
            await asyncio.gather(*(loop(n) for n in range(workers)))
            cpu_s = time.process_time() - cpu0
        return {
            "latencies": latencies,
            "ops_all": done,
            "errors": len(errors),
            "error_examples": errors[:3],
            "cpu_s": cpu_s,
        }

    out.put(uvloop.run(run()))
