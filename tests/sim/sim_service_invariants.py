"""The replicated services' own safety properties, checked on every replica after every turn that
applied something (or installed a snapshot) in a group.

Lock table (group 0):
1. exclusion: a resource held exclusively has exactly one holder;
2. deadlock freedom: the wait-for graph is acyclic (every cycle is broken within the apply that
   closed it);
3. progress: the front waiter of a queue conflicts with some holder — a waiter at the front of a
   lock nobody conflicting holds would wait until its timeout for nothing;
4. fencing tokens held at once are distinct;
5. the wait-for graph is the one the queues imply: each waiter's blockers are what the table's own
   rule derives from the queue ahead of it and the holders, and an owner's edges are the union of
   its waits' blockers (derived state a snapshot does not carry: a restored replica rebuilds it,
   so a stale edge on a replica that applied the log is a future disagreement about deadlocks).

Queue partitions (shard groups): every queue's depth equals produced - acked - dead_lettered -
expired (its counters' own promise).

Replica agreement, every group: two live replicas that applied the same index hold byte-identical
state machine snapshots (sessions and every service). Snapshots are taken only when some other
replica is at exactly that index, and the last image per group is reused, so the check costs an
encode when indexes meet rather than one per apply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NoReturn

from syncfab.actors.locks import COMPATIBLE, EXCLUSIVE, LockTable
from syncfab.actors.queues import QueuePartitions
from syncfab.actors.ring import CONTROL_GROUP
from syncfab.fabric.core.node import Flush, NodeCore

Fail = Callable[[str, str], NoReturn]
Replicas = Callable[[int], Iterator[tuple[str, NodeCore]]]  # live (node, core) hosting a group


class ServiceChecker:
    def __init__(self, fail: Fail, replicas: Replicas) -> None:
        self._fail = fail
        self._replicas = replicas
        self._images: dict[int, tuple[int, bytes]] = {}  # group -> (applied index, snapshot)
        self.lock_checks = self.agreement_checks = 0

    def observe(self, node: str, core: NodeCore, flush: Flush) -> None:
        for gid, ready in flush.readies:
            if not ready.committed and ready.restore is None:
                continue
            machine = core.groups[gid].machine
            if gid == CONTROL_GROUP:
                self.check_locks(node, machine.services["locks"])  # type: ignore[arg-type]
            else:
                self.check_queues(node, gid, machine.services["queues"])  # type: ignore[arg-type]
            self._compare(node, core, gid)

    def check_locks(self, node: str, table: LockTable) -> None:
        self.lock_checks += 1
        fail = self._fail
        tokens: dict[int, tuple[str, str]] = {}
        for r, res in table._resources.items():
            holders = res.holders
            if len(holders) > 1 and any(h.mode == EXCLUSIVE for h in holders.values()):
                held = sorted((o, h.mode, h.token) for o, h in holders.items())
                fail("lock exclusion", f"{node}: {r} held by {held}")
            for o, h in holders.items():
                seen = tokens.setdefault(h.token, (o, r))
                if seen != (o, r):
                    fail("lock exclusion", f"{node}: token {h.token} held by {seen} and by {(o, r)}")
            if res.queue:
                front = res.queue[0]
                if all(COMPATIBLE[h.mode, front.mode] for o, h in holders.items() if o != front.owner):
                    waiting = [(w.owner, w.mode) for w in res.queue]
                    fail(
                        "lock progress",
                        f"{node}: {r} has waiters {waiting} but only compatible holders "
                        f"{sorted((o, h.mode) for o, h in holders.items())}",
                    )
        if not table.graph.is_acyclic():
            fail("deadlock freedom", f"{node}: the wait-for graph has a cycle: {table.graph.edges()}")
        self._check_edges(node, table)

    def _check_edges(self, node: str, table: LockTable) -> None:
        edges: dict[str, set[str]] = {}
        for r, res in table._resources.items():
            q = res.queue
            for i, w in enumerate(q):
                derived = table._blockers(res, q, i)  # from q[i - 1]'s blockers, checked just before
                if derived != w.blockers:
                    self._fail(
                        "wait-for graph",
                        f"{node}: {w.owner} waits in {r}'s queue "
                        f"{[x.owner for x in q]} for {w.blockers}, the queue says {derived}",
                    )
                edges.setdefault(w.owner, set()).update(w.blockers)
        expected = sorted((a, b) for a, targets in edges.items() for b in targets)
        if table.graph.edges() != expected:
            self._fail("wait-for graph", f"{node}: edges {table.graph.edges()}, the queues say {expected}")

    def check_queues(self, node: str, gid: int, partitions: QueuePartitions) -> None:
        for name, q in partitions._queues.items():
            c = q.counters
            if q.depth != c.produced - c.acked - c.dead_lettered - c.expired:
                self._fail(
                    "queue accounting", f"{node} shard {gid} queue {name!r}: depth {q.depth}, counters {c}"
                )

    def _compare(self, node: str, core: NodeCore, gid: int) -> None:
        index = core.groups[gid].raft.applying_index
        twins = [
            (n, c) for n, c in self._replicas(gid) if n != node and c.groups[gid].raft.applying_index == index
        ]
        if not twins:
            return
        self.agreement_checks += 1
        mine = core.groups[gid].machine.snapshot()
        cached = self._images.get(gid)
        if cached is not None and cached[0] == index:
            other, image = "an earlier replica", cached[1]
        else:
            other, twin = twins[0]
            image = twin.groups[gid].machine.snapshot()
        if image != mine:
            self._fail(
                "replica agreement",
                f"group {gid}: {node} and {other} applied index {index} but their state machines differ",
            )
        self._images[gid] = (index, mine)
