"""Where data lives: keys to shards, and shards to nodes on a consistent-hash ring.

Two separate mappings, on purpose:

- ``shard_for_key`` maps a key to one of the fixed shard groups 1..S. S never changes after the
  cluster is created, so this is a plain ``hash mod S``; it runs on every request.
- ``ShardPlacement`` maps each shard group to the nodes that replicate it. Nodes come and go, so
  this uses a ring of virtual nodes: adding or removing a node moves only about 1/N of the shards.

Everything here must give the same answer in every process, forever: Python's ``hash()`` on ``str``
is salted per process, so only fixed, documented hash functions are used.
"""

from __future__ import annotations

import bisect
import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

CONTROL_GROUP = 0


def stable_hash(data: str) -> int:
    """A 64-bit hash of ``data`` that is the same in every process and on every machine."""
    digest = hashlib.blake2b(data.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_for_key(key: str, shard_count: int) -> int:
    """The shard group (1..shard_count) that holds ``key``.

    CRC-32 (zlib's, the IEEE 802.3 polynomial) rather than ``stable_hash``: it is a single C call with
    no hasher object, about 5x cheaper than blake2b on short keys, and it is a published standard
    whose values can never change under us. Data placement depends on this function, so it is frozen:
    changing it would strand every stored queue message and cache line on the wrong shard. Callers
    that place by several fields (queue + partition key) must join them unambiguously first.
    """
    if shard_count < 1:
        raise ValueError(f"shard_count must be >= 1, got {shard_count}")
    return zlib.crc32(key.encode("utf-8")) % shard_count + 1


class HashRing:
    """A consistent-hash ring where each node owns ``vnodes`` points.

    Many points per node even out the arc lengths, so load and the shards that move on a membership
    change are spread over all nodes rather than landing on one neighbour.
    """

    def __init__(self, nodes: Iterable[str] = (), vnodes: int = 64) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        self._vnodes = vnodes
        self._members: set[str] = set()
        # Parallel sorted arrays: bisect on the points, read the owner at the same index.
        self._points: list[int] = []
        self._owners: list[str] = []
        for node in nodes:
            self.add(node)

    @property
    def vnodes(self) -> int:
        return self._vnodes

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted(self._members))

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, node: object) -> bool:
        return node in self._members

    def add(self, node: str) -> None:
        # A duplicate add is a membership bug upstream; silently ignoring it would hide that.
        if node in self._members:
            raise ValueError(f"node {node!r} is already on the ring")
        self._members.add(node)
        self._rebuild()

    def remove(self, node: str) -> None:
        if node not in self._members:
            raise KeyError(node)
        self._members.remove(node)
        self._rebuild()

    def walk(self, point: int) -> Iterator[str]:
        """Distinct nodes in clockwise order from ``point`` (a vnode exactly at ``point`` comes first)."""
        total = len(self._points)
        if total == 0:
            return
        start = bisect.bisect_left(self._points, point)
        seen: set[str] = set()
        for offset in range(total):
            node = self._owners[(start + offset) % total]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == len(self._members):
                    return

    def owners(self, key: str, count: int) -> list[str]:
        """The first ``count`` distinct nodes clockwise from ``key``'s point (fewer on a smaller ring)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        result: list[str] = []
        if count == 0:
            return result
        for node in self.walk(stable_hash(key)):
            result.append(node)
            if len(result) == count:
                break
        return result

    def _rebuild(self) -> None:
        # Membership changes are rare, so a full re-sort keeps the code obvious. Sorting by
        # (point, node) also settles a 64-bit collision the same way in every process.
        ring = sorted(
            (stable_hash(f"node/{node}/{i}"), node) for node in self._members for i in range(self._vnodes)
        )
        self._points = [point for point, _ in ring]
        self._owners = [node for _, node in ring]


def shard_point(shard: int) -> int:
    """Where shard group ``shard`` sits on the ring."""
    return stable_hash(f"shard/{shard}")


@dataclass(frozen=True)
class ShardPlacement:
    """Which nodes replicate each Raft group, and which of them should lead it.

    Index ``g`` of ``replica_sets`` and ``leaders`` is group ``g``; group 0 is the control group,
    replicated by every node and with no preferred leader (any voter may lead it).
    Build it with ``ShardPlacement.build``; the same arguments give the same placement everywhere.
    """

    nodes: tuple[str, ...]
    shard_count: int
    replication: int
    vnodes: int
    replica_sets: tuple[tuple[str, ...], ...]
    leaders: tuple[str | None, ...]

    @classmethod
    def build(
        cls, nodes: Iterable[str], shard_count: int, replication: int = 3, vnodes: int = 64
    ) -> ShardPlacement:
        ring = HashRing(nodes, vnodes)
        if len(ring) == 0:
            raise ValueError("a placement needs at least one node")
        if shard_count < 1:
            raise ValueError(f"shard_count must be >= 1, got {shard_count}")
        if replication < 1:
            raise ValueError(f"replication must be >= 1, got {replication}")
        members = ring.nodes
        width = min(replication, len(members))

        replica_sets: list[tuple[str, ...]] = [members]
        leaders: list[str | None] = [None]
        led = dict.fromkeys(members, 0)
        for shard in range(1, shard_count + 1):
            walk = ring.walk(shard_point(shard))
            replicas = tuple(next(walk) for _ in range(width))
            # Greedy balancing: always taking the first replica would let an unlucky ring give one
            # node many leaderships. min() keeps the first of equals, i.e. ring order breaks ties.
            leader = min(replicas, key=led.__getitem__)
            led[leader] += 1
            replica_sets.append(replicas)
            leaders.append(leader)
        return cls(members, shard_count, width, vnodes, tuple(replica_sets), tuple(leaders))

    @property
    def shards(self) -> range:
        return range(1, self.shard_count + 1)

    def replicas(self, group: int) -> tuple[str, ...]:
        """The group's replicas in ring order (sorted node ids for the control group)."""
        return self.replica_sets[self._check_group(group)]

    def preferred_leader(self, group: int) -> str | None:
        return self.leaders[self._check_group(group)]

    def groups_of(self, node: str) -> list[int]:
        """Every group ``node`` replicates, ascending; always starts with the control group."""
        if node not in self.nodes:
            raise KeyError(node)
        return [CONTROL_GROUP] + [s for s in self.shards if node in self.replica_sets[s]]

    def leader_counts(self) -> dict[str, int]:
        """Preferred leaderships per node (every node listed, zeros included)."""
        counts = dict.fromkeys(self.nodes, 0)
        for leader in self.leaders[1:]:
            if leader is not None:
                counts[leader] += 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view; groups form a list because JSON object keys could only be strings."""
        return {
            "nodes": list(self.nodes),
            "shard_count": self.shard_count,
            "replication": self.replication,
            "vnodes": self.vnodes,
            "groups": [
                {"group": g, "replicas": list(replicas), "preferred_leader": self.leaders[g]}
                for g, replicas in enumerate(self.replica_sets)
            ],
        }

    def _check_group(self, group: int) -> int:
        # A negative index would silently read from the end of the tuples.
        if not 0 <= group <= self.shard_count:
            raise KeyError(group)
        return group
