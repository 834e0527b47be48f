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
from typing import TYPE_CHECKING

from syncfab.actors.messages import Entry, Membership, RaftMessage, Snapshot, VoteRequest
from syncfab.actors.progress import Progress
from syncfab.actors.raft_types import Busy, NotLeader, RaftConfig, Role

if TYPE_CHECKING:
    from syncfab.actors.raft_log import RaftLog


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


class ConfChanges:
    """RaftCore's membership half (a mixin): proposing a change, putting one in force, and
    telling removed replicas so. The attributes are RaftCore's."""

    id: str
    role: Role
    leader: str | None
    term: int
    log: RaftLog
    config: RaftConfig
    progress: dict[str, Progress]
    conf: Membership
    peers: tuple[str, ...]
    quorum: int
    is_voter: bool
    _conf_index: int
    _members: frozenset[str]
    _voter_peers: tuple[str, ...]
    _leaving: dict[str, list[int]]  # removed peer -> [its removal's index, heartbeats left]
    _transferee: str | None
    _msgs: list[tuple[str, RaftMessage]]

    if TYPE_CHECKING:  # RaftCore's own

        def _maybe_commit(self) -> None: ...

        def _become_follower(self, term: int, leader: str | None) -> None: ...

    def propose_conf(self, conf: Membership) -> int:
        """Append a membership change (raft_conf.py's rules); returns its log index. In force
        at once; ``conf_pending`` until it commits."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._transferee is not None:
            raise Busy("leadership transfer in progress")
        if self.conf_pending:
            raise Busy("a membership change is under way")
        if self.log.term(self.log.committed) != self.term:
            raise Busy("no entry of this term has committed yet")
        refused = change_refused(self.conf, conf, self.id)
        if refused is not None:
            raise ValueError(refused)
        index = self.log.last_index + 1
        self.log.entries.append(Entry(self.term, index, b"", conf))
        self._set_conf(conf, index)
        return index

    def ask_for_log(self, leader: str) -> bool:
        """Ask ``leader`` — one heard of (the node's beats), outside this replica's membership —
        for the log: a replica with no leader may have been removed while it was away. The ask
        is a pre-vote, which a leader answers by sending a non-member the log that says so.
        True if it was asked (``ready()`` has a message)."""
        if self.role is Role.LEADER or leader == self.id or leader in self._members:
            return False
        self._msgs.append((leader, VoteRequest(self.term + 1, self.log.last_index, self.log.last_term, True)))
        return True

    @property
    def conf_pending(self) -> bool:
        """A membership change is in the log and not committed yet."""
        return self._conf_index > self.log.committed

    @property
    def removed(self) -> bool:
        """This replica knows a committed membership without it: its node may retire it."""
        return bool(self.conf.voters) and self.id not in self._members and not self.conf_pending

    def _set_conf(self, conf: Membership, index: int) -> None:
        self.conf, self._conf_index = conf, index
        self._members = members = frozenset(conf.voters + conf.learners)
        self.peers = tuple(sorted(members - {self.id}))
        self._voter_peers = tuple(p for p in conf.voters if p != self.id)
        self.is_voter = self.id in conf.voters
        self.quorum = len(conf.voters) // 2 + 1
        if self.role is Role.LEADER:
            for p in self.peers:
                if self._leaving.pop(p, None) is None and p not in self.progress:
                    self.progress[p] = Progress(next=self.log.last_index + 1)
            for p in self.progress:
                if p not in members and p not in self._leaving:
                    self._leaving[p] = [index, self.config.removed_heartbeats_max]
            self._maybe_commit()  # a smaller quorum may commit at once
        elif not self.is_voter and self.role is not Role.FOLLOWER:
            self._become_follower(self.term, None)

    def _count_leaving(self) -> None:
        """A removed peer keeps getting the log and heartbeats until it holds its removal,
        committed, and a few heartbeats have told it so (or, if it never answers, for at most
        ``removed_heartbeats_max``); then it is forgotten."""
        for peer, left in list(self._leaving.items()):
            index = left[0]
            if self.log.committed >= index and self.progress[peer].match >= index:
                left[1] = min(left[1], self.config.removed_heartbeats)
            left[1] -= 1
            if left[1] <= 0:
                del self._leaving[peer], self.progress[peer]
