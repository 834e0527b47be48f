"""Indexes a partition keeps beside its queues, each bounded and cheap to consult: which
message a dedup id produced (replicated), when a queue with retention needs a look (derived),
and when each lease's deadline passes (leader memory).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable


class DedupWindow:
    """Which message each recent dedup id produced, per queue (replicated).

    Insertion order is age order, so the front is forgotten first, both when its window closes
    and when more than ``ids_max`` ids are remembered — deterministic, no clock of its own.
    Windows differ per queue, so the front is not always the first to close: an entry behind
    a longer-lived one waits (still bounded by ``ids_max``), and lookups check its time.
    """

    def __init__(self, ids_max: int) -> None:
        self.ids_max = ids_max
        self._entries: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()  # -> (seq, until)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, queue: str, dedup_id: str, now_ms: int) -> int | None:
        entry = self._entries.get((queue, dedup_id))
        return entry[0] if entry is not None and entry[1] > now_ms else None

    def remember(self, queue: str, dedup_id: str, seq: int, until_ms: int) -> None:
        key = (queue, dedup_id)
        self._entries.pop(key, None)  # an id reused after its window: now the youngest
        self._entries[key] = (seq, until_ms)
        while len(self._entries) > self.ids_max:
            self._entries.popitem(last=False)

    def forget_closed(self, now_ms: int) -> None:
        entries = self._entries
        while entries and next(iter(entries.values()))[1] <= now_ms:
            entries.popitem(last=False)

    def image(self) -> list[tuple[str, str, int, int]]:
        return [(queue, did, seq, until) for (queue, did), (seq, until) in self._entries.items()]

    def load(self, image: list[tuple[str, str, int, int]]) -> None:
        self._entries = OrderedDict(((queue, did), (seq, until)) for queue, did, seq, until in image)


class ExpirySchedule:
    """When each queue with retention next needs a look: a min-heap of (at_ms, queue) with lazy
    deletion — an entry counts only while ``_at`` agrees — so there is one live entry per queue
    and the leader's due() check is O(1) when nothing is due. Derived state: every replica
    keeps it (cheaply), restore rebuilds it, snapshots leave it out."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._at: dict[str, int] = {}

    def __contains__(self, queue: str) -> bool:
        return queue in self._at

    def at(self, queue: str, at_ms: int) -> None:
        """Look at ``queue`` by ``at_ms``; only an earlier time replaces the current one (a look
        that finds nothing due yet simply reschedules)."""
        current = self._at.get(queue)
        if current is None or at_ms < current:
            self._at[queue] = at_ms
            heapq.heappush(self._heap, (at_ms, queue))

    def due(self, now_ms: int) -> bool:
        return bool(self._heap) and self._heap[0][0] <= now_ms

    def pop_due(self, now_ms: int) -> list[str]:
        """Queues whose time has come, now unscheduled: the caller schedules them again."""
        names = []
        while self._heap and self._heap[0][0] <= now_ms:
            at_ms, queue = heapq.heappop(self._heap)
            if self._at.get(queue) == at_ms:
                del self._at[queue]
                names.append(queue)
        return names


DeadlineEntry = tuple[int, int, str, int]  # (wake_ms, lease_no, queue, seq)


class LeaseDeadlines:
    """Leader memory: a min-heap with an entry per lease, lazily deleted — an ended lease leaves
    its entry until its time comes, and the caller skips entries that no longer match a live
    lease. With long visibility timeouts stale entries could pile up, so when the heap doubles
    past its live size it is rebuilt from ``live()``, which yields one entry per live lease."""

    _COMPACT_MIN = 1024

    def __init__(self, live: Callable[[], Iterable[DeadlineEntry]]) -> None:
        self._live = live
        self._heap: list[DeadlineEntry] = []
        self._compact_at = self._COMPACT_MIN

    def __len__(self) -> int:
        return len(self._heap)

    def clear(self) -> None:
        self._heap = []
        self._compact_at = self._COMPACT_MIN

    def push(self, wake_ms: int, lease_no: int, queue: str, seq: int) -> None:
        heapq.heappush(self._heap, (wake_ms, lease_no, queue, seq))
        if len(self._heap) > self._compact_at:
            self._heap = list(self._live())
            heapq.heapify(self._heap)
            self._compact_at = max(self._COMPACT_MIN, 2 * len(self._heap))

    def due(self, now_ms: int) -> bool:
        return bool(self._heap) and self._heap[0][0] <= now_ms

    def pop(self) -> DeadlineEntry:
        return heapq.heappop(self._heap)
