"""Which workloads a seed runs besides (or instead of) the KV clients, and their life cycle.

``choose_workloads`` draws, from its own stream, the set of workloads and their knobs, so the KV
regimes that ``choose_config`` picks stay what they were. A seed runs any of kv, locks and queues,
most seeds one or two: every seed stays fast, and together they cover every mix.

``Workloads`` owns the lock and queue clients: it starts them, switches them to the liveness phase,
tells ``Simulation.finish`` when they have settled (lock clients done, every produce answered,
every shard's queue and dead-letter queue drained), and runs their end-of-run checks.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Any

from sim_cache import CacheChecker, CacheClient
from sim_cache import check_final as check_cache
from sim_locks import FencedResource, LockClient, LockLedger
from sim_queues import DLQ, QUEUE, Consumer, Producer, QueueModel
from sim_rpc import RpcClient

from syncfab.actors.ring import CONTROL_GROUP

if TYPE_CHECKING:
    from simulator import Simulation

WORKLOAD_MIXES: list[tuple[float, tuple[str, ...]]] = [
    (0.18, ("kv",)),
    (0.17, ("kv", "locks")),
    (0.17, ("kv", "queues")),
    (0.09, ("locks",)),
    (0.09, ("queues",)),
    (0.06, ("kv", "locks", "queues")),
    (0.16, ("cache",)),
    (0.08, ("kv", "cache", "queues")),
]


def choose_workloads(rng: random.Random) -> dict[str, Any]:
    """Overrides for SimConfig: the workloads and the knobs of the lock and queue clients."""
    roll, workloads = rng.random(), WORKLOAD_MIXES[-1][1]
    for weight, mix in WORKLOAD_MIXES:
        if roll < weight:
            workloads = mix
            break
        roll -= weight
    ttl_min = rng.choice((300, 600, 1_000))
    overrides: dict[str, Any] = {}
    if rng.random() < 0.3 and workloads != ("kv",):
        # Tiny snapshots: lagging replicas restore the lock table and the queues from images
        # (derived state, such as the wait-for graph, rebuilt) and must agree with those that
        # applied the log. (KV-only seeds keep the regime choose_config gave them.)
        overrides = {"snapshot_entries": rng.randint(5, 15), "snapshot_keep_entries": rng.randint(0, 3)}
    return overrides | {
        "workloads": workloads,
        "wall_skew_ms_max": rng.choice((5, 30, 100)),
        "lock_client_count": rng.randint(3, 5),
        "lock_resource_count": rng.randint(2, 4),
        "lock_plans_per_client": rng.randint(8, 20),
        "lock_ttl_ms_min": ttl_min,
        "lock_ttl_ms_max": ttl_min + rng.choice((200, 1_000, 2_000)),
        "lock_wait_ms_max": rng.choice((300, 800, 1_500)),
        "lock_hold_ms_max": rng.choice((50, 200, 400)),
        "lock_pair_probability": rng.choice((0.2, 0.4, 0.6)),
        "lock_upgrade_probability": rng.choice((0.0, 0.1, 0.2)),
        "lock_abandon_probability": rng.choice((0.05, 0.1, 0.2)),
        "lock_die_probability": rng.choice((0.0, 0.1, 0.2)),
        "lock_shared_probability": rng.choice((0.0, 0.3, 0.6)),
        "queue_producer_count": rng.randint(1, 3),
        "queue_consumer_count": rng.randint(1, 3),
        "queue_produces_per_producer": rng.randint(15, 40),
        "queue_batch_probability": rng.choice((0.0, 0.2, 0.4)),
        "queue_key_probability": rng.choice((0.0, 0.3, 0.6)),
        "queue_dedup_probability": rng.choice((0.0, 0.3, 0.7)),
        "queue_poison_probability": rng.choice((0.0, 0.03, 0.1)),
        "queue_visibility_ms": rng.choice((150, 300, 800)),
        "queue_max_deliveries": rng.randint(2, 5),
        "queue_nack_probability": rng.choice((0.05, 0.15)),
        "queue_lapse_probability": rng.choice((0.0, 0.05, 0.15)),
        "queue_return_probability": rng.choice((0.0, 0.05)),
        "queue_long_poll_probability": rng.choice((0.0, 0.2, 0.5)),
        "liveness_produces": rng.randint(3, 10),
        "liveness_produce_gap_ms": rng.choice((0, 200, 400)),
        # Drawn last, so every earlier knob of a seed stays what it was.
        "lock_batching": rng.random() < 0.5,
        "cache_client_count": rng.randint(3, 6),
        "cache_key_count": rng.randint(2, 4),
        "cache_ops_per_client": rng.randint(20, 50),
        "cache_write_back_keys": rng.choice((0, 0, 1, 2)),
        "cache_lease_ms": rng.choice((300, 600, 1_500)),
        "cache_flush_ms": rng.choice((20, 100, 400)),
        "cache_lines_max": rng.choice((1, 2, 100)),
        "cache_directory_entries_max": rng.choice((1, 2, 100)),
    }


class Workloads:
    def __init__(self, sim: Simulation, rng: random.Random) -> None:
        self._sim = sim
        cfg = sim.config
        self.names = cfg.workloads
        self.ledger = LockLedger(sim)
        self.resources = {f"res{i}": FencedResource(f"res{i}", sim) for i in range(cfg.lock_resource_count)}
        self.lockers: list[LockClient] = []
        self.batcher: RpcClient | None = None
        if "locks" in self.names:
            self.lockers = [
                LockClient(i, sim, random.Random(rng.getrandbits(64)), self.resources, self.ledger)
                for i in range(cfg.lock_client_count)
            ]
            if cfg.lock_batching:
                # One coalescing ClientCore carries every locker's acquires and releases: what
                # piles up within a few ms leaves as one LockBatch, under every fault of the seed.
                self.batcher = RpcClient(
                    "lock-batcher", sim, random.Random(rng.getrandbits(64)), coalescing=True
                )
                for locker in self.lockers:
                    locker.batcher = self.batcher
        self.cache_keys = [f"c{i}" for i in range(cfg.cache_key_count)]
        self.write_back_keys = set(self.cache_keys[: cfg.cache_write_back_keys])
        self.cachers: list[CacheClient] = []
        self.cache_checker: CacheChecker | None = None
        if "cache" in self.names:
            self.cachers = [
                CacheClient(i, sim, random.Random(rng.getrandbits(64)), self.cache_keys, self.write_back_keys)
                for i in range(cfg.cache_client_count)
            ]
            self.cache_checker = CacheChecker(sim)
        self.model = QueueModel(sim)
        self.producers: list[Producer] = []
        self.consumers: list[Consumer] = []
        if "queues" in self.names:
            self.producers = [
                Producer(i, sim, random.Random(rng.getrandbits(64)), self.model)
                for i in range(cfg.queue_producer_count)
            ]
            self.consumers = [
                Consumer(i, sim, random.Random(rng.getrandbits(64)), self.model)
                for i in range(cfg.queue_consumer_count)
            ]

    def start(self) -> None:
        for locker in self.lockers:
            locker.start()
        for producer in self.producers:
            producer.start()
        for i, consumer in enumerate(self.consumers):
            consumer.start(configure=i == 0)
        for cacher in self.cachers:
            cacher.start()

    def observe_turn(self) -> None:
        if self.cache_checker is not None:
            self.cache_checker.observe()

    def enter_liveness(self) -> None:
        cfg = self._sim.config
        for locker in self.lockers:
            locker.enter_liveness(cfg.liveness_lock_plans)
        for producer in self.producers:
            producer.enter_liveness(cfg.liveness_produces)
        for consumer in self.consumers:
            consumer.enter_liveness()
        for cacher in self.cachers:
            cacher.enter_liveness(cfg.liveness_cache_ops)

    def settled(self) -> bool:
        if not all(c.done for c in self.lockers) or not all(p.done for p in self.producers):
            return False
        if not all(c.done for c in self.cachers):
            return False
        if self.batcher is not None and self.batcher.pending:
            return False
        return not self.consumers or not self.queue_gap()

    def queue_gap(self) -> str | None:
        """Why the queue is not drained yet: a shard without a leader, or messages left."""
        sim = self._sim
        for gid in sim.placement.shards:
            leader = sim.leader_of(gid)
            if leader is None:
                return f"shard {gid} has no leader"
            queues = sim.core(leader).groups[gid].machine.services["queues"]._queues  # type: ignore[attr-defined]
            for name in (QUEUE, DLQ):
                q = queues.get(name)
                if q is not None and q.depth:
                    return f"shard {gid} {name}: {q.depth} messages, {len(q.inflight)} in flight"
        return None

    def check_final(self) -> None:
        """After convergence: nothing waits or is held once every lock client closed, and every
        acknowledged produce was delivered."""
        sim = self._sim
        if self.lockers:
            leader = sim.leader_of(CONTROL_GROUP)
            assert leader is not None
            table = sim.core(leader).groups[CONTROL_GROUP].machine.services["locks"]
            left = {
                r: (sorted(res.holders), [w.owner for w in res.queue])
                for r, res in table._resources.items()  # type: ignore[attr-defined]
            }
            if left:
                sim.fail("lock liveness", f"every client closed, yet the table holds {left}")
        if self.consumers:
            self.model.check_final()
        if self.cachers:
            check_cache(sim, self.cachers, self.write_back_keys)

    def describe_open(self) -> list[str]:
        out = [c.describe_open() for c in (*self.lockers, *self.cachers) if not c.done]
        if self.batcher is not None and self.batcher.pending:
            out.append(self.batcher.describe_open())
        out += [p.describe_open() for p in self.producers if not p.done]
        gap = self.queue_gap() if self.consumers else None
        if gap:
            out.append(f"queue not drained: {gap}")
        return out

    def stats(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for locker in self.lockers:
            total.update({f"lock.{k}": v for k, v in locker.stats.items()})
            total["lock.calls"] += locker.calls
            total["lock.unknown"] += locker.unknown
        total.update({f"lock.ledger.{k}": v for k, v in self.ledger.stats.items()})
        for rpc in (*self.lockers, *([self.batcher] if self.batcher is not None else [])):
            total["lock.batches"] += rpc.core.stats["lock_batches"]
            total["lock.batched_ops"] += rpc.core.stats["batched_lock_ops"]
            total["lock.batch_waits"] += rpc.core.stats["batch_waits"]
        for res in self.resources.values():
            total["lock.resource_accepted"] += res.accepted
            total["lock.resource_rejected"] += res.rejected
        total.update({f"queue.{k}": v for k, v in self.model.stats.items()})
        for cacher in self.cachers:
            total.update({f"cache.{k}": v for k, v in cacher.stats.items()})
        for client in (*self.producers, *self.consumers):
            total["queue.calls"] += client.calls
            total["queue.unknown"] += client.unknown
        return {k: v for k, v in sorted(total.items()) if v}
