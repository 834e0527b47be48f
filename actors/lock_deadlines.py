"""When the lock table's leases end and its waits time out: one min-heap, earliest first.

Entries are (deadline_ms, kind, owner, arrival) — a lease names its owner, a wait its arrival —
with lazy deletion: a wait's entry is live while the wait still has that deadline, a lease's is
its owner's one entry (``Owner.entry_ms``), moved on when the lease was extended; dead ones are
popped when they reach the top (``earliest``). Derived state: snapshots leave it out, restore
rebuilds it (``compact``).
"""

from __future__ import annotations

import heapq

from syncfab.actors.lock_state import Owner, Wait

LEASE, WAIT = 0, 1  # kinds of deadline, in the order ties are handled


class LockDeadlines:
    def __init__(self, owners: dict[str, Owner], waits: dict[int, Wait]) -> None:
        # The table's own maps, never rebound while this heap lives: they say which entries live.
        self._owners, self._waits = owners, waits
        self._heap: list[tuple[int, int, str, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def extend_lease(self, o: str, rec: Owner, until_ms: int) -> None:
        if until_ms > rec.lease_ms:
            rec.lease_ms = until_ms
            # A lease only grows, so an owner needs one heap entry, at or before its deadline:
            # when that entry comes up early, earliest() moves it on to the lease's end.
            if rec.entry_ms is None:
                rec.entry_ms = until_ms
                self._push(until_ms, LEASE, o, 0)

    def wait(self, w: Wait) -> None:
        self._push(w.deadline_ms, WAIT, "", w.arrival)

    def due(self, now_ms: int) -> bool:
        """Has some lease or wait deadline passed? O(1) amortized (the leader asks every few
        milliseconds): each dead entry is popped once, and a lease's entry is moved on only
        when it reaches the top."""
        heap = self._heap
        if not heap or heap[0][0] > now_ms:
            # Every entry is at or before its deadline: nothing can be due. Moving leases on
            # here would walk every owner that renewed since the last look, each tick.
            return False
        deadline = self.earliest()
        return deadline is not None and deadline <= now_ms

    def earliest(self) -> int | None:
        """The earliest live deadline, the heap's top once dead entries are popped (an ended
        lease's or wait's, or a lease's of an owner since dropped) and a lease's early entry is
        moved on to the lease's end. Live entries come off in (deadline, kind, owner, arrival)
        order, as if every extension had pushed its own entry."""
        heap = self._heap
        while heap:
            deadline, kind, o, arrival = heap[0]
            if kind == LEASE:
                rec = self._owners.get(o)
                if rec is not None and rec.entry_ms == deadline:
                    if rec.lease_ms == deadline:
                        return deadline
                    rec.entry_ms = rec.lease_ms
                    heapq.heapreplace(heap, (rec.lease_ms, LEASE, o, 0))
                    continue
            else:
                w = self._waits.get(arrival)
                if w is not None and w.deadline_ms == deadline:
                    return deadline
            heapq.heappop(heap)
        return None

    def pop(self) -> tuple[int, int, str, int]:
        """The top entry, live once ``earliest`` has looked."""
        return heapq.heappop(self._heap)

    def compact(self) -> None:
        """One entry per lease and per wait, nothing dead."""
        heap = []
        for o, rec in self._owners.items():
            rec.entry_ms = rec.lease_ms
            heap.append((rec.lease_ms, LEASE, o, 0))
        heap += [(w.deadline_ms, WAIT, "", a) for a, w in self._waits.items()]
        heapq.heapify(heap)
        self._heap = heap

    def _push(self, deadline_ms: int, kind: int, owner: str, arrival: int) -> None:
        heapq.heappush(self._heap, (deadline_ms, kind, owner, arrival))
        # Ended leases and waits leave dead entries: rebuild before they outnumber live ones.
        if len(self._heap) > 2 * (len(self._owners) + len(self._waits)) + 64:
            self.compact()
