"""A Raft group's membership and how it may change: one voter at a time (single-server
changes, Ongaro's dissertation §4.1), with learners that receive the log but neither vote nor
count toward a quorum until a later change makes them voters.

A configuration is in force on a replica from the moment its entry is in that replica's log,
committed or not: the latest ``Membership`` in the log — else the snapshot's, else the group's
initial one — is the one used. A truncation that removes that entry brings back the one before.
One change at a time: a leader proposes the next only once the last is committed, and only once
an entry of its own term is committed (the fix to the single-server algorithm the dissertation's
errata give: a new leader could otherwise commit a change that overlaps an uncommitted one of
its predecessor's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from syncfab.actors.messages import Entry, Membership, Snapshot


def membership(voters: Iterable[str], learners: Iterable[str] = ()) -> Membership:
    """A normalised Membership: sorted, no duplicates, a learner that also votes is a voter."""
    vs = sorted(set(voters))
    return Membership(tuple(vs), tuple(sorted(set(learners) - set(vs))))


def latest_conf(
    entries: Sequence[Entry], snapshot: Snapshot | None, initial: Membership, upto: int | None = None
) -> tuple[Membership, int]:
    """The membership in force at index ``upto`` (default: the log's end) and the index of the
    entry that set it (the snapshot's index, or 0 for the initial membership)."""
    for e in reversed(entries):
        if e.conf is not None and (upto is None or e.index <= upto):
            return e.conf, e.index
    if snapshot is not None and snapshot.conf is not None:
        return snapshot.conf, snapshot.index
    return initial, snapshot.index if snapshot is not None else 0


def change_refused(old: Membership, new: Membership, leader: str) -> str | None:
    """Why ``new`` may not follow ``old`` in one step (None: it may)."""
    if new != membership(new.voters, new.learners) or set(new.voters) & set(new.learners):
        return "a membership must be sorted, without duplicates, and voters are not learners"
    if leader not in new.voters:
        return "the leader cannot remove itself: transfer leadership first"
    changed = set(old.voters) ^ set(new.voters)
    if len(changed) > 1:
        return f"one voter at a time: {sorted(changed)} would change at once"
    return None
