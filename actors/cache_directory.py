"""The data a home keeps (actors/cache_home.py runs the ops): its directory — an entry per cached
key saying who holds the line (as a transition table), the keys each holder has, and the keys
fenced since their owner was lost — and the ops queued on a key with the phase each is in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
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
    (UNCACHED, "grant_E"): EXCLUSIVE,
    (UNCACHED, "grant_S"): SHARED,
    (UNCACHED, "grant_M"): MODIFIED,
    (SHARED, "grant_S"): SHARED,
    (SHARED, "grant_E"): EXCLUSIVE,
    (SHARED, "grant_M"): MODIFIED,
    (EXCLUSIVE, "grant_E"): EXCLUSIVE,
    (EXCLUSIVE, "grant_M"): MODIFIED,
    (MODIFIED, "grant_E"): EXCLUSIVE,
    (MODIFIED, "grant_M"): MODIFIED,
    (EXCLUSIVE, "recall_shared"): SHARED,
    (MODIFIED, "recall_shared"): SHARED,
    (EXCLUSIVE, "recall"): UNCACHED,
    (MODIFIED, "recall"): UNCACHED,
    (SHARED, "invalidated"): UNCACHED,
    (SHARED, "dropped"): SHARED,
    (EXCLUSIVE, "dropped"): UNCACHED,
    (MODIFIED, "dropped"): UNCACHED,
    (SHARED, "lapsed"): SHARED,
    (EXCLUSIVE, "lapsed"): UNCACHED,
    (MODIFIED, "lapsed"): UNCACHED,
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
    recall_seq: int = 0  # the stream seq of the Recall it waits on
    dropped: int = 0  # copies this op invalidated or recalled (a client invalidate's answer)
    inval_ms: int = 0


class HomeDirectory:
    """Who holds which key of the shard, as its home knows it. Every change of an entry's state
    is checked against ``DIRECTORY``; ``held`` indexes the same holds by holder."""

    def __init__(self, entries_max: int) -> None:
        self.entries_max = entries_max
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self.held: dict[str, set[str]] = {}  # holder -> keys it holds here
        # Keys whose owner was lost, with memory's version then: a version above it must be
        # logged (a write, or a CacheBump) before the key is granted again.
        self.fenced: dict[str, int] = {}
        self.former: dict[str, str] = {}  # key -> lost owner whose write-back may still come in

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def make(self, key: str) -> Entry | None:
        """The key's entry, made if there is room (None if the directory is full)."""
        entry = self.entries.get(key)
        if entry is None and len(self.entries) < self.entries_max:
            entry = self.entries[key] = Entry()
        return entry

    def grant(self, entry: Entry, node: str, key: str, state: str, seq: int, may_dirty: bool) -> None:
        """``node`` is granted ``key`` in ``state`` (S, E or M) by stream item ``seq``."""
        if state == SHARED:
            entry.sharers[node] = seq
        else:
            DIRECTORY[(entry.state, f"grant_{state}")]
            entry.sharers.pop(node, None)
            again = entry.owner == node  # an owner fetching again keeps what it may hold
            if not again or state == MODIFIED:
                entry.owner_state = state
            entry.owner_may_dirty = (again and entry.owner_may_dirty) or state == MODIFIED or may_dirty
            entry.owner, entry.owner_seq = node, seq
        self.held.setdefault(node, set()).add(key)
        self.entries.move_to_end(key)

    def unhold(self, entry: Entry, node: str, key: str, event: str) -> None:
        if entry.owner == node:
            DIRECTORY[(entry.state, event)]
            entry.owner = None
        entry.sharers.pop(node, None)
        self.unheld(node, key)

    def unheld(self, node: str, key: str) -> None:
        keys = self.held.get(node)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.held[node]

    def forget(self, node: str, version_of: Callable[[str], int]) -> None:
        """Drop ``node`` from every entry; the keys it owned are fenced, and its write-back of
        one may still come in until someone else touches the key."""
        for key in sorted(self.held.pop(node, ())):
            entry = self.entries.get(key)
            if entry is None:
                continue
            if entry.owner == node:
                DIRECTORY[(entry.state, "lapsed")]
                entry.owner = None
                self.fenced[key] = version_of(key)
                self.former[key] = node
            entry.sharers.pop(node, None)

    def unfence(self, key: str, version: int) -> None:
        fenced = self.fenced.get(key)
        if fenced is not None and version > fenced:
            del self.fenced[key]

    def holders(self, key: str) -> list[tuple[str, str]]:
        """(node, state) of each holder of ``key``, the owner first."""
        entry = self.entries.get(key)
        held = [] if entry is None else [(n, SHARED) for n in sorted(entry.sharers)]
        if entry is not None and entry.owner is not None:
            held.insert(0, (entry.owner, entry.owner_state))
        return held

    def check(self) -> None:
        for key, entry in self.entries.items():
            assert entry.owner is None or entry.owner not in entry.sharers, f"{key}: owner also shares"
            for node in [*entry.sharers, *([entry.owner] if entry.owner else [])]:
                assert key in self.held.get(node, ()), f"{key}: {node} not indexed"
