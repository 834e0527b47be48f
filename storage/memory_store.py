"""LogStore in dicts: the deterministic simulator's synced disk.

Whatever ``write`` was given is durable; a crash is a node that never called ``write``. The
semantics match ``LmdbLogStore`` exactly, including the errors, so a run in the simulator says
something about a run on disk: both apply a ``Persist`` through ``persist_apply.apply_persist``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from syncfab.actors.messages import Entry, HardState, Snapshot
from syncfab.actors.ready import Persist
from syncfab.storage.log_store import StoredGroup
from syncfab.storage.persist_apply import apply_persist, contiguous_first


@dataclass(slots=True)
class _GroupDisk:
    # None means never written, as an absent key in LMDB's meta database.
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.hard_state is not None or self.snapshot is not None or bool(self.entries)

    def copy(self) -> _GroupDisk:
        # Entries, HardState and Snapshot are frozen, so sharing them is safe; the list is not.
        return _GroupDisk(self.hard_state, self.snapshot, list(self.entries))

    # GroupLog: apply_persist holds the semantics, these only edit the list.
    def bounds(self) -> tuple[int, int] | None:
        return (self.entries[0].index, self.entries[-1].index) if self.entries else None

    def clear(self) -> None:
        self.entries.clear()

    def drop_first(self, count: int) -> None:
        del self.entries[:count]

    def drop_last(self, count: int) -> None:
        del self.entries[-count:]

    def first_of(self, group: int, entries: Sequence[Entry]) -> int:
        return contiguous_first(group, entries)

    def append(self, first: int, entries: Sequence[Entry]) -> None:
        self.entries.extend(entries)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def save_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state


class MemoryLogStore:
    def __init__(self) -> None:
        self._groups: dict[int, _GroupDisk] = {}

    def groups(self) -> list[int]:
        return sorted(group for group, disk in self._groups.items() if disk)

    def load(self, group: int) -> StoredGroup:
        disk = self._groups.get(group)
        if disk is None:
            return StoredGroup()
        return StoredGroup(
            hard_state=disk.hard_state if disk.hard_state is not None else HardState(),
            snapshot=disk.snapshot,
            entries=list(disk.entries),
        )

    def write(self, batch: Iterable[tuple[int, Persist]]) -> None:
        # Stage on copies so a batch that raises changes nothing, like an aborted transaction.
        staged: dict[int, _GroupDisk] = {}
        for group, persist in batch:
            if not persist:
                continue
            disk = staged.get(group)
            if disk is None:
                current = self._groups.get(group)
                disk = staged[group] = current.copy() if current is not None else _GroupDisk()
            apply_persist(disk, group, persist)
        self._groups.update(staged)

    def copy(self) -> MemoryLogStore:
        """An independent disk image: writes to either leave the other as it was."""
        other = MemoryLogStore()
        other._groups = {group: disk.copy() for group, disk in self._groups.items()}
        return other

    def close(self) -> None:
        pass  # nothing to release; the contents stay readable, as files outlive a process
