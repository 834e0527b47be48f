"""The Raft log as one group's core sees it: a base entry, then every entry since, in memory.

Keeping the live suffix in memory (bounded by compaction) means the core never reads the disk:
the store is write-only while a node runs and read once at start-up. What has reached the disk
is tracked by three marks, so ``Ready`` can say exactly what to write:

    base_index <= applied <= committed,  stable <= last_index,  committed <= last_index

Writes may be pipelined: the runtime can have several ``Persist`` records in flight (written
in order, coalesced into one fsync) while the core goes on. So two cursors lead two marks:

- ``handed``: last index given to a write; ``stable``: last index known durable;
- ``applying``: last index given to the state machine; ``applied``: confirmed by ``advance``.

A conflict that rewrites entries already handed out makes the next write start with a
truncation; a completed write only raises ``stable`` if its last entry is still in the log
with the same term, so a write overtaken by a truncation cannot claim entries it no longer
covers.
"""

from __future__ import annotations

from syncfab.actors.messages import Entry, Snapshot


class RaftLog:
    __slots__ = (
        "_truncate_from",
        "applied",
        "applying",
        "base_index",
        "base_term",
        "committed",
        "entries",
        "handed",
        "stable",
    )

    def __init__(self, base_index: int = 0, base_term: int = 0, entries: list[Entry] | None = None) -> None:
        self.base_index = base_index
        self.base_term = base_term
        self.entries: list[Entry] = list(entries or [])
        self.stable = self.handed = self.last_index  # what we were built from came from the disk
        self.committed = self.applied = self.applying = base_index
        self._truncate_from: int | None = None

    @classmethod
    def from_disk(cls, snapshot: Snapshot | None, entries: list[Entry]) -> RaftLog:
        """Rebuild from what a store loaded (see StoredGroup)."""
        if snapshot is None:
            # Never compacted (a compaction always saves a snapshot): the base is the empty
            # index 0, and entry 1 is a real entry that may yet be overwritten.
            return cls(0, 0, entries)
        if not entries or entries[0].index > snapshot.index:
            log = cls(snapshot.index, snapshot.term, entries)
        else:
            log = cls(entries[0].index, entries[0].term, entries[1:])
        # The snapshot is applied state: anything it covers counts as committed and applied.
        log.committed = log.applied = log.applying = max(snapshot.index, log.base_index)
        return log

    # -- reading --------------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self.base_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.base_term

    def term(self, index: int) -> int | None:
        """The term at ``index``, or None when it was compacted away or is not written yet."""
        if index == self.base_index:
            return self.base_term
        if index < self.base_index or index > self.last_index:
            return None
        return self.entries[index - self.base_index - 1].term

    def slice(self, lo: int, entries_max: int, bytes_max: int) -> list[Entry]:
        """Entries from ``lo`` on (``lo > base_index``), at least one if any, within both bounds."""
        start = lo - self.base_index - 1
        chunk = self.entries[start : start + entries_max]
        if len(chunk) > 1:
            size = 0
            for n, e in enumerate(chunk):
                size += len(e.data) + 16
                if size > bytes_max and n > 0:
                    return chunk[:n]
        return chunk

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction (§5.4.1): is a candidate's log at least as new as ours?"""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def conflict_hint(self, index: int, term: int) -> int:
        """The last index at or below ``index`` whose term is at most ``term``.

        A follower rejecting (index, term) returns this so the leader can skip every entry of a
        term the follower never had, instead of retrying one index at a time.
        """
        index = min(index, self.last_index)
        while index > self.base_index:
            t = self.term(index)
            if t is not None and t <= term:
                break
            index -= 1
        return index

    # -- writing --------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        self.entries.extend(entries)

    def accept(self, prev_index: int, entries: list[Entry]) -> int:
        """Follower side of AppendEntries after the (prev_index, prev_term) check passed.

        Skips entries we already hold, truncates at the first conflict (never below
        ``committed``: that would be a safety bug upstream), appends the rest. Returns the index
        of the last entry the leader sent, the highest index now known to match.
        """
        last_new = prev_index + len(entries)
        for n, e in enumerate(entries):
            if e.index <= self.base_index:
                continue  # covered by our compaction, hence committed, hence identical
            have = self.term(e.index)
            if have == e.term:
                continue
            if have is not None:
                assert e.index > self.committed, "conflict below the commit index"
                self._truncate(e.index)
            self.entries.extend(entries[n:])
            break
        return last_new

    def _truncate(self, index: int) -> None:
        del self.entries[index - self.base_index - 1 :]
        self.stable = min(self.stable, index - 1)
        if index <= self.handed:
            self.handed = index - 1
            self._truncate_from = index if self._truncate_from is None else min(self._truncate_from, index)

    def commit_to(self, index: int) -> bool:
        index = min(index, self.last_index)
        if index > self.committed:
            self.committed = index
            return True
        return False

    def compact(self, index: int) -> None:
        """Drop entries below ``index``; the entry at ``index`` becomes the base."""
        if index <= self.base_index:
            return
        assert index <= self.applying, "compacting unapplied entries"
        term = self.term(index)
        assert term is not None
        del self.entries[: index - self.base_index]
        self.base_index, self.base_term = index, term

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot's image (InstallSnapshot that did not match)."""
        self.entries.clear()
        self.base_index, self.base_term = snapshot.index, snapshot.term
        self.committed = self.applied = self.applying = self.stable = self.handed = snapshot.index
        self._truncate_from = None

    # -- persistence bookkeeping ----------------------------------------------------------

    def take_unstable(self) -> tuple[int | None, list[Entry]]:
        """(truncate_from, entries) for the next write; they count as handed out from now."""
        truncate_from, self._truncate_from = self._truncate_from, None
        start = max(self.handed, self.base_index) - self.base_index
        entries = self.entries[start:]
        self.handed = self.last_index
        return truncate_from, entries

    def stable_to(self, index: int, term: int) -> None:
        """A write ending at (index, term) is durable."""
        if index > self.stable and self.term(index) == term:
            self.stable = index

    def take_committed(self, entries_max: int) -> list[Entry]:
        """Committed entries not yet given to the state machine, in order.

        Committed means durable on a majority, so they may be applied before *our* copy is on
        disk: a leader answers as soon as its followers have synced, without waiting for its
        own fsync (the same rule as etcd's synchronous mode). A crash loses only this replica's
        in-memory state, which is rebuilt from snapshot and log.
        """
        hi = self.committed
        if hi <= self.applying:
            return []
        start = self.applying - self.base_index
        chunk = self.entries[start : start + min(hi - self.applying, entries_max)]
        self.applying = chunk[-1].index
        return chunk
