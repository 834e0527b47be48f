"""One queue's slice on one shard: its stored messages and which of them are visible.

Stored messages, settings and counters are replicated. The in-flight marks (``inflight``:
seq -> Lease) are the leader's alone; a follower has none, so to it every message is visible.

``_visible`` is a min-heap of the visible messages' seqs with lazy deletion: an acked, expired
or dead-lettered message leaves its entry behind, and a popped entry counts only if its message
is still stored and not in flight. A message has at most one entry: taking it pops the entry,
and only ending its lease pushes one again. Every replica keeps the heap (its order is what a
new leader hands out) and filters out dead entries whenever it doubles past its live size — on
a follower, whose acks leave entries nobody pops, that bounds it too.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec

from syncfab.actors.queue_ops import message_id


class QueueSettings(msgspec.Struct, frozen=True, array_like=True):
    visibility_ms: int = 30_000
    max_deliveries: int = 10
    retention_ms: int = 0  # 0 = keep forever
    max_depth: int = 0  # 0 = unbounded
    dedup_window_ms: int = 300_000  # 0 = no deduplication


DEFAULT_SETTINGS = QueueSettings()


class QueueCounters(msgspec.Struct, array_like=True):
    """Replicated, so every replica reports the same numbers. ``produced`` counts every message
    stored in the queue, dead letters moved in included, so that
    depth == produced - acked - dead_lettered - expired."""

    produced: int = 0
    acked: int = 0
    redelivered: int = 0  # nacks and passed deadlines that counted a delivery
    dead_lettered: int = 0  # moved out to the dead-letter queue
    expired: int = 0
    deduplicated: int = 0  # produces answered with an earlier message's id


class StoredMessage(msgspec.Struct, array_like=True, gc=False):
    """``gc=False``: a queue may hold millions, and a collector pass would visit each one (a
    JSON object payload makes msgspec track it). Nothing in one can lead back to it — ``data``
    and ``headers`` are decoded client data — so it can never be part of a cycle."""

    seq: int
    key: str | None
    data: Any
    headers: dict[str, str] | None
    enqueued_at: int
    delivery_count: int = 0  # deliveries that ended in a nack or a passed deadline


@dataclass(slots=True)
class Lease:
    """A message in flight (leader memory only)."""

    consumer: str
    lease_no: int  # unique per leader process: tells this lease's heap entries from older ones'
    wake_ms: int  # when due() looks at it next: its deadline, then a re-proposal time
    proposed: bool = False  # due() proposed a Redeliver for it that has not been applied yet


class QueueImage(msgspec.Struct, array_like=True):
    """One queue in a snapshot: what is replicated, no leases."""

    name: str
    settings: QueueSettings
    counters: QueueCounters
    messages: list[StoredMessage]


class PartitionImage(msgspec.Struct, array_like=True):
    shard: int
    seq: int
    now_ms: int
    queues: list[QueueImage]
    dedup: list[tuple[str, str, int, int]]  # (queue, dedup id, seq, remembered until), oldest first


_COMPACT_MIN = 64


class QueueState:
    __slots__ = ("_compact_at", "_visible", "counters", "inflight", "messages", "name", "settings")

    def __init__(self, name: str, settings: QueueSettings = DEFAULT_SETTINGS) -> None:
        self.name = name
        self.settings = settings
        self.counters = QueueCounters()
        # Insertion order is seq order (seqs only grow and a message is never re-inserted), and
        # enqueued_at grows with seq, so the first entry is the oldest: O(1) for retention.
        self.messages: OrderedDict[int, StoredMessage] = OrderedDict()
        self.inflight: dict[int, Lease] = {}
        self._visible: list[int] = []
        self._compact_at = _COMPACT_MIN

    @property
    def depth(self) -> int:
        return len(self.messages)

    def oldest(self) -> StoredMessage | None:
        return next(iter(self.messages.values()), None)

    def append(self, message: StoredMessage) -> None:
        self.messages[message.seq] = message
        self._push_visible(message.seq)

    def extend(self, messages: list[StoredMessage]) -> None:
        """Append new messages, in seq order. Each new seq is larger than every seq ever seen,
        so appending it to the visible heap keeps the heap order without a sift."""
        stored = self.messages
        for m in messages:
            stored[m.seq] = m
        self._visible.extend(m.seq for m in messages)
        if len(self._visible) > self._compact_at:
            self._push_visible(self._visible.pop())  # compacts, and puts the last one back

    def remove(self, seq: int) -> StoredMessage | None:
        """Forget a message (acked, expired, moved); its heap entries go stale."""
        self.inflight.pop(seq, None)
        return self.messages.pop(seq, None)

    def take(self) -> StoredMessage | None:
        """The oldest visible message, taken off the visible heap (the caller leases it)."""
        heap = self._visible
        while heap:
            seq = heapq.heappop(heap)
            if seq in self.messages and seq not in self.inflight:
                return self.messages[seq]
        return None

    def release(self, seq: int) -> Lease | None:
        """End a lease: the message is visible again, in its seq place."""
        lease = self.inflight.pop(seq, None)
        if lease is not None and seq in self.messages:
            self._push_visible(seq)
        return lease

    def release_all(self) -> None:
        for seq in sorted(self.inflight):
            self.release(seq)

    def view(self, shard: int, message: StoredMessage, delivery_count: int) -> dict[str, Any]:
        return {
            "message_id": message_id(shard, message.seq),
            "queue": self.name,
            "key": message.key,
            "data": message.data,
            "headers": dict(message.headers) if message.headers else {},
            "enqueued_at": message.enqueued_at,
            "delivery_count": delivery_count,
        }

    def _push_visible(self, seq: int) -> None:
        heapq.heappush(self._visible, seq)
        if len(self._visible) > self._compact_at:
            # Filter the heap rather than rescan messages: O(heap), paid for by the pushes since
            # the last compaction, even on a leader with far more messages in flight than visible.
            live = [s for s in self._visible if s in self.messages and s not in self.inflight]
            heapq.heapify(live)
            self._visible = live
            self._compact_at = max(_COMPACT_MIN, 2 * len(live))

    def rebuild(self) -> None:
        """After a restore: every stored message visible, nothing in flight."""
        self.inflight.clear()
        self._visible = list(self.messages)
        self._compact_at = max(_COMPACT_MIN, 2 * len(self._visible))
