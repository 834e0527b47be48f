"""Values the state machines hand to the runtime.

The ordering rule lives in the data (etcd's ``msgs`` / ``msgsAfterAppend``): ``messages`` may
leave at once, ``messages_after_persist`` only after ``persist`` is on disk and synced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncfab.actors.messages import Entry, HardState, RaftMessage, Snapshot


@dataclass(slots=True)
class Persist:
    """One group's share of a turn's disk write, applied in this order:

    save ``snapshot``; delete entries below ``compact_to`` (the entry at ``compact_to`` stays as
    the log's base, for its term); delete entries from ``truncate_from`` on; append ``entries``;
    save ``hard_state``.
    """

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    compact_to: int | None = None
    truncate_from: int | None = None
    entries: list[Entry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.entries
            or self.hard_state is not None
            or self.snapshot is not None
            or self.compact_to is not None
            or self.truncate_from is not None
        )


@dataclass(slots=True, frozen=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    context: int
    index: int


@dataclass(slots=True)
class Ready:
    persist: Persist
    messages: list[tuple[str, RaftMessage]]
    messages_after_persist: list[tuple[str, RaftMessage]]
    committed: list[Entry]
    # A snapshot to load into the state machine before applying ``committed``.
    restore: Snapshot | None
    reads: list[ReadState]

    def __bool__(self) -> bool:
        return bool(
            self.persist
            or self.messages
            or self.messages_after_persist
            or self.committed
            or self.restore is not None
            or self.reads
        )
