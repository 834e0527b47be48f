"""A whole cluster's CPU per operation, without sockets or a disk:
``python -m loadtest.node_core_bench``.

Three real ``NodeCore``s (fabric/core/node.py) in one process, driven in NodeRuntime's order
(turn, sends, apply, replies and broadcasts, sends after the write, advance), every peer
message crossing the real codec as ``PeerBatch`` bytes and every request as the bytes a client
sends. ``--clients`` closed-loop clients keep one request each in flight: by default sent to
the leader of its group, as the native client does (``--via-any-node``: to node ``i % 3``, as
a gateway's requests arrive, forwarded when that node does not lead). Each round every node
with input turns once, then time moves on ``--round-ms``.

It reports the cluster's CPU per op (µs, ``time.process_time``: what the three cores spend,
not wall time) and per-op counts — turns, peer batches and messages, log entries, group
readies — for ``--shards``, so per-message and per-group costs are seen apart from the
network, the disk and anything else running on the machine. Seeded: the same build and
arguments do the same work. ``--profile N`` runs once more under cProfile and prints the top
N functions. Written as JSON too (``--out``, default loadtest/results/).

Workloads: ``kv`` (a put of a random key of ``--keys`` each), ``lock`` (each client its own
resource: acquire, then release).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from collections import Counter, deque
from typing import Any

from syncfab.actors.kv import Put
from syncfab.actors.lock_ops import Acquire, Release
from syncfab.fabric.core.codec import PeerBatch, Request, decode_inbound, encode, replies_in
from syncfab.fabric.core.node import NodeCore
from syncfab.fabric.core.node_config import NodeConfig
from syncfab.fabric.core.routing import group_for

from .bench import write_result

NODES = ("n1", "n2", "n3")
BOOT_MS_MAX = 30_000
ROUNDS_PER_OP_MAX = 1_000  # a run that needs more rounds than this per op is stuck


class Cluster:
    def __init__(self, shards: int, seed: int, round_ms: int) -> None:
        rng = random.Random(seed)
        members = {n: f"{n}:7000" for n in NODES}
        self.config = NodeConfig(shard_count=shards)
        self.cores = {
            n: NodeCore(
                n, members, stored={}, rng=random.Random(rng.getrandbits(64)), now_ms=0, config=self.config
            )
            for n in NODES
        }
        self.now_ms = 0
        self.round_ms = round_ms
        self.inbox: dict[str, deque[bytes]] = {n: deque() for n in NODES}
        self.replies: deque[tuple[bytes, bytes]] = deque()  # (route: the client's id, frame)
        self.counts: Counter[str] = Counter()
        self.tick_due = dict.fromkeys(NODES, 0)

    def _send(self, src: str, sends: dict[str, list[tuple[int, Any]]]) -> None:
        for peer, items in sends.items():
            self.inbox[peer].append(encode(PeerBatch(src, items)))
            self.counts["peer_batches"] += 1
            self.counts["peer_messages"] += len(items)

    def turn(self, node: str) -> None:
        core, inbox = self.cores[node], self.inbox[node]
        while inbox:
            batch = decode_inbound(inbox.popleft())
            assert isinstance(batch, PeerBatch)
            core.deliver_peer(batch.src, batch.items)
        flush = core.turn(self.now_ms, self.now_ms)
        self.counts["turns"] += 1
        self._send(node, flush.sends)
        applied = core.apply()
        self._send(node, applied.sends)
        self.replies.extend(flush.replies)
        self.replies.extend(applied.replies)
        for _topic, msg in flush.publishes + applied.publishes:
            self._send(node, {p: [(0, msg)] for p in NODES if p != node})
        self._send(node, flush.sends_after_persist)
        for _gid, p in flush.writes:
            self.counts["entries_written"] += len(p.entries)
        self.counts["group_readies"] += len(flush.readies)
        core.advance(flush)

    def round(self) -> None:
        # A node turns on input, and on its tick (every tick_ms) as the runtime's timer makes it.
        for node in NODES:
            if self.inbox[node] or self.cores[node].has_work() or self.now_ms >= self.tick_due[node]:
                self.tick_due[node] = self.now_ms + self.config.tick_ms
                self.turn(node)
        self.now_ms += self.round_ms

    def leader_of(self, gid: int) -> str | None:
        for n, core in self.cores.items():
            g = core.groups.get(gid)
            if g is not None and g.raft.leader == n:
                return n
        return None

    def boot(self) -> None:
        """Until every group has a leader and the balancer has spread them."""
        cfg = self.config
        groups = range(cfg.shard_count + 1)
        while any(self.leader_of(g) is None for g in groups):
            assert self.now_ms < BOOT_MS_MAX, "no leader for every group"
            self.round()
        end_ms = self.now_ms + cfg.balance_after_leading_ms + 3 * cfg.balance_interval_ms
        while self.now_ms < end_ms:
            self.round()
        self.counts.clear()


class Clients:
    """Closed-loop clients: each has one request in flight and sends the next when answered."""

    def __init__(
        self, cluster: Cluster, workload: str, count: int, keys: int, via_any: bool, seed: int
    ) -> None:
        self.cluster = cluster
        self.workload = workload
        self.via_any = via_any
        self.rng = random.Random(seed)
        self.keys = keys
        self.ids = [f"c{i}" for i in range(count)]
        self.index = {c: i for i, c in enumerate(self.ids)}
        self.next_id = dict.fromkeys(self.ids, 1)
        self.acquired = dict.fromkeys(self.ids, False)  # lock: release next
        self.ops = 0
        self.errors: Counter[str] = Counter()

    def op(self, client: str) -> Any:
        if self.workload == "kv":
            return Put(f"k{self.rng.randrange(self.keys)}", "v" * 16)
        resource = f"r/{client}"
        if self.acquired[client]:
            return Release(resource, client)
        return Acquire(resource, "exclusive", client, 0, 10_000)

    def send(self, client: str) -> None:
        c = self.cluster
        op = self.op(client)
        rid = self.next_id[client]
        self.next_id[client] = rid + 1
        request = Request(client, rid, rid, op)
        node = NODES[self.index[client] % len(NODES)]
        if not self.via_any:
            node = c.leader_of(group_for(op, c.config.shard_count)) or node
        c.cores[node].deliver_client(client.encode(), request, encode(request))

    def start(self) -> None:
        for client in self.ids:
            self.send(client)

    def collect(self) -> None:
        replies = self.cluster.replies
        while replies:
            route, frame = replies.popleft()
            client = route.decode()
            for reply in replies_in(frame):
                code = getattr(reply.result, "code", None)
                if code is not None:
                    self.errors[code] += 1  # asked again below, under a new id (a bench, not a client)
                else:
                    self.ops += 1
                    if self.workload == "lock":
                        self.acquired[client] = not self.acquired[client]
                self.send(client)


def run(args: argparse.Namespace, profile: cProfile.Profile | None = None) -> dict[str, Any]:
    cluster = Cluster(args.shards, args.seed, args.round_ms)
    cluster.boot()
    clients = Clients(cluster, args.workload, args.clients, args.keys, args.via_any_node, args.seed)
    clients.start()
    warm, total = args.warmup_ops, args.warmup_ops + args.ops
    rounds = 0
    cpu_start_s, counts_start, ops_start = 0.0, Counter[str](), None
    while clients.ops < total:
        if clients.ops >= warm and ops_start is None:
            cpu_start_s, counts_start = time.process_time(), Counter(cluster.counts)
            ops_start = clients.ops
            if profile is not None:
                profile.enable()
        cluster.round()
        clients.collect()
        rounds += 1
        assert rounds < ROUNDS_PER_OP_MAX * total, f"stuck: {clients.ops} ops after {rounds} rounds"
    if profile is not None:
        profile.disable()
    cpu_s = time.process_time() - cpu_start_s
    assert ops_start is not None
    ops = clients.ops - ops_start
    counts = cluster.counts - counts_start
    return {
        "workload": args.workload,
        "shards": args.shards,
        "clients": args.clients,
        "via_any_node": args.via_any_node,
        "ops": ops,
        "us_per_op": round(cpu_s / ops * 1e6, 1),
        "per_op": {k: round(v / ops, 3) for k, v in sorted(counts.items())},
        "errors": dict(clients.errors),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.node_core_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workload", choices=["kv", "lock"])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--ops", type=int, default=20_000, help="measured ops")
    parser.add_argument("--warmup-ops", type=int, default=2_000)
    parser.add_argument("--round-ms", type=int, default=1, help="time a round of turns takes")
    parser.add_argument("--via-any-node", action="store_true", help="client i sends to node i %% 3")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--out", help="JSON result path")
    args = parser.parse_args(argv)
    result = run(args)
    per_op = ", ".join(f"{k} {v}" for k, v in result["per_op"].items())
    print(
        f"{args.workload} shards={args.shards} clients={args.clients}"
        f"{' via any node' if args.via_any_node else ''}: {result['us_per_op']} µs CPU/op "
        f"over {result['ops']:,} ops; per op: {per_op}; errors {result['errors'] or 0}"
    )
    if args.profile:
        profile = cProfile.Profile()
        run(args, profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    write_result(result, f"node-core-{args.workload}", args.out)


if __name__ == "__main__":
    main()
