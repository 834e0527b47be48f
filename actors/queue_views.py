"""What a partition shows of its queues, read-only: one queue's numbers as a QueueStats query
answers them, every queue's replicated counters (for metrics), and a queue's stored messages.
"""

from __future__ import annotations

from typing import Any

import msgspec

from syncfab.actors.queue_state import DEFAULT_SETTINGS, QueueCounters, QueueState


def queue_stats(
    shard: int, name: str, q: QueueState | None, dlq: QueueState | None, delivered: int
) -> dict[str, Any]:
    """``delivered`` is leader memory (this node's deliveries while leading); the rest is replicated."""
    counters = q.counters if q is not None else QueueCounters()
    depth = q.depth if q is not None else 0
    in_flight = len(q.inflight) if q is not None else 0
    return {
        "queue": name,
        "shard": shard,
        "depth": depth,
        "visible": depth - in_flight,
        "in_flight": in_flight,
        "dlq_depth": dlq.depth if dlq is not None else 0,
        "produced": counters.produced,
        "delivered": delivered,
        "acked": counters.acked,
        "redelivered": counters.redelivered,
        "dead_lettered": counters.dead_lettered,
        "expired": counters.expired,
        "settings": msgspec.structs.asdict(q.settings if q is not None else DEFAULT_SETTINGS),
    }


def counters(queues: dict[str, QueueState]) -> dict[str, dict[str, int]]:
    """Depth and replicated counters per queue: the same on every replica."""
    return {
        name: {"depth": q.depth, **msgspec.structs.asdict(q.counters)} for name, q in sorted(queues.items())
    }


def browse(shard: int, q: QueueState | None) -> list[dict[str, Any]]:
    """Every stored message, oldest first, with ``consumer`` (the holder, on the leader) and
    ``delivery_count`` as replicated (deliveries counted so far)."""
    if q is None:
        return []
    out = []
    for msg in q.messages.values():
        lease = q.inflight.get(msg.seq)
        out.append(
            q.view(shard, msg, msg.delivery_count)
            | {"consumer": lease.consumer if lease is not None else None}
        )
    return out
