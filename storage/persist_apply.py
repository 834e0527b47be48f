"""``Persist``'s semantics, written once for every kind of log.

The order of operations (actors/ready.py), the index arithmetic and the errors live in
``apply_persist``; a ``GroupLog`` only stores: a list of entries (MemoryLogStore), a bare index
span (LmdbLogStore's check of a batch before it is logged), or an LMDB database inside a
transaction (LmdbLogStore's checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from syncfab.actors.messages import Entry, HardState, Snapshot

E = TypeVar("E")
E_contra = TypeVar("E_contra", contravariant=True)
E_co = TypeVar("E_co", covariant=True)


class GroupLog(Protocol[E_contra]):
    """One group's storage. ``apply_persist`` calls ``drop_*`` with 0 < count < length only, and
    ``append`` with entries that directly follow the last one (or on an empty log)."""

    def bounds(self) -> tuple[int, int] | None:
        """(first, last) index, or None when the log is empty."""
        ...

    def clear(self) -> None: ...

    def drop_first(self, count: int) -> None: ...

    def drop_last(self, count: int) -> None: ...

    def first_of(self, group: int, entries: Sequence[E_contra]) -> int:
        """The index of ``entries[0]``; ValueError unless the indexes ascend by one (a log whose
        entries were checked before they reached it may just read the first)."""
        ...

    def append(self, first: int, entries: Sequence[E_contra]) -> None: ...

    def save_snapshot(self, snapshot: Snapshot) -> None: ...

    def save_hard_state(self, hard_state: HardState) -> None: ...


class PersistLike(Protocol[E_co]):
    """``Persist``, or a record decoded from LmdbLogStore's WAL (entries still encoded)."""

    @property
    def hard_state(self) -> HardState | None: ...
    @property
    def snapshot(self) -> Snapshot | None: ...
    @property
    def compact_to(self) -> int | None: ...
    @property
    def truncate_from(self) -> int | None: ...
    @property
    def entries(self) -> Sequence[E_co]: ...


def contiguous_first(group: int, entries: Sequence[Entry]) -> int:
    """``GroupLog.first_of`` for logs handed ``Entry`` objects."""
    first: int = entries[0].index
    # A turn's batch may carry hundreds of entries: on 3.11 this comprehension (specialised
    # attribute loads) beats map(attrgetter) and a generator by about 2x.
    if [e.index for e in entries] != list(range(first, first + len(entries))):
        raise ValueError(f"group {group}: entries from {first} are not contiguous")
    return first


def _delete_below(log: GroupLog[E], index: int) -> None:
    bounds = log.bounds()
    if bounds is None or index <= bounds[0]:
        return
    if index > bounds[1]:
        log.clear()
    else:
        log.drop_first(index - bounds[0])


def _delete_from(log: GroupLog[E], index: int) -> None:
    bounds = log.bounds()
    if bounds is None or index > bounds[1]:
        return
    if index <= bounds[0]:
        log.clear()
    else:
        log.drop_last(bounds[1] - index + 1)


def apply_persist(log: GroupLog[E], group: int, persist: PersistLike[E]) -> None:
    """Apply one ``Persist`` in the order ready.py gives. On ValueError the log may be half
    changed: callers stage (a copy, a transaction) and throw the stage away."""
    if persist.snapshot is not None:
        log.save_snapshot(persist.snapshot)
    if persist.compact_to is not None:
        _delete_below(log, persist.compact_to)  # the entry at compact_to stays as the base
    if persist.truncate_from is not None:
        _delete_from(log, persist.truncate_from)
    if persist.entries:
        first = log.first_of(group, persist.entries)
        # As etcd's MemoryStorage does: new entries replace whatever the log held from their start.
        _delete_from(log, first)
        bounds = log.bounds()
        if bounds is not None and bounds[1] + 1 != first:
            raise ValueError(f"group {group}: entries from {first} leave a gap after {bounds[1]}")
        log.append(first, persist.entries)
    if persist.hard_state is not None:
        log.save_hard_state(persist.hard_state)


class LogSpan:
    """A log reduced to its index span: enough to check a Persist without holding entries."""

    __slots__ = ("span",)

    def __init__(self, span: tuple[int, int] | None = None) -> None:
        self.span = span

    def bounds(self) -> tuple[int, int] | None:
        return self.span

    def clear(self) -> None:
        self.span = None

    def drop_first(self, count: int) -> None:
        assert self.span is not None
        self.span = (self.span[0] + count, self.span[1])

    def drop_last(self, count: int) -> None:
        assert self.span is not None
        self.span = (self.span[0], self.span[1] - count)

    def first_of(self, group: int, entries: Sequence[Entry]) -> int:
        return contiguous_first(group, entries)

    def append(self, first: int, entries: Sequence[Entry]) -> None:
        self.span = (self.span[0] if self.span is not None else first, first + len(entries) - 1)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        pass  # a span holds no snapshot: nothing about one can be rejected

    def save_hard_state(self, hard_state: HardState) -> None:
        pass
