"""What the lock table keeps (actors/locks.py applies the rules): a hold, a parked wait, each
resource's holders and queue, each owner's lease, and the image a snapshot stores.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import msgspec


class Hold(msgspec.Struct, array_like=True):
    mode: str
    token: int


class Wait(msgspec.Struct, array_like=True, eq=False):
    """A parked Acquire and whom to answer; ``blockers`` is derived (``LockTable._rewire``)."""

    resource: str
    owner: str
    mode: str
    upgrade: bool
    since_ms: int
    deadline_ms: int
    ttl_ms: int
    arrival: int  # the order waits started in: the age deadlock victims are chosen by
    client: str
    request_id: int
    blockers: tuple[str, ...] = ()


@dataclass(slots=True)
class Resource:
    holders: dict[str, Hold] = field(default_factory=dict)
    queue: deque[Wait] = field(default_factory=deque)  # upgrades first, then arrival order


@dataclass(slots=True)
class Owner:
    lease_ms: int
    held: set[str] = field(default_factory=set)
    waits: dict[str, Wait] = field(default_factory=dict)  # resource -> its one wait there
    entry_ms: int | None = None  # the deadline of its lease's entry in the heap, if it has one


class LockImage(msgspec.Struct, array_like=True):
    tokens: int
    arrivals: int
    stats: dict[str, int]
    leases: list[tuple[str, int]]
    holds: list[tuple[str, str, Hold]]  # (resource, owner, hold)
    waits: list[Wait]  # each queue front to back, resources in sorted order
