"""LogStore in dicts: the deterministic simulator's synced disk.

Whatever ``write`` was given is durable; a crash is a node that never called ``write``. The
semantics match ``LmdbLogStore`` exactly, including the errors, so a run in the simulator says
something about a run on disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from syncfab.actors.messages import Entry, HardState, Snapshot
from syncfab.actors.ready import Persist
from syncfab.storage.log_store import StoredGroup


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

    def apply(self, group: int, persist: Persist) -> None:
        if persist.snapshot is not None:
            self.snapshot = persist.snapshot
        log = self.entries
        if persist.compact_to is not None and log:
            del log[: max(0, persist.compact_to - log[0].index)]
        if persist.truncate_from is not None and log:
            del log[max(0, persist.truncate_from - log[0].index) :]
        if persist.entries:
            first = persist.entries[0].index
            if any(e.index != first + i for i, e in enumerate(persist.entries)):
                raise ValueError(f"group {group}: entries from {first} are not contiguous")
            # As etcd's MemoryStorage does: new entries replace whatever the log held from their start.
            if log:
                del log[max(0, first - log[0].index) :]
            if log and log[-1].index + 1 != first:
                raise ValueError(f"group {group}: entries from {first} leave a gap after {log[-1].index}")
            log.extend(persist.entries)
        if persist.hard_state is not None:
            self.hard_state = persist.hard_state


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
            disk.apply(group, persist)
        self._groups.update(staged)

    def copy(self) -> MemoryLogStore:
        """An independent disk image: writes to either leave the other as it was."""
        other = MemoryLogStore()
        other._groups = {group: disk.copy() for group, disk in self._groups.items()}
        return other

    def close(self) -> None:
        pass  # nothing to release; the contents stay readable, as files outlive a process
