"""The wait-for graph of the lock table: an edge ``a -> b`` says owner ``a`` waits for owner ``b``.

A deadlock is a cycle. The lock table keeps the graph acyclic: every time a wait starts it asks
``find_cycle`` from the waiting owner and aborts a request on the cycle (see actors/locks.py for
which one). Only the new edges can close a cycle, and they all touch that owner, so a search
from it alone is enough — the graph is never scanned as a whole on the apply path.

The graph lives on every replica and is rebuilt from the table on restore, so every answer must
be a function of the edges alone: successors are visited in sorted order, never in set order
(string hashing differs from process to process).
"""

from __future__ import annotations

from collections.abc import Iterable


class WaitForGraph:
    def __init__(self) -> None:
        # waiter -> owners it waits for; a waiter with no edges has no entry.
        self._out: dict[str, set[str]] = {}
        # owner -> how many wait for it. Most new waiters (the tail of a queue) have none, and
        # then no cycle can pass through them: the search is skipped, not run over the queue.
        self._waited_on: dict[str, int] = {}

    def __len__(self) -> int:
        """The number of edges."""
        return sum(len(targets) for targets in self._out.values())

    def __contains__(self, edge: object) -> bool:
        if not isinstance(edge, tuple) or len(edge) != 2:
            return False
        return edge[1] in self._out.get(edge[0], ())

    def add_edge(self, waiter: str, holder: str) -> None:
        if waiter == holder:
            raise ValueError(f"{waiter!r} cannot wait for itself")
        targets = self._out.setdefault(waiter, set())
        if holder not in targets:
            targets.add(holder)
            self._count(holder, 1)

    def remove_edge(self, waiter: str, holder: str) -> None:
        targets = self._out.get(waiter)
        if targets is not None and holder in targets:
            targets.remove(holder)
            self._count(holder, -1)
            if not targets:
                del self._out[waiter]

    def set_edges(self, waiter: str, holders: Iterable[str]) -> None:
        """Replace every edge out of ``waiter`` (the lock table recomputes an owner's edges as a
        whole whenever one of its waits changes, which keeps edges shared by two waits right)."""
        targets = set(holders)
        if waiter in targets:
            raise ValueError(f"{waiter!r} cannot wait for itself")
        old = self._out.pop(waiter, set())
        for gone in old - targets:
            self._count(gone, -1)
        for new in targets - old:
            self._count(new, 1)
        if targets:
            self._out[waiter] = targets

    def _count(self, holder: str, delta: int) -> None:
        n = self._waited_on.get(holder, 0) + delta
        if n:
            self._waited_on[holder] = n
        else:
            del self._waited_on[holder]

    def successors(self, waiter: str) -> list[str]:
        return sorted(self._out.get(waiter, ()))

    def edges(self) -> list[tuple[str, str]]:
        return [(a, b) for a in sorted(self._out) for b in sorted(self._out[a])]

    def find_cycle(self, start: str) -> list[str] | None:
        """The shortest cycle through ``start``, as ``[start, o2, ..., ok]`` where ``ok`` waits for
        ``start``; None if there is none. Breadth-first over sorted successors, so the same
        edges always give the same cycle, and a victim chosen from it is the same everywhere."""
        if start not in self._waited_on or start not in self._out:
            return None
        parent: dict[str, str] = {}
        seen = {start}
        frontier = [start]
        while frontier:
            following: list[str] = []
            for node in frontier:
                for succ in sorted(self._out.get(node, ())):
                    if succ == start:
                        path = [node]
                        while path[-1] != start:
                            path.append(parent[path[-1]])
                        return path[::-1]
                    if succ not in seen:
                        seen.add(succ)
                        parent[succ] = node
                        following.append(succ)
            frontier = following
        return None

    def is_acyclic(self) -> bool:
        """Whole-graph check, for tests and assertions (the apply path uses ``find_cycle``)."""
        done: set[str] = set()
        for root in sorted(self._out):
            if root in done:
                continue
            on_path = {root}
            stack = [(root, iter(self.successors(root)))]
            while stack:
                node, succs = stack[-1]
                succ = next(succs, None)
                if succ is None:
                    stack.pop()
                    on_path.discard(node)
                    done.add(node)
                elif succ in on_path:
                    return False
                elif succ not in done:
                    on_path.add(succ)
                    stack.append((succ, iter(self.successors(succ))))
        return True
