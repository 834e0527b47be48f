"""What a node needs from its disk: each Raft group's durable state, written once per turn."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from syncfab.actors.messages import Entry, HardState, Snapshot
from syncfab.actors.ready import Persist


@dataclass(slots=True)
class StoredGroup:
    """A group as found on disk at start-up.

    ``entries`` are contiguous; the first one is the log's *base*: an entry already covered by a
    compaction whose term is still needed to check the next one (it may equal the snapshot's
    index). An empty list with no snapshot is a fresh group.
    """

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)


class LogStore(Protocol):
    def groups(self) -> list[int]:
        """Every group with anything on disk, ascending."""
        ...

    def load(self, group: int) -> StoredGroup: ...

    def write(self, batch: Iterable[tuple[int, Persist]]) -> None:
        """Apply every group's ``Persist`` (in the order its docstring gives) in one transaction,
        durable when this returns (unless the store was opened with fsync off)."""
        ...

    def close(self) -> None: ...
