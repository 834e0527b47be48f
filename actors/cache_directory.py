"""The data a home keeps per key: its directory entry (who holds the line, as a transition
table), and the ops queued on the key with the phase each is in (actors/cache_home.py runs them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from syncfab.actors.cache_ops import EXCLUSIVE, MODIFIED, SHARED, WriteBackItem


class Kind(Enum):
    FETCH = "fetch"
    WRITE = "write"
    DROP = "drop"  # a client's invalidate
    WRITE_BACK = "write_back"
    EXPIRE = "expire"
    EVICT = "evict"  # the directory is full: forget the least recently used entry


class Phase(Enum):
    QUEUED = "queued"
    RECALL = "recall"
    RECALL_COMMIT = "recall_commit"
    ACKS = "acks"
    COMMIT = "commit"


# The directory's view of one key, as a transition table (h11's habit): who may hold it after
# each event. "-" nobody; "S" sharers only; "E"/"M" one owner. An unknown pair is a bug.
UNCACHED = "-"
DIRECTORY: dict[tuple[str, str], str] = {
    (UNCACHED, "grant_E"): EXCLUSIVE, (UNCACHED, "grant_S"): SHARED, (UNCACHED, "grant_M"): MODIFIED,
    (SHARED, "grant_S"): SHARED, (SHARED, "grant_E"): EXCLUSIVE, (SHARED, "grant_M"): MODIFIED,
    (EXCLUSIVE, "grant_E"): EXCLUSIVE, (EXCLUSIVE, "grant_M"): MODIFIED,
    (MODIFIED, "grant_E"): EXCLUSIVE, (MODIFIED, "grant_M"): MODIFIED,
    (EXCLUSIVE, "recall_shared"): SHARED, (MODIFIED, "recall_shared"): SHARED,
    (EXCLUSIVE, "recall"): UNCACHED, (MODIFIED, "recall"): UNCACHED,
    (SHARED, "invalidated"): UNCACHED,
    (SHARED, "dropped"): SHARED, (EXCLUSIVE, "dropped"): UNCACHED, (MODIFIED, "dropped"): UNCACHED,
    (SHARED, "lapsed"): SHARED, (EXCLUSIVE, "lapsed"): UNCACHED, (MODIFIED, "lapsed"): UNCACHED,
}


@dataclass(slots=True)
class Entry:
    owner: str | None = None
    owner_state: str = EXCLUSIVE  # as granted: an E owner may have turned M since, silently
    owner_seq: int = 0  # the stream seq of the owner's grant
    # The owner may hold writes memory has not seen: it was granted M, or an E that may turn
    # M silently. An owner that may not is, as far as anyone's values go, a sharer.
    owner_may_dirty: bool = True
    sharers: dict[str, int] = field(default_factory=dict)  # node -> stream seq of its grant

    @property
    def state(self) -> str:
        if self.owner is not None:
            return self.owner_state
        return SHARED if self.sharers else UNCACHED


@dataclass(slots=True)
class HomeOp:
    kind: Kind
    node: str  # who asked ("" for the home's own: expiry, eviction)
    op_id: int
    key: str
    request: bytes = b""  # WRITE: the client's encoded request
    command: Any = None  # WRITE: its op (CacheWrite | CacheDelete)
    item: WriteBackItem | None = None  # WRITE_BACK
    version: int = 0  # EXPIRE: the version that expired
    phase: Phase = Phase.QUEUED
    waits: dict[str, int] = field(default_factory=dict)  # holder -> seq its ack must reach
    recall_from: str | None = None
    dropped: int = 0  # copies this op invalidated or recalled (a client invalidate's answer)
    inval_ms: int = 0
