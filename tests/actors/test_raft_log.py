"""RaftLog on its own: the in-memory log, its three disk marks, compaction and start-up."""

from __future__ import annotations

import pytest

from syncfab.actors.messages import Entry, Snapshot
from syncfab.actors.raft_log import RaftLog


def run(terms: list[int], first: int = 1, data: bytes = b"") -> list[Entry]:
    """Entries with the given terms at consecutive indexes from ``first``."""
    return [Entry(t, first + n, data) for n, t in enumerate(terms)]


def log_of(terms: list[int], base_index: int = 0, base_term: int = 0) -> RaftLog:
    return RaftLog(base_index, base_term, run(terms, base_index + 1))


def terms(log: RaftLog) -> list[int]:
    return [e.term for e in log.entries]


# -- reading ------------------------------------------------------------------------------


def test_term_covers_the_base_and_the_entries_only() -> None:
    log = log_of([2, 3], base_index=5, base_term=1)
    assert [log.term(i) for i in range(4, 9)] == [None, 1, 2, 3, None]
    assert (log.last_index, log.last_term) == (7, 3)


def test_empty_log_reports_its_base() -> None:
    log = RaftLog(4, 2)
    assert (log.last_index, log.last_term, log.term(4)) == (4, 2, 2)


def test_slice_respects_entries_max() -> None:
    log = log_of([1] * 10)
    assert [e.index for e in log.slice(3, 4, 1 << 20)] == [3, 4, 5, 6]
    assert [e.index for e in log.slice(9, 4, 1 << 20)] == [9, 10]
    assert log.slice(11, 4, 1 << 20) == []


def test_slice_respects_bytes_max_but_returns_at_least_one_entry() -> None:
    log = RaftLog(0, 0, run([1] * 5, data=b"x" * 100))  # 116 bytes each by slice's reckoning
    assert len(log.slice(1, 10, 250)) == 2
    assert len(log.slice(1, 10, 10)) == 1


def test_slice_after_compaction_is_offset_by_the_base() -> None:
    log = log_of([1, 1, 2], base_index=10, base_term=1)
    assert [(e.index, e.term) for e in log.slice(12, 10, 1 << 20)] == [(12, 1), (13, 2)]


@pytest.mark.parametrize(
    ("candidate", "granted"),
    [
        ((3, 2), True),  # same last entry
        ((4, 2), True),  # longer, same last term
        ((2, 2), False),  # shorter, same last term
        ((1, 3), True),  # shorter but newer last term
        ((9, 1), False),  # longer but older last term
    ],
)
def test_is_up_to_date_is_the_election_restriction(candidate: tuple[int, int], granted: bool) -> None:
    log = log_of([1, 2, 2])
    assert log.is_up_to_date(*candidate) is granted


@pytest.mark.parametrize(
    ("follower", "index", "term", "hint"),
    [
        ([1, 1, 1], 6, 2, 3),  # short log: our last index
        ([1, 1, 3, 3, 3], 5, 2, 2),  # a tail of a term newer than the leader's is skipped at once
        ([1, 1, 1, 4, 4, 4, 4], 10, 6, 7),  # figure 7 (e): last index, its term is older
        ([1, 2, 2], 3, 1, 1),
        ([5, 5], 2, 1, 0),  # nothing can match: back to the base
    ],
)
def test_conflict_hint_is_last_index_with_a_term_not_newer(
    follower: list[int], index: int, term: int, hint: int
) -> None:
    assert log_of(follower).conflict_hint(index, term) == hint


def test_conflict_hint_stops_at_the_base() -> None:
    log = log_of([7, 7], base_index=4, base_term=3)
    assert log.conflict_hint(6, 1) == 4


# -- accepting entries --------------------------------------------------------------------


def test_accept_appends_after_prev() -> None:
    log = log_of([1, 1])
    assert log.accept(2, run([1, 2], first=3)) == 4
    assert terms(log) == [1, 1, 1, 2]


def test_accept_skips_entries_already_held_and_keeps_a_longer_suffix() -> None:
    log = log_of([1, 1, 2, 2])
    assert log.accept(1, run([1, 2], first=2)) == 3  # the highest index known to match
    assert terms(log) == [1, 1, 2, 2]  # a stale, shorter message never truncates
    assert log.take_unstable() == (None, [])


def test_accept_truncates_at_the_first_conflict() -> None:
    log = log_of([1, 1, 2, 2, 2])
    log.commit_to(2)
    assert log.accept(2, run([3, 3], first=3)) == 4
    assert terms(log) == [1, 1, 3, 3]
    assert (log.stable, log.handed) == (2, 2)
    # entries 3.. were on disk: the next write must remove them before appending
    assert log.take_unstable() == (3, run([3, 3], first=3))
    assert log.take_unstable() == (None, [])  # handed out once


def test_accept_truncating_entries_never_handed_out_needs_no_disk_truncation() -> None:
    log = log_of([1, 1])
    log.append(run([2, 2], first=3))
    log.accept(2, run([3], first=3))
    assert log.take_unstable() == (None, run([3], first=3))


def test_truncating_entries_handed_out_but_not_yet_durable_truncates_the_next_write() -> None:
    log = log_of([1, 1])
    log.append(run([2, 2], first=3))
    assert log.take_unstable() == (None, run([2, 2], first=3))  # a write in flight
    log.accept(2, run([3], first=3))
    assert log.take_unstable() == (3, run([3], first=3))
    assert log.stable == 2


def test_accept_never_truncates_committed_entries() -> None:
    log = log_of([1, 1, 2])
    log.commit_to(3)
    with pytest.raises(AssertionError, match="conflict below the commit index"):
        log.accept(2, run([5], first=3))


def test_accept_ignores_entries_covered_by_compaction() -> None:
    log = log_of([2, 2], base_index=5, base_term=1)
    assert log.accept(3, run([1, 1, 2, 2, 3], first=4)) == 8
    assert (log.base_index, terms(log)) == (5, [2, 2, 3])


def test_commit_to_never_moves_back_nor_past_the_last_index() -> None:
    log = log_of([1, 1, 1])
    assert log.commit_to(2)
    assert not log.commit_to(1)
    assert log.commit_to(9)
    assert log.committed == 3


# -- disk marks ---------------------------------------------------------------------------


def test_take_unstable_then_stable_to() -> None:
    log = log_of([1, 1])  # built from disk: all durable
    assert (log.stable, log.handed, log.take_unstable()) == (2, 2, (None, []))
    log.append(run([1, 1], first=3))
    assert log.take_unstable() == (None, run([1, 1], first=3))
    assert (log.handed, log.stable) == (4, 2)  # handed to a write, not yet durable
    log.append(run([1], first=5))
    assert log.take_unstable() == (None, run([1], first=5))  # a second write, pipelined
    log.stable_to(4, 1)
    assert log.stable == 4
    log.stable_to(5, 1)
    assert log.stable == 5


def test_stable_to_ignores_a_write_overtaken_by_a_truncation() -> None:
    log = log_of([1, 1])
    log.append(run([1, 1], first=3))
    _, first_write = log.take_unstable()
    log.accept(2, run([2, 2], first=3))  # 3 and 4 rewritten while the first write is in flight
    truncate_from, second_write = log.take_unstable()
    assert truncate_from == 3
    last = first_write[-1]
    log.stable_to(last.index, last.term)  # the first write lands: its 4@1 is no longer ours
    assert log.stable == 2
    last = second_write[-1]
    log.stable_to(last.index, last.term)
    assert log.stable == 4


def test_stable_never_moves_back() -> None:
    log = log_of([1, 1, 1])
    log.stable_to(2, 1)
    assert log.stable == 3


def test_take_committed_hands_out_committed_entries_once_durable_or_not() -> None:
    log = log_of([1, 1])
    log.append(run([1, 1], first=3))
    log.commit_to(3)
    assert [e.index for e in log.take_committed(100)] == [1, 2, 3]  # 3 is not on our disk yet
    assert log.take_committed(100) == []
    log.commit_to(4)
    assert [e.index for e in log.take_committed(100)] == [4]
    assert (log.applying, log.applied) == (4, 0)  # applied moves on advance, not here


def test_take_committed_is_capped() -> None:
    log = log_of([1] * 6)
    log.commit_to(6)
    assert [e.index for e in log.take_committed(4)] == [1, 2, 3, 4]
    assert [e.index for e in log.take_committed(4)] == [5, 6]


def test_take_committed_after_compaction() -> None:
    log = log_of([1, 1, 1], base_index=10, base_term=1)
    log.commit_to(12)
    assert [e.index for e in log.take_committed(10)] == [11, 12]


# -- compaction and snapshots -------------------------------------------------------------


def test_compact_makes_the_entry_the_new_base() -> None:
    log = log_of([1, 1, 2, 2, 3])
    log.commit_to(4)
    log.take_committed(10)
    log.compact(3)
    assert (log.base_index, log.base_term, terms(log)) == (3, 2, [2, 3])
    assert [log.term(i) for i in (2, 3, 4, 5)] == [None, 2, 2, 3]
    log.compact(2)  # at or below the base: nothing to do
    assert log.base_index == 3


def test_compact_refuses_unapplied_entries() -> None:
    log = log_of([1, 1, 1])
    log.commit_to(3)
    log.take_committed(1)
    with pytest.raises(AssertionError, match="unapplied"):
        log.compact(2)


def test_restore_replaces_everything_with_the_snapshot() -> None:
    log = log_of([1, 1, 2, 2])
    log.accept(2, run([3], first=3))  # a pending truncation the snapshot makes moot
    log.restore(Snapshot(9, 4, b"state"))
    assert (log.base_index, log.base_term, log.entries) == (9, 4, [])
    assert (log.committed, log.applying, log.applied, log.stable, log.handed) == (9, 9, 9, 9, 9)
    assert log.take_unstable() == (None, [])
    assert log.take_committed(10) == []


# -- start-up -----------------------------------------------------------------------------


def test_from_disk_fresh() -> None:
    log = RaftLog.from_disk(None, [])
    assert (log.base_index, log.last_index, log.committed, log.applied) == (0, 0, 0, 0)


def test_from_disk_never_compacted_keeps_every_entry_unapplied() -> None:
    # Regression: entry 1 used to be taken for a compaction base, hence committed and applied.
    # When it was a lone leader's unreplicated no-op, the node could never catch up again.
    log = RaftLog.from_disk(None, run([1, 1, 2]))
    assert (log.base_index, terms(log)) == (0, [1, 1, 2])
    assert (log.committed, log.applying, log.stable) == (0, 0, 3)
    assert [e.index for e in log.take_committed(10)] == []  # until a leader says otherwise


def test_from_disk_snapshot_only() -> None:
    log = RaftLog.from_disk(Snapshot(7, 3, b"s"), [])
    assert (log.base_index, log.base_term, log.last_index) == (7, 3, 7)
    assert (log.committed, log.applied) == (7, 7)


def test_from_disk_snapshot_then_entries_after_it() -> None:
    # An InstallSnapshot left no base entry on disk: the snapshot is the base.
    log = RaftLog.from_disk(Snapshot(7, 3, b"s"), run([3, 4], first=8))
    assert (log.base_index, log.base_term, terms(log)) == (7, 3, [3, 4])
    assert (log.committed, log.applying, log.stable) == (7, 7, 9)


def test_from_disk_compaction_that_kept_entries_below_the_snapshot() -> None:
    # compact(index=7, keep_entries=2) stores entries 5.. with 5 as the base.
    log = RaftLog.from_disk(Snapshot(7, 2, b"s"), run([1, 2, 2, 2, 3], first=5))
    assert (log.base_index, log.base_term, terms(log)) == (5, 1, [2, 2, 2, 3])
    assert (log.committed, log.applying) == (7, 7)  # the snapshot covers 7, not just the base
    assert log.take_committed(10) == []
