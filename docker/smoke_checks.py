"""What docker/smoke.sh checks of a running compose cluster, through the host's ports only:
the gateways on 8101/8201/8301, the native ports 7101/7201/7301, Prometheus on 9090.

    python3 docker/smoke_checks.py --engine podman --containers n1=NAME,n2=NAME,n3=NAME

Each phase polls with a deadline and prints how long it took; the first failure raises.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from syncfab.actors.ring import shard_for_key
from syncfab.fabric.client import AsyncClient
from syncfab.fabric.server.local import placement_reached

GATEWAYS = {"n1": 8101, "n2": 8201, "n3": 8301}
SCALE_OUT = {"n4": 8401}  # docker/compose.scale-out.yml
NATIVE = {"n1": "127.0.0.1:7101", "n2": "127.0.0.1:7201", "n3": "127.0.0.1:7301"}
PROMETHEUS = "http://127.0.0.1:9090"
NATIVE_CALL_MAX_S = 0.5  # an unusable address costs a whole attempt (1 s) per call
WRITE_DURING_FAILOVER_MAX_S = 3.0


class CheckFailed(AssertionError):
    pass


def check(condition: Any, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@contextmanager
def phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    started = time.monotonic()
    print(f"smoke: {name} ...", flush=True)
    yield
    timings[name] = time.monotonic() - started
    print(f"smoke: {name} ok ({timings[name]:.1f} s)", flush=True)


def http(node: str, method: str, path: str, body: Any = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    port = GATEWAYS.get(node) or SCALE_OUT[node]
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, ValueError, KeyError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.1)
    raise CheckFailed(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def healthy(node: str) -> bool:
    return http(node, "GET", "/health", timeout_s=1)[0] == 200


def cluster_settled(nodes: list[str]) -> bool:
    """Every node answers, sees every member alive, and agrees on a leader for every group."""
    seen = set()
    for node in nodes:
        view = http(node, "GET", "/cluster", timeout_s=2)[1]
        leaders = (view["leader"], *(s["leader"] for s in view["shards"]))
        if None in leaders or not all(m["alive"] for m in view["members"]):
            return False
        seen.add(leaders)
    return len(seen) == 1


def check_services() -> None:
    check(http("n1", "PUT", "/kv/smoke/hello", "world")[0] == 200, "KV write on n1")
    for node in ("n2", "n3"):
        status, body = http(node, "GET", "/kv/smoke/hello")
        check(status == 200 and body["value"] == "world", f"KV read on {node}: {status} {body}")
    grant = {"resource": "smoke/lock", "mode": "exclusive", "client_id": "smoke-1", "wait_ms": 2000}
    status, body = http("n2", "POST", "/lock/acquire", grant)
    check(status == 200 and body["granted"] and body["fencing_token"] > 0, f"lock on n2: {status} {body}")
    status, body = http("n3", "GET", "/lock/smoke/lock")
    check(status == 200 and "smoke-1" in json.dumps(body), f"lock seen on n3: {status} {body}")
    release = {"resource": "smoke/lock", "client_id": "smoke-1"}
    check(http("n2", "POST", "/lock/release", release)[0] == 200, "lock release on n2")
    status, body = http("n1", "POST", "/queue/produce", {"queue": "smoke", "data": {"n": 1}})
    check(status == 200 and body["message_id"], f"produce on n1: {status} {body}")
    status, got = http("n2", "GET", "/queue/consume?queue=smoke&consumer=w1&max=1&wait_ms=3000")
    check(status == 200 and [m["data"] for m in got["messages"]] == [{"n": 1}], f"consume on n2: {got}")
    ack = {"queue": "smoke", "message_ids": [got["messages"][0]["message_id"]]}
    check(http("n3", "POST", "/queue/ack", ack) == (200, {"acked": 1}), "ack on n3")
    status, body = http("n1", "POST", "/cache/write", {"key": "smoke/c", "value": {"v": 1}})
    check(status == 200 and body["state"] == "E", f"cache write on n1: {status} {body}")
    status, body = http("n2", "GET", "/cache/read?key=smoke/c")
    check(status == 200 and body["value"] == {"v": 1}, f"cache read on n2: {status} {body}")


def check_prometheus() -> None:
    def targets_up() -> bool:
        targets = get_json(f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
        return len(targets) == 3 and all(t["health"] == "up" for t in targets)

    wait_for("Prometheus to report three targets up", targets_up, timeout_s=60)
    query = urllib.parse.quote("sum by (instance) (syncfab_raft_is_leader)")
    seen: list[Any] = []

    def leaders_counted() -> bool:
        # Each target is scraped at its own moment (every 5 s): while the balancer moves a
        # shard's leadership between two scrapes the sum can miss or double it, so it is
        # polled until one round of scrapes agrees.
        seen[:] = get_json(f"{PROMETHEUS}/api/v1/query?query={query}")["data"]["result"]
        return len(seen) == 3 and sum(float(r["value"][1]) for r in seen) == 9

    if not leaders_counted():
        wait_for(f"Prometheus to count 9 groups led, control + 8 shards (it saw {seen})", leaders_counted, 60)
    instances = sorted(r["metric"]["instance"] for r in seen)
    check(instances == ["n1:8101", "n2:8101", "n3:8101"], f"syncfab_raft_is_leader per instance: {seen}")


def most_leading() -> str:
    view = http("n1", "GET", "/cluster")[1]
    led = {n: sum(s["leader"] == n for s in view["shards"]) for n in GATEWAYS}
    return max(sorted(led), key=lambda n: (led[n], view["leader"] == n))


def check_failover(engine: str, containers: dict[str, str]) -> str:
    """Stop the container of the node leading the most shards while writes go on through the
    survivors' gateways (through the stop and a second after it): every one must succeed."""
    victim = most_leading()
    survivors = [n for n in GATEWAYS if n != victim]
    stopping = subprocess.Popen([engine, "stop", containers[victim]], stdout=subprocess.DEVNULL)
    started = time.monotonic()
    stop_s: float | None = None
    writes: list[float] = []
    while stop_s is None or time.monotonic() - started < stop_s + 1.0:
        if stop_s is None and stopping.poll() is not None:
            stop_s = time.monotonic() - started
        node, i = survivors[len(writes) % 2], len(writes)
        t = time.monotonic()
        status, body = http(node, "PUT", f"/kv/smoke/failover/{i}", i, timeout_s=15)
        check(status == 200, f"write {i} on {node} while {victim} stops: {status} {body}")
        writes.append(time.monotonic() - t)
    check(stopping.wait() == 0, f"{engine} stop {containers[victim]}")
    worst = max(writes)
    print(
        f"smoke: stopped {victim} (led the most shards) in {stop_s:.2f} s; {len(writes)} writes on "
        f"the survivors meanwhile, first {writes[0] * 1000:.0f} ms, worst {worst * 1000:.0f} ms"
    )
    check(worst < WRITE_DURING_FAILOVER_MAX_S, f"a write took {worst:.2f} s during the failover")
    view = http(survivors[0], "GET", "/cluster")[1]
    check(all(s["leader"] in survivors for s in view["shards"]), f"shards without a live leader: {view}")
    return victim


def check_rejoin(engine: str, containers: dict[str, str], node: str) -> None:
    subprocess.run([engine, "start", containers[node]], check=True, stdout=subprocess.DEVNULL)
    wait_for(f"{node} to answer again", lambda: healthy(node), 60)
    wait_for("the three to agree again", lambda: cluster_settled(list(GATEWAYS)), 60)
    # It has what was written while it was away (a linearizable read, served by the leaders).
    status, body = http(node, "GET", "/kv/smoke/failover/0")
    check(status == 200 and body["value"] == 0, f"read on {node} after its restart: {status} {body}")
    reference = next(n for n in GATEWAYS if n != node)
    commits = {g["group"]: g["commit_index"] for g in http(reference, "GET", "/status")[1]["groups"]}

    def caught_up() -> bool:
        applied = {g["group"]: g["applied_index"] for g in http(node, "GET", "/status")[1]["groups"]}
        return all(applied.get(g, -1) >= i for g, i in commits.items())

    wait_for(f"{node} to apply what the others had committed", caught_up, 30)
    check(http(node, "PUT", "/kv/smoke/rejoined", node)[0] == 200, f"write through {node}")

    # The balancer hands a rejoined node its preferred shards once it has been alive and caught
    # up a while: every node leads again (the native check reaches each through its leaders).
    def every_node_leads() -> bool:
        view = http(reference, "GET", "/cluster")[1]
        return {s["leader"] for s in view["shards"]} == set(GATEWAYS)

    wait_for(f"{node} to lead shards again", every_node_leads, 60)


def check_native() -> None:
    """The native client on the host, given the published ports: it must learn those same
    addresses from the cluster and reach every node with no call waiting out an attempt."""

    async def run() -> tuple[dict[str, str], dict[str, int], list[float], set[str]]:
        latencies: list[float] = []
        async with AsyncClient(list(NATIVE.values()), timeout_s=10) as client:
            keys = {shard_for_key(f"native/{i}", client.shard_count): f"native/{i}" for i in range(500)}
            for shard, key in sorted(keys.items()):
                started = time.monotonic()
                await client.put(key, shard)
                check(await client.get(key) == shard, f"native read of {key}")
                latencies.append(time.monotonic() - started)
            async with client.lock("smoke/native-lock") as grant:
                check(grant.fencing_token > 0, "native lock")
            await client.produce("smoke-native", {"n": 2})
            got = await client.consume("smoke-native", "w2", max=1, wait_ms=3000)
            check([m["data"] for m in got] == [{"n": 2}], f"native consume: {got}")
            await client.ack("smoke-native", [got[0]["message_id"]])
            leaders = {client.leaders[s] for s in keys}
            return dict(client.members), dict(client.stats), latencies, leaders

    members, stats, latencies, leaders = asyncio.run(run())
    check(members == NATIVE, f"the cluster handed the client {members}, not the published {NATIVE}")
    check(leaders == set(NATIVE), f"shard leaders on {sorted(leaders)}: not every node was reached")
    check(stats["retries"] == 0 and stats["timeouts"] == 0, f"native calls retried: {stats}")
    worst = max(latencies)
    check(worst < NATIVE_CALL_MAX_S, f"a native put+get took {worst:.2f} s")
    print(f"smoke: native client: {len(latencies)} put+get pairs, worst {worst * 1000:.1f} ms, {stats}")


def member(engine: str, containers: dict[str, str], *args: str) -> Any:
    """``syncfab member ...`` run in n1's container, as the README has it (compose exec)."""
    cmd = [engine, "exec", containers["n1"], "syncfab", "member", *args, "--endpoints", "n1:8101", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    check(out.returncode == 0, f"{' '.join(cmd)}: exit {out.returncode}: {out.stdout} {out.stderr}")
    return json.loads(out.stdout)


def check_scale_out(engine: str, containers: dict[str, str]) -> None:
    """n4 (started by smoke.sh with --join) added, every group's replicas moved to the
    placement over four nodes, n4 serving what was written before; then removed again."""
    wait_for("n4's /health", lambda: healthy("n4"), 90)
    four = ["n1", "n2", "n3", "n4"]
    table = member(engine, containers, "add", "n4", "n4:7101")
    check([m["id"] for m in table["members"]] == four, f"add n4: {table}")
    get = lambda node, path: http(node, "GET", path, timeout_s=2)[1]  # noqa: E731
    wait_for("every group on four nodes' placement", lambda: placement_reached(get, four), 60)
    check(http("n4", "GET", "/kv/smoke/hello") == (200, {"key": "smoke/hello", "value": "world"}), "n4 reads")
    table = member(engine, containers, "remove", "n4")
    check(len(table["members"]) == 3, f"remove n4: {table}")
    wait_for("every group back on three", lambda: placement_reached(get, list(GATEWAYS)), 60)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="podman", help="podman or docker: stops and starts a node")
    parser.add_argument("--containers", required=True, help="n1=NAME,n2=NAME,n3=NAME")
    parser.add_argument("--scale-out", action="store_true", help="only: add n4 (running), then remove it")
    args = parser.parse_args(argv)
    containers = dict(item.split("=", 1) for item in args.containers.split(","))
    timings: dict[str, float] = {}
    try:
        if args.scale_out:
            with phase("scale out to n4 and back", timings):
                check_scale_out(args.engine, containers)
        else:
            run_phases(args.engine, containers, timings)
    except CheckFailed as e:
        print(f"smoke: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def run_phases(engine: str, containers: dict[str, str], timings: dict[str, float]) -> None:
    with phase("gateways healthy", timings):
        for node in GATEWAYS:
            wait_for(f"{node}'s /health", lambda n=node: healthy(n), 90)
        wait_for("one leader of every group, all agreed", lambda: cluster_settled(list(GATEWAYS)), 60)
    with phase("kv, lock, queue, cache across nodes", timings):
        check_services()
    with phase("prometheus: targets up, a syncfab query", timings):
        check_prometheus()
    with phase("stop the node leading the most shards", timings):
        victim = check_failover(engine, containers)
    with phase(f"start {victim} again: rejoined, caught up", timings):
        check_rejoin(engine, containers, victim)
    with phase("native client on the advertised addresses", timings):
        check_native()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
