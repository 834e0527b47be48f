"""RaftCore: one Raft group's consensus, with no I/O of its own.

Inputs are method calls — ``step`` (a peer message), ``tick`` (the time), ``propose``,
``read_index``, ``transfer_leadership``, ``compact`` — and the only output is ``ready()``: what to
write, what to send (before or after the write), what to apply. The runtime performs it and
calls ``advance()`` once the write is durable — possibly after taking further readies, since
writes are pipelined (see raft_log.py), but always in order.

Beyond the paper: pre-vote and check-quorum (a partitioned node cannot depose a healthy leader,
and a leader cut off from its quorum steps down), pipelined and batched replication with
per-follower flow control (probe / replicate / snapshot), ReadIndex reads confirmed by one
heartbeat round shared by every read of a turn, snapshots with InstallSnapshot, and leadership
transfer with TimeoutNow, and membership changes one voter at a time with learners
(actors/raft_conf.py). Role behaviour is bound on role change (``self._step``, ``self._tick``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence

from syncfab.actors.messages import (
    AppendEntries,
    AppendReply,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatReply,
    InstallSnapshot,
    RaftMessage,
    Snapshot,
    TimeoutNow,
    VoteReply,
    VoteRequest,
)
from syncfab.actors.progress import Flow, Progress
from syncfab.actors.raft_conf import ConfChanges, latest_conf, membership
from syncfab.actors.raft_log import RaftLog
from syncfab.actors.raft_types import Busy, NotLeader, RaftConfig, Role
from syncfab.actors.ready import Persist, ReadState, Ready

_REPLIES = (AppendReply, HeartbeatReply, VoteReply)


class RaftCore(ConfChanges):
    def __init__(
        self,
        node_id: str,
        voters: Sequence[str],
        *,
        rng: random.Random,
        now_ms: int,
        config: RaftConfig | None = None,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        self.id = node_id
        # In force until the log or a snapshot says otherwise. Empty: a replica created to
        # receive a group it will learn from its leader (it neither votes nor campaigns).
        self.initial = membership(voters)
        self.config = config or RaftConfig()
        self._rng = rng
        self._now = now_ms
        hs = hard_state or HardState()
        self.term, self.vote = hs.term, hs.vote
        self.log = RaftLog.from_disk(snapshot, list(entries))
        self.log.commit_to(hs.commit)
        self.snapshot = snapshot
        self.leader: str | None = None
        self.role = Role.FOLLOWER
        self.progress: dict[str, Progress] = {}
        # Elections this replica started, by why: its own timer, or a leader's TimeoutNow. A
        # clean handover shows as transfers only (operators and tests read these).
        self.elections_on_timeout = 0
        self.elections_on_transfer = 0
        self._saved = (hs.term, hs.vote, hs.commit)
        self._msgs: list[tuple[str, RaftMessage]] = []
        self._msgs_after: list[tuple[str, RaftMessage]] = []
        self._save_snapshot: Snapshot | None = None
        self._compact_to: int | None = None
        self._restore: Snapshot | None = None
        self._votes: dict[str, bool] = {}
        self._election_deadline = 0
        self._heartbeat_deadline = 0
        self._quorum_deadline = 0
        self._leader_contact = -(1 << 62)
        self._transferee: str | None = None
        self._transfer_deadline = 0
        self._read_seq = 0
        self._read_due = False
        self._reads_pending: deque[tuple[int, int, int]] = deque()  # (read_seq, index, context)
        self._reads_blocked: list[int] = []  # contexts waiting for a commit in this term
        self._reads_ready: list[ReadState] = []
        self._step: Callable[[str, RaftMessage], None] = self._step_follower
        self._tick: Callable[[], None] = self._tick_election
        self._leaving: dict[str, list[int]] = {}  # removed peer -> [removal index, heartbeats left]
        self._set_conf(*latest_conf(self.log.entries, snapshot, self.initial))
        self._become_follower(self.term, None)

    # -- inputs ---------------------------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        self._now = now_ms
        self._tick()

    def step(self, sender: str, msg: RaftMessage) -> None:
        if sender not in self._members:
            if sender in self._leaving:
                if msg.term > self.term:
                    return  # a removed replica's term must not depose us
            elif isinstance(msg, _REPLIES):
                return  # from a replica we no longer track
            elif isinstance(msg, VoteRequest) and self.role is Role.LEADER and not self.conf_pending:
                self._leaving[sender] = [self._conf_index, self.config.removed_heartbeats_max]
                self.progress[sender] = Progress(next=self.log.last_index + 1)
                return  # a removed replica that missed its removal: send it the log that says so
        # Anyone else is heard: a learner just added (or a replica with no membership yet) does
        # not know its leader is a member until the log it is about to receive says so, and a
        # replica whose latest (uncommitted) membership left the leader out may be wrong.
        # Removed replicas cannot disrupt: pre-vote and the leader lease turn their elections down.
        if msg.term > self.term:
            if isinstance(msg, VoteRequest):
                if not msg.transfer and self._in_lease():
                    return  # we hear from a live leader: a partitioned node must not depose it
                if not msg.pre_vote:
                    self._become_follower(msg.term, None)
            elif isinstance(msg, VoteReply) and msg.pre_vote and msg.granted:
                pass  # a granted pre-vote echoes the term we proposed; nothing changed yet
            else:
                lead = sender if isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot) else None
                self._become_follower(msg.term, lead)
        elif msg.term < self.term:
            if isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot):
                # A deposed leader would keep sending forever: tell it the term.
                self._msgs.append((sender, AppendReply(self.term, False, 0)))
            elif isinstance(msg, VoteRequest) and msg.pre_vote:
                self._msgs.append((sender, VoteReply(self.term, False, True)))
            return
        if isinstance(msg, VoteRequest):
            self._on_vote_request(sender, msg)
        else:
            self._step(sender, msg)

    def campaign(self) -> None:
        """Start an election now (an operator's or a test's nudge; timers do this otherwise)."""
        if self.role is not Role.LEADER and self.is_voter:
            self._campaign(pre_vote=self.config.pre_vote)

    def propose(self, data: bytes) -> int:
        """Append a command; returns its log index (its commit is not promised)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._transferee is not None:
            raise Busy("leadership transfer in progress")
        if self.log.last_index - self.log.committed >= self.config.uncommitted_entries_max:
            raise Busy("too many uncommitted entries")
        index = self.log.last_index + 1
        self.log.entries.append(Entry(self.term, index, data))
        return index

    def read_index(self, context: int) -> None:
        """Ask for a linearizable read; ``ready().reads`` later names the index to wait for."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.log.term(self.log.committed) != self.term:
            # Our commit index is only known to be current once an entry of our term commits.
            self._reads_blocked.append(context)
            return
        self._reads_pending.append((self._read_seq + 1, self.log.committed, context))
        self._read_due = True

    @property
    def transfer_target(self) -> str | None:
        """Where a leadership transfer under way goes (None: none is)."""
        return self._transferee

    def transfer_leadership(self, target: str) -> bool:
        if self.role is not Role.LEADER or target not in self._voter_peers or self._transferee:
            return False
        if self.conf_pending:
            return False  # the next leader would not know whom a pending change removes
        self._transferee = target
        self._transfer_deadline = self._now + self.config.election_timeout_ms
        if self.progress[target].match == self.log.last_index:
            self._msgs.append((target, TimeoutNow(self.term)))
        return True

    def compact(self, index: int, data: bytes, keep_entries: int = 0) -> None:
        """Record a state machine snapshot taken at applied ``index``; drop the log before it,
        keeping ``keep_entries`` so slightly lagging followers still catch up from the log."""
        assert index <= self.log.applying, "snapshot beyond what the state machine was given"
        term = self.log.term(index)
        assert term is not None
        conf, _ = latest_conf(self.log.entries, self.snapshot, self.initial, index)
        self.snapshot = self._save_snapshot = Snapshot(index, term, data, conf)
        compact_to = max(self.log.base_index, index - keep_entries)
        self.log.compact(compact_to)
        self._compact_to = compact_to

    # -- output ---------------------------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._msgs_after
            or self._reads_ready
            or self._read_due
            or self._save_snapshot is not None
            or self.log.handed < self.log.last_index
            or self.log.committed > self.log.applying
            or (self.term, self.vote) != self._saved[:2]
        )

    def ready(self) -> Ready:
        if self.role is Role.LEADER:
            if self._read_due:
                self._read_due = False
                self._read_seq += 1
                self._broadcast_heartbeat()
                self._confirm_reads()
            for peer, pr in self.progress.items():
                self._send_append(peer, pr)
        truncate_from, entries = self.log.take_unstable()
        persist = Persist(
            snapshot=self._save_snapshot,
            compact_to=self._compact_to,
            truncate_from=truncate_from,
            entries=entries,
        )
        if self._restore is not None:
            persist.compact_to = persist.truncate_from = self._restore.index + 1
        state = (self.term, self.vote, self.log.committed)
        if state[:2] != self._saved[:2] or (entries and state[2] != self._saved[2]):
            persist.hard_state = HardState(*state)
            self._saved = state
        ready = Ready(
            persist=persist,
            messages=self._msgs,
            messages_after_persist=self._msgs_after,
            committed=self.log.take_committed(self.config.apply_entries_max),
            restore=self._restore,
            reads=self._reads_ready,
        )
        self._msgs, self._msgs_after, self._reads_ready = [], [], []
        self._save_snapshot = self._compact_to = self._restore = None
        return ready

    def advance(self, ready: Ready) -> None:
        """``ready``'s write is durable and its committed entries applied. Readies may be
        advanced later than they were taken, but always in the order they were taken."""
        entries = ready.persist.entries
        if entries:
            self.log.stable_to(entries[-1].index, entries[-1].term)
        if ready.committed:
            self.log.applied = max(self.log.applied, ready.committed[-1].index)
        if self.role is Role.LEADER:
            self._maybe_commit()

    # -- roles ----------------------------------------------------------------------------

    def _become_follower(self, term: int, leader: str | None) -> None:
        if term != self.term:
            self.term, self.vote = term, None
        self.role = Role.FOLLOWER
        self.leader = leader
        if leader is not None:
            self._leader_contact = self._now
        self._step, self._tick = self._step_follower, self._tick_election
        self.progress = {}
        self._leaving.clear()
        self._transferee = None
        self._reads_pending.clear()
        self._reads_blocked.clear()
        self._read_due = False
        self._reset_election_deadline()

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        if pre_vote:
            self.role = Role.PRE_CANDIDATE
            term = self.term + 1  # proposed only; our own term stays until a real election
        else:
            self.role = Role.CANDIDATE
            self.term += 1
            self.vote = self.id
            term = self.term
        self.leader = None
        self._step, self._tick = self._step_candidate, self._tick_election
        self._votes = {self.id: True}
        self._reset_election_deadline()
        if self._tally():
            return
        request = VoteRequest(term, self.log.last_index, self.log.last_term, pre_vote, transfer)
        # A real vote request may only leave once our own vote for ourselves is on disk.
        out = self._msgs if pre_vote else self._msgs_after
        out.extend((peer, request) for peer in self._voter_peers)

    def _become_leader(self) -> None:
        assert self.is_voter, "only a voter can win an election"
        self.role = Role.LEADER
        self.leader = self.id
        self._step, self._tick = self._step_leader, self._tick_leader
        last = self.log.last_index
        self.progress = {p: Progress(next=last + 1) for p in self.peers}
        if self._conf_index > self.log.base_index:
            # Replicas the last change removed may not know it yet: tell them, as its leader would.
            before, _ = latest_conf(self.log.entries, self.snapshot, self.initial, self._conf_index - 1)
            for p in sorted(set(before.voters + before.learners) - self._members - {self.id}):
                self.progress[p] = Progress(next=last + 1)
                self._leaving[p] = [self._conf_index, self.config.removed_heartbeats_max]
        self._heartbeat_deadline = self._now + self.config.heartbeat_ms
        self._quorum_deadline = self._now + self.config.election_timeout_ms
        # Commit something of our own term: it commits every earlier entry (§5.4.2) and
        # unblocks ReadIndex.
        self.log.entries.append(Entry(self.term, last + 1, b""))
        if self.quorum == 1:
            self._maybe_commit()

    def _tally(self) -> bool:
        """Count votes; act on a decided election. Returns True when decided."""
        voters = self.conf.voters
        granted = sum(ok for p, ok in self._votes.items() if p in voters)
        if granted >= self.quorum:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
            return True
        if sum(p in voters for p in self._votes) - granted >= self.quorum:
            self._become_follower(self.term, None)
            return True
        return False

    # -- role behaviour -------------------------------------------------------------------

    def _step_follower(self, sender: str, msg: RaftMessage) -> None:
        match msg:
            case AppendEntries():
                self._heard_from_leader(sender)
                self._on_append(sender, msg)
            case Heartbeat():
                self._heard_from_leader(sender)
                self.log.commit_to(msg.commit)
                self._msgs.append((sender, HeartbeatReply(self.term, msg.read_seq)))
            case InstallSnapshot():
                self._heard_from_leader(sender)
                self._on_snapshot(sender, msg)
            case TimeoutNow() if sender == self.leader and self.is_voter:
                self.elections_on_transfer += 1
                self._campaign(pre_vote=False, transfer=True)
            case _:
                pass  # replies to a role we no longer hold

    def _step_candidate(self, sender: str, msg: RaftMessage) -> None:
        match msg:
            case AppendEntries() | Heartbeat() | InstallSnapshot():
                self._become_follower(self.term, sender)
                self._step_follower(sender, msg)
            case VoteReply() if msg.pre_vote == (self.role is Role.PRE_CANDIDATE):
                self._votes[sender] = msg.granted
                self._tally()
            case _:
                pass

    def _step_leader(self, sender: str, msg: RaftMessage) -> None:
        pr = self.progress[sender]
        match msg:
            case AppendReply(success=True):
                pr.heard_ms = self._now
                self._on_append_ok(sender, pr, msg.index)
            case AppendReply():
                pr.heard_ms = self._now
                self._on_append_rejected(pr, msg)
            case HeartbeatReply():
                pr.heard_ms = self._now
                pr.read_ack = max(pr.read_ack, msg.read_seq)
                if pr.flow is Flow.PROBE:
                    pr.probe_sent = False  # the probe may have been lost: allow another
                self._confirm_reads()
            case _:
                pass

    def _tick_election(self) -> None:
        if self._now >= self._election_deadline and self.is_voter:
            self.elections_on_timeout += 1
            self._campaign(pre_vote=self.config.pre_vote)

    def _tick_leader(self) -> None:
        cfg = self.config
        if self._now >= self._heartbeat_deadline:
            self._heartbeat_deadline = self._now + cfg.heartbeat_ms
            self._broadcast_heartbeat()
            self._restart_stalled()
            if self._leaving:
                self._count_leaving()
        if self._now >= self._quorum_deadline:
            # Check-quorum: a voter counts if it answered since this round began.
            since = self._quorum_deadline - cfg.election_timeout_ms
            self._quorum_deadline = self._now + cfg.election_timeout_ms
            active = 1 + sum(self.progress[p].heard_ms >= since for p in self._voter_peers)
            if cfg.check_quorum and active < self.quorum:
                self._become_follower(self.term, None)
                return
        if self._transferee is not None and self._now >= self._transfer_deadline:
            self._transferee = None

    # -- follower handlers ----------------------------------------------------------------

    def _heard_from_leader(self, sender: str) -> None:
        self.leader = sender
        self._leader_contact = self._now
        self._reset_election_deadline()

    def _on_append(self, sender: str, msg: AppendEntries) -> None:
        log = self.log
        if msg.prev_index < log.committed:
            # Everything up to our commit index matches the leader's log; say so, and let the
            # leader resend from there.
            reply = AppendReply(self.term, True, log.committed)
        elif log.term(msg.prev_index) == msg.prev_term:
            last_new = log.accept(msg.prev_index, msg.entries)
            if self._conf_index > msg.prev_index or any(e.conf is not None for e in msg.entries):
                # A change arrived, or a truncation may have taken the one in force.
                self._set_conf(*latest_conf(log.entries, self.snapshot, self.initial))
            log.commit_to(min(msg.commit, last_new))
            reply = AppendReply(self.term, True, last_new)
        else:
            hint = log.conflict_hint(msg.prev_index, msg.prev_term)
            reply = AppendReply(self.term, False, msg.prev_index, hint, log.term(hint) or 0)
        self._msgs_after.append((sender, reply))

    def _on_snapshot(self, sender: str, msg: InstallSnapshot) -> None:
        snap, log = msg.snapshot, self.log
        if snap.index <= log.committed:
            self._msgs_after.append((sender, AppendReply(self.term, True, log.committed)))
            return
        if log.term(snap.index) == snap.term:
            log.commit_to(snap.index)  # we hold that prefix: apply it from our own log
        else:
            log.restore(snap)
            self.snapshot = self._save_snapshot = self._restore = snap
            self._set_conf(*latest_conf(log.entries, snap, self.initial))
        self._msgs_after.append((sender, AppendReply(self.term, True, snap.index)))

    def _on_vote_request(self, sender: str, msg: VoteRequest) -> None:
        if not self.conf.voters:
            # A replica that has no membership yet has no log to vote by: its vote could elect
            # a candidate missing committed entries (it may have held them before, retired).
            self._msgs_after.append((sender, VoteReply(self.term, False, msg.pre_vote)))
            return
        if msg.pre_vote:
            free = msg.term > self.term or (self.vote in (None, sender) and self.leader is None)
        else:
            free = self.vote == sender or (self.vote is None and self.leader is None)
        if free and self.log.is_up_to_date(msg.last_index, msg.last_term):
            if not msg.pre_vote:
                self.vote = sender
                self._reset_election_deadline()
            self._msgs_after.append((sender, VoteReply(msg.term, True, msg.pre_vote)))
        else:
            self._msgs_after.append((sender, VoteReply(self.term, False, msg.pre_vote)))

    # -- leader handlers ------------------------------------------------------------------

    def _on_append_ok(self, sender: str, pr: Progress, index: int) -> None:
        pr.acknowledge(index)
        self._maybe_commit()
        if sender == self._transferee and pr.match == self.log.last_index:
            self._msgs.append((sender, TimeoutNow(self.term)))

    def _on_append_rejected(self, pr: Progress, msg: AppendReply) -> None:
        if not pr.rejection_is_current(msg.index):
            return
        hint = msg.hint
        if msg.hint_term:
            # Our last index at or below the hint whose term the follower could share.
            hint = self.log.conflict_hint(hint, msg.hint_term)
        pr.probe(max(pr.match + 1, min(msg.index, hint + 1)))

    def _send_append(self, peer: str, pr: Progress) -> None:
        log, cfg = self.log, self.config
        while not pr.paused(log.last_index, cfg.inflight_messages_max):
            prev = pr.next - 1
            prev_term = log.term(prev)
            if prev_term is None:
                assert self.snapshot is not None, "log compacted without a snapshot"
                pr.sending_snapshot(self.snapshot.index)
                self._msgs.append((peer, InstallSnapshot(self.term, self.snapshot)))
                return
            entries = log.slice(pr.next, cfg.append_entries_max, cfg.append_bytes_max)
            self._msgs.append((peer, AppendEntries(self.term, prev, prev_term, entries, log.committed)))
            pr.sent(entries[-1].index if entries else prev)

    def _broadcast_heartbeat(self) -> None:
        commit, seq = self.log.committed, self._read_seq
        for peer, pr in self.progress.items():
            # Never tell a follower to commit past what it is known to hold.
            self._msgs.append((peer, Heartbeat(self.term, min(pr.match, commit), seq)))

    def _restart_stalled(self) -> None:
        """Restart replication to a follower that made no progress for a while: the message
        that would have moved it on was lost (links drop messages when a peer is down)."""
        last, cfg = self.log.last_index, self.config
        for pr in self.progress.values():
            pr.heartbeat_passed(last, cfg.stalled_heartbeats_max, cfg.snapshot_stalled_heartbeats_max)

    def _maybe_commit(self) -> None:
        progress = self.progress
        matches = [progress[p].match for p in self._voter_peers]
        matches.append(self.log.stable)  # a leader is always a voter (propose_conf)
        matches.sort(reverse=True)
        n = matches[self.quorum - 1]
        if n > self.log.committed and self.log.term(n) == self.term:
            self.log.commit_to(n)
            if self._reads_blocked:
                blocked, self._reads_blocked = self._reads_blocked, []
                for context in blocked:
                    self.read_index(context)

    def _confirm_reads(self) -> None:
        while self._reads_pending:
            seq, index, context = self._reads_pending[0]
            if seq > self._read_seq:
                return  # its heartbeat round has not gone out yet
            acks = 1 + sum(self.progress[p].read_ack >= seq for p in self._voter_peers)
            if acks < self.quorum:
                return
            self._reads_pending.popleft()
            self._reads_ready.append(ReadState(context, index))

    # -- helpers --------------------------------------------------------------------------

    def _in_lease(self) -> bool:
        if not self.config.check_quorum:
            return False
        if self.role is Role.LEADER:
            return True  # check-quorum steps us down the moment the lease could be stale
        return self.leader is not None and self._now - self._leader_contact < self.config.election_timeout_ms

    def _reset_election_deadline(self) -> None:
        timeout = self.config.election_timeout_ms
        self._election_deadline = self._now + timeout + self._rng.randrange(timeout)

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applying_index(self) -> int:
        """The last entry handed to the state machine: the runtime applies each as it takes
        it, so between turns this is also the last applied (what /status calls applied_index)."""
        return self.log.applying
