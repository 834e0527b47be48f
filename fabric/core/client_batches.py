"""How a ClientCore coalesces: the record of an op queued for the next batch, and how a
queue of them is cut into batches (fabric/core/client_core.py flushes lock ops as LockBatches
and produces as ProduceBatches). Pure."""

from __future__ import annotations

from typing import Any

import msgspec


# A Struct, built in C: one is made for every lock op and produce (a dataclass's __init__ is a
# Python call). gc=False: nothing it holds refers back to it.
class Queued(msgspec.Struct, gc=False):
    """One caller's op waiting for its batch: its handle, the op, its deadline, its bytes."""

    handle: int
    op: Any
    deadline_ms: int | None
    size: int


def latest_deadline(batch: list[Queued]) -> int | None:
    """A batch waits as long as its most patient op (None: one of them waits forever)."""
    deadlines = [q.deadline_ms for q in batch]
    return None if None in deadlines else max(deadlines)  # type: ignore[type-var]


def split(items: list[Queued], count_max: int, bytes_max: int) -> list[list[Queued]]:
    """Batches of at most ``count_max`` ops and about ``bytes_max`` bytes, in order (an op
    bigger than that goes alone)."""
    batches: list[list[Queued]] = []
    current: list[Queued] = []
    size = 0
    for item in items:
        weight = item.size
        if current and (len(current) >= count_max or size + weight > bytes_max):
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += weight
    if current:
        batches.append(current)
    return batches
