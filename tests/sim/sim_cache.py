"""The cache workload: clients reading and writing a few hot keys through every node's near
cache, and the cache's own safety properties, checked after every turn.

Each ``CacheClient`` is bound to one node's cache (as a native client is to its ``cache_node``)
and does one op at a time: reads (most of them, so hits happen), writes with either policy,
compare-and-sets on the version it last saw, deletes and invalidates. Its calls are its
ClientCore's (sim_rpc.py), pinned to its node: a timeout sends the same request again (the same
bytes: the session table applies a write once) there, and to the other nodes once it has been
silent twice. Every op lands in ``history`` for the linearizability checker, hits
included; a read's or a write's (version, value) in ``versions``.

``CacheChecker`` looks at every live node after every turn:

1. single writer / multiple readers: a key served in E or M by one node is served by no other;
2. directory coverage: a line a node may serve is in its home's directory (when that home is
   active in the line's epoch);
3. each active home's own invariants (``CacheHome.check``).

A line counts as served while its shard's lease is live on its node's own clock — exactly what
the node itself checks before it answers.

At the end, ``check_final``: the history is linearizable per key (for write_back keys only in
seeds where no node crashed: an owner's crash may lose its unwritten writes, as documented; and
a write_back write acknowledged within two flush periods and a commit before its node was paused
past a cache lease counts as of unknown outcome — the loss the README allows a cut-off owner),
and no two values of a key ever reported the same version.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from linearizability import Operation, check_kv_history
from sim_rpc import RpcClient

from syncfab.actors.cache_ops import (
    EXCLUSIVE,
    MODIFIED,
    SHARED,
    WRITE_BACK,
    WRITE_THROUGH,
    CacheDelete,
    CacheInvalidate,
    CacheRead,
    CacheWrite,
)
from syncfab.actors.raft import Role
from syncfab.actors.results import RETRYABLE, Err, Ok, Result
from syncfab.actors.ring import shard_for_key
from syncfab.fabric.core.codec import Reply

if TYPE_CHECKING:
    from simulator import Simulation

    from syncfab.actors.cache_home import CacheHome

# What "plus one commit" of the README's write_back loss may take here: the write-back's trip
# home and its Raft commit on the simulated network.
LOST_COMMIT_MS = 200

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode


@dataclass(slots=True)
class _Op:
    kind: str
    key: str
    value: str | None
    call_ms: int


class CacheClient(RpcClient):
    def __init__(
        self, index: int, sim: Simulation, rng: random.Random, keys: list[str], write_back_keys: set[str]
    ) -> None:
        super().__init__(f"cache-{index}", sim, rng)
        self.index = 1000 + index  # apart from the KV clients' in a shared history
        self.sim = sim
        self.keys = keys
        self.write_back_keys = write_back_keys
        self.home_node = sim.node_ids[index % len(sim.node_ids)]
        self.ops_left = sim.config.cache_ops_per_client
        self.liveness_left = 0
        self.liveness = False
        self.current: _Op | None = None
        self._n = 0
        self.history: list[Operation] = []
        self.versions: list[tuple[str, int, str | None]] = []  # (key, version, value)
        self.seen: dict[str, int] = {}  # key -> last version this client saw
        self.stats: Counter[str] = Counter()

    def start(self) -> None:
        self.sim.after(self.rng.randint(0, 100), self._next)

    def enter_liveness(self, ops: int) -> None:
        self.liveness, self.liveness_left = True, ops
        if self.current is None:
            self.sim.after(self.rng.randint(0, 20), self._next)

    @property
    def done(self) -> bool:
        return self.liveness and self.liveness_left == 0 and self.current is None

    def _next(self) -> None:
        if self.current is not None:
            return
        sim, cfg = self.sim, self.sim.config
        if self.liveness:
            if self.liveness_left == 0:
                return
            self.liveness_left -= 1
            deadline = None
        elif self.ops_left > 0 and sim.now < cfg.safety_duration_ms:
            self.ops_left -= 1
            deadline = cfg.op_deadline_ms
        else:
            return
        self._n += 1
        key = self.rng.choice(self.keys)
        roll = self.rng.random()
        value: str | None = None
        policy = WRITE_BACK if key in self.write_back_keys else WRITE_THROUGH
        if roll < 0.55:
            kind, op = "get", CacheRead(key)
        elif roll < 0.85:
            value = f"{self.name}#{self._n}"
            kind, op = "put", CacheWrite(key, msgspec.Raw(_encode(value)), policy)
        elif roll < 0.91:
            value = f"{self.name}#{self._n}"
            expected = self.seen.get(key, 0) if self.rng.random() < 0.8 else self.rng.randint(0, 5)
            kind, op = "cas", CacheWrite(key, msgspec.Raw(_encode(value)), policy, expected_version=expected)
        elif roll < 0.96:
            kind, op = "delete", CacheDelete(key)
        else:
            kind, op = "invalidate", CacheInvalidate(key)
        self.current = _Op(kind, key, value, sim.now)
        self.stats[kind] += 1
        # Served by its own node's cache: the core asks there twice, then the others (every
        # node's cache is coherent); a write_back write only ever there (ClientCore keeps it).
        self.call(op, self._answered, deadline, node=self.home_node)

    def observe_reply(self, reply: Reply) -> None:
        result = reply.result
        if isinstance(result, Err) and result.code in RETRYABLE:
            self.stats[f"err.{result.code}"] += 1

    def _answered(self, result: Result | None) -> None:
        op = self.current
        assert op is not None
        now = self.sim.now
        match op.kind, result:
            case _, None:
                self.stats["unknown"] += 1
                self._finish(op, None, None)
            case "get", Ok(value=found):
                value = _decode(found["value"]) if isinstance(found["value"], bytes) else found["value"]
                self.stats["hits" if found["hit"] else "misses"] += 1
                self.seen[op.key] = found["version"]
                self.versions.append((op.key, found["version"], value))
                self._finish(op, now, value)
            case "get", Err(code="not_found"):
                self.seen[op.key] = 0
                self._finish(op, now, None)
            case (("put" | "cas"), Ok(value=written)):
                self.seen[op.key] = written["version"]
                self.versions.append((op.key, written["version"], op.value))
                self._finish(op, now, None)
            case "cas", Err(code="version_mismatch", detail=detail):
                self.stats["cas_mismatch"] += 1
                self.seen[op.key] = detail["version"]
                self.current = None  # it changed nothing: not in the history
                self.sim.after(self.rng.randint(0, 40), self._next)
            case (("delete" | "invalidate"), Ok()):
                self._finish(op, now, None)
            case _:
                self.sim.fail("cache client", f"{self.name} {op.kind} {op.key!r} got {result}")

    def _finish(self, op: _Op, ret: int | None, output: object) -> None:
        self.current = None
        if op.kind != "invalidate":
            kind = "put" if op.kind == "cas" else op.kind
            self.history.append(Operation(self.index, op.call_ms, ret, kind, op.key, op.value, output))
        if self.liveness and ret is not None:
            self.stats["liveness_completed"] += 1
        self.sim.after(self.rng.randint(0, 40), self._next)

    def describe_open(self) -> str:
        op = self.current
        if op is None:
            return f"{self.name}: idle"
        return f"{self.name}: {op.kind} {op.key!r} since {op.call_ms} ms; {self.core.describe_open()}"


def _may_be_lost(sim: Simulation, client: CacheClient, op: Operation) -> bool:
    """A write_back write the README allows to be lost: acknowledged by its node (a client's
    write_back writes stay on its node) at most two flush periods and a commit before that node
    was paused for longer than a cache lease — cut off, its home took the key back. Its outcome
    is unknown to the checker, every other op's is checked."""
    if op.kind != "put" or op.ret is None:
        return False
    cfg = sim.config
    window_ms = 2 * cfg.cache_flush_ms + LOST_COMMIT_MS
    return any(
        node == client.home_node and pause_ms > cfg.cache_lease_ms and at - window_ms <= op.ret <= at
        for node, at, pause_ms in sim.nemesis.paused
    )


class CacheChecker:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.checks = 0

    def observe(self) -> None:
        sim = self.sim
        self.checks += 1
        served: dict[str, list[tuple[str, str, int]]] = {}  # key -> (node, state, epoch)
        homes: dict[tuple[int, int], CacheHome] = {}
        for n in sim.node_ids:
            core = sim.nodes[n].core
            if core is None:
                continue
            for home in core.cache.homes():
                home.check()
                if core.groups[home.shard].raft.role is Role.LEADER:
                    homes[(home.shard, home.epoch)] = home
            near = core.cache.near
            now = sim.local_ms(sim.nodes[n])
            for line in near.lines:
                session = near.sessions[line.shard]
                if line.releasing or session.lease_until_ms <= now:
                    continue
                # An E line that may not turn M holds memory's copy: a reader like any S.
                state = line.state if line.state == MODIFIED or line.may_dirty else SHARED
                served.setdefault(line.key, []).append((n, state, session.epoch))
        for key, holders in served.items():
            owners = [h for h in holders if h[1] in (EXCLUSIVE, MODIFIED)]
            if owners and len(holders) > 1:
                sim.fail("cache single writer", f"{key!r} served by {holders} at once")
            shard = shard_for_key(key, sim.config.shard_count)
            for node, state, epoch in holders:
                home = homes.get((shard, epoch))
                if home is None:
                    continue
                entry = home.directory.get(key)
                listed = entry is not None and (entry.owner == node or node in entry.sharers)
                if not listed:
                    sim.fail(
                        "cache directory coverage",
                        f"{node} serves {key!r} in {state} (epoch {epoch}) but home {home.node_id}'s "
                        f"directory has {entry}",
                    )
                if state != SHARED and entry is not None and entry.owner != node:
                    # (S where the home still says owner is a downgrade whose answer is on its way.)
                    sim.fail(
                        "cache directory coverage", f"{node} holds {key!r} {state}, the home says {entry}"
                    )


def check_final(sim: Simulation, clients: list[CacheClient], write_back_keys: set[str]) -> None:
    lossy = write_back_keys if sim.nemesis.crashes else set()
    history = [
        op
        if op.key not in write_back_keys or not _may_be_lost(sim, c, op)
        else dataclasses.replace(op, ret=None)
        for c in clients
        for op in c.history
        if op.key not in lossy
    ]
    result = check_kv_history(history)
    if not result.ok:
        what = "inconclusive (history too large)" if result.inconclusive else result.explanation
        sim.fail("cache linearizability", f"key {result.key!r}: {what}")
    seen: dict[tuple[str, int], str | None] = {}
    for c in clients:
        for key, version, value in c.versions:
            other = seen.setdefault((key, version), value)
            if other != value:
                sim.fail("cache versions", f"{key!r} version {version} was both {other!r} and {value!r}")
